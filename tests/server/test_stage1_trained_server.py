"""The trained backend of Image To Motion in a real ComfyUI, through the shipped Stage 1 workflow.

workflows/ttm_stage1_trained_api.json: caption -> Prompt Decompose (LLM) -> SAM2 Segment -> Image To Motion
(backend trained: a Stage 1 checkpoint from Trained Checkpoint Loader on Wan 2.2 TI2V-5B from Video Model
Loader) -> Motion To Video · diffusers -> Video Combine. Here on the tiny models every test server has (SAM 2,
detector, LLM), the tiny diffusers TI2V and a random Stage 1 checkpoint of it
(``trained_checkpoints.install_stage1_models`` / ``tiny_stage1_workflow``). A Save Trajectory node added to
the graph writes the generated trajectory, so runs are compared label for label.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from common import expect_failure, load_workflow
from stage2_cases import server_models, tiny_model_dir  # noqa: F401 (fixtures)
from trained_checkpoints import STAGE1_CKPT, STAGE1_FRAMES, STAGE2_ON_TINY, install_stage1_models, tiny_stage1_workflow
from ttm_batch.client import ComfyClient, PromptResult
from ttm_core.motion.trajectory_file import read_trajectory
from ttm_core.types import Trajectory

pytestmark = pytest.mark.server
WORKFLOW = "ttm_stage1_trained_api.json"
MOTION, LOADER, STAGE2, SAVE = "9", "7", "10", "20"


@pytest.fixture(scope="module")
def models(comfy_server, server_models: Path) -> Path:
    """The Stage 1 checkpoints in the plain server's models/ (the tiny TI2V is linked by server_models)."""
    return install_stage1_models(comfy_server.base / "models")


def graph(seed: int = 42, checkpoint: str = STAGE1_CKPT) -> dict:
    """The shipped workflow on the tiny models, plus a Save Trajectory of Image To Motion's trajectory."""
    run = uuid.uuid4().hex[:8]
    wf = tiny_stage1_workflow(load_workflow(WORKFLOW), f"ttm/stage1_{run}")
    wf[MOTION]["inputs"]["seed"] = seed
    wf[LOADER]["inputs"]["checkpoint"] = checkpoint
    wf[SAVE] = {"class_type": "TTM_SaveTrajectory",
                "inputs": {"trajectory": [MOTION, 0], "filename_prefix": f"ttm/stage1_traj_{run}"}}
    return wf


def trajectory_of(server, result: PromptResult) -> Trajectory:
    saved = result.history["outputs"][SAVE]["trajectories"][0]
    return read_trajectory(server.base / "output" / saved["subfolder"] / saved["filename"])


def test_the_shipped_workflow_generates_the_trajectory_and_the_video(comfy_server, client: ComfyClient,
                                                                     models: Path) -> None:
    info = client.object_info()["TTM_ImageToMotion"]["input"]
    assert "trained" in info["required"]["backend"][1]["options"]
    optional = list(info["optional"])
    # Appended in this order (saved widget orders hold): the diffusers base, then the native Wan's sockets.
    assert optional[-10:] == ["trained", "video_model", "steps", "cfg", "model", "clip", "vae", "clip_vision",
                              "sampler_name", "scheduler"]
    assert info["optional"]["trained"][0] == "TTM_TRAINED"
    assert info["optional"]["video_model"][0] == "TTM_VIDEO_MODEL"

    first = client.run(graph(), timeout=900)
    trajectory = trajectory_of(comfy_server, first)
    assert trajectory.num_frames == STAGE1_FRAMES and trajectory.size == (288, 384)
    objects = trajectory.objects
    # Frame 0 is s(0): the objects' own masks; later frames hold only the objects' ids.
    assert set(np.unique(trajectory.labels.numpy())) <= {0, *objects.ids}
    for i, object_id in enumerate(objects.ids):
        assert bool(((trajectory.labels[0] == object_id) <= objects.binary()[i]).all())
    text = "\n".join(first.history["outputs"][MOTION].get("text", []))
    assert f"{STAGE1_FRAMES} frames generated" in text, text
    videos = [f for f in first.files() if f.node_id == "11" and f.filename.endswith(".png")]
    assert len(videos) == STAGE1_FRAMES

    # Another run of the same seed after the checkpoint is read again from disk: the same trajectory.
    path = comfy_server.base / "models" / "ttm" / STAGE1_CKPT
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the loader's fingerprint changes
    second = client.run(graph(), timeout=900)
    cached = {node for kind, data in second.history["status"]["messages"] if kind == "execution_cached"
              for node in data["nodes"]}
    assert not {LOADER, MOTION} & cached, f"served from the cache: {cached}"
    again = trajectory_of(comfy_server, second)
    assert torch_equal(again, trajectory)


def torch_equal(a: Trajectory, b: Trajectory) -> bool:
    return bool((a.labels == b.labels).all()) and a.objects.ids == b.objects.ids and a.fps == b.fps


def test_a_stage2_checkpoint_on_image_to_motion_fails_naming_trained(client: ComfyClient, models: Path) -> None:
    expect_failure(client, graph(checkpoint=STAGE2_ON_TINY), "trained:", f"{STAGE2_ON_TINY} is a Stage 2 checkpoint",
                   "Fix: load a Stage 1 checkpoint here")


def test_the_trained_backend_without_a_model_says_what_to_connect(client: ComfyClient, models: Path) -> None:
    wf = graph()
    del wf[MOTION]["inputs"]["video_model"]
    expect_failure(client, wf, "video_model: the trained backend needs the checkpoint's base model",
                   "Fix: connect Video Model Loader", "or the native Wan MODEL, CLIP and VAE to model, clip and vae")
