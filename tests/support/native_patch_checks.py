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
import traceback
from collections.abc import Callable
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
        from ttm_pack.nodes import native_wan
        from ttm_pack.ttm_core import guidance, motion, paths, types

        self.torch, self.comfy_nodes, self.native_wan, self.guidance = torch, comfy_nodes, native_wan, guidance
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
        self.types, self.motion, self.paths = types, motion, paths
        self.trajectory = self.make_trajectory({"units": "normalized", "objects": {
            "left coin": {"keyframes": [{"t": 1, "x": 0.45, "y": 0.45}]},
            "big coin": {"keyframes": [{"t": 1, "x": 0.5, "y": 0.75}]}}})
        positive = self.clip.encode_from_tokens_scheduled(self.clip.tokenize("two coins slide on a table"))
        negative = self.clip.encode_from_tokens_scheduled(self.clip.tokenize("blurry"))
        self.positive, self.negative, self.latent = WanImageToVideo.execute(
            positive, negative, self.vae, WIDTH, HEIGHT, FRAMES, 1, start_image=self.image[None]).args

    def make_trajectory(self, spec: dict) -> Any:
        centroids = self.motion.mask_centroids(self.objects.masks)
        object_paths = self.paths.parse_paths(spec, self.objects.prompts, self.objects.size, FRAMES, centroids)
        return self.motion.trajectory_from_paths(self.objects, object_paths, FRAMES, 16.0)

    def settings(self, **changes: Any) -> Any:
        base = {"num_blocks": 2, "self_strength": 1.0, "cross_strength": 1.0, "clock": None}
        base.update(changes)
        return self.native_wan.PatchSettings(**base)

    def patch(self, settings: Any, trajectory: Any = None, model: Any = None) -> tuple[Any, Any]:
        patched, _, state = self.native_wan.patch_wan(model or self.model, self.clip, trajectory or self.trajectory,
                                                      settings, self.vae, self.image, self.latent["samples"])
        return patched, state

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
    patched, _, state = s.native_wan.patch_wan(model_patcher, s.clip, s.trajectory, s.settings(num_blocks=2))
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

    def spy(executor: Callable, x: Any, t: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((float(t.max()), x.detach().clone()))
        return executor(x, t, *args, **kwargs)

    import comfy.patcher_extension
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "spy", spy)
    s.sample(patched, steps=4)
    fg = state.foreground
    inside, outside = fg >= 1.0, fg <= 0.0
    steps = []
    for sigma, x in seen:
        noise = state._noise.repeat(x.shape[0] // state._noise.shape[0], 1, 1, 1, 1)
        noised = guidance.noise_to(state.reference, noise, sigma)
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


def check_bad_input(s: Setup) -> dict:
    import comfy.model_patcher
    from ttm_pack.ttm_core.errors import TTMInputError

    results = {}
    try:
        s.native_wan.check_wan(comfy.model_patcher.ModelPatcher(s.torch.nn.Linear(2, 2), "cpu", "cpu"))
        results["non_wan"] = "accepted"
    except TTMInputError as err:
        results["non_wan"] = str(err)
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    logging.getLogger("ttm_pack").addHandler(handler)
    logging.getLogger("ttm_pack").setLevel(logging.INFO)
    try:
        gone = s.make_trajectory({"units": "normalized", "objects": {
            "left coin": {"keyframes": [{"frame": 0, "x": -0.9, "y": 0.5}]},
            "big coin": {"keyframes": [{"frame": 0, "x": 1.9, "y": 0.5}]}}})
        zero, _ = s.patch(s.settings(), trajectory=gone)
        results["no_object_vs_stock"] = diff(s.sample(zero), s.sample(s.model))
        wide_latent = s.torch.zeros(1, 16, 3, 8, 16)
        state = s.native_wan.patch_wan(s.model, s.clip, s.trajectory, s.settings(clock=s.guidance.DualClock()),
                                       s.vae, s.image, wide_latent)[2]
        results["resampled_reference_shape"] = list(state.reference.shape)
        batch, channels, _, height, width = s.latent["samples"].shape
        long_latent = s.torch.zeros(batch, channels, 5, height, width)  # 17 frames for the 9-frame trajectory
        state = s.native_wan.patch_wan(s.model, s.clip, s.trajectory, s.settings(clock=s.guidance.DualClock()),
                                       s.vae, s.image, long_latent)[2]
        results["longer_reference_shape"] = list(state.reference.shape)
        results["latent_shape"] = list(s.latent["samples"].shape)
    finally:
        logging.getLogger("ttm_pack").removeHandler(handler)
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
        try:
            results[name] = {"ok": True, "result": check(setup)}
        except Exception:  # noqa: BLE001 - every failure is reported to the test, with its traceback
            results[name] = {"ok": False, "error": traceback.format_exc()}
    Path(options.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
