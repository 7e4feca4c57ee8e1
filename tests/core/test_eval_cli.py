"""ttm-eval generate-set and score end to end (its entry point, ttm_core.eval.cli.main):
a deterministic set, the set's own reference videos vs frozen first frames, every output file, every metric
with the tiny random-weight models, and errors before any video is read."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from eval_models import make_tiny_clip, make_tiny_i3d, make_tiny_viclip
from ttm_core.errors import TTMInputError
from ttm_core.eval.ablation import write_jobs
from ttm_core.eval.benchset import BenchSettings, make_clip
from ttm_core.eval.cli import main
from ttm_core.eval.videos import read_video, write_video
from ttm_core.motion.trajectory_file import read_trajectory


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def ttm_eval(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """ttm-eval's entry point in this process (a subprocess would spend seconds importing torch again;
    tests/server/test_commands.py runs the installed command as the README writes it)."""
    capsys.readouterr()
    code = main(["--no-progress", *args])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    assert main(["--no-progress", "generate-set", str(root / "set"), "--count", "3", "--frames", "9"]) == 0
    static = root / "static"
    for path in sorted((root / "set" / "reference").glob("*.mp4")):
        video, fps = read_video(path)
        write_video(static / path.stem / "render_00001_.mp4", video[:1].repeat(video.shape[0], 1, 1, 1), fps)
    return root


def test_generate_set_writes_batch_jobs_and_is_deterministic(bench: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [json.loads(line) for line in (bench / "set" / "clips.jsonl").read_text().splitlines()]
    assert [j["id"] for j in jobs] == ["clip-000-000", "clip-000-001", "clip-000-002"]
    batch = [json.loads(line) for line in (bench / "set" / "jobs.jsonl").read_text().splitlines()]
    assert batch == [{"id": j["id"], "image": j["image"], "trajectory": j["trajectory"]} for j in jobs]
    for job in jobs:
        trajectory = read_trajectory(bench / "set" / job["trajectory"])
        assert trajectory.num_frames == 9 and trajectory.size == (96, 128)
        assert list(job["objects"]) == list(trajectory.objects.prompts.names)
        assert len(job["masks"]) == trajectory.objects.count
        mask = torch.from_numpy(__import__("numpy").asarray(Image.open(bench / "set" / job["masks"][0]))) > 127
        assert torch.equal(mask, trajectory.objects.binary()[0])
        assert Image.open(bench / "set" / job["image"]).size == (128, 96)
        assert read_video(bench / "set" / "reference" / f"{job['id']}.mp4")[0].shape == (9, 96, 128, 3)
    again = make_clip(1, BenchSettings(count=3, frames=9))
    assert torch.equal(again.trajectory.labels, read_trajectory(bench / "set" / jobs[1]["trajectory"]).labels)
    assert not torch.equal(make_clip(1, BenchSettings(seed=1, frames=9)).trajectory.labels, again.trajectory.labels)
    refused = ttm_eval(capsys, "generate-set", str(bench / "set"))
    assert refused.returncode == 2 and "already holds a set" in refused.stderr


def test_score_tells_a_render_that_follows_from_one_that_does_not(bench: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = bench / "results"
    run = ttm_eval(capsys, "score", "--set", str(bench / "set"), "--videos", f"truth={bench / 'set' / 'reference'}",
                   "--videos", f"static={bench / 'static'}", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "| truth |" in run.stdout and "| static |" in run.stdout
    results = json.loads((out / "results.json").read_text())
    truth, static = results["summary"]["truth"], results["summary"]["static"]
    assert truth["mean_iou"] > 0.9 and truth["mean_centroid_error_px"] < 1.5
    assert static["mean_iou"] < truth["mean_iou"] - 0.2 and static["mean_centroid_error_px"] > 3
    assert static["ad"] < 0.05 < truth["ad"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["config"], r["clip"]) for r in rows][:2] == [("truth", "clip-000-000"), ("truth", "clip-000-001")]
    assert len(rows) == 6
    clip = results["configs"]["truth"]["clips"][0]
    assert len(clip["objects"][0]["iou"]) == 9
    assert Image.open(out / "metrics.png").size[0] >= 600
    assert Image.open(out / "iou_static_clip-000-000.png").size == (640, 360)


@pytest.mark.slow  # ~15 s on the shared 2 cores (three tiny models, two configurations)
def test_score_every_metric_with_tiny_models(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip, i3d = make_tiny_clip(tmp_path / "clip"), make_tiny_i3d(tmp_path / "i3d_torchscript.pt")
    viclip = make_tiny_viclip(tmp_path / "viclip")
    out = tmp_path / "results"
    run = ttm_eval(capsys, "score", "--set", str(bench / "set"), "--videos", f"truth={bench / 'set' / 'reference'}",
                   "--videos", f"static={bench / 'static'}", "--out", str(out), "--metrics",
                   "ad,clip_frame,viclip_t,viclip_v,fvd", "--clip", str(clip), "--viclip", str(viclip),
                   "--i3d", str(i3d), "--fvd-frames", "8")
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "results.json").read_text())
    truth, static = results["summary"]["truth"], results["summary"]["static"]
    assert truth["fvd"] < 1e-6 < static["fvd"]  # the reference set against itself
    assert results["configs"]["static"]["fvd"] == {"fvd": static["fvd"], "generated": 3, "reference": 3,
                                                   "num_frames": 8}
    assert truth["viclip_v"] == pytest.approx(1.0, abs=1e-5) and static["viclip_v"] < 1.0
    assert static["clip_frame"] == pytest.approx(1.0, abs=1e-4)
    assert -1 <= truth["viclip_t"] <= 1
    assert "| FVD (lower is better) | CLIPFrame | ViCLIP-T | ViCLIP-V | AD (px/frame) |" in run.stdout


def test_score_names_a_missing_weights_file_before_reading_videos(bench: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = ttm_eval(capsys, "score", "--set", str(bench / "set"), "--videos", f"truth={bench / 'set' / 'reference'}",
                   "--out", str(tmp_path / "r"), "--metrics", "fvd", "--i3d", str(tmp_path / "i3d_torchscript.pt"))
    assert run.returncode == 2
    assert f"i3d: I3D TorchScript file '{tmp_path / 'i3d_torchscript.pt'}' does not exist" in run.stderr
    assert "tracking" not in run.stderr and not (tmp_path / "r").exists()
    run = ttm_eval(capsys, "score", "--set", str(tmp_path), "--videos", f"x={tmp_path}", "--out", str(tmp_path / "r"))
    assert run.returncode == 2 and "jobs.jsonl does not exist" in run.stderr


def test_ablation_jobs_override_every_stage2_node_per_configuration(bench: Path, tmp_path: Path) -> None:
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "7": {"class_type": "TTM_WanMotionToVideo",
                      "inputs": {"self_strength": 1.0, "cross_strength": 1.0, "guidance": True, "seed": 1}},
                "9": {"class_type": "TTM_PatchModel",
                      "inputs": {"self_strength": 1.0, "cross_strength": 1.0, "guidance": True}}}
    written = write_jobs(bench / "set" / "jobs.jsonl", workflow, tmp_path)
    assert list(written) == ["none-unguided", "cross-unguided", "self-unguided", "both-unguided",
                             "none-guided", "cross-guided", "self-guided", "both-guided"]
    job = json.loads(written["cross-unguided"].read_text().splitlines()[0])
    assert job["overrides"] == {"7.self_strength": 0.0, "7.cross_strength": 1.0, "7.guidance": False,
                                "9.self_strength": 0.0, "9.cross_strength": 1.0, "9.guidance": False}
    assert Path(job["trajectory"]).is_absolute() and Path(job["trajectory"]).is_file()
    assert len(written["both-guided"].read_text().splitlines()) == 3
    with pytest.raises(TTMInputError, match="workflow: no node has the inputs self_strength"):
        write_jobs(bench / "set" / "jobs.jsonl", {"1": workflow["1"]}, tmp_path)


def test_ablation_attention_subset_and_its_refusal() -> None:
    from ttm_core.eval.ablation import configurations

    assert list(configurations((False, True), ("both", "none"))) == ["none-unguided", "both-unguided",
                                                                     "none-guided", "both-guided"]  # Table 3 order
    with pytest.raises(TTMInputError) as caught:
        configurations((True,), ("none", "masked"))
    assert caught.value.input_name == "attention" and "masked" in str(caught.value) and caught.value.fix
