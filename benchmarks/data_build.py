"""``python -m benchmarks data-build``: ``ttm-data build`` clips per minute with 1 vs 2 worker processes.

Procedural clips (the flow tracker's scenes, ``tests/support/procedural_clips.py``: textured shapes with
their first-frame label PNGs and captions, ``--size`` and ``--frames`` at 8 fps) are built with the
weights-free flow tracker into fresh folders, once with ``workers=1`` (in the driver process) and once with
``workers=2`` (a spawn-context process pool), each worker one-threaded (torch and OpenCV; x264 always is),
alternating the order over ``--rounds``, in one run. Reported per
variant: clips per minute over the whole build (pool start-up included) and over the steady part (from the
first finished clip to the last, start-up excluded), and the ratio 2 workers / 1 worker (goal >= 1.7x on two
free cores). Both builds must give byte-identical shards (checked). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests" / "support"):  # the procedural clips live with the tests
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchmarks import write_json  # noqa: E402
from procedural_clips import write_clips  # noqa: E402
from ttm_core.train.build import DataSettings, build_dataset, list_inputs  # noqa: E402

LOG = logging.getLogger(__name__)
SCENES = ("translation", "crossing", "several", "scaling")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for shard in sorted(folder.glob("shard-*.tar")):
        h.update(shard.read_bytes())
    return h.hexdigest()


def _one_build(source: Path, out: Path, settings: DataSettings) -> dict[str, float | str]:
    inputs = list_inputs(source / "videos", settings, masks=source / "masks")
    first: list[float] = []

    def progress(done: int, total: int) -> None:
        if done == 1:
            first.append(time.perf_counter())

    import cv2
    import torch

    threads = torch.get_num_threads(), cv2.getNumThreads()
    if settings.workers == 1:  # one thread per worker in both variants (pool workers limit themselves)
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    started = time.perf_counter()
    try:
        report = build_dataset(inputs, out, settings, progress=progress)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    ended = time.perf_counter()
    steady = ended - first[0] if first else 0.0
    return {"seconds": ended - started, "clips": report.processed,
            "clips_per_minute": 60.0 * report.processed / (ended - started),
            "steady_clips_per_minute": 60.0 * (report.processed - 1) / steady if steady > 0 else 0.0,
            "digest": _digest(out)}


def run_data_build_benchmark(clips: int, height: int, width: int, frames: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ttm-data-bench-") as tmp:
        root = Path(tmp)
        scenes = [SCENES[i % len(SCENES)] for i in range(clips)]
        write_clips(root / "source", scenes, height=height, width=width, frames=frames)
        base = DataSettings(fps=8.0, height=height, width=width, frames=frames, min_frames=9, clips_per_shard=8,
                            min_motion=0.0)
        variants = {"1 worker": base, "2 workers": dataclasses.replace(base, workers=2)}
        rows: dict[str, list[dict[str, float | str]]] = {name: [] for name in variants}
        for r in range(rounds):
            names = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in names:
                row = _one_build(root / "source", root / f"out-{r}-{name.replace(' ', '')}", variants[name])
                LOG.info("round %d %s: %.1f clips/min (%.1f steady)", r + 1, name, row["clips_per_minute"],
                         row["steady_clips_per_minute"])
                rows[name].append(row)
    digests = {row["digest"] for name in rows for row in rows[name]}
    summary = {name: {"clips_per_minute": statistics.median(float(x["clips_per_minute"]) for x in rows[name]),
                      "steady_clips_per_minute": statistics.median(float(x["steady_clips_per_minute"])
                                                                   for x in rows[name])}
               for name in rows}
    one, two = summary["1 worker"], summary["2 workers"]
    return {"clips": clips, "size": [height, width], "frames": frames, "rounds": rounds, "variants": summary,
            "ratio": two["clips_per_minute"] / one["clips_per_minute"],
            "steady_ratio": two["steady_clips_per_minute"] / max(one["steady_clips_per_minute"], 1e-9),
            "goal": 1.7, "identical_shards": len(digests) == 1, "runs": rows}


def format_report(report: dict) -> str:
    lines = [f"ttm-data build: {report['clips']} procedural clips, {report['size'][1]}x{report['size'][0]}x"
             f"{report['frames']}, flow tracker, median of {report['rounds']} round(s)",
             f"{'variant':<12}{'clips/min':>12}{'steady clips/min':>20}"]
    for name, row in report["variants"].items():
        lines.append(f"{name:<12}{row['clips_per_minute']:>12.1f}{row['steady_clips_per_minute']:>20.1f}")
    lines.append(f"ratio 2 workers / 1 worker: {report['ratio']:.2f}x whole build, "
                 f"{report['steady_ratio']:.2f}x steady (goal >= {report['goal']}x); "
                 f"shards identical: {report['identical_shards']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks data-build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="procedural clips (default 16)")
    parser.add_argument("--size", default="128x160", help="HxW (default 128x160)")
    parser.add_argument("--frames", type=int, default=25, help="frames per clip (default 25)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    report = run_data_build_benchmark(args.clips, height, width, args.frames, args.rounds)
    sys.stdout.write(format_report(report))
    if args.json:
        write_json(args.json, report)
        sys.stdout.write(f"wrote {args.json}\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main(sys.argv[1:]))
