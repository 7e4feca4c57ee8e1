"""Masked processors in full forwards of tiny real models, for every family.

* masking disabled, strength 0, new layers at init: the stock output, bit for bit (max abs diff 0);
* one object covering everything (masked self at strength 1): the stock output up to fp32
  round-off (the grouped path permutes the keys, so sums run in another order; <= 1e-5);
* processors with the grouped kernels == the same processors with the naive dense-mask
  reference (fp32, <= 1e-5);
* isolation, local prompts acting only inside their boxes, strength blending.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

import ttm_core.stage2.families.cogvideox as cogvideox_module
import ttm_core.stage2.families.unet as unet_module
import ttm_core.stage2.families.wan as wan_module
from attention_cases import Case, local_prompts, make_case, one_thread  # noqa: F401 - autouse fixture
from ttm_core.stage2.attention.install import masked_attention
from ttm_core.stage2.attention.kernels import naive_masked_attention
from ttm_core.stage2.attention.layers import MaskedLayers
from ttm_core.stage2.attention.state import MaskedAttentionPlan
from ttm_core.stage2.families import masked_layers, sites
from ttm_core.stage2.settings import MaskedAttention

FAMILIES = ["wan_i2v", "wan_ti2v", "cog10", "cog15", "i2vgen", "svd"]
TEXT_FAMILIES = ["wan_i2v", "wan_ti2v", "cog10", "cog15", "i2vgen"]


@functools.cache
def case(name: str) -> Case:
    return make_case(name)


def plan_for(c: Case, self_strength: float = 1.0, cross_strength: float = 1.0, mode: str = "training_free",
             prompts: tuple[torch.Tensor, ...] | None = None, grid=None) -> MaskedAttentionPlan:
    if prompts is None:
        prompts = local_prompts(c.text_width) if c.text_width else ()
    config = MaskedAttention(mode=mode, num_blocks=len(sites(c.model)), self_strength=self_strength,
                                   cross_strength=cross_strength)
    return MaskedAttentionPlan(grid if grid is not None else c.grid, prompts, config)


def run(c: Case, latents: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return c.run(c.model, c.latents if latents is None else latents)


def run_masked(c: Case, plan: MaskedAttentionPlan, latents: torch.Tensor | None = None,
               layers: MaskedLayers | None = None, **state_fields) -> tuple[torch.Tensor, dict]:
    with masked_attention(c.model, plan, layers) as state:
        for key, value in state_fields.items():
            setattr(state, key, value)
        out = run(c, latents)
    return out, dict(state.calls)


@contextmanager
def recording(model: torch.nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Outputs of the named attention modules during the block (first element of tuple outputs)."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(module, args, output, name=name):
            seen[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", FAMILIES)
def test_disabled_strength_zero_and_fresh_new_layers_are_exactly_stock(name: str) -> None:
    c = case(name)
    stock = run(c)
    off, calls = run_masked(c, plan_for(c), enabled=False)
    assert diff(off, stock) == 0.0 and not calls
    zero, calls = run_masked(c, plan_for(c, 0.0, 0.0))
    assert diff(zero, stock) == 0.0 and not calls
    layers = masked_layers(c.model, len(sites(c.model)))
    fresh, calls = run_masked(c, plan_for(c, mode="new_layers"), layers=layers)
    assert calls, "the new layers never ran"
    assert diff(fresh, stock) == 0.0  # zero-initialised output projections: an untrained model is unchanged


@pytest.mark.parametrize("name", FAMILIES)
def test_one_object_covering_everything_equals_stock_up_to_round_off(name: str) -> None:
    c = case(name)
    labels = torch.ones(c.num_frames, c.height, c.width, dtype=torch.uint8)
    everything = make_case(name, labels=labels).grid
    assert set(everything.ids.tolist()) == {1}
    stock = run(c)
    out, calls = run_masked(c, plan_for(c, 1.0, 0.0, prompts=(), grid=everything))
    assert calls, "the masked path never ran"
    assert diff(out, stock) <= 1e-5, f"max abs diff {diff(out, stock):.3g} (fp32 round-off expected)"


def _naive_partitioned(q, k, v, partition, attention_fn=None, backend="auto"):
    return naive_masked_attention(q, k, v, partition.dense_mask())


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("strengths", [(1.0, 1.0), (0.6, 0.3)])
def test_grouped_processors_equal_the_naive_reference(name: str, strengths: tuple[float, float],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    c = case(name)
    plan = plan_for(c, *strengths)
    grouped, _ = run_masked(c, plan)
    for module in (wan_module, cogvideox_module, unet_module):  # every family's processors
        monkeypatch.setattr(module, "partitioned_attention", _naive_partitioned)
    naive, _ = run_masked(c, plan)
    assert diff(grouped, naive) <= 1e-5, f"max abs diff {diff(grouped, naive):.3g}"
    assert diff(grouped, run(c)) > 1e-4  # and masking does change the output


def _perturb_object(c: Case, object_id: int) -> torch.Tensor:
    """Latents with every latent cell of ``object_id``'s tokens changed (DiTs: patch cells)."""
    grid = c.grid
    tt, ht, wt = grid.shape
    ids = grid.ids.view(tt, ht, wt)
    pt, ph, pw = grid.geometry.patch
    cells = (ids == object_id).repeat_interleave(pt, 0).repeat_interleave(ph, 1).repeat_interleave(pw, 2)
    noise = torch.randn(c.latents.shape, generator=torch.Generator().manual_seed(9))
    moved = c.latents.clone()
    if c.name.startswith("wan"):  # [B, C, T, H, W]
        mask = cells[None, None]
    else:  # CogVideoX [B, T, C, H, W]; the 1.5 padded latent frame is part of token frame 0
        mask = cells[None, :, None]
    return torch.where(mask, moved + 3.0 * noise, moved)


@pytest.mark.parametrize("name", ["wan_i2v", "wan_ti2v"])
def test_wan_isolation_in_every_block_of_a_full_forward(name: str) -> None:
    """Masked self at strength 1 in every block: object 2's latents never reach other tokens.

    Wan's patch embedding, norms, RoPE, text/image cross-attention and FFN act per token, so
    with every self-attention masked the only path between objects is closed: the attention
    outputs of every non-object-2 token are identical in every block.
    """
    c = case(name)
    plan = plan_for(c, 1.0, 1.0)
    names = [n for s in sites(c.model) for n in (s.self_attn, s.cross_attn)]
    with masked_attention(c.model, plan), recording(c.model, names) as before:
        run(c)
    before = dict(before)
    with masked_attention(c.model, plan), recording(c.model, names) as after:
        run(c, _perturb_object(c, 2))
    others = c.grid.ids != 2
    for n in names:
        assert diff(after[n][:, others], before[n][:, others]) <= 1e-6, n
        assert diff(after[n][:, ~others], before[n][:, ~others]) > 1e-4, n


@pytest.mark.parametrize("name", ["cog10", "cog15"])
def test_cogvideox_isolation_in_the_first_block(name: str) -> None:
    """CogVideoX: masked joint attention keeps object 1 and background blind to object 2 in a block.

    Its text tokens are updated from ALL video tokens in every block (the backbone's own joint
    design, kept so text rows stay stock), so from the second block on object 2 reaches object 1
    through the text stream; the first block shows the masked attention itself is isolating.
    """
    c = case(name)
    plan = plan_for(c, 1.0, 1.0)
    first = sites(c.model)[0].self_attn
    with masked_attention(c.model, plan), recording(c.model, [first]) as before:
        run(c)
    before = dict(before)
    with masked_attention(c.model, plan), recording(c.model, [first]) as after:
        run(c, _perturb_object(c, 2))
    others = c.grid.ids != 2
    assert diff(after[first][:, others], before[first][:, others]) <= 1e-6
    assert diff(after[first][:, ~others], before[first][:, ~others]) > 1e-4


def _capture_inputs(c: Case, plan: MaskedAttentionPlan, names: list[str]) -> dict[str, tuple]:
    seen: dict[str, tuple] = {}
    modules = dict(c.model.named_modules())
    handles = []
    for n in names:
        def grab(module, args, kwargs, n=n):
            seen[n] = (args, dict(kwargs))
        handles.append(modules[n].register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with masked_attention(c.model, plan):
            run(c)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("name", ["i2vgen", "svd"])
def test_unet_isolation_at_every_masked_spatial_attention(name: str) -> None:
    """UNets: inputs of object 2's tokens never reach other tokens' masked self-attention outputs.

    A full UNet forward cannot isolate objects at all: GroupNorm statistics and convolutions
    couple every position before the first attention. So each masked attention is checked in
    place: its real input from a full forward, then object 2's rows perturbed.
    """
    c = case(name)
    plan = plan_for(c, 1.0, 0.0)
    names = [s.self_attn for s in sites(c.model)]
    inputs = _capture_inputs(c, plan, names)
    modules = dict(c.model.named_modules())
    frames = c.grid.shape[0]
    checked = set()
    with masked_attention(c.model, plan):
        for n in names:
            args, kwargs = inputs[n]
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            level = c.grid.level_for_tokens(hidden.shape[1])
            obj2 = (level.ids == 2).view(frames, -1).repeat(hidden.shape[0] // frames, 1)  # [(b f), n]
            if not obj2.any():
                continue  # object 2 is out-voted by background at the coarsest level
            checked.add(level.level)
            moved = hidden.clone()
            moved[obj2] += 3.0 * torch.randn_like(moved[obj2])
            with torch.no_grad():
                out = modules[n](hidden)
                out_moved = modules[n](moved)
            assert diff(out_moved[~obj2], out[~obj2]) <= 1e-6, n
            assert diff(out_moved[obj2], out[obj2]) > 1e-4, n
    assert checked >= {0, 1, 2}


def _first_cross_name(c: Case) -> str:
    site = sites(c.model)[0]
    return site.cross_attn or site.self_attn  # CogVideoX: the joint attention


@pytest.mark.parametrize("name", TEXT_FAMILIES)
@pytest.mark.parametrize("mode", ["training_free", "new_layers"])
def test_a_local_prompt_acts_only_inside_its_objects_boxes(name: str, mode: str) -> None:
    c = case(name)
    prompts = local_prompts(c.text_width)
    changed = (prompts[0] + 2.0 * torch.randn_like(prompts[0]), prompts[1])
    layers = None
    if mode == "new_layers":
        layers = masked_layers(c.model, len(sites(c.model)))
        with torch.no_grad():  # a "trained" checkpoint: non-zero output projections
            for p in layers.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    target = _first_cross_name(c)
    outputs = []
    for ps in (prompts, changed):
        with masked_attention(c.model, plan_for(c, 0.0, 1.0, mode=mode, prompts=ps), layers), \
                recording(c.model, [target]) as seen:
            run(c)
        outputs.append(seen[target])
    with recording(c.model, [target]) as stock:
        run(c)
    grid = c.grid
    in_box = grid.in_box()  # [N, L] at the finest level (the first UNet site is at level 0)
    delta = (outputs[1] - outputs[0]).abs()
    if name == "i2vgen":  # [(b f), n, C] -> token order (f, n)
        delta = delta.reshape(1, -1, delta.shape[-1])
        outside_all = ~in_box.any(dim=1)
        assert (outputs[0].reshape(1, -1, delta.shape[-1])[:, outside_all]
                - stock[target].reshape(1, -1, delta.shape[-1])[:, outside_all]).abs().max().item() <= 1e-6
    else:
        outside_all = ~in_box.any(dim=1)
        assert diff(outputs[0][:, outside_all], stock[target][:, outside_all]) <= 1e-6
    assert delta[:, ~in_box[:, 0]].max().item() == 0.0  # outside object 1's boxes: untouched
    assert delta[:, in_box[:, 0]].max().item() > 1e-4  # inside: the new prompt shows


def _record_first(c: Case, plan: MaskedAttentionPlan, name: str) -> torch.Tensor:
    with masked_attention(c.model, plan), recording(c.model, [name]) as seen:
        run(c)
    return seen[name]


@pytest.mark.parametrize("name", ["wan_i2v", "i2vgen"])
def test_training_free_strength_blends_linearly(name: str) -> None:
    c = case(name)
    site = sites(c.model)[0]
    for attn, strengths in ((site.self_attn, lambda s: (s, 0.0)), (site.cross_attn, lambda s: (0.0, s))):
        out = {s: _record_first(c, plan_for(c, *strengths(s)), attn) for s in (0.0, 0.5, 1.0)}
        assert diff(out[0.5], 0.5 * (out[0.0] + out[1.0])) <= 1e-5
        assert diff(out[1.0], out[0.0]) > 1e-4


@pytest.mark.parametrize("name", ["cog10"])
def test_cogvideox_strengths_interpolate_bilinearly_between_the_corners(name: str) -> None:
    c = case(name)
    first = sites(c.model)[0].self_attn
    corner = {(a, b): _record_first(c, plan_for(c, a, b), first) for a in (0.0, 1.0) for b in (0.0, 1.0)}
    a, b = 0.3, 0.7
    mixed = _record_first(c, plan_for(c, a, b), first)
    expected = ((1 - a) * (1 - b) * corner[0.0, 0.0] + a * (1 - b) * corner[1.0, 0.0]
                + (1 - a) * b * corner[0.0, 1.0] + a * b * corner[1.0, 1.0])
    assert diff(mixed, expected) <= 1e-5
    assert len({round(v.sum().item(), 4) for v in corner.values()}) == 4  # four different corners


@pytest.mark.parametrize("name", ["wan_ti2v", "cog10", "i2vgen"])
def test_cross_rows_limit_local_prompts_to_the_conditional_half(name: str) -> None:
    c = make_case(name)
    batch = torch.cat([c.latents, c.latents])  # a CFG-style batch: [uncond ; cond] rows

    def run2(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return c.run(c.model, latents)

    with masked_attention(c.model, plan_for(c, 1.0, 1.0)) as state:
        state.cross_rows = (False, True)
        mixed = run2(batch)
    with masked_attention(c.model, plan_for(c, 1.0, 0.0)):
        self_only = run2(batch)
    with masked_attention(c.model, plan_for(c, 1.0, 1.0)):
        both = run2(batch)
    assert diff(mixed[:1], self_only[:1]) <= 1e-5
    assert diff(mixed[1:], both[1:]) <= 1e-5
    assert diff(both[:1], self_only[:1]) > 1e-4
    # separate unconditional calls (diffusers' Wan pipelines): no row takes the local prompts
    with masked_attention(c.model, plan_for(c, 1.0, 1.0)) as state:
        state.cross_rows = (False,)
        uncond = run2(c.latents)
    assert diff(uncond, self_only[:1]) <= 1e-5


def test_new_layers_have_their_own_state_dict_and_train() -> None:
    c = case("wan_i2v")
    k = len(sites(c.model))
    layers = masked_layers(c.model, k)
    keys = set(layers.state_dict())
    assert "blocks.0.masked_self.to_q.weight" in keys and "blocks.0.masked_cross.to_out.weight" in keys
    assert all(key.startswith(tuple(f"blocks.{i}." for i in range(k))) for key in keys)
    model_keys = set(c.model.state_dict())
    plan = plan_for(c, mode="new_layers")
    with masked_attention(c.model, plan, layers):
        assert set(c.model.state_dict()) == model_keys  # the base model's checkpoint layout is untouched
        for p in c.model.parameters():
            p.requires_grad_(False)
        c.run(c.model, c.latents).square().mean().backward()
    for p in c.model.parameters():
        p.requires_grad_(True)
    assert layers.blocks[0].masked_self.to_out.weight.grad.abs().sum() > 0
    assert layers.blocks[0].masked_cross.to_out.weight.grad.abs().sum() > 0
    # a trained copy round-trips through its own state dict
    clone = masked_layers(c.model, k)
    clone.load_state_dict(layers.state_dict())
