"""ttm-train stage2 on tiny random-weight diffusers models (the users' folder layout, the pack's loader).

Clips are procedural: a coloured square moving over a textured background, with its exact label video.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.tiny_diffusers import build_tiny, save_tiny
from ttm_core.errors import TTMInputError
from ttm_core.stage2.attention.install import masked_attention
from ttm_core.stage2.trained import load_trained, trained_denoiser
from ttm_core.train.config import config_from_dict, load_config
from ttm_core.train.sample import TrainingSample
from ttm_core.train.trainer import Trainer, render

ROOT = Path(__file__).resolve().parents[2]
FRAMES, SIZE = 9, 64


def moving_square(i: int, frames: int = FRAMES, size: int = SIZE) -> TrainingSample:
    g = torch.Generator().manual_seed(i)
    video = (torch.rand(1, size, size, 3, generator=g) * 0.5).expand(frames, size, size, 3).clone()
    labels = torch.zeros(frames, size, size, dtype=torch.uint8)
    colour = torch.tensor([0.9, 0.2 + 0.2 * i, 0.1])
    for f in range(frames):
        y, x = 8 + 2 * f + i, 8 + 3 * f
        video[f, y:y + 16, x:x + 16] = colour
        labels[f, y:y + 16, x:x + 16] = 1
    return TrainingSample(f"clip{i}", video, labels, "a red ball on a table", "the ball moves right",
                          ("a red ball",), ("ball",), 8.0)


CLIPS = [moving_square(i) for i in range(4)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_train")
    return {key: save_tiny(key, root / key) for key in ("wan2.1-i2v", "wan2.2-ti2v-5b", "cogvideox-1.0-i2v")}


@pytest.fixture(scope="module")
def wide_wan21(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan 2.1 I2V with a 64-wide transformer: the stock tiny one (24 wide) predicts 64 values per token
    through a rank-24 projection, which caps how far it can overfit (about 0.53x of the start)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    pipe = build_tiny("wan2.1-i2v")
    pipe.transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, text_dim=32, freq_dim=32, ffn_dim=128,
        num_layers=2, cross_attn_norm=True, rope_max_seq_len=64, in_channels=36, out_channels=16, image_dim=24,
        added_kv_proj_dim=64).eval()
    folder = tmp_path_factory.mktemp("wide") / "wan2.1-i2v-wide"
    pipe.save_pretrained(str(folder))
    return folder


def make_config(folder: Path, out: Path, **changes: object):
    data = {"model": {"path": str(folder)}, "masked_blocks": 1,
            "data": {"size": [SIZE, SIZE], "frames": FRAMES, "batch_size": 2},
            "groups": {"layers": {"lr": 3e-3}, "patch": {"lr": 3e-3}}, "schedule": {"warmup_steps": 0},
            "steps": 4, "precision": "no", "gradient_checkpointing": False, "checkpoint": {"every": 0, "keep": 5},
            "validation": {"every": 0}, "logging": {"tensorboard": False}, "output_dir": str(out),
            "cache": {"latents": True}}
    sets = [f"{k}={v}" for k, v in changes.items()]
    return config_from_dict(data, sets)


# ------------------------------------------------------------------------------- configs
def test_example_configs_load() -> None:
    for name, variant, k in (("stage2_wan21_i2v", "wan2.1-i2v", 10), ("stage2_wan22_ti2v", "wan2.2-ti2v-5b", 8),
                             ("stage2_cogvideox_i2v", "cogvideox-1.0-i2v", 10)):
        config = load_config(ROOT / "configs" / "train" / f"{name}.yaml")
        assert (config.model.variant, config.masked_blocks, config.steps) == (variant, k, 50000)
        assert config.schedule.warmup_steps == 2000 and config.groups["layers"].lr == 2e-5
        assert config.data.batch_size * 8 == 32


def test_bad_configs_name_the_key(tmp_path: Path, folders: dict[str, Path]) -> None:
    with pytest.raises(TTMInputError, match=r"data\.batchsize: unknown key 'batchsize'.*batch_size"):
        make_config(folders["wan2.1-i2v"], tmp_path, **{"data.batchsize": 2})
    with pytest.raises(TTMInputError, match=r"model\.variant: unknown model family 'hunyuan'"):
        make_config(folders["wan2.1-i2v"], tmp_path, **{"model.variant": "hunyuan"})
    with pytest.raises(TTMInputError, match=r"groups\.dora: unknown trainable group"):
        make_config(folders["wan2.1-i2v"], tmp_path, **{"groups.dora": "{lr: 1e-4}"})
    (tmp_path / "bad.yaml").write_text("model: {path: x}\nstep: 5\n")
    with pytest.raises(TTMInputError, match=r"bad\.yaml: unknown key 'step'"):
        load_config(tmp_path / "bad.yaml")
    # a Wan folder for a config that says CogVideoX: refused before any weight loads
    config = make_config(folders["wan2.1-i2v"], tmp_path, **{"model.variant": "cogvideox-1.0-i2v"})
    with pytest.raises(TTMInputError, match=r"model\.variant: the config says cogvideox-1\.0-i2v but .* is Wan 2\.1"):
        Trainer(config, CLIPS)
    with pytest.raises(TTMInputError, match=r"masked_blocks: K = 5 but Wan 2\.1 I2V has 2 blocks"):
        Trainer(make_config(folders["wan2.1-i2v"], tmp_path, masked_blocks=5), CLIPS)
    with pytest.raises(TTMInputError, match=r"data\.size: .*learned positional embeddings"):
        Trainer(make_config(folders["cogvideox-1.0-i2v"], tmp_path, **{"data.size": "[32, 32]"}), CLIPS)


# ------------------------------------------------------------------------------- step 0
def test_step0_widened_model_with_zero_layers_is_the_stock_model(tmp_path: Path, folders: dict[str, Path]) -> None:
    trainer = Trainer(make_config(folders["wan2.1-i2v"], tmp_path), CLIPS)
    clip = trainer.encode(CLIPS[0])
    module = trainer.accelerator.unwrap_model(trainer.module)
    kwargs, _, _, plan = trainer._inputs(clip, torch.Generator().manual_seed(0), u=0.5, dropout=False)
    assert plan is not None and kwargs["hidden_states"].shape[1] == 36 + 16
    with torch.no_grad():
        with masked_attention(trainer.pipeline.transformer, plan, trainer.layers) as state:
            ours = module(**kwargs)
        assert sum(state.calls.values()) == 2  # masked self + masked cross in block 0
        with trainer.stock_model() as stock:
            reference = stock(**{**kwargs, "hidden_states": kwargs["hidden_states"][:, :36]})[0]
    assert torch.equal(ours, reference)


# ------------------------------------------------------------------------------- overfit
@pytest.mark.slow
@pytest.mark.parametrize("key", ["wan2.1-i2v", "wan2.2-ti2v-5b", "cogvideox-1.0-i2v"])
def test_overfit_four_clips(tmp_path: Path, folders: dict[str, Path], wide_wan21: Path, key: str) -> None:
    """Loss on the 4 clips' own (fixed) noise and timesteps falls by at least half."""
    fast = "{lr: 5e-3}"
    folder = wide_wan21 if key == "wan2.1-i2v" else folders[key]
    config = make_config(folder, tmp_path, steps=25, **{"data.batch_size": 4, "objective.fixed_noise": "true",
                                                              "groups.layers": fast, "groups.patch": fast,
                                                              "groups.full": fast})
    trainer = Trainer(config, CLIPS)
    before = trainer.fixed_loss(CLIPS, levels=None)
    result = trainer.train()
    after = trainer.fixed_loss(CLIPS, levels=None)
    assert result.step == 25 and result.losses[0] == pytest.approx(before, rel=1e-5)
    logging.getLogger(__name__).info("overfit %s: fixed-noise loss %.4f -> %.4f (%.3fx)", key, before, after,
                                     after / before)
    assert after <= 0.5 * before, (key, before, after)


# ------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_is_bit_identical_and_checkpoints_drive_the_stock_pipeline(tmp_path: Path,
                                                                         folders: dict[str, Path]) -> None:
    folder = folders["wan2.1-i2v"]
    changes = {"checkpoint.every": 2, "dropout.text": 0.3, "dropout.trajectory": 0.3}
    whole = Trainer(make_config(folder, tmp_path / "a", **changes), CLIPS)
    whole.train()
    first = Trainer(make_config(folder, tmp_path / "b", **changes), CLIPS)
    assert first.train(max_steps=2).checkpoint == tmp_path / "b" / "checkpoints" / "step-0000002"
    resumed = Trainer(make_config(folder, tmp_path / "b", **changes), CLIPS)
    result = resumed.train(resume="latest")
    assert result.step == 4
    a, b = whole.trained_tensors(), resumed.trained_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    new_channels = a["model.patch_embedding.weight"][:, 36:]
    assert not torch.equal(new_channels, torch.zeros_like(new_channels))

    # the checkpoint on disk is what the trainer holds, and drives the STOCK pipeline (trained_denoiser)
    weights = load_trained(tmp_path / "a" / "checkpoints" / "step-0000004" / "ttm.safetensors")
    assert weights.config.step == 4 and weights.config.num_blocks == 1 and weights.config.condition_channels == 16
    assert all(torch.equal(weights.tensors[k], a[k]) for k in a)
    trained = render(whole, weights, CLIPS[0], steps=2, cfg=1.0)
    zero = Trainer(make_config(folder, tmp_path / "c"), CLIPS)
    untrained = load_trained(zero.save_checkpoint() / "ttm.safetensors")
    at_zero = render(zero, untrained, CLIPS[0], steps=2, cfg=1.0)
    with zero.stock_model():
        from ttm_core.stage2.diffusers.run import _pil

        stock = zero.pipeline(image=_pil(CLIPS[0].frames[0]), prompt_embeds=zero.encode(CLIPS[0]).prompt,
                              height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=2, guidance_scale=1.0,
                              generator=torch.Generator("cpu").manual_seed(0), output_type="pt",
                              max_sequence_length=512).frames[0]
    stock = stock.permute(0, 2, 3, 1).float().clamp(0, 1)
    assert trained.shape == stock.shape == (FRAMES, SIZE, SIZE, 3)
    assert torch.equal(at_zero, stock)  # zero-init checkpoint = the stock model, through the pipeline
    assert (trained - stock).abs().max() > 1e-3  # trained checkpoint changes the output

    # resuming with another K / base: refused naming the file and the fix
    other = Trainer(make_config(folder, tmp_path / "b", masked_blocks=2), CLIPS)
    with pytest.raises(TTMInputError, match=r"--resume: .*step-0000004.*masked_blocks \(K\) 1.*has 2"):
        other.train(resume="latest")
    with pytest.raises(TTMInputError, match=r"--resume: .* is not a ttm-train checkpoint folder"):
        other.train(resume=str(tmp_path))


def test_trained_denoiser_refuses_a_checkpoint_of_another_base(tmp_path: Path, folders: dict[str, Path]) -> None:
    trainer = Trainer(make_config(folders["wan2.1-i2v"], tmp_path), CLIPS)
    weights = load_trained(trainer.save_checkpoint() / "ttm.safetensors")
    cog = Trainer(make_config(folders["cogvideox-1.0-i2v"], tmp_path / "cog"), CLIPS)
    with cog.stock_model() as model, pytest.raises(TTMInputError, match=r"checkpoint: .* was trained on wan"):
        with trained_denoiser(model, weights, torch.zeros(1, 16, 3, 8, 8)):
            pass


# ------------------------------------------------------------------------------- 2 processes
CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.core.test_train_stage2 import CLIPS, make_config
from ttm_core.train.trainer import Trainer
from pathlib import Path
trainer = Trainer(make_config(Path({folder!r}), Path({out!r}), **{changes!r}), CLIPS)
trainer.train()
tensors = trainer.trained_tensors()
if trainer.accelerator.is_main_process:
    torch.save(tensors, {result!r})
"""


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process_with_the_doubled_batch(tmp_path: Path,
                                                                          folders: dict[str, Path]) -> None:
    folder = folders["wan2.1-i2v"]
    changes = {"steps": 3, "dropout.text": 0.3, "dropout.trajectory": 0.3}
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), folder=str(folder), out=str(tmp_path / "two"), changes=changes,
                                   result=str(tmp_path / "two.pt")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",  # accelerate launch
               str(ROOT / "configs" / "train" / "cpu_gloo_2proc.yaml"), str(script)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt")
    one = Trainer(make_config(folder, tmp_path / "one", **{**changes, "data.batch_size": 4}), CLIPS)
    one.train()
    single = one.trained_tensors()
    assert two.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(two[key], single[key], rtol=1e-4, atol=1e-6)
