"""The attention benchmark's plumbing on a tiny case (the benchmark itself is not a test)."""

from __future__ import annotations

import json

import pytest
import torch

import benchmarks.__main__ as cli
from attention_cases import one_thread  # noqa: F401 - autouse fixture
from benchmarks import attention as bench


def test_case_ids_have_the_requested_coverage_in_every_frame() -> None:
    case = bench.AttentionCase((3, 10, 20), (0.3, 0.15))
    ids = bench.case_ids(case).view(3, 10, 20)
    for frame in ids:
        counts = torch.bincount(frame.flatten(), minlength=3).tolist()
        assert counts == [200 - 60 - 30, 60, 30]  # bands of 6 and 3 columns (30 % and 15 % of 20) x 10 rows


def test_tiny_benchmark_report_and_table(tmp_path) -> None:
    report = bench.run_attention_benchmark([(2, 8, 8)], [(0.3, 0.15)], rounds=3, threads=1, memory=False)
    row = report["results"][0]
    assert row["max_abs_diff_vs_naive"] <= 1e-5
    # rho (the share of dense work masking leaves) from the case's own token ids, independently
    counts = torch.bincount(bench.case_ids(bench.AttentionCase((2, 8, 8), (0.3, 0.15))))
    assert row["rho"] == pytest.approx(float((counts.double() ** 2).sum()) / 128 ** 2)
    assert sorted(row["group_sizes"]) == sorted(counts.tolist())
    # the reported times are the medians of the interleaved rounds it ran
    rounds = row["rounds_s"]
    assert all(len(rounds[v]) == 3 and min(rounds[v]) > 0 for v in ("dense", "naive", "ours"))
    for variant in ("dense", "naive", "ours"):
        assert row[f"{variant}_s"] == sorted(rounds[variant])[1]
    table = bench.format_table(report)
    assert "2x8x8 objects 30%/15%" in table
    out = tmp_path / "bench.json"
    assert cli.main(["attention", "--grid", "2x8x8", "--coverage", "0.3,0.15", "--rounds", "1", "--threads", "1",
                       "--no-memory", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["tokens"] == 128


@pytest.mark.slow
def test_memory_probe_sees_the_naive_mask() -> None:
    case = bench.AttentionCase((4, 32, 32), (0.3, 0.15))  # 4096 tokens: the N x N mask alone is 16 MiB
    naive = bench.measure_memory_in_this_process(case, "naive")
    ours = bench.measure_memory_in_this_process(case, "ours")
    assert naive["extra_kib"] > 16 * 1024
    assert ours["extra_kib"] < naive["extra_kib"] / 4
