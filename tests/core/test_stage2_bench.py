"""The stage2 benchmark's plumbing on a tiny case (the benchmark itself is not a test)."""

from __future__ import annotations

import json

import pytest
import torch

import benchmarks.__main__ as cli
from benchmarks.stage2 import Stage2Case, StepBench, build_model
from stage2_cases import one_thread  # noqa: F401 - autouse fixture


@pytest.mark.slow
def test_tiny_stage2_benchmark_report(tmp_path) -> None:
    out = tmp_path / "stage2.json"
    assert cli.main(["stage2", "--size", "64", "--frames", "9", "--rounds", "3", "--pipeline-rounds", "1",
                     "--threads", "1", "--no-memory", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["video_tokens"] == 3 * 4 * 4
    for kind, rounds in (("step", 3), ("pipeline", 1)):
        row = report["results"][kind]
        for variant in ("stock", "ours"):  # the reported times are the medians of the rounds it ran
            times = row["rounds_s"][variant]
            assert len(times) == rounds and min(times) > 0
            assert row[f"{variant}_s"] == sorted(times)[rounds // 2]
    assert set(report["verdict"]) == {"step_time_ok", "pipeline_time_ok"}
    assert report["results"]["pipeline"]["ours_setup_s"]["reference_render_and_encode_s"] > 0


def test_the_step_benchmark_really_masks_and_pins() -> None:
    case = Stage2Case(height=64, width=64, frames=9)
    step = StepBench(build_model(case), case)
    stock, ours = step.stock(), step.ours()
    assert stock.shape == ours.shape == step.latents.shape
    assert float((stock - ours).abs().max()) > 1e-4  # masked attention and the pin change the step
    assert torch.equal(step.stock(), stock)  # and leave the model as it was
