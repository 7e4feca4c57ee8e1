"""Part ``train`` of ``python -m benchmarks gpu``: ttm-train's Stage 2 step on a Wan 2.2 TI2V-5B-sized model.

The real ``ttm_core.train.trainer.Trainer`` on a diffusers folder in the users' layout whose
transformer is ``WanTransformer3DModel`` at Wan 2.2 TI2V-5B's config (30 blocks, 24 heads x 128,
FFN 14336, 48 channels), random weights (initialised on the GPU, saved in bf16: 10 GB on the local
disk, then loaded by the trainer as a user's folder is), with the tests' tiny 48-channel Wan 2.2
VAE (16x / 4x compression, as the real one) and tiny UMT5 text encoder, so the transformer's text
projection reads 32 channels instead of 4096 (one linear over 512 tokens; the encodings are cached
and off the step for both variants anyway). Both variants train with gradient checkpointing and bf16
mixed precision, batch 1, AdamW:

* ``plain``: a full fine-tune of the transformer (every block), no masked layers;
* ``ttm``: the same plus our additions: the widened patch embedding and the new masked layers in
  the default K blocks (a quarter), label latents concatenated.

A full fine-tune of 5 B parameters holds float32 masters, gradients and two AdamW moments (80 GB),
so the variants run one after the other (each in turn built, warmed up with one step, timed over
the next step, then freed), not interleaved. Video sizes are tried largest first (the
model's native 1280x704x121, then 832x480x81, then 832x480x49); the first at which both variants
fit is reported, with the sizes that ran out of memory.
"""

from __future__ import annotations

import gc
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu import Measure, ratio

LOG = logging.getLogger(__name__)

TI2V_5B = dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
               text_dim=32, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True, eps=1e-6,
               rope_max_seq_len=1024)
"""Wan2.2-TI2V-5B-Diffusers' transformer config, but text_dim = the tiny UMT5's width (see the docstring)."""
REAL_SIZES = ((704, 1280, 121), (480, 832, 81), (480, 832, 49))
TINY_SIZES = ((64, 64, 5),)


def _clips(height: int, width: int, frames: int, count: int = 1) -> list[Any]:
    """Clips of a red square moving over a flat random background, with its label video."""
    from ttm_core.train.sample import TrainingSample

    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        video = (torch.rand(1, 1, 1, 3, generator=g) * 0.5).expand(frames, height, width, 3).clone()
        labels = torch.zeros(frames, height, width, dtype=torch.uint8)
        side = min(height, width) // 4
        for f in range(frames):
            y, x = (side // 2 + f) % (height - side), (side // 2 + 2 * f) % (width - side)
            video[f, y:y + side, x:x + side] = torch.tensor([0.9, 0.2, 0.1])
            labels[f, y:y + side, x:x + side] = 1
        out.append(TrainingSample(f"g{i}", video, labels, "a red ball on a table", "the ball moves right",
                                  ("a red ball",), ("ball",), 8.0))
    return out


def _folder(root: Path, real: bool, device: torch.device) -> Path:
    from diffusers import WanTransformer3DModel

    from tests.support.tiny_diffusers import build_wan

    folder = root / ("wan2.2-ti2v-5b-size" if real else "wan2.2-ti2v-tiny")
    pipe = build_wan("2.2-ti2v-5b")
    if real:
        torch.manual_seed(0)
        with torch.device(device):  # diffusers' own init, on the GPU: seconds instead of minutes on the CPU
            transformer = WanTransformer3DModel(**TI2V_5B)  # type: ignore[arg-type]
        pipe.transformer = transformer.to(torch.bfloat16).cpu().eval()
        del transformer
    pipe.save_pretrained(str(folder))
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return folder


def _trainer(variant: str, folder: Path, out: Path, size: tuple[int, int, int], real: bool) -> Any:
    from ttm_core.train.config import config_from_dict
    from ttm_core.train.trainer import Trainer

    height, width, frames = size
    data = {"model": {"path": str(folder), "dtype": "bf16" if real else "fp32"}, "masked_blocks": 0,
            "data": {"size": [height, width], "frames": frames, "batch_size": 1},
            "groups": {"full": {"lr": 1e-5}, "layers": {"lr": 1e-4}, "patch": {"lr": 1e-4}},
            "schedule": {"warmup_steps": 0}, "steps": 10_000, "precision": "bf16" if real else "no",
            "gradient_checkpointing": True, "checkpoint": {"every": 0}, "validation": {"every": 0},
            "logging": {"tensorboard": False}, "output_dir": str(out), "cache": {"latents": True},
            "dropout": {"text": 0.0, "trajectory": 1.0 if variant == "plain" else 0.0}}
    trainer = Trainer(config_from_dict(data), _clips(height, width, frames))
    if variant == "plain":  # the plain fine-tune trains the base only: freeze our additions
        for name, p in trainer.trained.items():
            if name.startswith(("layers.", "model.patch_embedding")):
                p.requires_grad_(False)
    return trainer


def _measure(variant: str, folder: Path, root: Path, size: tuple[int, int, int], real: bool,
             rounds: int) -> dict[str, Any]:
    trainer = _trainer(variant, folder, root / variant, size, real)
    try:
        trainer.train(max_steps=1, save=False)  # warm-up: the one clip's encodings cached, optimizer states made
        times, peaks, rises = [], [], []
        for _ in range(rounds):
            with Measure() as measure:
                trainer.train(max_steps=trainer.state.step + 1, save=False)
            times.append(measure.seconds)
            peaks.append(measure.peak_mib)
            rises.append(measure.rise_mib)
        trained = sum(p.numel() for p in trainer.trained.values() if p.requires_grad)
        return {"time_s": statistics.median(times), "peak_mib": statistics.median(peaks),
                "activation_mib": statistics.median(rises), "rounds_s": [round(t, 4) for t in times],
                "trained_parameters": trained, "masked_blocks": trainer.num_blocks}
    finally:
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run(size: str, extended: bool = False) -> dict[str, Any]:
    real = size == "real"
    device = torch.device("cuda" if real and torch.cuda.is_available() else "cpu")
    rounds = 1
    skipped: list[str] = []
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ttm-gpu-train-") as tmp:
        root = Path(tmp)
        folder = _folder(root, real, device)
        for video in REAL_SIZES if real else TINY_SIZES:
            try:
                results = {v: _measure(v, folder, root, video, real, rounds) for v in ("plain", "ttm")}
            except torch.cuda.OutOfMemoryError as error:
                skipped.append(f"{video[1]}x{video[0]}x{video[2]}: out of memory ({str(error)[:160]})")
                gc.collect()
                torch.cuda.empty_cache()
                continue
            height, width, frames = video
            for variant, result in results.items():
                ratios = {} if variant == "plain" else {
                    "time": ratio(result["time_s"], results["plain"]["time_s"]),
                    "peak_memory": ratio(result["peak_mib"], results["plain"]["peak_mib"]),
                    "activation_memory": ratio(result["activation_mib"], results["plain"]["activation_mib"])}
                cases.append({"case": f"TI2V-5B-size step {width}x{height}x{frames} {variant}" if real else
                              f"tiny TI2V step {width}x{height}x{frames} {variant}", "variant": variant,
                              "video": [width, height, frames], **{k: (round(v, 4) if isinstance(v, float) else v)
                                                                  for k, v in result.items()}, "ratios": ratios})
            break
    return {"what": __doc__.split("\n\n")[0], "device": str(device), "gradient_checkpointing": True,
            "precision": "bf16" if real else "fp32", "batch": 1, "rounds": rounds,
            "transformer": TI2V_5B if real else "tests/support/tiny_diffusers.py Wan 2.2 TI2V", "cases": cases,
            "skipped": skipped}
