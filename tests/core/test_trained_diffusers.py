"""Trained Stage 2 on the diffusers backend: a checkpoint's widened embedding, condition and new layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stage2_cases import one_thread, test_image, two_balls  # noqa: F401 (fixtures)
from tiny_diffusers import save_tiny
from trained_checkpoints import diffusers_checkpoint
from ttm_core.errors import TTMInputError
from ttm_core.stage2.diffusers.loader import load_video_model
from ttm_core.stage2.diffusers.run import generate
from ttm_core.stage2.settings import MaskedAttention, Sampling, Stage2Settings
from ttm_core.stage2.trained import SplitPatchEmbedding, load_trained

VARIANT = "wan2.2-ti2v-5b"
SAMPLING = Sampling(seed=3, steps=2, cfg=4.0, negative_prompt="blurry", width=64, height=64, num_frames=9)
NO_GUIDANCE = Stage2Settings(MaskedAttention(), None)
OFF = Stage2Settings(MaskedAttention(self_strength=0.0, cross_strength=0.0), None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("trained")
    model = load_video_model(save_tiny(VARIANT, root / VARIANT))
    transformer = model.denoisers[0]
    return {"model": model, "root": root,
            "trained": load_trained(diffusers_checkpoint(transformer, VARIANT, root / "ttm" / "trained.safetensors")),
            "zero": load_trained(diffusers_checkpoint(transformer, VARIANT, root / "ttm" / "zero.safetensors",
                                                      zero=True)),
            "k2": load_trained(diffusers_checkpoint(transformer, VARIANT, root / "ttm" / "k2.safetensors",
                                                    num_blocks=2))}


def _state(model) -> tuple:
    transformer = model.denoisers[0]
    return (transformer.patch_embedding, tuple(transformer.attn_processors.values()),
            sum(len(m._forward_pre_hooks) for m in transformer.modules()),
            {k: v.clone() for k, v in transformer.state_dict().items()})


def test_an_untrained_checkpoint_gives_exactly_the_stock_output(setup: dict) -> None:
    model, trajectory, image = setup["model"], two_balls(), test_image()
    stock = generate(model, image, trajectory, trajectory.objects.prompts, OFF, SAMPLING)
    zero = generate(model, image, trajectory, trajectory.objects.prompts, NO_GUIDANCE, SAMPLING, trained=setup["zero"])
    assert sum(zero.masked_calls.values()) > 0  # the new layers ran (and added exactly zero)
    assert float((zero.frames - stock.frames).abs().max()) == 0.0


def test_a_trained_checkpoint_changes_the_video_and_leaves_the_model_stock(setup: dict) -> None:
    model, trajectory, image = setup["model"], two_balls(), test_image()
    before = _state(model)
    stock = generate(model, image, trajectory, trajectory.objects.prompts, OFF, SAMPLING)
    ours = generate(model, image, trajectory, trajectory.objects.prompts, NO_GUIDANCE, SAMPLING,
                    trained=setup["trained"])
    assert float((ours.frames - stock.frames).abs().max()) > 1e-3
    assert any("trained checkpoint trained.safetensors" in note for note in ours.notes)
    calls = ours.masked_calls
    assert set(calls) == {"transformer.blocks.0.attn1", "transformer.blocks.0.attn2"} and min(calls.values()) > 0
    after = _state(model)
    assert after[0] is before[0] and not isinstance(after[0], SplitPatchEmbedding)
    assert after[1] == before[1] and after[2] == before[2]
    assert all(torch.equal(after[3][k], v) for k, v in before[3].items())
    again = generate(model, image, trajectory, trajectory.objects.prompts, NO_GUIDANCE, SAMPLING,
                     trained=setup["trained"])
    assert torch.equal(again.frames, ours.frames)
    k2 = generate(model, image, trajectory, trajectory.objects.prompts, NO_GUIDANCE, SAMPLING, trained=setup["k2"])
    assert set(k2.masked_calls) == {f"transformer.blocks.{i}.attn{j}" for i in (0, 1) for j in (1, 2)}


def test_bad_checkpoints_are_refused_naming_the_input_and_the_fix(setup: dict, tmp_path: Path) -> None:
    model, trajectory, image = setup["model"], two_balls(), test_image()
    with pytest.raises(TTMInputError) as err:
        generate(model, image, trajectory, trajectory.objects.prompts,
                 Stage2Settings(MaskedAttention(num_blocks=3), None), SAMPLING, trained=setup["trained"])
    assert err.value.input_name == "masked_blocks" and "trained with K = 1" in str(err.value)
    other = load_video_model(save_tiny("wan2.1-i2v", tmp_path / "wan21"))
    with pytest.raises(TTMInputError) as err:
        generate(other, image, trajectory, trajectory.objects.prompts, NO_GUIDANCE, SAMPLING, trained=setup["trained"])
    assert err.value.input_name == "trained" and "trained.safetensors was trained on" in str(err.value)
    a14b = load_video_model(save_tiny("wan2.2-i2v-a14b", tmp_path / "a14b"))
    with pytest.raises(TTMInputError) as err:
        generate(a14b, image, trajectory, trajectory.objects.prompts, NO_GUIDANCE, SAMPLING, trained=setup["trained"])
    assert err.value.input_name == "trained" and "Wan 2.2 I2V-A14B" in str(err.value)
    plain = tmp_path / "plain.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(TTMInputError) as err:
        load_trained(plain, "checkpoint")
    assert "plain.safetensors has no Through-The-Mask metadata" in str(err.value)
    with pytest.raises(TTMInputError, match="does not exist"):
        load_trained(tmp_path / "missing.safetensors")
