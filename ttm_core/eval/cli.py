"""``ttm-eval``: the paper's metrics and trajectory adherence from the command line.

    ttm-eval generate-set OUT [--count 8 --seed 0 --size 96x128 --frames 17 --fps 8 --max-objects 3]
    ttm-eval score --set SET --videos NAME=FOLDER [--videos NAME=FOLDER ...] --out RESULTS
                   [--metrics adherence,ad,clip_frame,viclip_t,viclip_v,fvd] [--clip DIR] [--viclip FILE]
                   [--viclip-tokenizer DIR] [--i3d FILE] [--reference DIR] [--device cpu] [--fvd-frames 16]
    ttm-eval ablation --manifest SET/jobs.jsonl --workflow W --server URL [--server URL ...] --out DIR
                   [--guidance off,on] [--attention none,cross,self,both] [--resume] [score's metric and
                   model options]

Also ``python -m ttm_core.eval.cli``. Bad input ends with one line naming the input and the fix and exit
status 2. ``score`` writes results.json, results.csv, results.md (printed too), metrics.png and one
iou_<config>_<clip>.png per clip. See docs/EVAL.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import TTMInputError

LOG = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 96x128")
    return int(parts[0]), int(parts[1])


def _config(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=FOLDER, e.g. both=renders/both")
    return name.strip(), Path(folder.strip())


def build_parser() -> argparse.ArgumentParser:
    from .benchset import BenchSettings
    from .score import METRICS

    d = BenchSettings()
    parser = argparse.ArgumentParser(prog="ttm-eval", description="Through-The-Mask evaluation: trajectory "
                                     "adherence, FVD, CLIPFrame, ViCLIP-T/V, AD.")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate-set", help="write a procedural benchmark set (ttm-batch jobs layout)")
    gen.add_argument("out", type=Path, help="an empty or new folder")
    gen.add_argument("--count", type=int, default=d.count, help=f"clips (default {d.count})")
    gen.add_argument("--seed", type=int, default=d.seed, help="seed: the same seed gives the same set")
    gen.add_argument("--size", type=_size, default=(d.height, d.width),
                     help=f"HxW, multiples of 16 (default {d.height}x{d.width})")
    gen.add_argument("--frames", type=int, default=d.frames, help=f"frames per clip (default {d.frames})")
    gen.add_argument("--fps", type=float, default=d.fps, help=f"frame rate (default {d.fps:g})")
    gen.add_argument("--max-objects", type=int, default=d.max_objects, help="most objects per clip (1-6)")
    score = sub.add_parser("score", help="score folders of rendered videos against a set")
    score.add_argument("--set", dest="set_dir", type=Path, required=True, help="the set folder (jobs.jsonl)")
    score.add_argument("--videos", type=_config, action="append", required=True, metavar="NAME=FOLDER",
                       help="a configuration and its videos (<id>.mp4 or <id>/*.mp4); repeat per configuration")
    score.add_argument("--out", type=Path, required=True, help="results folder")
    score.add_argument("--metrics", default="adherence,ad",
                       help=f"comma-separated, any of {','.join(METRICS)} (default adherence,ad: no weights)")
    score.add_argument("--device", default="cpu", help="torch device of the models (cpu, cuda, cuda:1)")
    score.add_argument("--fvd-frames", type=int, default=16, help="frames per video for FVD (default 16)")
    score.add_argument("--batch-size", type=int, default=8)
    _model_options(score)
    ablation = sub.add_parser("ablation", help="render a manifest under the masked-attention configurations "
                              "through ttm-batch, then score them (the paper's Table 3)")
    ablation.add_argument("--manifest", type=Path, required=True,
                          help="a jobs file; its folder is the set (trajectories/, reference/), e.g. SET/jobs.jsonl")
    ablation.add_argument("--workflow", type=Path, required=True,
                          help="API-format workflow with a Stage 2 node (self_strength, cross_strength, guidance)")
    ablation.add_argument("--server", action="append", required=True, help="ComfyUI URL (repeat for several)")
    ablation.add_argument("--out", type=Path, required=True, help="folder: jobs/, renders/<config>/, results/")
    ablation.add_argument("--guidance", default="off,on", help="guidance settings to run: off, on or off,on")
    ablation.add_argument("--attention", default="none,cross,self,both",
                          help="masked-attention settings to run, a subset of none,cross,self,both (default all)")
    ablation.add_argument("--per-server", type=int, default=2, help="jobs in flight per server (default 2)")
    ablation.add_argument("--resume", action="store_true", help="keep renders done in an earlier run")
    ablation.add_argument("--metrics", default="adherence,ad", help="as for score")
    ablation.add_argument("--device", default="cpu", help="torch device of the metric models")
    ablation.add_argument("--fvd-frames", type=int, default=16)
    ablation.add_argument("--batch-size", type=int, default=8)
    _model_options(ablation)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default="", help="CLIP folder (transformers) for clip_frame")
    parser.add_argument("--viclip", default="", help="ViCLIP checkpoint (ViClip-InternVid-10M-FLT.pth)")
    parser.add_argument("--viclip-tokenizer", default=None, help="CLIP tokenizer folder (default: the checkpoint's)")
    parser.add_argument("--i3d", default="", help="I3D TorchScript file (i3d_torchscript.pt) for fvd")
    parser.add_argument("--reference", type=Path, default=None, help="reference videos (default SET/reference)")


def _bar(args: argparse.Namespace, unit: str) -> tuple[Callable[[int, int], None], Any]:
    bar = None
    if not args.no_progress:
        from tqdm import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=None, unit=unit, desc=f"ttm-eval {args.command}", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    return progress, bar


def _generate(args: argparse.Namespace) -> int:
    from .benchset import BenchSettings, generate_set

    settings = BenchSettings(count=args.count, seed=args.seed, height=args.size[0], width=args.size[1],
                             frames=args.frames, fps=args.fps, max_objects=args.max_objects)
    progress, bar = _bar(args, "clip")
    try:
        jobs = generate_set(args.out, settings, progress)
    finally:
        if bar is not None:
            bar.close()
    sys.stdout.write(f"wrote {len(jobs)} clips to {args.out} (jobs: {args.out / 'jobs.jsonl'})\n")
    return 0


def _score(args: argparse.Namespace) -> int:
    from .report import write_results
    from .score import score_set

    configs = dict(args.videos)
    if len(configs) != len(args.videos):
        raise TTMInputError("videos", "a configuration name is used twice", "give each --videos its own NAME")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    progress, bar = _bar(args, "clip")
    try:
        results = score_set(args.set_dir, configs, metrics=metrics,
                            models={"clip": args.clip, "viclip": args.viclip,
                                    "viclip_tokenizer": args.viclip_tokenizer, "i3d": args.i3d},
                            device=args.device, fvd_frames=args.fvd_frames, batch_size=args.batch_size,
                            reference_dir=args.reference, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    written = write_results(args.out, results)
    sys.stdout.write(written["markdown"].read_text())
    sys.stdout.write(f"wrote {len(written)} files to {args.out}\n")
    return 0


def _ablation(args: argparse.Namespace) -> int:
    import json

    from .ablation import render, table, write_jobs
    from .report import measured_metrics, write_results
    from .score import score_set

    words = [w.strip() for w in args.guidance.split(",") if w.strip()]
    if not words or any(w not in ("on", "off") for w in words):
        raise TTMInputError("guidance", f"{args.guidance!r} is not off, on or off,on", "use e.g. --guidance off,on")
    if not args.workflow.is_file():
        raise TTMInputError("workflow", f"{args.workflow} does not exist", "pass an API-format workflow JSON")
    workflow = json.loads(args.workflow.read_text())
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    models = {"clip": args.clip, "viclip": args.viclip, "viclip_tokenizer": args.viclip_tokenizer, "i3d": args.i3d}
    attention = [w.strip() for w in args.attention.split(",") if w.strip()]
    jobs = write_jobs(args.manifest, workflow, args.out, [w == "on" for w in words], attention)
    statuses = render(jobs, args.workflow, args.server, args.out, per_server=args.per_server, resume=args.resume,
                      progress=not args.no_progress)
    progress, bar = _bar(args, "clip")
    try:
        results = score_set(args.manifest.parent, {name: args.out / "renders" / name for name in jobs},
                            metrics=metrics, models=models, device=args.device, fvd_frames=args.fvd_frames,
                            batch_size=args.batch_size, reference_dir=args.reference, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    results["renders"] = statuses
    write_results(args.out / "results", results)
    text = table(results, measured_metrics(results["summary"]))
    (args.out / "results" / "table3.md").write_text(text)
    sys.stdout.write(text)
    failed = [name for name, status in statuses.items() if status != 0]
    if failed:
        sys.stdout.write(f"some renders failed in: {', '.join(failed)} (their clips are missing from the scores)\n")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ttm-eval``; returns the exit status (2 for bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        commands = {"generate-set": _generate, "score": _score, "ablation": _ablation}
        return commands[args.command](args)
    except TTMInputError as err:
        sys.stderr.write(f"ttm-eval {args.command}: {err}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
