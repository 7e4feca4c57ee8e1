"""Tensor-level checks of the native Wan patch, inside a real ComfyUI (run by ComfyUI's Python).

tests/test_native_patch.py runs this script once; it loads the tiny native Wan fixtures with
ComfyUI's own loader functions, builds conditioning with ComfyUI's own WanImageToVideo,
samples with ComfyUI's own common_ksampler, imports the pack the way ComfyUI does (as a
package from its folder) and writes one JSON result per check. The checks look at tensors
the HTTP API cannot show: attention outputs, latents at every model call, model options.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOG = logging.getLogger("native_patch_checks")
WIDTH, HEIGHT, FRAMES = 256, 192, 9


class Setup:
    """Models, conditioning and a trajectory, loaded once for every check."""

    def __init__(self, comfy_dir: str, pack_dir: str, files: dict[str, str]) -> None:
        sys.path.insert(0, comfy_dir)
        from comfy.cli_args import args

        args.cpu = True
        import comfy.model_management
        import comfy.sd
        import comfy.utils
        import nodes as comfy_nodes  # ComfyUI's own
        import numpy as np
        import torch
        from comfy_extras.nodes_wan import WanImageToVideo
        from PIL import Image

        spec = importlib.util.spec_from_file_location("ttm_pack", Path(pack_dir) / "__init__.py",
                                                      submodule_search_locations=[pack_dir])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["ttm_pack"] = pack
        spec.loader.exec_module(pack)
        from ttm_pack.native import patch as native_patch
        from ttm_pack.native import wan as native_wan
        from ttm_pack.ttm_core import types
        from ttm_pack.ttm_core.motion import paths, poses, render
        from ttm_pack.ttm_core.stage2 import guidance, settings

        self.torch, self.comfy_nodes, self.guidance, self.stage2 = torch, comfy_nodes, guidance, settings
        self.native_patch, self.native_wan = native_patch, native_wan
        self.model_management = comfy.model_management
        self.model = comfy.sd.load_diffusion_model(files["wan21_i2v"])
        self.ti2v = comfy.sd.load_diffusion_model(files["wan22_ti2v"])
        self.clip = comfy.sd.load_clip([files["clip_l"]], clip_type=comfy.sd.CLIPType.SD3)
        self.vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(files["wan21_vae"]))
        examples = Path(pack_dir) / "examples"

        def load(name: str, mode: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(Image.open(examples / name).convert(mode), dtype=np.float32) / 255.0)

        self.image = load("ttm_coins.png", "RGB")
        masks = torch.stack([load(f"ttm_coins_mask_{side}.png", "L") for side in ("left", "right")])
        prompts = types.Prompts("two coins slide", "two coins slide", (
            types.ObjectPrompt("left coin", "a small silver coin"), types.ObjectPrompt("big coin", "a large coin")))
        self.objects = types.Objects(prompts, masks)
        self.types, self.poses, self.render, self.paths = types, poses, render, paths
        self.trajectory = self.make_trajectory({"units": "normalized", "objects": {
            "left coin": {"keyframes": [{"t": 1, "x": 0.45, "y": 0.45}]},
            "big coin": {"keyframes": [{"t": 1, "x": 0.5, "y": 0.75}]}}})
        positive = self.clip.encode_from_tokens_scheduled(self.clip.tokenize("two coins slide on a table"))
        negative = self.clip.encode_from_tokens_scheduled(self.clip.tokenize("blurry"))
        self.positive, self.negative, self.latent = WanImageToVideo.execute(
            positive, negative, self.vae, WIDTH, HEIGHT, FRAMES, 1, start_image=self.image[None]).args

    def make_trajectory(self, spec: dict) -> Any:
        centroids = self.poses.mask_centroids(self.objects.masks)
        object_paths = self.paths.parse_paths(spec, self.objects.prompts, self.objects.size, FRAMES, centroids)
        return self.render.trajectory_from_paths(self.objects, object_paths, FRAMES, 16.0)

    def settings(self, clock: Any = None, **masking: Any) -> Any:
        base = {"num_blocks": 2, "self_strength": 1.0, "cross_strength": 1.0}
        base.update(masking)
        return self.stage2.Stage2Settings(self.stage2.MaskedAttention(**base), clock)

    def patch(self, settings: Any, trajectory: Any = None, model: Any = None) -> tuple[Any, Any]:
        patched, _, state = self.native_patch.patch_wan(model or self.model, self.clip, trajectory or self.trajectory,
                                                        settings, self.vae, self.image, self.latent["samples"])
        return patched, state

    def sample_advanced(self, model: Any, start: int, end: int, add_noise: bool, latent: Any, steps: int = 4,
                        seed: int = 3) -> Any:
        """KSamplerAdvanced's call: part of a schedule, with or without its own noise."""
        return self.comfy_nodes.common_ksampler(model, seed, steps, 3.0, "euler", "simple", self.positive,
                                                self.negative, latent, disable_noise=not add_noise, start_step=start,
                                                last_step=end, force_full_denoise=end >= steps)[0]

    def sample(self, model: Any, seed: int = 3, steps: int = 3) -> Any:
        return self.comfy_nodes.common_ksampler(model, seed, steps, 3.0, "euler", "simple", self.positive,
                                                self.negative, self.latent)[0]["samples"]


def diff(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).abs().max())


def check_strength_zero_is_stock(s: Setup) -> dict:
    stock = s.sample(s.model)
    zero, _ = s.patch(s.settings(self_strength=0.0, cross_strength=0.0))
    masked, _ = s.patch(s.settings())
    return {"zero_vs_stock": diff(s.sample(zero), stock), "masked_vs_stock": diff(s.sample(masked), stock),
            "input_model_untouched": "optimized_attention_override" not in
            s.model.model_options.get("transformer_options", {})}


def isolation(s: Setup, model_patcher: Any, channels: int, latent_shape: tuple[int, int, int]) -> dict:
    """Perturb object 2's latent cells; return how much object 1's self-attention output moves per block."""
    torch = s.torch
    patched, _, state = s.native_patch.patch_wan(model_patcher, s.clip, s.trajectory, s.settings(num_blocks=2))
    s.model_management.load_models_gpu([patched])
    model = patched.model.diffusion_model
    frames, height, width = latent_shape
    grid = state.grid_for(frames, height, width)
    ids = grid.ids
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, frames, height, width, generator=generator)
    cells = ids.view(frames, height // 2, width // 2) == 2
    mask = cells.repeat_interleave(2, 1).repeat_interleave(2, 2)  # token cells -> latent cells
    perturbed = x.clone()
    noise_channels = 16 if channels == 36 else channels  # Wan 2.1 I2V: 16 noisy + 20 concat channels
    perturbed[:, :noise_channels, mask] += torch.randn(1, noise_channels, int(mask.sum()), generator=generator)
    context = s.positive[0][0]
    outputs: dict[int, list] = {i: [] for i in range(len(model.blocks))}
    hooks = [block.self_attn.register_forward_hook(lambda _m, _i, out, i=i: outputs[i].append(out.detach().clone()))
             for i, block in enumerate(model.blocks)]
    # What ComfyUI's sampling does (sampler_helpers merges the patcher's wrappers into the options).
    options = dict(patched.model_options["transformer_options"], wrappers=patched.wrappers,
                   sigmas=torch.tensor([0.7]), cond_or_uncond=[0])
    try:
        with torch.no_grad():
            for latent_x in (x, perturbed):
                model(latent_x, torch.tensor([700.0]), context, transformer_options=options)
    finally:
        for hook in hooks:
            hook.remove()
    first = ids == 1
    per_block = {i: diff(outputs[i][0][0, first], outputs[i][1][0, first]) for i in outputs}
    return {"object1_change_per_block": per_block, "masked_blocks": state.num_blocks,
            "object2_tokens": int((ids == 2).sum()), "object1_tokens": int(first.sum()),
            "grid_tokens": grid.num_tokens}


def check_isolation(s: Setup) -> dict:
    """Wan 2.1 I2V, 16 px per token, on the sampler's latent size."""
    return isolation(s, s.model, 36, tuple(s.latent["samples"].shape[2:]))


def check_isolation_ti2v(s: Setup) -> dict:
    """Wan 2.2 TI2V-5B, 48 channels, 32 px per token: a 512x384 video, 9 frames."""
    return isolation(s, s.ti2v, 48, (3, 24, 32))


def check_dual_clock(s: Setup) -> dict:
    guidance = s.guidance
    patched, state = s.patch(s.settings(clock=guidance.DualClock(0.5, 0.25)))
    seen: list[tuple[float, Any]] = []
    noises: list[Any] = []

    def spy(executor: Callable, x: Any, t: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((float(t.max()), x.detach().clone()))
        return executor(x, t, *args, **kwargs)

    def noise_spy(executor: Callable, guider: Any, sigmas: Any, extra_args: Any, callback: Any, noise: Any,
                  *args: Any) -> Any:
        noises.append(noise.detach().clone())
        return executor(guider, sigmas, extra_args, callback, noise, *args)

    import comfy.patcher_extension
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "spy", spy)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "spy", noise_spy)
    s.sample(patched, steps=4)
    reference = state.guide.reference
    fg = reference.foreground
    inside, outside = fg >= 1.0, fg <= 0.0
    steps = []
    for sigma, x in seen:
        noise = noises[0].repeat(x.shape[0] // noises[0].shape[0], 1, 1, 1, 1)
        noised = guidance.noise_to(reference.latent, noise, sigma)
        steps.append({"sigma": sigma, "inside": diff(x[:, :, inside], noised[:, :, inside]),
                      "outside": diff(x[:, :, outside], noised[:, :, outside])})
    return {"steps": steps, "inside_cells": int(inside.sum()), "outside_cells": int(outside.sum())}


def describe(value: Any) -> Any:
    """A comparable picture of model options: structure, types and callable identities."""
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if callable(value):
        return f"callable:{id(value)}"
    return type(value).__name__


def check_chaining_and_options(s: Setup) -> dict:
    calls = {"count": 0, "fail_at": None}

    class Stop(Exception):
        pass

    def other_pack(func: Callable, *args: Any, **kwargs: Any) -> Any:
        calls["count"] += 1
        if calls["fail_at"] is not None and calls["count"] >= calls["fail_at"]:
            raise Stop("simulated interrupt mid-run")
        return func(*args, **kwargs)

    first = s.model.clone()
    first.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = other_pack
    patched, _ = s.patch(s.settings(clock=s.guidance.DualClock(0.5, 0.25)), model=first)
    before = describe(patched.model_options)
    fresh = s.sample(patched, seed=11)
    after_run = describe(patched.model_options)
    count = calls["count"]
    calls["count"], calls["fail_at"] = 0, 30
    interrupted = False
    try:
        s.sample(patched, seed=11)
    except Stop:
        interrupted = True
    after_interrupt = describe(patched.model_options)
    calls["fail_at"] = None
    again = s.sample(patched, seed=11)
    return {"other_pack_calls": count, "options_same_after_run": before == after_run,
            "interrupted": interrupted, "options_same_after_interrupt": before == after_interrupt,
            "rerun_vs_fresh": diff(again, fresh)}


@contextmanager
def collected_logs() -> Iterator[list[str]]:
    """The pack's log messages (INFO and up) while the block runs."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("ttm_pack")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class AttentionTensorContainer:
    """Core's single-owner attention input (comfy/ldm/modules/attention.py, ComfyUI 0.31+; absent from 0.3.75):
    ``take()`` hands the tensor over once."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def peek(self) -> Any:
        if self.tensor is None:
            raise RuntimeError("attention tensor container has already been consumed")
        return self.tensor

    def take(self) -> Any:
        tensor = self.peek()
        self.tensor = None
        return tensor


def backend_override() -> Callable:
    """What core's Model Attention Backend node installs (ModelPatcher.set_model_optimized_attention, ComfyUI
    0.31+): an override that REPLACES the stored one without chaining and calls the chosen backend."""
    import comfy.ldm.modules.attention as attention

    chosen = attention.attention_pytorch

    def optimized_attention_override(_: Any, *args: Any, **kwargs: Any) -> Any:
        return chosen(*args, **kwargs)

    return optimized_attention_override


def with_override(model: Any, override: Callable) -> Any:
    clone = model.clone()
    clone.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    return clone


def inner_wrapper(s: Setup, patched: Any, make: Callable[[Callable | None], Callable]) -> Any:
    """A DIFFUSION_MODEL wrapper added after the patch's (so it runs inside it) that puts ``make(current)``
    outermost for each forward, as another pack installing its override per forward would."""
    import comfy.patcher_extension

    def wrapper(executor: Callable, x: Any, t: Any, context: Any, clip_fea: Any = None, time_dim_concat: Any = None,
                transformer_options: dict | None = None, **kwargs: Any) -> Any:
        options = dict(transformer_options or {})
        options["optimized_attention_override"] = make(options.get("optimized_attention_override"))
        return executor(x, t, context, clip_fea, time_dim_concat, options, **kwargs)

    clone = patched.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "other_pack", wrapper)
    return clone


def sparse_like(previous: Callable | None, consume_self: bool, counts: dict) -> Callable:
    """Core's Model Sparse Attention's calling convention (comfy_extras/nodes_sparse_attention.py, 0.38): it
    computes eligible self-attention itself and hands every other call to the previous override with
    ``heads`` POSITIONAL and mask / attn_precision / skip_reshape / skip_output_reshape explicit."""

    def override(func: Callable, q: Any, k: Any, v: Any, heads: int, mask: Any = None, attn_precision: Any = None,
                 skip_reshape: bool = False, skip_output_reshape: bool = False, **kwargs: Any) -> Any:
        if consume_self and k.shape[1] == q.shape[1] and not skip_reshape:
            counts["consumed"] += 1
            return func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)
        counts["passed"] += 1
        rest = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                    skip_output_reshape=skip_output_reshape, **kwargs)
        return func(q, k, v, heads, **rest) if previous is None else previous(func, q, k, v, heads, **rest)

    return override


def check_override_installed_after_ours(s: Setup) -> dict:
    """Model Attention Backend after the patch (it replaces the stored override) or before it: same output."""
    settings = s.settings()
    patched, _ = s.patch(settings)
    after = with_override(patched, backend_override())
    before, _ = s.patch(settings, model=with_override(s.model, backend_override()))
    stock = s.sample(with_override(s.model, backend_override()))
    a = s.sample(after)
    return {"after_vs_before": diff(a, s.sample(before)), "after_vs_without": diff(a, s.sample(patched)),
            "masked_vs_stock": diff(a, stock)}


def check_wrapped_qkv(s: Setup) -> dict:
    """q, k, v handed over in AttentionTensorContainers (newer ComfyUI's Wan): the same output as plain tensors."""
    patched, _ = s.patch(s.settings())
    calls = {"wrapped": 0}

    def make(ours: Callable | None) -> Callable:
        def wrapping(func: Callable, q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> Any:
            calls["wrapped"] += 1
            box = AttentionTensorContainer
            return ours(func, box(q), box(k), box(v), *args, **kwargs)
        return wrapping

    wrapped = inner_wrapper(s, patched, make)
    return {"wrapped_vs_plain": diff(s.sample(wrapped), s.sample(patched)), "wrapped_calls": calls["wrapped"]}


def check_foreign_override_passes_heads_positionally(s: Setup) -> dict:
    """A sparse-attention-style override outside ours that hands every call on with heads positional."""
    patched, _ = s.patch(s.settings())
    counts = {"consumed": 0, "passed": 0}
    outer = inner_wrapper(s, patched, lambda ours: sparse_like(ours, False, counts))
    return {"vs_patch_alone": diff(s.sample(outer), s.sample(patched)), **counts}


def check_foreign_override_consumes_self_attention(s: Setup) -> dict:
    """An override outside ours that computes self-attention itself (as Model Sparse Attention does for long
    sequences): masked attention cannot run in those blocks, so they give exactly the stock output, and the
    log says why."""
    patched, _ = s.patch(s.settings())
    counts = {"consumed": 0, "passed": 0}
    stock_counts = {"consumed": 0, "passed": 0}
    outer = inner_wrapper(s, patched, lambda ours: sparse_like(ours, True, counts))
    stock = with_override(s.model, sparse_like(None, True, stock_counts))
    with collected_logs() as records:
        out = s.sample(outer)
    return {"vs_stock": diff(out, s.sample(stock)), "vs_patch_alone": diff(out, s.sample(patched)),
            "log": records, **counts}


def check_length_mismatch(s: Setup) -> dict:
    """Extra tokens in the sequence (here ``time_dim_concat`` frames; newer ComfyUI also appends context
    latents): masked attention passes the calls through, so the output is exactly the stock one."""
    torch = s.torch
    patched, _state = s.patch(s.settings())
    s.model_management.load_models_gpu([patched])
    model = patched.model.diffusion_model
    shape = s.latent["samples"].shape
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 36, *shape[2:], generator=generator)
    extra = torch.randn(1, 36, 1, *shape[3:], generator=generator)
    context = s.positive[0][0]
    base = dict(sigmas=torch.tensor([0.7]), cond_or_uncond=[0])
    ours = dict(patched.model_options["transformer_options"], wrappers=patched.wrappers, **base)
    plain = dict(s.model.model_options.get("transformer_options", {}), **base)
    with collected_logs() as records, torch.no_grad():
        patched_out = model(x, torch.tensor([700.0]), context, time_dim_concat=extra, transformer_options=ours)
        stock_out = model(x, torch.tensor([700.0]), context, time_dim_concat=extra, transformer_options=plain)
        masked_out = model(x, torch.tensor([700.0]), context, transformer_options=ours)
        unmasked_out = model(x, torch.tensor([700.0]), context, transformer_options=plain)
    return {"vs_stock": diff(patched_out, stock_out), "without_extra_masked_vs_stock": diff(masked_out, unmasked_out),
            "log": records}


def check_no_state_between_sampler_calls(s: Setup) -> dict:
    """A patched model sampled twice gives, the second time, exactly what a fresh patch gives."""
    clock = s.guidance.DualClock(0.5, 0.25)
    patched, _ = s.patch(s.settings(clock=clock))
    first = s.sample(patched, seed=5, steps=4)
    second = s.sample(patched, seed=6, steps=4)
    fresh, _ = s.patch(s.settings(clock=clock))
    return {"second_vs_fresh": diff(second, s.sample(fresh, seed=6, steps=4)), "seeds_differ": diff(first, second)}


def check_two_passes_share_the_first_pass_noise(s: Setup) -> dict:
    """Two KSamplerAdvanced passes (the A14B experts' split, add_noise off in the second) pin with the first
    pass's noise, found by its output latent: the same video as one pass. A second pass whose latent does not
    come from a guided pass is not guided, and the log says why."""
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(s.model.get_model_object("model_sampling"), "simple", 4)
    # sigma clocks: objects pinned in steps 0-2 (step 2 is in the second pass), the background in step 0
    clock = s.guidance.DualClock(float(sigmas[2] + sigmas[3]) / 2, float(sigmas[0] + sigmas[1]) / 2, "sigma")
    patched, _ = s.patch(s.settings(clock=clock))
    one = s.sample_advanced(patched, 0, 4, True, s.latent)
    first = s.sample_advanced(patched, 0, 2, True, s.latent)
    two = s.sample_advanced(patched, 2, 4, False, first)
    other, _ = s.patch(s.settings(clock=clock))
    with collected_logs() as records:
        orphan = s.sample_advanced(other, 2, 4, False, first)
    return {"two_vs_one": diff(two["samples"], one["samples"]),
            "unguided_second_pass_vs_one": diff(orphan["samples"], one["samples"]), "log": records}



def check_bad_input(s: Setup) -> dict:
    import comfy.model_patcher
    from ttm_pack.ttm_core.errors import TTMInputError

    results = {}
    try:
        s.native_wan.check_wan(comfy.model_patcher.ModelPatcher(s.torch.nn.Linear(2, 2), "cpu", "cpu"))
        results["non_wan"] = "accepted"
    except TTMInputError as err:
        results["non_wan"] = str(err)
    with collected_logs() as records:
        gone = s.make_trajectory({"units": "normalized", "objects": {
            "left coin": {"keyframes": [{"frame": 0, "x": -0.9, "y": 0.5}]},
            "big coin": {"keyframes": [{"frame": 0, "x": 1.9, "y": 0.5}]}}})
        zero, _ = s.patch(s.settings(), trajectory=gone)
        results["no_object_vs_stock"] = diff(s.sample(zero), s.sample(s.model))
        wide_latent = s.torch.zeros(1, 16, 3, 8, 16)
        state = s.native_patch.patch_wan(s.model, s.clip, s.trajectory, s.settings(clock=s.guidance.DualClock()),
                                         s.vae, s.image, wide_latent)[2]
        results["resampled_reference_shape"] = list(state.guide.reference.latent.shape)
        batch, channels, _, height, width = s.latent["samples"].shape
        long_latent = s.torch.zeros(batch, channels, 5, height, width)  # 17 frames for the 9-frame trajectory
        state = s.native_patch.patch_wan(s.model, s.clip, s.trajectory, s.settings(clock=s.guidance.DualClock()),
                                         s.vae, s.image, long_latent)[2]
        results["longer_reference_shape"] = list(state.guide.reference.latent.shape)
        results["latent_shape"] = list(s.latent["samples"].shape)
    results["log"] = records
    return results


CHECKS = {name[len("check_"):]: fn for name, fn in dict(globals()).items() if name.startswith("check_")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--pack", required=True)
    parser.add_argument("--json-out", required=True)
    parser.add_argument("files", nargs="+", help="key=path of each fixture")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    setup = Setup(options.comfyui, options.pack, dict(item.split("=", 1) for item in options.files))
    results = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            results[name] = {"ok": True, "result": check(setup)}
        except Exception:  # noqa: BLE001 - every failure is reported to the test, with its traceback
            results[name] = {"ok": False, "error": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - started, 2)
    Path(options.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
