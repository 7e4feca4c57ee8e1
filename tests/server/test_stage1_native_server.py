"""The trained backend of Image To Motion on the user's native Wan (MODEL / CLIP / VAE), in a real ComfyUI.

The shipped Wan 2.2 TI2V workflow (workflows/ttm_wan22_ti2v_api.json) with Image To Motion switched to
backend ``trained``: a Stage 1 checkpoint of the tiny native TI2V (Trained Checkpoint Loader, models/ttm)
and the graph's own Load Diffusion Model / Load CLIP / Load VAE wired to its model / clip / vae. The
generated trajectory then drives the same graph's Stage 2 render. A Save Trajectory node writes the
trajectory so runs are compared label for label.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from common import WORKFLOWS, expect_failure
from native_wan import FIXTURES, TINY_FRAMES, TINY_SIZE, tiny_workflow
from trained_checkpoints import DIFFUSERS_MODEL, NATIVE_CKPT, install_trained_models, native_stage1_checkpoint
from ttm_batch.client import ComfyClient
from ttm_core.motion.trajectory_file import read_trajectory
from ttm_core.types import Trajectory

pytestmark = pytest.mark.server
MOTION, RENDER, LOADER, SAVE = "6", "7", "30", "31"
STAGE1_NATIVE = "tiny_native_stage1_ti2v.safetensors"


@pytest.fixture(scope="module")
def models(native_wan_server) -> Path:
    """A random Stage 1 checkpoint of the tiny native TI2V (and, from install_trained_models, a Stage 2 one)."""
    models = install_trained_models(native_wan_server.base / "models")  # NATIVE_CKPT: Stage 2, same base
    if not (models / "ttm" / STAGE1_NATIVE).is_file():
        native_stage1_checkpoint(models / FIXTURES["wan22_ti2v"].relpath, "wan2.2-ti2v-5b",
                                 models / "ttm" / STAGE1_NATIVE, seed=7)
    return models


def graph(checkpoint: str = STAGE1_NATIVE, render: bool = True) -> dict:
    """The shipped TI2V workflow on the tiny files at 128 x 96 (the image and both masks scaled by core nodes),
    Image To Motion on the trained backend; ``render=False``: without the Stage 2 render (Stage 1 only)."""
    run = uuid.uuid4().hex[:8]
    wf = tiny_workflow(json.loads((WORKFLOWS / "ttm_wan22_ti2v_api.json").read_text()), f"ttm/stage1n_{run}")
    width, height = TINY_SIZE
    scale = {"upscale_method": "nearest-exact", "width": width, "height": height, "crop": "disabled"}
    wf["40"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], **scale}}
    for source, node in (("2", 41), ("3", 44)):
        wf[str(node)] = {"class_type": "MaskToImage", "inputs": {"mask": [source, 0]}}
        wf[str(node + 1)] = {"class_type": "ImageScale", "inputs": {"image": [str(node), 0], **scale}}
        wf[str(node + 2)] = {"class_type": "ImageToMask", "inputs": {"image": [str(node + 1), 0], "channel": "red"}}
    wf["5"]["inputs"].update(image=["40", 0], masks=["43", 0], mask_2=["46", 0])
    motion = wf[MOTION]["inputs"]
    motion.update(backend="trained", image=["40", 0], trained=[LOADER, 0], model=["10", 0], clip=["11", 0],
                  vae=["12", 0], sampler_name="euler", scheduler="simple", cfg=1.0, seed=42)
    wf[RENDER]["inputs"]["image"] = ["40", 0]
    wf[LOADER] = {"class_type": "TTM_TrainedCheckpointLoader", "inputs": {"checkpoint": checkpoint}}
    wf[SAVE] = {"class_type": "TTM_SaveTrajectory",
                "inputs": {"trajectory": [MOTION, 0], "filename_prefix": f"ttm/stage1n_traj_{run}"}}
    if not render:
        del wf[RENDER], wf["8"]
    return wf


def trajectory_of(server, result) -> Trajectory:
    saved = result.history["outputs"][SAVE]["trajectories"][0]
    return read_trajectory(server.base / "output" / saved["subfolder"] / saved["filename"])


def test_a_native_wan_generates_the_trajectory_and_renders_it(native_wan_server, native_wan_client: ComfyClient,
                                                             models: Path) -> None:
    first = native_wan_client.run(graph(), timeout=900)
    trajectory = trajectory_of(native_wan_server, first)
    objects = trajectory.objects
    assert trajectory.num_frames == TINY_FRAMES and trajectory.size == (TINY_SIZE[1], TINY_SIZE[0])
    assert set(np.unique(trajectory.labels.numpy())) <= {0, *objects.ids}
    for i, object_id in enumerate(objects.ids):  # frame 0 is s(0): the objects' own masks
        assert bool(((trajectory.labels[0] == object_id) <= objects.binary()[i]).all())
    text = "\n".join(first.history["outputs"][MOTION].get("text", []))
    assert f"native Wan: {TINY_FRAMES} frames generated" in text, text
    rendered = [f for f in first.files() if f.node_id == "8" and f.filename.endswith(".png")]
    assert len(rendered) == TINY_FRAMES  # the generated trajectory drove Stage 2

    # The same seed after the checkpoint is read again from disk: the same trajectory. (That the checkpoint's
    # x(0) channels change the native forward exactly as diffusers' does: tests/comfy/test_trained_native.py.)
    path = models / "ttm" / STAGE1_NATIVE
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the loader's fingerprint changes
    again = trajectory_of(native_wan_server, native_wan_client.run(graph(render=False), timeout=900))
    assert torch_equal(again, trajectory)


def torch_equal(a: Trajectory, b: Trajectory) -> bool:
    return bool((a.labels == b.labels).all())


def test_a_stage2_checkpoint_or_two_base_models_are_refused(native_wan_client: ComfyClient, models: Path) -> None:
    wrong = expect_failure(native_wan_client, graph(NATIVE_CKPT, render=False))
    assert "trained" in wrong and "Stage 2 checkpoint" in wrong, wrong
    both = graph(render=False)
    both[MOTION]["inputs"]["video_model"] = ["50", 0]
    both["50"] = {"class_type": "TTM_VideoModelLoader",
                  "inputs": {"model": DIFFUSERS_MODEL, "offload": "none", "dtype": "fp32", "vae_tiling": False}}
    message = expect_failure(native_wan_client, both, "video_model", "one way only")
    assert "native Wan" in message, message
