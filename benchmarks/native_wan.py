"""`make bench-native OUT=FILE` (``python -m benchmarks native --out FILE``): one sampling step of a native
Wan, patched vs unpatched.

Runs in ComfyUI's Python (it imports comfy): a random-weight ComfyUI WanModel (Wan 2.1 I2V
layout, head size 128 as the real models) big enough in tokens that attention dominates,
2 objects covering 30 % and 15 % of the frame, one euler step through ComfyUI's own sampler.
Variants run interleaved in one process, median of the rounds; peak memory is the rise of the
process's peak RSS during the step (VmHWM reset just before it, Linux) or CUDA's peak
allocation on a GPU. Writes JSON with ``time_ratio`` and ``memory_ratio`` per case.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests" / "support"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from benchmarks.peak_memory import PeakRSS, fixed_mmap_threshold  # noqa: E402 (after the path setup)

LOG = logging.getLogger(__name__)


class Peak:
    """Peak memory rise during a block: CUDA allocator on GPU, else process RSS (Linux)."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch, self.cuda = torch, getattr(device, "type", str(device)) == "cuda"

    def __enter__(self) -> Peak:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        else:
            self.host = PeakRSS()
            self.host.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.rise = self.torch.cuda.max_memory_allocated() - self.base
        else:
            self.host.__exit__()
            self.rise = self.host.extra_kib * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks native", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=21, help="video frames (4k+1)")
    parser.add_argument("--dim", type=int, default=256, help="model width (heads = dim / 128, as ComfyUI derives)")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    fixed = fixed_mmap_threshold()  # on the CPU, RSS then follows live tensors (benchmarks/peak_memory.py)

    from native_wan import Fixture, _meta_module, _value, build_cached
    from tools.comfy_harness import ComfyInstall

    install = ComfyInstall.locate()
    clip_file = build_cached(["clip_l"], install)["clip_l"]
    sys.path.insert(0, str(install.comfy_dir))
    import torch
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()  # ComfyUI probes CUDA at import otherwise (a CUDA build on a CPU box)
    import comfy.model_management
    import comfy.sample
    import comfy.sd

    spec = importlib.util.spec_from_file_location("ttm_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["ttm_pack"] = pack
    spec.loader.exec_module(pack)
    from ttm_pack.native.patch import patch_wan
    from ttm_pack.ttm_core.motion.render import trajectory_from_paths
    from ttm_pack.ttm_core.stage2.attention.grids import token_grid
    from ttm_pack.ttm_core.stage2.families.wan import WAN21_I2V
    from ttm_pack.ttm_core.stage2.settings import MaskedAttention, Stage2Settings
    from ttm_pack.ttm_core.types import ObjectPrompt, Objects, Prompts

    config = {"model_type": "i2v", "in_dim": 36, "out_dim": 16, "dim": options.dim, "ffn_dim": 2 * options.dim,
              "num_heads": options.dim // 128, "num_layers": options.blocks}
    fixture = Fixture("bench", "diffusion_models", "bench.safetensors", "wan_dit", config, seed=7, dtype="float32")
    module = _meta_module(fixture, str(install.comfy_dir))
    owners = {name: type(sub).__name__ for name, sub in module.named_modules()}
    state = {key: _value(torch, key, tuple(meta.shape), owners.get(key.rsplit(".", 1)[0], ""), 7)
             for key, meta in module.state_dict().items()}
    model = comfy.sd.load_diffusion_model_state_dict(state)
    clip = comfy.sd.load_clip([str(clip_file)], clip_type=comfy.sd.CLIPType.SD3)

    height, width, frames = options.height, options.width, options.frames
    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")

    def ellipse(cx: float, cy: float, share: float) -> torch.Tensor:
        a = (share * height * width / torch.pi * width / height) ** 0.5
        b = a * height / width
        return ((((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2) <= 1).float()

    masks = torch.stack([ellipse(width * 0.3, height * 0.5, 0.30), ellipse(width * 0.78, height * 0.5, 0.15)])
    objects = Objects(Prompts("two objects", "they move", (ObjectPrompt("a", "a red ball"),
                                                          ObjectPrompt("b", "a blue cube"))), masks)
    trajectory = trajectory_from_paths(objects, (None, None), frames, 16.0)
    grid = token_grid(trajectory, WAN21_I2V, frames, height, width)
    counts = torch.bincount(grid.ids).double()
    rho = float((counts ** 2).sum() / grid.num_tokens ** 2)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red ball and a blue cube"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    settings = Stage2Settings(MaskedAttention(self_strength=1.0, cross_strength=1.0), guidance=None)
    patched, _, patch = patch_wan(model, clip, trajectory, settings)
    half = Stage2Settings(MaskedAttention(self_strength=0.5, cross_strength=0.5), guidance=None)
    blended, _, _ = patch_wan(model, clip, trajectory, half)
    variants = {"unpatched": model, "patched (strength 1)": patched, "patched (strength 0.5)": blended}
    device = comfy.model_management.get_torch_device()

    def step(m: Any) -> None:
        comfy.sample.sample(m, noise, 1, 1.0, "euler", "simple", positive, negative, latent, disable_pbar=True, seed=0)

    for m in variants.values():  # warm-up: load weights, build grids, first-call allocations
        step(m)
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, list[int]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(options.rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            with Peak(torch, device) as peak:
                started = time.perf_counter()
                step(variants[name])
                times[name].append(time.perf_counter() - started)
            peaks[name].append(peak.rise)
            LOG.info("round %d %-24s %.2f s, peak +%.0f MiB", round_index, name, times[name][-1], peak.rise / 2**20)
    base_time, base_peak = statistics.median(times["unpatched"]), statistics.median(peaks["unpatched"])
    cases = []
    for name in names[1:]:
        cases.append({"case": name, "objects": 2, "coverage": [0.30, 0.15], "masked_blocks": patch.num_blocks,
                      "blocks": options.blocks, "time_s": statistics.median(times[name]),
                      "unpatched_time_s": base_time,
                      "time_ratio": round(statistics.median(times[name]) / base_time, 4),
                      "peak_mib": round(statistics.median(peaks[name]) / 2**20, 1),
                      "unpatched_peak_mib": round(base_peak / 2**20, 1),
                      "memory_ratio": round(statistics.median(peaks[name]) / max(base_peak, 1), 4),
                      "rounds": {"time_s": times[name], "unpatched_time_s": times["unpatched"]}})
    report = {"benchmark": "native Wan, one sampling step (euler, cfg 1), patched vs unpatched",
              "device": str(device), "torch": torch.__version__, "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "video": {"width": width, "height": height, "frames": frames}, "tokens": grid.num_tokens,
              "rho": round(rho, 4), "model": config,
              "memory_method": "CUDA peak allocation" if device.type == "cuda" else "peak RSS rise"
                                 + (", glibc mmap threshold fixed at 64 KiB" if fixed else ""),
              "targets": {"time_ratio_max": 1.10, "memory_ratio_max": 1.10}, "cases": cases}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=1) + "\n")
    for case in cases:
        LOG.info("%-24s time %.3fx  memory %.3fx", case["case"], case["time_ratio"], case["memory_ratio"])
    LOG.info("%d tokens, rho %.3f; wrote %s", grid.num_tokens, rho, options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
