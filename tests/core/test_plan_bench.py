"""The plan benchmark's plumbing on one round (the benchmark itself is not a test; no time is asserted)."""

from __future__ import annotations

import json

import benchmarks.__main__ as cli


def test_plan_benchmark_runs_both_variants_and_reports_the_ratio(tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--rounds", "1", "--max-new-tokens", "500", "--attempts", "1", "--threads", "1",
                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["rounds"], report["max_new_tokens"], report["attempts"], report["threads"]) == (1, 500, 1, 1)
    constrained, free = report["results"]["constrained"], report["results"]["unconstrained"]
    assert constrained["usable_share"] == 1.0 and constrained["answers_per_clip"] == 1  # always parses
    assert free["usable_share"] == 0.0  # random weights, free decoding: never a plan
    for row in (constrained, free):
        assert len(row["rounds_s"]) == 1 and row["seconds_per_clip"] == row["rounds_s"][0]
        assert 0 < row["tokens_per_clip"] <= 500
    assert report["ratio_constrained_to_unconstrained"] == constrained["seconds_per_clip"] / free["seconds_per_clip"]
    printed = capsys.readouterr().out
    assert "constrained / unconstrained s/clip:" in printed and f"wrote {out}" in printed
