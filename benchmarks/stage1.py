"""Stage 1 (the mask-trajectory model) vs the plain base model, side by side in one run.

``python -m benchmarks stage1 [--json FILE] [--rounds N] [--size PX] [--frames N] [--blocks N] [--width N]``

On a small random-weight Wan 2.1 I2V (the users' folder layout; by default 8 blocks of width 128, as
``benchmarks.train_step``):

* **training step**: ``ttm-train stage1``'s step (``Stage1Task``: full fine-tune + the widened patch
  embedding, E(x0) concatenated) vs a plain full fine-tune of the same base on the same clips and
  batch (the same loop with the appended condition dropped at probability 1 and the patch embedding
  frozen: the only remaining difference is one small convolution over the zero channels). Median
  seconds per optimisation step over interleaved rounds, encodings cached. Goal <= 1.10x.
* **sampling**: ``motion.trained.sample_trajectory_video`` (a Stage-1 checkpoint through the stock
  pipeline + ``trained_denoiser``, condition VAE-encoded) vs the stock pipeline sampling an ordinary
  video of the same size, steps and seed. Same model, so the goal is 1.0x plus the one condition encode.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _stage1_trainer(variant: str, folder: Path, out: Path, size: int, frames: int, batch: int) -> Any:
    from benchmarks.train_step import _clips
    from ttm_core.train.config import config_from_dict
    from ttm_core.train.trainer import Stage1Task, Trainer

    data = {"stage": 1, "model": {"path": str(folder)}, "data": {"size": [size, size], "frames": frames,
                                                                 "batch_size": batch},
            "groups": {"full": {"lr": 1e-4}, "patch": {"lr": 1e-4}}, "schedule": {"warmup_steps": 0},
            "steps": 10_000, "precision": "no", "gradient_checkpointing": False, "checkpoint": {"every": 0},
            "validation": {"every": 0}, "logging": {"tensorboard": False}, "output_dir": str(out),
            "cache": {"latents": True},
            "dropout": {"text": 0.0, "trajectory": 1.0 if variant == "plain" else 0.0}}
    trainer = Trainer(config_from_dict(data), _clips(size, frames), task=Stage1Task())
    if variant == "plain":  # the plain fine-tune trains the base only
        for name, p in trainer.trained.items():
            if name.startswith("model.patch_embedding"):
                p.requires_grad_(False)
    return trainer


def run_stage1_benchmark(rounds: int = 5, size: int = 64, frames: int = 9, batch: int = 2, blocks: int = 8,
                         width: int = 128, steps: int = 4, threads: int | None = None) -> dict[str, Any]:
    from benchmarks.train_step import _clips, _folder
    from ttm_core.motion.trained import sample_trajectory_video
    from ttm_core.stage2.diffusers.loader import load_video_model
    from ttm_core.stage2.trained import TrainedWeights

    if threads:
        torch.set_num_threads(threads)
    report: dict[str, Any] = {"model": f"tiny Wan 2.1 I2V (random weights, {blocks} blocks, width {width})",
                              "size": size, "frames": frames, "batch": batch, "rounds": rounds,
                              "sampling_steps": steps, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = _folder(root, blocks, width)
        trainers = {v: _stage1_trainer(v, folder, root / v, size, frames, batch) for v in ("plain", "stage1")}
        for trainer in trainers.values():
            trainer.train(max_steps=1, save=False)  # warm-up: caches, optimizer states
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(rounds):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train(max_steps=trainer.state.step + 1, save=False)
                times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            report[f"{name}_step_s"] = statistics.median(values)
        report["train_time_ratio"] = report["stage1_step_s"] / report["plain_step_s"]
        trained = trainers["stage1"]
        weights = TrainedWeights(trained.trained_config(), trained.trained_tensors(), "stage1.safetensors")
        del trainers, trained

        model = load_video_model(folder)
        pipeline, family = model.pipeline, model.family
        sample = _clips(size, frames, count=1)[0]
        from PIL import Image

        pil = Image.fromarray(sample.frames[0].mul(255).round().to(torch.uint8).numpy())
        device = torch.device("cpu")
        prompt = family.encode_prompt(pipeline, sample.motion_prompt, device, family.text_tokens(pipeline))

        def video() -> None:
            pipeline(image=pil, prompt_embeds=prompt, height=size, width=size, num_frames=frames,
                     num_inference_steps=steps, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                     output_type="pt", **family.pipeline_kwargs(pipeline, 8.0))

        def trajectory() -> None:
            sample_trajectory_video(pipeline, family, weights, sample.frames[0], sample.labels[0],
                                    sample.motion_prompt, frames, steps, 0, 1.0)

        samplers = {"video": video, "trajectory": trajectory}
        for run in samplers.values():
            run()
        sampled: dict[str, list[float]] = {name: [] for name in samplers}
        for _ in range(rounds):
            for name, run in samplers.items():
                start = time.perf_counter()
                run()
                sampled[name].append(time.perf_counter() - start)
        for name, values in sampled.items():
            report[f"{name}_sample_s"] = statistics.median(values)
        report["sample_time_ratio"] = report["trajectory_sample_s"] / report["video_sample_s"]
    return report


def format_report(report: dict[str, Any]) -> str:
    head = (f"Stage 1, {report['model']}, {report['size']}x{report['size']} px, {report['frames']} frames, "
            f"{report['threads']} threads, median of {report['rounds']}")
    return "\n".join([
        head,
        f"  training step  plain fine-tune {report['plain_step_s'] * 1000:8.1f} ms | Stage 1 "
        f"{report['stage1_step_s'] * 1000:8.1f} ms | ratio {report['train_time_ratio']:.3f}x (goal <= 1.10x)",
        f"  sampling ({report['sampling_steps']} steps)  video {report['video_sample_s'] * 1000:8.1f} ms | trajectory "
        f"{report['trajectory_sample_s'] * 1000:8.1f} ms | ratio {report['sample_time_ratio']:.3f}x (same model: ~1x)",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks import write_json

    parser = argparse.ArgumentParser(prog="python -m benchmarks stage1", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds per variant (default 5)")
    parser.add_argument("--size", type=int, default=64, help="frame side in px (default 64)")
    parser.add_argument("--frames", type=int, default=9, help="frames, 1 + 4k (default 9)")
    parser.add_argument("--batch", type=int, default=2, help="clips per training step (default 2)")
    parser.add_argument("--blocks", type=int, default=8, help="transformer blocks of the base (default 8)")
    parser.add_argument("--width", type=int, default=128, help="hidden width of the base (default 128)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = run_stage1_benchmark(args.rounds, args.size, args.frames, args.batch, args.blocks, args.width,
                                  args.steps, args.threads)
    sys.stdout.write(format_report(report))
    if args.json:
        write_json(args.json, report)
        sys.stdout.write(f"wrote {args.json}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
