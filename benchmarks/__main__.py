"""Benchmarks (not tests): ``python -m benchmarks <subcommand> [--json FILE]``; the README's Performance
section gives the commands and the Makefile a target for each.

Subcommands:
    attention   masked self-attention on CPU: dense vs naive vs grouped (``benchmarks.attention``).
    stage2      Stage 2 through diffusers on a CogVideoX-like model: one denoising step and the whole
                one-step call, ours vs the stock pipeline (``benchmarks.stage2``).
    native      one sampling step of a random-weight native ComfyUI Wan, patched vs unpatched
                (``benchmarks.native_wan``; ComfyUI's Python).
    encode      Video Combine's peak extra memory encoding a clip (``benchmarks.encode_memory``).
    flow-track  the weights-free flow tracker on CPU: frames/s and IoU per settings row at 832x480x81
                (``benchmarks.flow_track``).
    track-memory  tracking memory vs clip length, streamed vs all frames at once (``benchmarks.track_memory``).
    data-build  ttm-data build: clips per minute with 1 vs 2 worker processes (``benchmarks.data_build``).
    train-step  ttm-train's Stage 2 training step vs a plain fine-tune of the same tiny base: time and peak
                memory ratios (``benchmarks.train_step``).
    stage1      ttm-train stage1's training step vs a plain fine-tune of the same tiny base, and sampling a
                trajectory vs sampling a video of the same size (``benchmarks.stage1``).
    eval        ttm-eval's metrics: seconds per clip each, adherence clips per minute with the flow tracker
                (``benchmarks.eval``).
    gpu         every GPU benchmark in one run at the published model sizes (``--size tiny``: on the CPU,
                plumbing only): native Wan, masked-attention kernels, CogVideoX-5B, training step
                (``benchmarks.gpu``).
    plan        Stage 1's plan backend: seconds per clip with the tiny local LLM, constrained vs
                unconstrained decoding (``benchmarks.plan``).
    modelfree   the model-free chain (Objects From Masks -> Image To Motion paths -> warp) vs an integer-paste
                cut-and-drag at 832x480x81, 1/3/8 objects (``benchmarks.modelfree``).

Every benchmark measures its variants side by side in one run and prints ratios; none asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import torch

from benchmarks import write_json
from benchmarks.attention import DEFAULT_COVERAGES, DEFAULT_GRIDS, format_table, memory_command, run_attention_benchmark


def _parse_grid(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"grid {text!r} is not TxHxW")
    return parts  # type: ignore[return-value]


def _parse_coverage(text: str) -> tuple[float, ...]:
    return tuple(float(p) for p in text.split(","))


def _emit(table: str, report: dict, json_path: str | None) -> int:
    """Print the table; write the whole report as JSON when asked."""
    sys.stdout.write(table)
    if json_path:
        write_json(json_path, report)
        sys.stdout.write(f"wrote {json_path}\n")
    return 0


def _attention_command(args: argparse.Namespace) -> int:
    report = run_attention_benchmark(args.grid or DEFAULT_GRIDS, args.coverage or DEFAULT_COVERAGES, args.rounds,
                                     args.threads, memory=not args.no_memory)
    return _emit(format_table(report), report, args.json)


def _stage2_command(args: argparse.Namespace) -> int:
    from benchmarks.stage2 import Stage2Case, format_report, run_stage2_benchmark

    case = Stage2Case(height=args.size, width=args.size, frames=args.frames, layers=args.layers)
    report = run_stage2_benchmark(case, args.rounds, args.pipeline_rounds, args.threads, memory=not args.no_memory,
                                  pipeline=not args.no_pipeline)
    return _emit(format_report(report), report, args.json)


def _parse_size(text: str) -> tuple[int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WxH")
    return parts  # type: ignore[return-value]


def _flow_track_command(args: argparse.Namespace) -> int:
    from benchmarks.flow_track import format_table as flow_table
    from benchmarks.flow_track import run_flow_benchmark

    width, height = args.size
    report = run_flow_benchmark(height, width, args.frames, args.objects, args.rounds, args.threads)
    return _emit(flow_table(report), report, args.json)


def _stage2_memory_command(_: argparse.Namespace) -> int:
    from benchmarks.stage2 import memory_command as stage2_memory

    return stage2_memory()


def _native(argv: list[str]) -> int:
    from benchmarks.native_wan import main as native_main

    return native_main(argv)


def _encode(argv: list[str]) -> int:
    from benchmarks.encode_memory import main as encode_main

    return encode_main(argv)


def _track_memory(argv: list[str]) -> int:
    from benchmarks.track_memory import main as track_memory_main

    return track_memory_main(argv)


def _data_build(argv: list[str]) -> int:
    from benchmarks.data_build import main as data_build_main

    return data_build_main(argv)


def _eval(argv: list[str]) -> int:
    from benchmarks.eval import main as eval_main

    return eval_main(argv)


def _train_step(argv: list[str]) -> int:
    from benchmarks.train_step import main as train_step_main

    return train_step_main(argv)


def _stage1(argv: list[str]) -> int:
    from benchmarks.stage1 import main as stage1_main

    return stage1_main(argv)


def _modelfree(argv: list[str]) -> int:
    from benchmarks.modelfree import main as modelfree_main

    return modelfree_main(argv)


def _gpu(argv: list[str]) -> int:
    from benchmarks.gpu import main as gpu_main

    return gpu_main(argv)


def _plan(argv: list[str]) -> int:
    from benchmarks.plan import main as plan_main

    return plan_main(argv)


_OWN_PARSERS: dict[str, Callable[[list[str]], int]] = {"native": _native, "encode": _encode, "plan": _plan,
                                                       "track-memory": _track_memory, "data-build": _data_build,
                                                       "train-step": _train_step, "stage1": _stage1, "eval": _eval,
                                                       "modelfree": _modelfree, "gpu": _gpu}
"""Subcommands that parse their own arguments (``python -m benchmarks native --help``)."""


_SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "attention": _attention_command,
    "_memory": lambda _: memory_command(),
    "stage2": _stage2_command,
    "_stage2_memory": _stage2_memory_command,
    "flow-track": _flow_track_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    attention = sub.add_parser("attention", help="masked self-attention: dense vs naive vs grouped (CPU)")
    attention.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    attention.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    attention.add_argument("--threads", type=int, default=torch.get_num_threads(),
                           help="torch CPU threads (default: torch's default)")
    attention.add_argument("--grid", type=_parse_grid, action="append",
                           help="token grid TxHxW (repeatable; default 8x32x32 and 13x30x45)")
    attention.add_argument("--coverage", type=_parse_coverage, action="append",
                           help="object coverages, comma-separated fractions (repeatable; default 0.3,0.15 and "
                                "0.25,0.15,0.1,0.1)")
    attention.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    sub.add_parser("_memory", help=argparse.SUPPRESS)
    stage2 = sub.add_parser("stage2", help="Stage 2 through diffusers: ours vs the stock pipeline (CPU)")
    stage2.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    stage2.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the step (default 7)")
    stage2.add_argument("--pipeline-rounds", type=int, default=2,
                        help="interleaved rounds of the whole one-step call (default 2)")
    stage2.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    stage2.add_argument("--size", type=int, default=512, help="frame width and height in px (default 512)")
    stage2.add_argument("--frames", type=int, default=29, help="frames, 1 + 4k (default 29: 8 latent frames)")
    stage2.add_argument("--layers", type=int, default=4, help="transformer blocks (default 4; K = a quarter)")
    stage2.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    stage2.add_argument("--no-pipeline", action="store_true", help="only the denoising step")
    sub.add_parser("_stage2_memory", help=argparse.SUPPRESS)
    flow = sub.add_parser("flow-track", help="the weights-free flow tracker: frames/s and IoU per settings (CPU)")
    flow.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    flow.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds per row (default 3)")
    flow.add_argument("--threads", type=int, default=None,
                      help="OpenCV and torch CPU threads (default: leave their defaults)")
    flow.add_argument("--size", type=_parse_size, default=(832, 480), help="frame size WxH (default 832x480)")
    flow.add_argument("--frames", type=int, default=81, help="frames (default 81)")
    flow.add_argument("--objects", type=int, default=2, help="objects in the scene (default 2)")
    sub.add_parser("native", help="native ComfyUI Wan: patched vs unpatched sampling step (own options)")
    sub.add_parser("encode", help="Video Combine: peak extra memory of encoding (own options)")
    sub.add_parser("track-memory", help="tracking memory vs clip length: streamed vs at once (own options)")
    sub.add_parser("data-build", help="ttm-data build: clips/minute with 1 vs 2 worker processes (own options)")
    sub.add_parser("train-step", help="ttm-train: Stage 2 step time / memory vs a plain fine-tune (own options)")
    sub.add_parser("stage1", help="ttm-train stage1: step vs plain fine-tune, trajectory vs video sampling "
                   "(own options)")
    sub.add_parser("eval", help="ttm-eval: seconds per clip per metric, adherence clips/minute (own options)")
    sub.add_parser("modelfree", help="the model-free chain vs an integer-paste cut-and-drag, 832x480x81 "
                   "(own options)")
    sub.add_parser("gpu", help="every GPU benchmark at real size (--size tiny: on CPU, plumbing) (own options)")
    sub.add_parser("plan", help="Stage 1 plan backend: s/clip, constrained vs unconstrained tiny LLM (own options)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _OWN_PARSERS:
        return _OWN_PARSERS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    return _SUBCOMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
