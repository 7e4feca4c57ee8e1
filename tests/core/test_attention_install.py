"""The scoped installer: originals restored on exit, on error, on interrupt; both Wan 2.2 experts; checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attention_cases import local_prompts, make_case, one_thread, tiny_wan  # noqa: F401 - autouse fixture
from ttm_core.errors import TTMInputError
from ttm_core.stage2.attention.grids import token_grid_from_labels
from ttm_core.stage2.attention.install import masked_attention
from ttm_core.stage2.attention.state import MaskedAttentionPlan
from ttm_core.stage2.families import WAN22_TI2V, default_num_blocks, masked_layers, sites
from ttm_core.stage2.families.wan import WanCrossProcessor, WanSelfProcessor
from ttm_core.stage2.settings import MaskedAttention


def _snapshot(model: torch.nn.Module) -> dict[str, object]:
    return dict(model.attn_processors)


def _assert_restored(model: torch.nn.Module, saved: dict[str, object]) -> None:
    now = model.attn_processors
    assert now.keys() == saved.keys()
    assert all(now[key] is saved[key] for key in saved), "a processor object was not restored"


def _plan(case, **config) -> MaskedAttentionPlan:
    prompts = local_prompts(case.text_width) if case.text_width else ()
    return MaskedAttentionPlan(case.grid, prompts, MaskedAttention(**config))


@pytest.mark.parametrize("name", ["wan_i2v", "cog15", "i2vgen", "svd"])
def test_processors_are_installed_on_the_first_k_blocks_and_restored(name: str) -> None:
    case = make_case(name)
    saved = _snapshot(case.model)
    k = 1
    with masked_attention(case.model, _plan(case, num_blocks=k)) as state:
        inside = case.model.attn_processors
        changed = {key for key in saved if inside[key] is not saved[key]}
        first = sites(case.model)[0]
        expected = {f"{first.self_attn}.processor"} | ({f"{first.cross_attn}.processor"} if first.cross_attn else set())
        assert changed == expected
        with torch.no_grad():
            case.run(case.model, case.latents)
        assert set(state.calls) == {f"model.{key.removesuffix('.processor')}" for key in expected}
    _assert_restored(case.model, saved)
    hooks = [m for m in case.model.modules() if m._forward_pre_hooks]
    assert not hooks, "a forward pre-hook was left behind"


def test_restored_after_an_exception_and_after_keyboard_interrupt() -> None:
    case = make_case("cog10")
    saved = _snapshot(case.model)
    with pytest.raises(RuntimeError, match="boom"):
        with masked_attention(case.model, _plan(case)):
            raise RuntimeError("boom")
    _assert_restored(case.model, saved)
    with pytest.raises(KeyboardInterrupt):
        with masked_attention(case.model, _plan(case)):
            with torch.no_grad():
                case.run(case.model, case.latents)
            raise KeyboardInterrupt
    _assert_restored(case.model, saved)
    assert not any(m._forward_pre_hooks for m in case.model.modules())


def test_both_experts_of_wan22_a14b() -> None:
    case = make_case("wan_i2v")
    high, low = tiny_wan(seed=1), tiny_wan(seed=2)  # transformer (high noise), transformer_2 (low noise)
    pipe = SimpleNamespace(transformer=high, transformer_2=low, vae=None)
    saved = (_snapshot(high), _snapshot(low))
    stock = [case.run(m, case.latents).detach() for m in (high, low)]
    with masked_attention(pipe, _plan(case, num_blocks=2)) as state:
        for model in (high, low):
            procs = model.attn_processors
            assert isinstance(procs["blocks.1.attn1.processor"], WanSelfProcessor)
            assert isinstance(procs["blocks.1.attn2.processor"], WanCrossProcessor)
            assert not isinstance(procs["blocks.2.attn1.processor"], WanSelfProcessor)
        with torch.no_grad():
            masked = [case.run(m, case.latents) for m in (high, low)]
    assert {n.split(".")[0] for n in state.calls} == {"transformer", "transformer_2"}
    assert all((m - s).abs().max() > 1e-4 for m, s in zip(masked, stock))
    _assert_restored(high, saved[0])
    _assert_restored(low, saved[1])
    # new layers: one set per expert (each expert is trained separately)
    layers = [masked_layers(high, 2), masked_layers(low, 2)]
    with masked_attention(pipe, _plan(case, num_blocks=2, mode="new_layers"), layers):
        with torch.no_grad():
            fresh = [case.run(m, case.latents) for m in (high, low)]
    assert all((f - s).abs().max() == 0 for f, s in zip(fresh, stock))
    with pytest.raises(TTMInputError, match="one MaskedLayers per denoiser"):
        with masked_attention(pipe, _plan(case, num_blocks=2, mode="new_layers"), layers[0]):
            pass


def test_a_failed_install_leaves_every_model_as_it_was() -> None:
    case = make_case("wan_i2v")
    other = make_case("wan_ti2v").model  # its geometry differs from the plan's grid
    saved = (_snapshot(case.model), _snapshot(other))
    with pytest.raises(TTMInputError, match="token grid was built for"):
        with masked_attention([case.model, other], _plan(case)):
            pass
    _assert_restored(case.model, saved[0])
    _assert_restored(other, saved[1])


def test_bad_plans_are_user_errors() -> None:
    wan = make_case("wan_i2v")
    with pytest.raises(TTMInputError, match="has 3 attention blocks"):
        with masked_attention(wan.model, _plan(wan, num_blocks=4)):
            pass
    with pytest.raises(TTMInputError, match="needs MaskedLayers"):
        with masked_attention(wan.model, _plan(wan, mode="new_layers")):
            pass
    with pytest.raises(TTMInputError, match="reads 32-wide"):
        with masked_attention(wan.model, MaskedAttentionPlan(wan.grid, local_prompts(8))):
            pass
    with pytest.raises(TTMInputError, match="2 local prompts for 3 objects"):
        grid3 = token_grid_from_labels(torch.zeros(9, 96, 128, dtype=torch.uint8), (1, 2, 3), wan.grid.geometry, 9,
                                       96, 128)
        MaskedAttentionPlan(grid3, local_prompts(32))
    svd = make_case("svd")
    with pytest.raises(TTMInputError, match="takes no prompt"):
        with masked_attention(svd.model, MaskedAttentionPlan(svd.grid, local_prompts(12))):
            pass
    for bad in (dict(self_strength=1.5), dict(cross_strength=float("nan")), dict(mode="magic"),
                dict(num_blocks=-1), dict(backend="cuda")):
        with pytest.raises(TTMInputError):
            MaskedAttention(**bad)
    # a grid for another size than the model runs at: a clear error at the first masked call
    small = token_grid_from_labels(torch.zeros(9, 64, 64, dtype=torch.uint8), (1, 2), wan.grid.geometry, 9, 64, 64)
    with masked_attention(wan.model, MaskedAttentionPlan(small)):
        with pytest.raises(ValueError, match="video tokens but the plan's grid"):
            wan.run(wan.model, wan.latents)
    with pytest.raises(TTMInputError, match="not a supported video model"):
        with masked_attention(torch.nn.Linear(2, 2), MaskedAttentionPlan(wan.grid)):
            pass
    assert WAN22_TI2V.pixels_per_token == (32, 32)


def test_default_k_follows_the_paper() -> None:
    assert default_num_blocks(tiny_wan(layers=40)) == 10  # DiT: K = 10 of 40
    assert default_num_blocks(make_case("i2vgen").model) == 6  # UNet: the encoder's 6 spatial blocks


def test_disabling_the_state_inside_the_block_gives_stock_output() -> None:
    case = make_case("wan_ti2v")
    with torch.no_grad():
        stock = case.run(case.model, case.latents)
        with masked_attention(case.model, _plan(case)) as state:
            masked = case.run(case.model, case.latents)
            state.enabled = False
            off = case.run(case.model, case.latents)
    assert (masked - stock).abs().max() > 1e-4
    assert (off - stock).abs().max() == 0
