"""Benchmarks (not tests): ``python -m ttm_core.bench <subcommand> --json FILE``.

Subcommands:
    attention   masked self-attention on CPU: dense SDPA vs the naive boolean-mask path vs the
                grouped path of ``ttm_core.attention`` (time, memory, exactness).
    stage2      Stage 2 through diffusers on a CogVideoX-like model (8192 video tokens): one
                denoising step and the whole one-step call, ours vs the stock pipeline
                (``ttm_core.stage2.bench``).

Later issues add subcommands (e.g. ``stage2``) by writing a ``_<name>_command`` function and
registering it in ``_SUBCOMMANDS``.

Timing: all variants of a case run in ONE process, interleaved round by round (the order rotates
every round) so that machine load hits them alike; the median per variant is reported.
Memory: every variant runs once more in a FRESH subprocess that builds its inputs in place,
warms up on a small problem, resets its peak resident set size (VmHWM, ``/proc/self/clear_refs``)
and reads it after the call: peak minus the RSS before the call is the call's peak extra memory
(everything it holds at once, its output included). Without the reset (not Linux, no permission)
the high-water mark is used and the "slack" it could hide is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .peak_memory import PeakRSS

logger = logging.getLogger(__name__)

DEFAULT_GRIDS = ((8, 32, 32), (13, 30, 45))
DEFAULT_COVERAGES = ((0.30, 0.15), (0.25, 0.15, 0.10, 0.10))
TARGETS = {"limit_eff_min": 0.85, "memory_vs_dense_max": 5.0, "speedup_vs_naive_min": 3.0}
TARGET_GRID = (13, 30, 45)


@dataclass(frozen=True)
class AttentionCase:
    """One benchmark case: a token grid (frames, rows, columns) and object coverages (0..1 each)."""

    grid: tuple[int, int, int]
    coverage: tuple[float, ...]
    heads: int = 2
    head_dim: int = 64
    batch: int = 1

    def __post_init__(self) -> None:
        if min(self.grid) < 1 or not self.coverage or any(c <= 0 for c in self.coverage) or sum(self.coverage) >= 1:
            raise ValueError(f"bad case {self}")

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def label(self) -> str:
        t, h, w = self.grid
        return f"{t}x{h}x{w} objects {'/'.join(f'{round(c * 100)}%' for c in self.coverage)}"


def case_ids(case: AttentionCase) -> torch.Tensor:
    """int64 ``[N]`` object id per token in (t, y, x) order: 0 = background, objects 1..L.

    Each object is a vertical band of round(coverage * W) columns that moves one column per frame
    (wrapping), so every frame has the requested coverage and objects are spatially coherent.
    """
    frames, rows, cols = case.grid
    ids = torch.zeros(frames, rows, cols, dtype=torch.int64)
    widths = [max(1, round(c * cols)) for c in case.coverage]
    if sum(widths) > cols:
        raise ValueError(f"coverages {case.coverage} do not fit {cols} columns")
    for t in range(frames):
        x = t
        for object_id, width in enumerate(widths, start=1):
            band = (torch.arange(width) + x) % cols
            ids[t, :, band] = object_id
            x += width + 1
    return ids.flatten()


def case_inputs(case: AttentionCase, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 q, k, v ``[B, H, N, D]``, filled in place (no temporary copies, for honest memory readings)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (case.batch, case.heads, case.tokens, case.head_dim)
    return tuple(torch.empty(shape).normal_(generator=gen) for _ in range(3))  # type: ignore[return-value]


def _variants(ids: torch.Tensor) -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    from .attention.kernels import grouped_self_attention, naive_masked_attention
    from .attention.plan import self_groups

    plan = self_groups(ids)  # built once per forward and shared by all K blocks: not timed per call

    def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return naive_masked_attention(q, k, v, ids[:, None] == ids[None, :])  # the N x N mask is part of it

    def ours(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return grouped_self_attention(q, k, v, plan, backend="loop")

    return {"dense": dense, "naive": naive, "ours": ours}


def measure_memory_in_this_process(case: AttentionCase, variant: str) -> dict[str, object]:
    """Peak extra KiB of one call of ``variant`` (run in a fresh process: see module docstring).

    Uses the process's own peak RSS (VmHWM), reset to the current RSS just before the call, so the
    reading is the call's own peak above what was resident before it. Where the reset is not
    allowed it falls back to the high-water mark and reports the slack it could hide.
    """
    ids = case_ids(case)
    small = AttentionCase((1, 8, 8), case.coverage, case.heads, case.head_dim, case.batch)
    small_fn = _variants(case_ids(small))[variant]
    small_fn(*case_inputs(small))  # warm-up: thread pools, kernels, allocator
    fn = _variants(ids)[variant]
    q, k, v = case_inputs(case)
    with PeakRSS() as peak:
        out = fn(q, k, v)
    del out
    return {"extra_kib": peak.extra_kib, "slack_kib": peak.slack_kib, "rss_before_kib": peak.rss_before,
            "method": peak.method}


def measure_memory(case: AttentionCase, variant: str, threads: int) -> dict[str, object]:
    """Run ``measure_memory_in_this_process`` in a fresh interpreter and return its reading."""
    spec = json.dumps({"case": asdict(case), "variant": variant, "threads": threads})
    env = dict(os.environ, TTM_BENCH_MEMORY=spec)
    result = subprocess.run([sys.executable, "-m", "ttm_core.bench", "_memory"], capture_output=True, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[1], timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe for {variant} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _memory_command(_: argparse.Namespace) -> int:
    spec = json.loads(os.environ["TTM_BENCH_MEMORY"])
    torch.set_num_threads(int(spec["threads"]))
    raw = spec["case"]
    case = AttentionCase(tuple(raw["grid"]), tuple(raw["coverage"]), raw["heads"], raw["head_dim"], raw["batch"])
    sys.stdout.write(json.dumps(measure_memory_in_this_process(case, spec["variant"])) + "\n")
    return 0


def time_case(case: AttentionCase, rounds: int) -> dict[str, object]:
    """Median seconds per variant over interleaved rounds, plus exactness and rho."""
    from .attention.plan import self_groups

    ids = case_ids(case)
    q, k, v = case_inputs(case)
    variants = _variants(ids)
    names = list(variants)
    t0 = time.perf_counter()
    plan = self_groups(ids)
    plan_seconds = time.perf_counter() - t0
    reference = variants["naive"](q, k, v)
    ours = variants["ours"](q, k, v)
    max_abs_diff = float((ours - reference).abs().max())
    del reference, ours
    variants["dense"](q, k, v)  # every variant has now run once (warm-up, not timed)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            out = variants[name](q, k, v)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            del out
    median = {name: statistics.median(values) for name, values in times.items()}
    counts = torch.bincount(ids).tolist()
    return {"seconds": median, "all_seconds": times, "cpu_seconds": {n: statistics.median(v) for n, v in cpu.items()},
            "all_cpu_seconds": cpu, "plan_seconds": plan_seconds, "rho": plan.rho, "group_sizes": counts,
            "max_abs_diff_vs_naive": max_abs_diff}


def _paired(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of times[numerator][r] / times[denominator][r]."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def run_attention_benchmark(grids: Sequence[tuple[int, int, int]], coverages: Sequence[tuple[float, ...]],
                            rounds: int, threads: int, memory: bool = True) -> dict[str, object]:
    """All cases; returns the JSON-ready report."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    results = []
    for grid in grids:
        for coverage in coverages:
            case = AttentionCase(tuple(grid), tuple(coverage))
            logger.info("benchmarking %s (%d tokens)", case.label, case.tokens)
            timing = time_case(case, rounds)
            sec = timing["seconds"]
            time_ratio = sec["ours"] / sec["dense"]
            row = {"case": case.label, "grid": list(grid), "coverage": list(coverage), "tokens": case.tokens,
                   "heads": case.heads, "head_dim": case.head_dim, "dtype": "float32",
                   "dense_s": sec["dense"], "naive_s": sec["naive"], "ours_s": sec["ours"],
                   "plan_build_s": timing["plan_seconds"], "rho": timing["rho"], "time_ratio": time_ratio,
                   "limit_eff": timing["rho"] / time_ratio, "speedup_vs_naive": sec["naive"] / sec["ours"],
                   # Noise check on a shared machine: the same ratios taken within each round, then the median.
                   "time_ratio_paired": _paired(timing["all_seconds"], "ours", "dense"),
                   "speedup_vs_naive_paired": _paired(timing["all_seconds"], "naive", "ours"),
                   "max_abs_diff_vs_naive": timing["max_abs_diff_vs_naive"], "group_sizes": timing["group_sizes"],
                   "rounds_s": timing["all_seconds"], "cpu_s": timing["cpu_seconds"],
                   "rounds_cpu_s": timing["all_cpu_seconds"]}
            # CPU time the process itself spent: insensitive to other processes taking the cores.
            row["limit_eff_cpu"] = timing["rho"] / (timing["cpu_seconds"]["ours"] / timing["cpu_seconds"]["dense"])
            row["limit_eff_paired"] = timing["rho"] / row["time_ratio_paired"]
            if memory:
                mem = {name: measure_memory(case, name, threads) for name in ("dense", "naive", "ours")}
                row.update({f"peak_extra_mib_{name}": m["extra_kib"] / 1024 for name, m in mem.items()})
                row["memory_slack_mib"] = max(m["slack_kib"] for m in mem.values()) / 1024
                row["memory_method"] = sorted({m["method"] for m in mem.values()})
                row["memory_ours_vs_dense"] = mem["ours"]["extra_kib"] / max(1, mem["dense"]["extra_kib"])
            results.append(row)
    target = [r for r in results if tuple(r["grid"]) == TARGET_GRID]
    verdict = {}
    if target:
        verdict = {
            "limit_eff_ok": all(r["limit_eff"] >= TARGETS["limit_eff_min"] for r in target),
            "speedup_vs_naive_ok": all(r["speedup_vs_naive"] >= TARGETS["speedup_vs_naive_min"] for r in target),
        }
        if memory:
            verdict["memory_ok"] = all(r["memory_ours_vs_dense"] <= TARGETS["memory_vs_dense_max"] for r in target)
    return {
        "benchmark": "attention",
        "what": "masked self-attention over object groups, [B=1, H, N, D] fp32 on CPU",
        "timing_method": f"median of {rounds} interleaved rounds in one process (order rotates per round), "
                         "after one untimed call of each variant",
        "memory_method": "fresh subprocess per variant (inputs built in place, warm-up on a small problem): "
                         "peak RSS (VmHWM, reset just before the call) minus RSS before the call",
        "naive_includes": "building the N x N boolean mask",
        "ours_excludes": "building the grouping plan (once per forward, shared by all K blocks; plan_build_s)",
        "torch": torch.__version__, "threads": threads, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "targets_at_grid": list(TARGET_GRID), "targets": TARGETS, "verdict": verdict,
        "results": results,
    }


def format_table(report: dict[str, object]) -> str:
    """A fixed-width table of the report's results."""
    header = (f"{'case':<34}{'N':>7}{'dense s':>9}{'naive s':>9}{'ours s':>8}{'rho':>7}{'ratio':>7}"
              f"{'eff':>6}{'eff*':>6}{'effc':>6}{'x naive':>8}{'MiB dense':>10}{'MiB naive':>10}{'MiB ours':>9}"
              f"{'max|diff|':>11}")
    lines = [header, "-" * len(header)]
    for r in report["results"]:  # type: ignore[union-attr]
        mem = [r.get(f"peak_extra_mib_{n}") for n in ("dense", "naive", "ours")]
        mem_text = "".join(f"{m:>{w}.1f}" if m is not None else f"{'-':>{w}}" for m, w in zip(mem, (10, 10, 9)))
        lines.append(f"{r['case']:<34}{r['tokens']:>7}{r['dense_s']:>9.3f}{r['naive_s']:>9.3f}{r['ours_s']:>8.3f}"
                     f"{r['rho']:>7.3f}{r['time_ratio']:>7.3f}{r['limit_eff']:>6.2f}{r['limit_eff_paired']:>6.2f}"
                     f"{r['limit_eff_cpu']:>6.2f}"
                     f"{r['speedup_vs_naive']:>8.1f}"
                     f"{mem_text}{r['max_abs_diff_vs_naive']:>11.2e}")
    lines.append("")
    lines.append("ratio = ours / dense (wall-clock medians); eff = rho / ratio; eff* = rho / median of per-round "
                 "ratios; effc = rho / ratio of process CPU-time medians; MiB = peak extra memory of one call")
    load = report["load_average_1_5_15"]
    lines.append(f"timing: {report['timing_method']}; threads {report['threads']} of {report['cpu_count']} CPUs; "
                 f"load average {load['before'][0]:.1f} -> {load['after'][0]:.1f}; torch {report['torch']}")
    lines.append(f"memory: {report['memory_method']}")
    lines.append(f"targets at {'x'.join(map(str, TARGET_GRID))}: limit_eff >= {TARGETS['limit_eff_min']}, "
                 f"ours' peak extra memory <= {TARGETS['memory_vs_dense_max']}x dense's, "
                 f">= {TARGETS['speedup_vs_naive_min']}x faster than naive -> {report['verdict']}")
    return "\n".join(lines) + "\n"


def _parse_grid(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"grid {text!r} is not TxHxW")
    return parts  # type: ignore[return-value]


def _parse_coverage(text: str) -> tuple[float, ...]:
    return tuple(float(p) for p in text.split(","))


def _attention_command(args: argparse.Namespace) -> int:
    report = run_attention_benchmark(args.grid or DEFAULT_GRIDS, args.coverage or DEFAULT_COVERAGES, args.rounds,
                                     args.threads, memory=not args.no_memory)
    sys.stdout.write(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        sys.stdout.write(f"wrote {args.json}\n")
    return 0


def _stage2_command(args: argparse.Namespace) -> int:
    from .stage2.bench import Stage2Case, format_report, run_stage2_benchmark

    case = Stage2Case(height=args.size, width=args.size, frames=args.frames, layers=args.layers)
    report = run_stage2_benchmark(case, args.rounds, args.pipeline_rounds, args.threads, memory=not args.no_memory,
                                  pipeline=not args.no_pipeline)
    sys.stdout.write(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        sys.stdout.write(f"wrote {args.json}\n")
    return 0


def _stage2_memory_command(_: argparse.Namespace) -> int:
    from .stage2.bench import memory_command

    return memory_command()


_SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "attention": _attention_command,
    "_memory": _memory_command,
    "stage2": _stage2_command,
    "_stage2_memory": _stage2_memory_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ttm_core.bench", description=__doc__.split("\n\n")[0])
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    return _SUBCOMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
