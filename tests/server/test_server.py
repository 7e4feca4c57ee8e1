"""Against a real ComfyUI server: node list, the shipped workflow end to end, bad input, cancel."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from centroids import measure_centroids
from common import ROOT, expect_failure, load_workflow, watch_prompt
from ttm_batch.client import ComfyClient
from ttm_core.motion.paths import parse_paths, sample_path
from ttm_core.motion.poses import mask_centroids
from ttm_core.types import ObjectPrompt, Prompts

pytestmark = pytest.mark.server
API_WORKFLOW = "ttm_warp_paths_api.json"
TTM_NODES = ["TTM_PromptDecompose", "TTM_ObjectsFromMasks", "TTM_ImageToMotion", "TTM_WarpMotionToVideo",
             "TTM_WanMotionToVideo", "TTM_DiffusersMotionToVideo", "TTM_MaskedMotionToVideo", "TTM_PatchModel",
             "TTM_VideoCombine", "TTM_TrainedCheckpointLoader"]


def test_object_info_lists_every_node_with_tooltips(client: ComfyClient) -> None:
    info = client.object_info()
    for node_id in TTM_NODES:
        node = info[node_id]
        assert node["category"] == "Through-The-Mask"
        assert "Through-The-Mask" in node["display_name"]
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        assert inputs, node_id
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["TTM_VideoCombine"]["output_node"] is True
    assert info["TTM_ImageToMotion"]["output"] == ["TTM_TRAJECTORY", "IMAGE", "MASK", "STRING"]
    assert info["TTM_TrainedCheckpointLoader"]["output"] == ["TTM_TRAINED"]
    assert info["TTM_MaskedMotionToVideo"]["deprecated"] is True and "deprecated" in \
        info["TTM_MaskedMotionToVideo"]["display_name"]


def test_image_to_motion_inputs_in_saved_order(client: ComfyClient) -> None:
    """Image To Motion's inputs, exactly and in order: later additions (the plan and trained backends' inputs) are
    appended, so saved workflows keep their widget order."""
    spec = client.object_info()["TTM_ImageToMotion"]["input"]
    assert list(spec["required"]) == ["image", "objects", "backend", "paths", "num_frames", "fps", "depth_order",
                                      "spline_objects", "spline_width", "spline_height"]
    assert list(spec["optional"]) == ["spline_coords", "llm", "seed", "temperature", "max_new_tokens", "attempts",
                                      "trained", "video_model", "steps", "cfg", "model", "clip", "vae",
                                      "clip_vision", "sampler_name", "scheduler"]
    assert spec["required"]["backend"][1]["options"] == ["paths", "plan", "trained"]


def test_each_stage2_node_shows_only_the_inputs_its_engine_reads(client: ComfyClient) -> None:
    info = client.object_info()

    def inputs(node_id: str) -> set[str]:
        spec = info[node_id]["input"]
        return set(spec.get("required", {})) | set(spec.get("optional", {}))

    masking = {"masked_blocks", "self_strength", "cross_strength", "start_percent", "end_percent", "guidance",
               "object_clock", "background_clock", "clock_units"}
    sampling = {"negative_prompt", "width", "height", "length", "seed", "steps", "cfg"}
    assert inputs("TTM_WarpMotionToVideo") == {"image", "trajectory", "feather"}
    assert inputs("TTM_WanMotionToVideo") == {"image", "trajectory", "model", "clip", "vae", "model_2", "clip_vision",
                                              "sampler_name", "scheduler", "expert_switch",
                                              "feather", "trained"} | masking | sampling
    assert inputs("TTM_DiffusersMotionToVideo") == {"image", "trajectory", "video_model", "prompts",
                                                    "feather", "trained"} | masking | sampling
    assert len(inputs("TTM_MaskedMotionToVideo")) == 30  # the deprecated all-in-one node keeps its schema


def fetch_video(client: ComfyClient, result, tmp_path: Path) -> Path:
    videos = [f for f in result.files() if f.filename.endswith(".mp4")]
    assert len(videos) == 1, list(result.files())
    path = tmp_path / videos[0].filename
    path.write_bytes(client.view(videos[0]))
    return path


def decode(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


def expected_centroids(workflow: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, where the paths JSON asks each object's centroid to be: [T, L, 2], plus rest [L, 2]."""
    masks = torch.stack([load_mask(f"ttm_coins_mask_{side}.png") for side in ("left", "right")])
    lines = workflow["4"]["inputs"]["objects"].splitlines()
    prompts = Prompts("g", "m", tuple(ObjectPrompt(*line.split(":", 1)) for line in lines))
    motion = workflow["6"]["inputs"]
    rest = mask_centroids(masks)
    paths = parse_paths(motion["paths"], prompts, tuple(masks.shape[1:]), motion["num_frames"], rest)
    poses = np.stack([sample_path(p, motion["num_frames"])[:, :2].numpy() for p in paths], axis=1)
    return poses, rest.numpy()


def load_mask(name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(ROOT / "examples" / name).convert("L")) / 255.0).float()


def test_shipped_workflow_moves_each_object_along_its_path(client: ComfyClient, tmp_path: Path) -> None:
    workflow = load_workflow(API_WORKFLOW)
    result = client.run(workflow, timeout=300)
    frames, fps = decode(fetch_video(client, result, tmp_path))
    motion = workflow["6"]["inputs"]
    assert frames.shape == (motion["num_frames"], 288, 384, 3)
    assert fps == pytest.approx(motion["fps"])
    first = np.asarray(Image.open(ROOT / "examples" / "ttm_coins.png").convert("RGB")).astype(np.float64)
    assert np.abs(frames[0] - first).mean() < 3.0  # the video starts from the image (lossy H.264)

    expected, rest = expected_centroids(workflow)
    # The keyframes themselves, straight from the JSON: left coin at t=0.5 and t=1.
    assert expected[24, 0].tolist() == pytest.approx([150, 152])
    assert expected[48, 0].tolist() == pytest.approx([250, 152])
    for index, side in enumerate(("left", "right")):
        mask = load_mask(f"ttm_coins_mask_{side}.png").numpy()
        measured = measure_centroids(frames, mask, rest[index], expected[:, index])
        error = np.linalg.norm(measured - expected[:, index], axis=-1)
        assert error.max() <= 2.0, f"{side} coin off its path by up to {error.max():.2f} px at frame {error.argmax()}"
        assert np.linalg.norm(expected[-1, index] - rest[index]) > 60  # and it really travelled


def mask_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_inputs_come_back_as_clear_errors(client: ComfyClient) -> None:
    small = client.upload_image(mask_png(np.full((100, 100), 255)), "ttm_test_small_mask.png")
    empty = client.upload_image(mask_png(np.zeros((288, 384))), "ttm_test_empty_mask.png")

    def variant(**changes: dict) -> dict:
        workflow = load_workflow(API_WORKFLOW)
        workflow["8"]["inputs"]["filename_prefix"] = f"ttm/bad_{uuid.uuid4().hex[:8]}"
        for node_id, inputs in changes.items():
            workflow[node_id.lstrip("n")]["inputs"].update(inputs)
        return workflow

    expect_failure(client, variant(n3={"image": small}), "mask_2: the mask is 100x100 but the image is 384x288")
    expect_failure(client, variant(n3={"image": empty}), "mask_2: mask 1 of this input (object 2, 'big coin') is empty")
    expect_failure(client, variant(n4={"objects": ""}), "prompts: the prompts name no objects (zero objects)")
    expect_failure(client, variant(n4={"objects": "left coin: a coin\nbig coin a coin"}),
                   "objects: line 2 ('big coin a coin') has no colon")
    paths = json.loads(load_workflow(API_WORKFLOW)["6"]["inputs"]["paths"])
    paths["objects"]["bird"] = {"keyframes": [{"t": 1, "x": 10, "y": 10}]}
    expect_failure(client, variant(n6={"paths": json.dumps(paths)}),
                   "paths: there is no object 'bird' (objects: 1 = 'left coin', 2 = 'big coin')")
    paths["objects"].pop("bird")
    paths["objects"]["big coin"]["spline"] = '[{"x": 348, "y": 179}, {"x": 330 "y": 230}]'
    expect_failure(client, variant(n6={"paths": json.dumps(paths)}), "big coin spline", "not valid JSON")
    socket = variant()
    socket["20"] = {"class_type": "PrimitiveString", "inputs": {"value": "[{'x': 1, 'y': 2},"}}
    socket["6"]["inputs"]["spline_coords"] = ["20", 0]
    expect_failure(client, socket, "spline_coords: not valid JSON")
    expect_failure(client, variant(n8={"filename_prefix": "../../escape"}), "filename_prefix", "'..'")
    expect_failure(client, variant(n6={"backend": "nonsense"}), "backend: 'nonsense' is not one of paths")
    # ... and the server still serves the next prompt.
    result = client.run(variant(), timeout=300)
    assert any(f.filename.endswith(".mp4") for f in result.files())


def long_workflow(frames: int, prefix: str) -> dict:
    workflow = load_workflow(API_WORKFLOW)
    workflow["6"]["inputs"]["num_frames"] = frames
    workflow["8"]["inputs"]["filename_prefix"] = prefix
    return workflow


def test_progress_is_reported_per_frame(comfy_server, client: ComfyClient) -> None:
    prefix = f"ttm/progress_{uuid.uuid4().hex[:8]}"
    messages = asyncio.run(watch_prompt(comfy_server.url, long_workflow(21, prefix), None))
    assert messages[-1]["type"] == "execution_success"
    for node in ("6", "7", "8"):  # trajectory frames, rendered frames, encoded frames
        steps = [m["data"] for m in messages if m["type"] == "progress" and m["data"]["node"] == node]
        assert [s["value"] for s in steps] == list(range(1, 22)), node
        assert {s["max"] for s in steps} == {21}


@pytest.mark.parametrize("node", ["7", "8"])
def test_cancel_stops_promptly_and_leaves_no_file(comfy_server, client: ComfyClient, node: str) -> None:
    prefix = f"ttm/cancel_{node}_{uuid.uuid4().hex[:8]}"
    frames = 240  # long enough that the interrupt lands inside the node's loop
    messages = asyncio.run(watch_prompt(comfy_server.url, long_workflow(frames, prefix), interrupt_on_node=node))
    assert messages[-1]["type"] == "execution_interrupted"
    done = max(m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == node)
    assert done < frames  # stopped inside the node's loop, not after it
    output = comfy_server.base / "output" / "ttm"
    leftovers = [p.name for p in output.iterdir() if prefix.split("/")[1] in p.name] if output.exists() else []
    assert leftovers == []
    # The next prompt runs normally.
    result = client.run(long_workflow(5, prefix + "_after"), timeout=300)
    assert any(f.filename.endswith(".mp4") for f in result.files())
