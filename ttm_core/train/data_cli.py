"""``ttm-data``: build training shards from videos, and inspect them.

    ttm-data build INPUT --out DIR [--fps 8 --size 256x256 --frames 49 --min-frames 17 --workers N
                   --ray ADDRESS|local --seed 0 --captions FILE.jsonl --masks DIR --objects-from masks|caption
                   --tracker flow|sam2|sam3 --llm DIR --detector DIR --sam2 PATH --sam3 DIR
                   --min-area --max-area --min-persistence --min-motion --min-objects --clips-per-shard --crf]
    ttm-data inspect DIR

Also ``python -m ttm_core.train.data_cli``. Bad input ends with one line naming the input and the fix and
exit status 2; a finished build prints a summary (clips kept / skipped by reason, shards).
See docs/TRAINING_DATA.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..errors import TTMInputError

LOG = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    """``HxW`` -> (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 480x832")
    return int(parts[0]), int(parts[1])


def build_parser() -> argparse.ArgumentParser:
    from .clips import DataSettings

    d = DataSettings()
    parser = argparse.ArgumentParser(prog="ttm-data", description="Training data for Through-The-Mask: videos -> "
                                     "WebDataset shards of frames, label videos and prompts.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build shards from videos (resumes a build in --out)")
    build.add_argument("input", help="a folder of videos, a .txt list of video paths or a .jsonl list")
    build.add_argument("--out", required=True, help="output folder (shards, manifest.jsonl, build.json)")
    build.add_argument("--fps", type=float, default=d.fps, help=f"clip frame rate (default {d.fps:g})")
    build.add_argument("--size", type=_size, default=(d.height, d.width), help=f"clip size HxW (default "
                       f"{d.height}x{d.width}); frames are resized to cover it and centre-cropped")
    build.add_argument("--frames", type=int, default=d.frames,
                       help=f"most frames per clip (0 = all; default {d.frames})")
    build.add_argument("--min-frames", type=int, default=d.min_frames, help=f"fewest frames (default {d.min_frames})")
    build.add_argument("--workers", type=int, default=d.workers, help="worker processes, or Ray actors with --ray")
    build.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run on Ray: 'local' starts a local instance, else a cluster address ('auto', ray://...)")
    build.add_argument("--num-gpus", type=float, default=d.num_gpus, help="GPUs per Ray actor (default 0)")
    build.add_argument("--device", default=d.device, help="torch device of the models in a worker (default cpu)")
    build.add_argument("--seed", type=int, default=d.seed, help="seed (LLM sampling; recorded for readers)")
    build.add_argument("--captions", help="JSONL of {\"video\", \"caption\"[, \"motion_prompt\", \"objects\"]} "
                       "(default: VIDEO.txt beside each video)")
    build.add_argument("--masks", help="folder of first-frame label PNGs (<video path without extension>.png)")
    build.add_argument("--objects-from", choices=("masks", "caption"), default=None,
                       help="first masks (default when --masks is given) or caption -> LLM -> detector -> SAM 2")
    build.add_argument("--tracker", choices=("flow", "sam2", "sam3"), default=d.tracker,
                       help="flow (no weights; default), sam2 or sam3")
    build.add_argument("--llm", default="", help="local LLM folder (caption path)")
    build.add_argument("--detector", default="", help="Grounding DINO / OWLv2 folder (caption path)")
    build.add_argument("--sam2", default="", help="SAM 2 checkpoint or folder (caption path, --tracker sam2)")
    build.add_argument("--sam3", default="", help="SAM 3 tracker folder (--tracker sam3)")
    build.add_argument("--box-threshold", type=float, default=d.box_threshold)
    build.add_argument("--text-threshold", type=float, default=d.text_threshold)
    build.add_argument("--min-area", type=float, default=d.min_area, help="object's frame-0 area share, at least")
    build.add_argument("--max-area", type=float, default=d.max_area, help="object's frame-0 area share, at most")
    build.add_argument("--min-persistence", type=float, default=d.min_persistence,
                       help="share of frames an object must be present in")
    build.add_argument("--min-motion", type=float, default=d.min_motion,
                       help="centroid travel of the most-moving object, share of the frame diagonal")
    build.add_argument("--min-objects", type=int, default=d.min_objects, help="objects a clip must keep")
    build.add_argument("--clips-per-shard", type=int, default=d.clips_per_shard)
    build.add_argument("--crf", type=int, default=d.crf, help="H.264 CRF of the stored frames (0 = lossless)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    inspect = sub.add_parser("inspect", help="summarise a built folder (clips, objects, shards, skips)")
    inspect.add_argument("folder")
    return parser


def _build(args: argparse.Namespace) -> int:
    from .build import build_dataset, list_inputs
    from .clips import DataSettings, ObjectsFrom

    objects_from: ObjectsFrom = args.objects_from or ("masks" if args.masks else "caption")
    settings = DataSettings(
        fps=args.fps, height=args.size[0], width=args.size[1], frames=args.frames, min_frames=args.min_frames,
        objects_from=objects_from, tracker=args.tracker, min_area=args.min_area, max_area=args.max_area,
        min_persistence=args.min_persistence, min_motion=args.min_motion, min_objects=args.min_objects,
        seed=args.seed, crf=args.crf, clips_per_shard=args.clips_per_shard, workers=args.workers,
        ray_address=args.ray, num_gpus=args.num_gpus, device=args.device, llm=args.llm, detector=args.detector,
        sam2=args.sam2, sam3=args.sam3, box_threshold=args.box_threshold, text_threshold=args.text_threshold)
    inputs = list_inputs(args.input, settings, captions=args.captions, masks=args.masks)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=None, unit="clip", desc="ttm-data build", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        report = build_dataset(inputs, args.out, settings, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items())) or "none"
    sys.stdout.write(f"{report.total} clips listed, {report.already} finished before, {report.processed} made now: "
                     f"{report.done} kept in {len(report.shards)} new shard(s), skipped: {skipped} "
                     f"({report.clips_per_minute:.1f} clips/min)\n")
    return 0


def inspect_folder(folder: Path) -> dict[str, object]:
    """A summary of a built folder: shards, clips, objects per clip, frames, skip reasons."""
    from .reader import find_shards
    from .shards import MANIFEST, read_shard_members

    shards = find_shards(folder)
    clips, objects, frames = 0, Counter[int](), Counter[int]()
    sizes = Counter[str]()
    for shard in shards:
        for _key, members in read_shard_members(shard):
            meta = json.loads(members["json"].decode("utf-8"))
            clips += 1
            objects[len(meta["names"])] += 1
            frames[int(meta["frames"])] += 1
            sizes[f"{meta['height']}x{meta['width']}"] += 1
    reasons = Counter[str]()
    manifest = folder / MANIFEST
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                if entry["status"] == "skipped":
                    reasons[entry["reason"]] += 1
    return {"folder": str(folder), "shards": len(shards), "clips": clips,
            "objects_per_clip": dict(sorted(objects.items())), "frames_per_clip": dict(sorted(frames.items())),
            "sizes": dict(sizes), "skipped": dict(sorted(reasons.items()))}


def _inspect(args: argparse.Namespace) -> int:
    summary = inspect_folder(Path(args.folder))
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ttm-data``; returns the exit status (2 for bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _build(args) if args.command == "build" else _inspect(args)
    except TTMInputError as err:
        sys.stderr.write(f"ttm-data {args.command}: {err}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
