"""ttm-batch jobs that name a saved trajectory: checked before queueing, uploaded to the server's input folder,
read by the workflow's Load Trajectory node, rendered without any Stage 1 node in the workflow; the README's example
jobs with the shipped workflows/ttm_saved_trajectory_warp_api.json and examples/ttm_coins_trajectory.npz."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from common import ROOT, load_workflow
from tools.comfy_harness import ComfyServer
from ttm_batch.client import ComfyClient
from ttm_batch.jobs import read_jobs, validate_jobs

pytestmark = pytest.mark.server
FRAMES = 9
EXAMPLES = ROOT / "examples"
BATCH_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(  # as in test_batch.py: `python -m ttm_batch` from batch/
    p for p in (str(ROOT / "batch"), os.environ.get("PYTHONPATH", "")) if p))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    with ComfyServer(tmp_path_factory.mktemp("batch-trajectory")) as started:
        yield started


def saved_trajectory(client: ComfyClient, folder: Path) -> Path:
    """The shipped warp workflow's trajectory (FRAMES frames), saved by Save Trajectory on the server."""
    workflow = load_workflow("ttm_warp_paths_api.json")
    workflow["6"]["inputs"]["num_frames"] = FRAMES
    for node in ("7", "8", "9"):
        del workflow[node]
    workflow["20"] = {"class_type": "TTM_SaveTrajectory",
                      "inputs": {"trajectory": ["6", 0], "filename_prefix": "ttm/batch_source"}}
    result = client.run(workflow, timeout=300)
    (file,) = result.files()  # Save Trajectory's file is one of the prompt's outputs (ttm-batch downloads it)
    assert file.filename.endswith(".npz")
    path = folder / "shots" / "coins_trajectory.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(client.view(file))
    return path


def render_workflow() -> dict:
    """First frame + Load Trajectory -> Motion To Video · Warp -> Video Combine: no Stage 1 at all."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "ttm_coins.png"}, "_meta": {"title": "First frame"}},
        "2": {"class_type": "TTM_LoadTrajectory", "inputs": {"file": "none.npz"}, "_meta": {"title": "Trajectory"}},
        "3": {"class_type": "TTM_WarpMotionToVideo", "inputs": {"image": ["1", 0], "trajectory": ["2", 0],
                                                                "feather": 1.0}},
        "4": {"class_type": "TTM_VideoCombine",
              "inputs": {"images": ["3", 0], "fps": ["3", 1], "format": "mp4", "quality": 85,
                         "filename_prefix": "ttm/batch", "save_metadata": False},
              "_meta": {"title": "Video Combine"}},
    }


DAMAGED = "line 6: trajectory 'damaged.npz' is damaged (labels.npy fails its checksum)"


def test_jobs_render_a_saved_trajectory(server: ComfyServer, tmp_path: Path) -> None:
    client = ComfyClient(server.url, timeout=60)
    trajectory = saved_trajectory(client, tmp_path)
    (tmp_path / "old.npz").write_bytes(version_2(trajectory.read_bytes()))
    (tmp_path / "image.npz").write_bytes((EXAMPLES / "ttm_coins.png").read_bytes())
    damaged = bytearray(trajectory.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one byte of the label video's compressed data
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    workflow_path = tmp_path / "workflow_api.json"
    workflow_path.write_text(json.dumps(render_workflow()))
    jobs = [{"id": "a", "image": str(EXAMPLES / "ttm_coins.png"), "trajectory": "shots/coins_trajectory.npz"},
            {"id": "b", "trajectory": str(trajectory), "overrides": {"Video Combine.format": "webm"}},
            {"id": "c", "trajectory": "shots/missing.npz"},
            {"id": "d", "trajectory": "old.npz"},
            {"id": "e", "trajectory": "image.npz"},
            {"id": "f", "trajectory": "damaged.npz"}]
    jobs_path = tmp_path / "jobs.jsonl"
    jobs_path.write_text("".join(json.dumps(j) + "\n" for j in jobs))

    valid, errors = validate_jobs(read_jobs(jobs_path), render_workflow(), client.object_info(), tmp_path)
    assert [j.id for j in valid] == ["a", "b"]
    assert [str(e).split(". Fix:")[0] for e in errors] == [
        "line 3: trajectory 'shots/missing.npz' does not exist (" + str(tmp_path / "shots" / "missing.npz") + ")",
        "line 4: trajectory 'old.npz' is a version 2 file; the pack reads version 1",
        "line 5: trajectory 'image.npz' is not a readable trajectory file",
        DAMAGED]
    assert valid[0].files == [("1", "image", (EXAMPLES / "ttm_coins.png").resolve()),
                              ("2", "file", trajectory.resolve())]
    stage1 = load_workflow("ttm_warp_paths_api.json")
    _, refused = validate_jobs(read_jobs(jobs_path)[:1], stage1, client.object_info(), tmp_path)
    assert str(refused[0]).startswith("line 1: 'trajectory' needs exactly one TTM_LoadTrajectory node, the "
                                      "workflow has 0")

    out = tmp_path / "out"
    command = [sys.executable, "-m", "ttm_batch", "--server", server.url, "--workflow", str(workflow_path),
               "--jobs", str(jobs_path), "--out", str(out), "--progress", "off"]
    result = subprocess.run(command, cwd=ROOT, env=BATCH_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # the four refused lines fail, the rest run
    entries = {e["job"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert {job: e["status"] for job, e in entries.items()} == \
        {"a": "done", "b": "done", "c": "failed", "d": "failed", "e": "failed", "f": "failed"}
    for job, extension in (("a", ".mp4"), ("b", ".webm")):
        (video,) = entries[job]["files"]
        assert video.endswith(extension)
        with av.open(str(out / video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == FRAMES
    uploaded = [p.name for p in (server.base / "input").glob("ttmb_*.npz")]
    assert uploaded and all("coins_trajectory" in name for name in uploaded)


def readme_saved_trajectory_jobs() -> list[str]:
    """The README's example jobs lines for the shipped saved-trajectory workflow."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("{") and '"trajectory": "examples/ttm_coins_trajectory.npz"' in line]
    assert len(lines) == 2, lines
    return lines


def test_shipped_workflow_renders_the_example_trajectory(server: ComfyServer, tmp_path: Path) -> None:
    """The README's jobs, run by ttm-batch with the shipped workflow: both shots move as the warp workflow's."""
    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)  # the jobs file "in the pack's folder"
    jobs_path = tmp_path / "jobs.jsonl"
    jobs_path.write_text("\n".join(readme_saved_trajectory_jobs()) + "\n")
    workflow = ROOT / "workflows" / "ttm_saved_trajectory_warp_api.json"
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ttm_batch", "--server", server.url, "--workflow", str(workflow),
               "--jobs", str(jobs_path), "--out", str(out), "--progress", "off"]
    result = subprocess.run(command, cwd=ROOT, env=BATCH_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = {e["job"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert {job: e["status"] for job, e in entries.items()} == {"coins-saved": "done", "gold-saved": "done"}
    for job, extension in (("coins-saved", ".mp4"), ("gold-saved", ".webm")):
        (video,) = entries[job]["files"]
        assert video.endswith(extension)
        with av.open(str(out / video)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(frames) == 49 and frames[0].shape == (288, 384, 3)  # the warp workflow's 49 frames
    uploaded = [p.name for p in (server.base / "input").glob("ttmb_*.npz")]
    assert any("ttm_coins_trajectory" in name for name in uploaded), uploaded


def version_2(data: bytes) -> bytes:
    """The same file claiming format version 2."""
    source, target = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "trajectory.json":
                content = json.dumps({**json.loads(content), "version": 2}).encode()
            archive.writestr(info.filename, content)
    return target.getvalue()
