"""Part ``cogvideox`` of ``python -m benchmarks gpu``: a CogVideoX-5B-I2V-sized denoising step, stock vs ours.

The transformer is diffusers' ``CogVideoXTransformer3DModel`` at CogVideoX-5b-I2V's size (42 blocks,
48 heads x 64, learned positions for 720x480x49, 226 text tokens), random weights, built directly on
the GPU (a CPU init of 5 B parameters would take minutes) and cast to bf16; 720x480x49 is 13 x 30 x
45 = 17,550 video tokens, CFG batch 2. The VAE and text encoder are the tests' tiny ones
(``tests/support/tiny_diffusers.py``; the VAE keeps CogVideoX's 8x / 4x compression): they are not
in the timed step. Two differences from the real checkpoint, both a negligible share of the step's
work: 4 latent channels instead of 16 (the patch embedding's input and the output projection) and a
24-wide text embedding instead of 4096 (one linear over 226 tokens). The step is
``benchmarks.stage2.StepBench``: the CFG batch through the transformer, the guidance combination and
the scheduler step, with stock processors vs ours (masked self- and cross-attention in the default
K blocks, the dual-clock pin).
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import torch

from benchmarks.gpu import Measure, ratio

LOG = logging.getLogger(__name__)

REAL = {"height": 480, "width": 720, "frames": 49, "heads": 48, "head_dim": 64, "layers": 42}
"""CogVideoX-5b-I2V: 42 blocks of 48 heads x 64 at its one size, 720x480x49."""
TINY = {"height": 64, "width": 64, "frames": 9, "heads": 2, "head_dim": 64, "layers": 4}


def run(size: str, extended: bool = False) -> dict[str, Any]:
    from pathlib import Path

    from benchmarks.stage2 import Stage2Case, StepBench, build_model
    from tiny_diffusers import build_cogvideox
    from ttm_core.stage2.diffusers.loader import VideoModel
    from ttm_core.stage2.families import VARIANTS

    real = size == "real"
    device = torch.device("cuda" if real and torch.cuda.is_available() else "cpu")
    if real:
        case = Stage2Case(**REAL)
        with torch.device(device):  # every module built in place on the GPU
            pipe = build_cogvideox("1.0", seed=0, sample_size=(case.height, case.width), sample_frames=case.frames,
                                   learned_positions=True, heads=case.heads, head_dim=case.head_dim,
                                   layers=case.layers, text_tokens=226)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        pipe.to(device, dtype)  # every component in bf16, as CogVideoX runs
        pipe.set_progress_bar_config(disable=True)
        model = VideoModel("bench-cogvideox-5b", Path("."), VARIANTS["cogvideox-1.0-i2v"], pipe, dtype)
    else:
        case = Stage2Case(**TINY)
        model = build_model(case)
    bench = StepBench(model, case, device=device)
    variants = {"stock": bench.stock, "ours": bench.ours}
    for fn in variants.values():  # untimed first call
        fn()
    rounds = 2 if real else 1
    times: dict[str, list[float]] = {n: [] for n in variants}
    peaks: dict[str, list[float]] = {n: [] for n in variants}
    rises: dict[str, list[float]] = {n: [] for n in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            with Measure() as measure:
                out = variants[name]()
            del out
            times[name].append(measure.seconds)
            peaks[name].append(measure.peak_mib)
            rises[name].append(measure.rise_mib)
    med = {n: {"time": statistics.median(times[n]), "peak": statistics.median(peaks[n]),
               "rise": statistics.median(rises[n])} for n in names}
    params = sum(p.numel() for p in model.pipeline.transformer.parameters())
    label = f"{case.width}x{case.height}x{case.frames} ({case.tokens} tokens), {case.layers} blocks"
    cases = []
    for name in names:
        ratios = {} if name == "stock" else {
            "time": ratio(med[name]["time"], med["stock"]["time"]),
            "peak_memory": ratio(med[name]["peak"], med["stock"]["peak"]),
            "activation_memory": ratio(med[name]["rise"], med["stock"]["rise"])}
        cases.append({"case": f"CogVideoX step {label} {name}", "variant": name, "tokens": case.tokens,
                      "time_s": round(med[name]["time"], 4), "peak_mib": round(med[name]["peak"], 1),
                      "activation_mib": round(med[name]["rise"], 1), "rounds_s": [round(x, 4) for x in times[name]],
                      "ratios": ratios})
    return {"what": __doc__.split("\n\n")[0], "device": str(device), "dtype": str(model.dtype).removeprefix("torch."),
            "transformer_parameters": params, "cfg": case.cfg, "rounds": rounds, "cases": cases, "skipped": []}
