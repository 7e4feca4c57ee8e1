"""``python -m benchmarks gpu [--size tiny|real] [--only NAME]``: every GPU benchmark in one command.

Parts (each runs in its own subprocess, so one part's peak memory, CUDA context and ComfyUI state
cannot leak into the next, and a part that fails, runs out of memory or out of time is recorded
as such while the others still run):

* ``native``      ComfyUI's own WanModel at Wan 2.1 I2V-14B's and Wan 2.2 TI2V-5B's published
                  configs, random weights, wrapped in ComfyUI's ModelPatcher: one sampler step
                  (of a 2-step euler schedule, CFG 5) unpatched vs patched (strength 1, a 0.5 blend,
                  strength 1 + dual-clock guidance) per attention function ComfyUI has here
                  (PyTorch SDPA; flash-attn and SageAttention when importable), bf16 and fp8 weights
                  (``benchmarks.gpu_native``).
* ``kernels``     masked self-attention at the real token count (32,760 tokens, 832x480x81 Wan,
                  40 heads x 128, CFG batch 2, bf16): our grouped calls vs dense SDPA vs SDPA with the
                  dense boolean mask vs FlexAttention with a block mask vs varlen kernels
                  (``benchmarks.gpu_kernels``).
* ``cogvideox``   one denoising step of a CogVideoX-5B-I2V-sized diffusers transformer at 720x480x49,
                  the stock step vs ours (``benchmarks.gpu_cogvideox``).
* ``train``       ttm-train's Stage 2 step on a Wan 2.2 TI2V-5B-sized transformer with gradient
                  checkpointing (new layers, widened patch embedding) vs a plain full fine-tune step,
                  at the largest video size of a ladder that fits (``benchmarks.gpu_train``).
* ``native-720``  the 14B model at 1280x720x81 (SDPA and the fastest attention, unpatched vs
                  strength 1): last, because it is the slowest.

``--size real`` is sized for one H200-class GPU within ten minutes (``--budget`` seconds, default
540, shared out in the order above; a part that would overrun is stopped and recorded as
``timeout``). ``--size tiny`` runs every part on the CPU at a tiny size: plumbing only (the test
suite runs it), its figures mean nothing. Prints one JSON object (last line) and a table; with
``--size real`` writes ``docs/bench/gpu/<UTC date>.json`` unless ``--json`` says where.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]

PARTS: tuple[str, ...] = ("native", "kernels", "cogvideox", "train", "native-720")
"""In priority order: the budget is spent in this order."""

PART_CAPS_S = {"native": 230, "kernels": 90, "cogvideox": 60, "train": 120, "native-720": 150}
"""Most seconds each part may take at ``--size real`` (from the FLOP estimates in docs/bench/gpu/README.md)."""

TINY_CAP_S = 480
"""Seconds per part at tiny size: plumbing on a shared CPU, where load from other jobs can triple wall time."""

GOALS = {"native_time_ratio_max": 1.05, "native_peak_memory_ratio_max": 1.05,
         "kernel_speed_vs_flash_varlen_min": 0.8}
"""Issue 17's goals (ratios measured in the same run): patched / unpatched native Wan at 832x480x81,
strength 1, with SDPA and with the fastest attention; our masked kernel's speed / flash-attn varlen's."""


class Measure:
    """Wall time and peak memory of a block: on CUDA the allocator's peak (absolute, and its rise above
    what was allocated before the block); on the CPU the peak RSS rise (``peak_memory.PeakRSS``)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()

    def __enter__(self) -> Measure:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        else:
            from benchmarks.peak_memory import PeakRSS

            self.host = PeakRSS().__enter__()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.started
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated()
            self.peak_mib: float = peak / 2**20
            self.rise_mib: float = (peak - self.base) / 2**20
        else:
            self.host.__exit__()
            self.rise_mib = self.host.extra_kib / 1024
            self.peak_mib = self.rise_mib  # the CPU has no allocator peak: the rise stands in for it


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is missing or not positive (a CPU RSS rise of 0 at tiny size: no reading)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return round(a / b, 4)


def _part_module(name: str) -> Any:
    import importlib

    return importlib.import_module({"native": "benchmarks.gpu_native", "native-720": "benchmarks.gpu_native",
                                    "kernels": "benchmarks.gpu_kernels", "cogvideox": "benchmarks.gpu_cogvideox",
                                    "train": "benchmarks.gpu_train"}[name])


def environment() -> dict[str, Any]:
    """What ran the benchmark: device, torch, CUDA capability, optional kernels importable."""
    import importlib.util

    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=list(torch.cuda.get_device_capability(0)),
                    memory_gib=round(props.total_memory / 2**30, 1), cuda_version=torch.version.cuda)
    else:
        info["device"] = "cpu"
    info["optional"] = {name: importlib.util.find_spec(name) is not None
                        for name in ("flash_attn", "sageattention", "triton")}
    return info


def run_part(name: str, size: str, timeout: float) -> dict[str, Any]:
    """One part in a fresh interpreter; its report, or a record of why there is none."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "part.json"
        command = [sys.executable, "-m", "benchmarks", "gpu", "--_part", name, "--size", size, "--_out", str(out)]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            tail = (expired.stderr or b"")
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            return {"status": "timeout", "seconds": round(time.monotonic() - started, 1), "timeout_s": timeout,
                    "log_tail": tail[-2000:]}
        seconds = round(time.monotonic() - started, 1)
        if done.returncode != 0 or not out.is_file():
            return {"status": "failed", "seconds": seconds, "returncode": done.returncode,
                    "log_tail": done.stderr[-4000:]}
        report = json.loads(out.read_text())
    report.update(status="ok", seconds=seconds)
    return report


def part_main(name: str, size: str, out: Path) -> int:
    """The part's own process: run it, write its report."""
    report = _part_module(name).run(size, extended=name == "native-720")
    out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _finite_ratios(report: dict[str, Any]) -> list[str]:
    """Ratios that are not finite and positive (should be none)."""
    bad = []
    for part, body in report["parts"].items():
        for case in body.get("cases", []):
            for key, value in case.get("ratios", {}).items():
                if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                    bad.append(f"{part}/{case['case']}/{key}={value}")
    return bad


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals checked against this run (None where the run has no such case)."""
    out: dict[str, Any] = {}
    native = report["parts"].get("native", {}).get("cases", [])
    at_goal = [c for c in native if c.get("goal_case")]
    if at_goal:
        out["native_strength1"] = [
            {"case": c["case"], "time_ratio": c["ratios"].get("time"),
             "peak_memory_ratio": c["ratios"].get("peak_memory"),
             "ok": (c["ratios"].get("time") or math.inf) <= GOALS["native_time_ratio_max"]
             and (c["ratios"].get("peak_memory") or math.inf) <= GOALS["native_peak_memory_ratio_max"]}
            for c in at_goal]
    kernels = report["parts"].get("kernels", {}).get("cases", [])
    flash = [c for c in kernels if "speed_vs_flash_varlen" in c.get("ratios", {})]
    if flash:
        out["kernel_vs_flash_varlen"] = [
            {"case": c["case"], "speed_vs_flash_varlen": c["ratios"]["speed_vs_flash_varlen"],
             "ok": (c["ratios"]["speed_vs_flash_varlen"] or 0.0) >= GOALS["kernel_speed_vs_flash_varlen_min"]}
            for c in flash if c["variant"].startswith("ours")]
    return out


def format_table(report: dict[str, Any]) -> str:
    """One row per case: part, case, time, peak memory, its ratios."""
    lines = [f"GPU benchmarks, size {report['size']}, {report['environment']['device']}, torch "
             f"{report['environment']['torch']}"]
    header = f"{'part':<11}{'case':<62}{'time s':>9}{'peak MiB':>10}  ratios"
    lines += [header, "-" * (len(header) + 30)]
    for part, body in report["parts"].items():
        if body["status"] != "ok":
            lines.append(f"{part:<11}{body['status']} after {body['seconds']} s")
            continue
        for case in body["cases"]:
            time_s = case.get("time_s")
            peak = case.get("peak_mib")
            ratios = ", ".join(f"{k} {v:.3f}" for k, v in case.get("ratios", {}).items() if v is not None)
            lines.append(f"{part:<11}{case['case'][:61]:<62}{time_s if time_s is None else round(time_s, 4)!s:>9}"
                         f"{peak if peak is None else round(peak, 1)!s:>10}  {ratios}")
        for reason in body.get("skipped", []):
            lines.append(f"{part:<11}skipped: {reason}")
    lines.append(f"goals: {json.dumps(GOALS)}")
    lines.append(f"verdict: {json.dumps(report['verdict'])}")
    return "\n".join(lines) + "\n"


def check_size(size: str, cuda: bool) -> None:
    """Refuse ``--size real`` without a GPU before building anything (the 14B model alone is 28 GiB)."""
    from ttm_core.errors import TTMInputError

    if size == "real" and not cuda:
        raise TTMInputError("--size", "real size needs a CUDA GPU and torch sees none here",
                            "run `python -m benchmarks gpu --size tiny` on the CPU (plumbing only), or run "
                            "`bash benchmarks/gpu_run.sh run` on a GPU machine")


def run_all(size: str, only: list[str] | None, budget: float, json_path: str | None = None) -> dict[str, Any]:
    """Every part (or ``only`` those) in priority order within ``budget`` seconds; with ``json_path`` the
    report so far is written after every part, so a run stopped from outside still leaves its figures."""
    from benchmarks import write_json

    started = time.monotonic()
    names = [p for p in PARTS if not only or p in only]
    report: dict[str, Any] = {"benchmark": "gpu", "size": size,
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "environment": environment(), "goals": GOALS, "budget_s": budget, "parts": {}}
    for name in names:
        if size == "tiny" and name == "native-720" and not only:
            report["parts"][name] = {"status": "skipped", "seconds": 0.0,
                                     "why": "at tiny size the same code as part native; --only native-720 runs it"}
            continue
        left = budget - (time.monotonic() - started)
        cap = PART_CAPS_S[name] if size == "real" else TINY_CAP_S
        if left < 20:
            report["parts"][name] = {"status": "skipped", "seconds": 0.0, "why": f"{left:.0f} s of the budget left"}
            continue
        LOG.info("gpu benchmark: part %s (at most %.0f s)", name, min(cap, left))
        report["parts"][name] = run_part(name, size, min(cap, left) if size == "real" else cap)
        LOG.info("gpu benchmark: part %s %s in %.1f s", name, report["parts"][name]["status"],
                 report["parts"][name]["seconds"])
        if json_path:
            write_json(json_path, {**report, "partial": True})
    report["total_s"] = round(time.monotonic() - started, 1)
    report["non_finite_ratios"] = _finite_ratios(report)
    report["verdict"] = verdict(report)
    return report


def main(argv: list[str] | None = None) -> int:
    from benchmarks import write_json

    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="real",
                        help="real: the published model configs on a GPU; tiny: every part on CPU (plumbing)")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for all parts together at --size real (default 540)")
    parser.add_argument("--json", metavar="FILE",
                        help="where to write the JSON (default with --size real: docs/bench/gpu/<UTC date>.json)")
    parser.add_argument("--_part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args._part:
        return part_main(args._part, args.size, args._out)
    import torch

    check_size(args.size, torch.cuda.is_available())
    target = args.json
    if target is None and args.size == "real":
        target = str(ROOT / "docs" / "bench" / "gpu" / f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}.json")
    report = run_all(args.size, args.only, args.budget if args.size == "real" else 1e9, target)
    sys.stdout.write(format_table(report))
    if target:
        write_json(target, report)
        sys.stdout.write(f"wrote {target}\n")
    sys.stdout.write(json.dumps(report) + "\n")
    return 0 if all(p["status"] in ("ok", "skipped") for p in report["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
