"""``python -m benchmarks plan``: seconds per clip of Stage 1's plan backend with the tiny local LLM.

The tiny random-weight chat model of ``tests/support/tiny_models.py`` (a 2-layer Llama, byte-level BPE tokenizer)
plans the two coins of the answer corpus (384 x 288 px, 49 frames) with ``motion.plan.plan_motion``, sampled
(temperature 1) with a new seed each round, once with constrained decoding (``PlanGrammar``) and once without;
the two variants share the model and alternate their order round by round, in one process. A clip is one call of
plan_motion (all its attempts); an unconstrained random model never writes a plan, so its clips end in the error
after ``--attempts`` answers of ``--max-new-tokens`` tokens. The report gives seconds per clip (median), tokens
per clip, milliseconds per token (median over the clips; the grammar's cost per token shows here), the share of
usable plans and the ratio constrained / unconstrained. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests" / "support"):  # the tiny models live with the tests
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchmarks import write_json  # noqa: E402
from tiny_models import make_tiny_llm  # noqa: E402
from ttm_core.errors import TTMInputError  # noqa: E402
from ttm_core.motion.plan import PlanObject, PlanRequest, plan_motion  # noqa: E402
from ttm_core.prompts.llm import LocalLLM, load_local_llm  # noqa: E402

LOG = logging.getLogger(__name__)
VARIANTS = ("constrained", "unconstrained")
REQUEST = PlanRequest(384, 288, 49, 16.0, "The left coin slides to the right while the big coin glides down to "
                      "the left.", (
                          PlanObject("left coin", "a small silver coin sliding to the right", (56, 126, 104, 174),
                                     (80, 150)),
                          PlanObject("big coin", "a large silver coin gliding down and to the left",
                                     (240, 130, 320, 210), (280, 170))))


def _clip(llm: LocalLLM, seed: int, max_new_tokens: int, attempts: int) -> dict[str, float | int | bool]:
    """One clip: seconds, answers written, tokens written (all answers), usable or not."""
    tokens = [0]

    def count(done: int, total: int) -> None:
        tokens[0] += 1

    started = time.perf_counter()
    try:
        used, usable = plan_motion(llm, REQUEST, seed=seed, temperature=1.0, max_new_tokens=max_new_tokens,
                                   attempts=attempts, progress=count).attempts, True
    except TTMInputError:
        used, usable = attempts, False
    return {"seconds": time.perf_counter() - started, "answers": used, "tokens": tokens[0], "usable": usable}


def run_plan_benchmark(rounds: int = 3, max_new_tokens: int = 600, attempts: int = 1,
                       threads: int = 2) -> dict[str, object]:
    """Both variants, interleaved (see the module docstring); returns the JSON-ready report."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        constrained = load_local_llm(make_tiny_llm(Path(folder) / "ttm-tiny-llm"))
    llms = {"constrained": constrained,
            "unconstrained": LocalLLM(constrained.name, constrained.model, constrained.tokenizer, constrained=False)}
    for llm in llms.values():  # untimed warm-up (vocabulary, first forward passes)
        _clip(llm, 0, max_new_tokens, 1)
    clips: dict[str, list[dict[str, float | int | bool]]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for name in order:
            clips[name].append(_clip(llms[name], 1000 + r, max_new_tokens, attempts))
            LOG.info("plan benchmark round %d/%d %s: %.2f s", r + 1, rounds, name, clips[name][-1]["seconds"])
    results: dict[str, dict[str, object]] = {}
    for name in VARIANTS:
        rows = clips[name]
        seconds = [float(c["seconds"]) for c in rows]
        results[name] = {"seconds_per_clip": statistics.median(seconds), "rounds_s": seconds,
                         "usable_share": sum(bool(c["usable"]) for c in rows) / len(rows),
                         "answers_per_clip": statistics.mean(int(c["answers"]) for c in rows),
                         "tokens_per_clip": statistics.mean(int(c["tokens"]) for c in rows),
                         "ms_per_token": statistics.median(1000 * float(c["seconds"]) / max(int(c["tokens"]), 1)
                                                           for c in rows),
                         "clips": rows}
    medians = {name: statistics.median(float(c["seconds"]) for c in clips[name]) for name in VARIANTS}
    ratio = medians["constrained"] / medians["unconstrained"]
    return {"what": f"tiny local LLM plans {len(REQUEST.objects)} objects, {REQUEST.num_frames} frames, "
                    f"temperature 1", "rounds": rounds, "max_new_tokens": max_new_tokens, "attempts": attempts,
            "threads": threads, "results": results, "ratio_constrained_to_unconstrained": ratio,
            "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()}}


def format_report(report: dict[str, object]) -> str:
    lines = [f"plan benchmark: {report['what']}; {report['rounds']} interleaved rounds; max_new_tokens "
             f"{report['max_new_tokens']}, attempts {report['attempts']}; {report['threads']} threads"]
    header = f"{'variant':<15}{'s/clip':>9}{'tokens':>8}{'ms/token':>10}{'answers':>9}{'usable':>8}"
    lines += [header, "-" * len(header)]
    for name, row in report["results"].items():  # type: ignore[attr-defined]
        lines.append(f"{name:<15}{row['seconds_per_clip']:>9.2f}{row['tokens_per_clip']:>8.0f}{row['ms_per_token']:>10.1f}"
                     f"{row['answers_per_clip']:>9.1f}{row['usable_share']:>8.0%}")
    lines.append(f"constrained / unconstrained s/clip: {report['ratio_constrained_to_unconstrained']:.3f}")
    load = report["load_average_1_5_15"]
    lines.append(f"load average {load['before'][0]:.1f} -> {load['after'][0]:.1f}")  # type: ignore[index]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks plan", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=600, help="answer budget in tokens (default 600)")
    parser.add_argument("--attempts", type=int, default=1, help="answers per clip at most (default 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    report = run_plan_benchmark(options.rounds, options.max_new_tokens, options.attempts, options.threads)
    sys.stdout.write(format_report(report))
    if options.json:
        write_json(options.json, report)
        sys.stdout.write(f"wrote {options.json}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
