"""The flow-tracker benchmark's plumbing on a tiny case (the benchmark itself is not a test). Fewer than ~9 frames
make its scene move too far per frame to track."""

from __future__ import annotations

import json

import benchmarks.__main__ as cli
from benchmarks.flow_track import GOAL_FPS, ROWS


def test_tiny_flow_track_benchmark_report(tmp_path) -> None:
    out = tmp_path / "flow.json"
    assert cli.main(["flow-track", "--size", "160x128", "--frames", "10", "--rounds", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["scene"] == {"name": "several", "width": 160, "height": 128, "frames": 10, "objects": 2}
    assert report["goal_fps"] == GOAL_FPS == 30.0
    rows = report["results"]
    assert [row["name"] for row in rows] == [name for name, _ in ROWS]
    assert rows[0]["name"] == "default" and rows[0]["settings"] == {}
    assert rows[3]["settings"] == {"flow_side": 128}
    for row in rows:  # the figures are consistent with the rounds it ran; no time is asserted
        assert len(row["rounds_s"]) == 2 and min(row["rounds_s"]) > 0
        assert abs(row["fps"] - 10 / row["median_s"]) <= 0.01 * row["fps"] + 0.01
        assert abs(row["ratio_to_goal"] - row["fps"] / GOAL_FPS) <= 0.01
        assert set(row["iou"]) == {"1", "2"} and all(0.8 <= v <= 1.0 for v in row["iou"].values())
        assert set(row["identity_swaps"]) == {"1", "2"} and min(row["identity_swaps"].values()) >= 0
    assert report["verdict"]["default_fps"] == rows[0]["fps"]
    assert report["verdict"]["default_meets_goal"] == (rows[0]["fps"] >= GOAL_FPS)
