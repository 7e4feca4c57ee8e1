"""ttm-eval ablation end to end against two real ComfyUI servers with the tiny native Wan 2.2 TI2V fixtures: a
generated set's manifest (two clips) rendered under two masked-attention configurations (none and both, guidance
on) through ttm-batch spreading the clips over both servers, scored, and printed as the paper's Table 3. (All eight
configurations, guidance off too, took 12 minutes here: the jobs files of all eight are checked without a server
in tests/core/test_eval_cli.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import load_workflow
from native_wan import tiny_workflow
from ttm_batch.client import ComfyClient
from ttm_core.eval.ablation import configurations, label
from ttm_core.eval.benchset import BenchSettings, generate_set
from ttm_core.eval.cli import main
from ttm_core.eval.videos import find_video, read_video

pytestmark = pytest.mark.server


def trajectory_workflow(path: Path) -> Path:
    """The shipped TI2V workflow on the tiny files (64x64, 5 frames, 2 steps, mp4), its Stage 1 replaced by Load
    Trajectory."""
    graph = tiny_workflow(load_workflow("ttm_wan22_ti2v_api.json"), "ttm/ablation", steps=2, size=(64, 64),
                          fmt="mp4")
    graph["7"]["inputs"]["length"] = 5
    for node_id in ("2", "3", "4", "5", "6"):
        del graph[node_id]
    graph["2"] = {"class_type": "TTM_LoadTrajectory", "inputs": {"file": "none.npz"}}
    graph["7"]["inputs"]["trajectory"] = ["2", 0]
    path.write_text(json.dumps(graph))
    return path


@pytest.mark.slow  # four tiny Wan renders on the CPU (~90 s here)
def test_ablation_renders_on_two_servers_and_prints_table_3(native_wan_server, native_wan_server_newest_frontend,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    servers = [native_wan_server.url, native_wan_server_newest_frontend.url]
    generate_set(tmp_path / "set", BenchSettings(count=2, height=64, width=64, frames=9, max_objects=2))
    workflow = trajectory_workflow(tmp_path / "ti2v_trajectory_api.json")
    code = main(["--no-progress", "ablation", "--manifest", str(tmp_path / "set" / "jobs.jsonl"), "--workflow",
                 str(workflow), "--server", servers[0], "--server", servers[1], "--per-server", "1",
                 "--out", str(tmp_path / "ablation"), "--guidance", "on", "--attention", "none,both"])
    out = capsys.readouterr().out
    assert code == 0, out
    names = list(configurations((True,), ("none", "both")))
    assert names == ["none-guided", "both-guided"]
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| configuration | AD (px/frame) | mean IoU | centroid error (px) |")
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == [label(n) for n in names]
    assert "| no masked attention + guidance |" in out and "| both + guidance |" in out
    jobs = json.loads((tmp_path / "ablation" / "jobs" / "both-guided.jsonl").read_text().splitlines()[0])
    assert jobs["overrides"] == {"7.self_strength": 1.0, "7.cross_strength": 1.0, "7.guidance": True}
    results = json.loads((tmp_path / "ablation" / "results" / "results.json").read_text())
    seen: dict[str, set[tuple]] = {}
    for name in names:
        config = results["configs"][name]
        assert config["count"] == 2 and config["missing"] == [], (name, config)
        assert 0.0 <= results["summary"][name]["mean_iou"] <= 1.0
        video = read_video(find_video(tmp_path / "ablation" / "renders" / name, "clip-000-000"))[0]
        assert video.shape[1:3] == (64, 64)
        manifest = tmp_path / "ablation" / "renders" / name / "manifest.jsonl"
        for entry in (json.loads(line) for line in manifest.read_text().splitlines() if line.strip()):
            # What each server really ran: the configuration's values on the Stage 2 node of the queued prompt.
            prompt = ComfyClient(entry["server"]).history(entry["prompt_id"])["prompt"][2]
            inputs = prompt["7"]["inputs"]
            seen.setdefault(entry["server"], set()).add(
                (inputs["self_strength"], inputs["cross_strength"], inputs["guidance"]))
    assert set(seen) == set(servers)  # ttm-batch spread the clips over both servers
    assert set().union(*seen.values()) == {(0.0, 0.0, True), (1.0, 1.0, True)}
    table = (tmp_path / "ablation" / "results" / "table3.md").read_text()
    assert table in out and table.splitlines()[0] == lines[0]
