"""Training step of TTM Stage 2 vs a plain fine-tune of the same tiny base, same batch, side by side.

``python -m benchmarks train-step [--json FILE] [--rounds N] [--size PX] [--frames N] [--threads N]``

Both variants run the real ``ttm_core.train.trainer.Trainer`` on a small random-weight Wan 2.1 I2V
(saved in the users' folder layout; by default 8 blocks of width 128 with K = 2, the paper's quarter:
on the tests' 2-block, 24-wide model with K = 1 of 2, the per-call cost of the masked layers dominates
and the step reads 1.5x) with the same clips, batch and optimizer:

* ``plain``: a full fine-tune of the base's transformer (group ``full``: every parameter but the
  patch embedding), no masked layers: the same loop with the trajectory dropped at probability 1
  (no masked layer runs; the frozen widened patch embedding sees zero label latents, the only
  difference from a stock-width model: one small extra convolution over 16 channels);
* ``ttm``: the same trainable set plus our additions: the widened patch embedding (group ``patch``)
  and the new masked layers in the first K blocks (group ``layers``), label latents concatenated.

Time: median seconds per optimisation step over interleaved rounds (encodings cached, so the VAE and
text encoder are off the step for both). Memory: peak RSS added by steps in a fresh subprocess per
variant (``peak_memory.PeakRSS`` with a fixed mmap threshold). Goal: <= 1.15x time, <= 1.10x memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _clips(size: int, frames: int, count: int = 4) -> list[Any]:
    from ttm_core.train.sample import TrainingSample

    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        video = (torch.rand(1, size, size, 3, generator=g) * 0.5).expand(frames, size, size, 3).clone()
        labels = torch.zeros(frames, size, size, dtype=torch.uint8)
        side = size // 4
        for f in range(frames):
            y, x = (size // 8 + f) % (size - side), (size // 8 + 2 * f) % (size - side)
            video[f, y:y + side, x:x + side] = torch.tensor([0.9, 0.2, 0.1])
            labels[f, y:y + side, x:x + side] = 1
        out.append(TrainingSample(f"b{i}", video, labels, "a red ball on a table", "the ball moves right",
                                  ("a red ball",), ("ball",), 8.0))
    return out


def _trainer(variant: str, folder: Path, out: Path, size: int, frames: int, batch: int, k: int = 1) -> Any:
    from ttm_core.train.config import config_from_dict
    from ttm_core.train.trainer import Trainer

    groups: dict[str, Any] = {"full": {"lr": 1e-4}, "layers": {"lr": 1e-4}, "patch": {"lr": 1e-4}}
    data = {"model": {"path": str(folder)}, "masked_blocks": k, "data": {"size": [size, size], "frames": frames,
                                                                          "batch_size": batch},
            "groups": groups, "schedule": {"warmup_steps": 0}, "steps": 10_000, "precision": "no",
            "gradient_checkpointing": False, "checkpoint": {"every": 0}, "validation": {"every": 0},
            "logging": {"tensorboard": False}, "output_dir": str(out), "cache": {"latents": True},
            "dropout": {"text": 0.0, "trajectory": 1.0 if variant == "plain" else 0.0}}
    trainer = Trainer(config_from_dict(data), _clips(size, frames))
    if variant == "plain":  # the plain fine-tune trains the base only: freeze our additions
        for name, p in trainer.trained.items():
            if name.startswith(("layers.", "model.patch_embedding")):
                p.requires_grad_(False)
    return trainer


def _folder(root: Path, blocks: int = 2, width: int = 24) -> Path:
    """The tiny Wan 2.1 I2V folder; with ``blocks`` / ``width`` other than the tiny model's (2, 24) its
    transformer is rebuilt at that depth and width (2 heads, random weights) before saving."""
    from tests.support.tiny_diffusers import build_tiny

    folder = root / f"wan2.1-i2v-{blocks}x{width}"
    if not folder.exists():
        pipe = build_tiny("wan2.1-i2v")
        if (blocks, width) != (2, 24):
            from diffusers import WanTransformer3DModel

            torch.manual_seed(0)
            pipe.transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=width // 2, text_dim=32, freq_dim=32,
                ffn_dim=4 * width, num_layers=blocks, cross_attn_norm=True, rope_max_seq_len=64, in_channels=36,
                out_channels=16, image_dim=24, added_kv_proj_dim=width).eval()
        pipe.save_pretrained(str(folder))
    return folder


def _k(blocks: int) -> int:
    """The paper's K: a quarter of the blocks (10 of 40), at least 1."""
    return max(1, round(blocks / 4))


def _memory_child(variant: str, root: str, size: int, frames: int, batch: int, steps: int, blocks: int,
                  width: int) -> None:
    from benchmarks.peak_memory import PeakRSS, fixed_mmap_threshold

    fixed_mmap_threshold()
    trainer = _trainer(variant, _folder(Path(root), blocks, width), Path(root) / f"mem-{variant}", size, frames,
                       batch, _k(blocks))
    trainer.train(max_steps=1, save=False)  # warm-up: caches, optimizer states
    with PeakRSS() as peak:
        trainer.train(max_steps=1 + steps, save=False)
    sys.stdout.write(json.dumps({"extra_kib": peak.extra_kib}) + "\n")


def run_train_step_benchmark(rounds: int = 5, size: int = 64, frames: int = 9, batch: int = 2,
                             threads: int | None = None, memory: bool = True, blocks: int = 8,
                             width: int = 128) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    k = _k(blocks)
    report: dict[str, Any] = {"model": f"tiny Wan 2.1 I2V (random weights, {blocks} blocks, width {width})",
                              "size": size, "frames": frames, "blocks": blocks, "width": width, "k": k,
                              "batch": batch, "rounds": rounds, "threads": torch.get_num_threads(),
                              "plain": "full fine-tune of the base blocks (stock channels, no masked layers)",
                              "ttm": f"the same + widened patch embedding + masked layers in the first K = {k} of "
                                     f"{blocks} blocks, label latents concatenated"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = _folder(root, blocks, width)
        trainers = {v: _trainer(v, folder, root / v, size, frames, batch, k) for v in ("plain", "ttm")}
        for trainer in trainers.values():
            trainer.train(max_steps=1, save=False)
        times: dict[str, list[float]] = {"plain": [], "ttm": []}
        for _ in range(rounds):
            for variant, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train(max_steps=trainer.state.step + 1, save=False)
                times[variant].append(time.perf_counter() - start)
        for variant in times:
            report[f"{variant}_step_s"] = statistics.median(times[variant])
        report["time_ratio"] = report["ttm_step_s"] / report["plain_step_s"]
        if memory:
            for variant in ("plain", "ttm"):
                done = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--_memory", variant,
                                       "--root", tmp, "--size", str(size), "--frames", str(frames),
                                       "--batch", str(batch), "--blocks", str(blocks), "--width", str(width)],
                                      capture_output=True, text=True, check=True)
                report[f"{variant}_peak_extra_mib"] = json.loads(done.stdout.strip().splitlines()[-1])[
                    "extra_kib"] / 1024
            report["memory_ratio"] = report["ttm_peak_extra_mib"] / report["plain_peak_extra_mib"]
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"training step, {report['model']}, K = {report['k']}, {report['size']}x{report['size']} px, "
             f"{report['frames']} frames, "
             f"batch {report['batch']}, {report['threads']} threads, median of {report['rounds']}",
             f"  plain fine-tune : {report['plain_step_s'] * 1000:8.1f} ms/step"
             + (f", peak +{report['plain_peak_extra_mib']:.1f} MiB" if "memory_ratio" in report else ""),
             f"  TTM Stage 2     : {report['ttm_step_s'] * 1000:8.1f} ms/step"
             + (f", peak +{report['ttm_peak_extra_mib']:.1f} MiB" if "memory_ratio" in report else ""),
             f"  ratio (TTM / plain): time {report['time_ratio']:.3f}x (goal <= 1.15x)"
             + (f", memory {report['memory_ratio']:.3f}x (goal <= 1.10x)" if "memory_ratio" in report else "")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks import write_json

    parser = argparse.ArgumentParser(prog="python -m benchmarks train-step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed steps per variant (default 5)")
    parser.add_argument("--size", type=int, default=64, help="frame side in px (default 64)")
    parser.add_argument("--frames", type=int, default=9, help="frames, 1 + 4k (default 9)")
    parser.add_argument("--batch", type=int, default=2, help="clips per step (default 2)")
    parser.add_argument("--blocks", type=int, default=8,
                        help="transformer blocks of the base (default 8; 2 is the tests' tiny model); K = a quarter of "
                             "them, the paper's ratio (10 of 40)")
    parser.add_argument("--width", type=int, default=128,
                        help="hidden width of the base (default 128; 24 is the tests' tiny model)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--_memory", choices=("plain", "ttm"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args._memory:
        _memory_child(args._memory, args.root, args.size, args.frames, args.batch, 2, args.blocks, args.width)
        return 0
    report = run_train_step_benchmark(args.rounds, args.size, args.frames, args.batch, args.threads,
                                      memory=not args.no_memory, blocks=args.blocks, width=args.width)
    sys.stdout.write(format_report(report))
    if args.json:
        write_json(args.json, report)
        sys.stdout.write(f"wrote {args.json}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
