"""The masked-attention kernel benchmark: dense SDPA vs the naive boolean-mask path vs the grouped path of
``ttm_core.stage2.attention`` (time, memory, exactness), on CPU. Run it with ``python -m benchmarks attention``.

Timing: all variants of a case run in ONE process, interleaved round by round (the order rotates
every round) so that machine load hits them alike; the median per variant is reported.
Memory: every variant runs once more in a FRESH subprocess that builds its inputs in place,
warms up on a small problem, resets its peak resident set size (VmHWM, ``/proc/self/clear_refs``)
and reads it after the call: peak minus the RSS before the call is the call's peak extra memory
(everything it holds at once, its output included). Without the reset (not Linux, no permission)
the high-water mark is used and the "slack" it could hide is reported.
"""

from __future__ import annotations

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

from benchmarks.peak_memory import PeakRSS, fixed_mmap_threshold

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
    from ttm_core.stage2.attention.kernels import grouped_self_attention, naive_masked_attention
    from ttm_core.stage2.attention.plan import self_groups

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
    result = subprocess.run([sys.executable, "-m", "benchmarks", "_memory"], capture_output=True, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[1], timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe for {variant} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_command() -> int:
    """The memory probe's own process (``python -m benchmarks _memory``), spec in TTM_BENCH_MEMORY."""
    fixed = fixed_mmap_threshold()  # before anything is allocated: RSS then follows live tensors
    spec = json.loads(os.environ["TTM_BENCH_MEMORY"])
    torch.set_num_threads(int(spec["threads"]))
    raw = spec["case"]
    case = AttentionCase(tuple(raw["grid"]), tuple(raw["coverage"]), raw["heads"], raw["head_dim"], raw["batch"])
    reading = measure_memory_in_this_process(case, spec["variant"])
    if fixed:
        reading["method"] = f"{reading['method']}, glibc mmap threshold fixed at 64 KiB"
    sys.stdout.write(json.dumps(reading) + "\n")
    return 0


def time_case(case: AttentionCase, rounds: int) -> dict[str, object]:
    """Median seconds per variant over interleaved rounds, plus exactness and rho."""
    from ttm_core.stage2.attention.plan import self_groups

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
        "memory_method": "fresh subprocess per variant (inputs built in place, warm-up on a small problem, glibc "
                         "mmap threshold fixed at 64 KiB so RSS follows live tensors): peak RSS (VmHWM, reset just "
                         "before the call) minus RSS before the call",
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
