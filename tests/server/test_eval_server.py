"""Against a real ComfyUI server: Trajectory Adherence on the shipped warp workflow's render (which follows its
trajectory by construction) and on a frozen copy of its first frame (which does not), with the flow tracker
it uses when nothing is connected; its report, plot and mean IoU; a length mismatch refused by name."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from common import expect_failure, load_workflow
from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server
FRAMES = 17


def adherence(frames: list, fit: bool = True) -> dict:
    """The warp workflow cut to FRAMES frames, its encode dropped, with Trajectory Adherence (node 20) of
    ``frames`` against Image To Motion's trajectory: report (21), plot saved (22), mean IoU (23)."""
    workflow = load_workflow("ttm_warp_paths_api.json")
    workflow["6"]["inputs"]["num_frames"] = FRAMES
    del workflow["8"], workflow["9"]
    workflow["20"] = {"class_type": "TTM_TrajectoryAdherence",
                      "inputs": {"video": frames, "trajectory": ["6", 0], "fit_to_video": fit}}
    workflow["21"] = {"class_type": "PreviewAny", "inputs": {"source": ["20", 0]}}
    workflow["22"] = {"class_type": "SaveImage",
                      "inputs": {"images": ["20", 1], "filename_prefix": f"ttm/adherence_{uuid.uuid4().hex[:8]}"}}
    workflow["23"] = {"class_type": "PreviewAny", "inputs": {"source": ["20", 2]}}
    return workflow


def test_adherence_of_a_render_that_follows_and_of_one_that_does_not(client: ComfyClient) -> None:
    info = client.object_info()["TTM_TrajectoryAdherence"]
    assert info["output"] == ["STRING", "IMAGE", "FLOAT"] and info["category"] == "Through-The-Mask"
    for name, spec in {**info["input"]["required"], **info["input"].get("optional", {})}.items():
        assert spec[1].get("tooltip"), name

    result = client.run(adherence(["7", 0]), timeout=300)
    report = result.history["outputs"]["21"]["text"][0]
    assert "object 1 (left coin): mean IoU" in report and "object 2 (big coin)" in report
    followed = float(result.history["outputs"]["23"]["text"][0])
    assert followed > 0.9, report
    plot = [f for f in result.files() if f.node_id == "22"]
    assert len(plot) == 1
    image = np.asarray(Image.open(io.BytesIO(client.view(plot[0]))).convert("RGB"))
    assert image.shape == (360, 640, 3) and (image < 128).any()

    frozen = adherence(["24", 0])
    frozen["24"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": FRAMES}}
    result = client.run(frozen, timeout=300)
    still = float(result.history["outputs"]["23"]["text"][0])
    assert still < followed - 0.1, result.history["outputs"]["21"]["text"][0]


def test_a_video_of_another_length_is_refused_by_name(client: ComfyClient) -> None:
    workflow = adherence(["24", 0], fit=False)
    workflow["24"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 5}}
    expect_failure(client, workflow, "video: the video has 5 frames, the trajectory 17")
