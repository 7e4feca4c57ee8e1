"""``python -m benchmarks eval``: what scoring costs, per metric and clip, on the CPU.

A procedural set (``ttm_core.eval.benchset``, ``--count`` clips of ``--size`` and ``--frames``) is scored by
each metric on its own reference videos, the metrics interleaved over ``--rounds`` in one run: adherence with
the weights-free flow tracker (its clips per minute is the headline figure), AD (DIS flow), and the model
metrics with the tiny random-weight CLIP / ViCLIP / I3D of the tests (``tests/support/eval_models.py``) —
their cost here is the plumbing's (preprocessing, batching, the Frechet distance), NOT that of the real
ViT-L/14 or I3D, which no machine here has. Printed: seconds per clip per metric, the median over rounds,
and each metric's cost relative to adherence. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests" / "support"):  # the tiny models live with the tests
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchmarks import write_json  # noqa: E402
from ttm_core.eval.benchset import BenchSettings, generate_set  # noqa: E402
from ttm_core.eval.videos import read_video  # noqa: E402

LOG = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    width, height = (int(p) for p in text.lower().split("x"))
    return height, width


def run_eval_benchmark(count: int, size: tuple[int, int], frames: int, rounds: int, threads: int | None
                       ) -> dict[str, Any]:
    from eval_models import make_tiny_clip, make_tiny_i3d, make_tiny_viclip
    from ttm_core.eval.adherence import trajectory_adherence
    from ttm_core.eval.clip_frame import clip_frame, load_clip
    from ttm_core.eval.fvd import i3d_features, load_i3d
    from ttm_core.eval.motion import average_displacement
    from ttm_core.eval.viclip import load_viclip, viclip_t
    from ttm_core.motion.trajectory_file import read_trajectory

    if threads:
        import cv2

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = BenchSettings(count=count, height=size[0], width=size[1], frames=frames)
        jobs = generate_set(root / "set", settings)
        clips = [(read_video(root / "set" / "reference" / f"{j['id']}.mp4")[0],
                  read_trajectory(root / "set" / str(j["trajectory"])), str(j["prompt"])) for j in jobs]
        clip_model = load_clip(make_tiny_clip(root / "clip"))
        viclip = load_viclip(make_tiny_viclip(root / "viclip"))
        i3d = load_i3d(make_tiny_i3d(root / "i3d.pt"))
        metrics: dict[str, Callable[[torch.Tensor, Any, str], Any]] = {
            "adherence (flow tracker)": lambda v, t, p: trajectory_adherence(v, t),
            "AD (DIS flow)": lambda v, t, p: average_displacement(v),
            "CLIPFrame (tiny CLIP)": lambda v, t, p: clip_frame(clip_model, v),
            "ViCLIP-T (tiny ViCLIP)": lambda v, t, p: viclip_t(viclip, [v], [p]),
            "FVD features (tiny I3D)": lambda v, t, p: i3d_features(i3d, [v]),
        }
        times: dict[str, list[float]] = {name: [] for name in metrics}
        adherence_iou = []
        for _ in range(rounds):
            for name, metric in metrics.items():  # interleaved: every round measures every metric
                start = time.perf_counter()
                for video, trajectory, prompt in clips:
                    result = metric(video, trajectory, prompt)
                    if name.startswith("adherence"):
                        adherence_iou.append(result.per_clip()["mean_iou"])
                times[name].append((time.perf_counter() - start) / len(clips))
    per_clip = {name: statistics.median(values) for name, values in times.items()}
    base = per_clip["adherence (flow tracker)"]
    return {"count": count, "size": f"{size[1]}x{size[0]}", "frames": frames, "rounds": rounds,
            "threads": threads or torch.get_num_threads(),
            "seconds_per_clip": per_clip, "relative_to_adherence": {n: s / base for n, s in per_clip.items()},
            "adherence_clips_per_minute": 60.0 / base,
            "adherence_mean_iou_on_reference": statistics.mean(adherence_iou)}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"ttm-eval cost per clip, CPU ({report['count']} clips {report['size']}x{report['frames']}, "
             f"{report['threads']} threads, median of {report['rounds']} interleaved rounds)",
             f"{'metric':<28} {'s/clip':>8} {'vs adherence':>13}"]
    for name, seconds in report["seconds_per_clip"].items():
        lines.append(f"{name:<28} {seconds:>8.3f} {report['relative_to_adherence'][name]:>12.2f}x")
    lines.append(f"adherence with the flow tracker: {report['adherence_clips_per_minute']:.1f} clips/minute "
                 f"(mean IoU {report['adherence_mean_iou_on_reference']:.3f} on the set's own reference videos)")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6, help="clips (default 6)")
    parser.add_argument("--size", type=_size, default=(480, 832), help="WxH, multiples of 16 (default 832x480)")
    parser.add_argument("--frames", type=int, default=49, help="frames per clip (default 49)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch / OpenCV threads (default: theirs)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    report = run_eval_benchmark(args.count, args.size, args.frames, args.rounds, args.threads)
    sys.stdout.write(format_table(report))
    if args.json:
        write_json(args.json, report)
        sys.stdout.write(f"wrote {args.json}\n")
    return 0
