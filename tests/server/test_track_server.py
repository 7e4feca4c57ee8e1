"""Against a real ComfyUI server: Track Objects on a clip whose motion is known (the shipped warp workflow's
frames), from an IMAGE batch and from a video file through core Load Video, with the flow tracker, SAM 2 and
SAM 3 (tiny random-weight models in the users' layouts, loaded by the loader nodes), Trajectory To Paths,
progress, cancel and bad input."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import expect_failure, load_workflow, watch_prompt
from tiny_models import TinyModels
from ttm_batch.client import ComfyClient
from ttm_core.types import BACKGROUND_COLOR, color_for_id

pytestmark = pytest.mark.server
NODES = ["TTM_TrackObjects", "TTM_FlowTracker", "TTM_SAM3TrackerLoader", "TTM_TrajectoryToPaths"]
FRAMES = 17  # the warp workflow cut to 17 frames: enough motion to measure, quick to run


def warp_clip(frames: int = FRAMES) -> dict:
    """The shipped warp workflow (two coins on authored paths) as the clip to track: node 7's frames are an
    IMAGE batch whose true mask trajectory is node 6's. The video encode is dropped."""
    workflow = load_workflow("ttm_warp_paths_api.json")
    workflow["6"]["inputs"]["num_frames"] = frames
    del workflow["8"], workflow["9"]
    return workflow


def track(workflow: dict, frames: list, tracker: list | None = None, **inputs) -> dict:
    """Add Track Objects (node 20) on ``frames`` with node 5's objects, its preview saved (21), its paths shown
    (22) and the true trajectory's preview saved (23)."""
    node = {"frames": frames, "objects": ["5", 0], "num_frames": 0, "stride": 1, "start_frame": 0, "fps": 0.0,
            "paths_tolerance": 1.0, **inputs}
    if tracker is not None:
        node["tracker"] = tracker
    tag = uuid.uuid4().hex[:8]
    workflow["20"] = {"class_type": "TTM_TrackObjects", "inputs": node}
    workflow["21"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 1], "filename_prefix": f"ttm/track_{tag}"}}
    workflow["22"] = {"class_type": "PreviewAny", "inputs": {"source": ["20", 3]}}
    if "6" in workflow:
        workflow["23"] = {"class_type": "SaveImage",
                          "inputs": {"images": ["6", 1], "filename_prefix": f"ttm/true_{tag}"}}
    return workflow


def labels_of(client: ComfyClient, result, node_id: str) -> np.ndarray:
    """uint8 ``[T, H, W]`` object ids decoded from a saved colour preview (PNG, exact colours)."""
    files = sorted((f for f in result.files() if f.node_id == node_id), key=lambda f: f.filename)
    rgb = np.stack([np.asarray(Image.open(io.BytesIO(client.view(f))).convert("RGB")) for f in files])
    labels = np.zeros(rgb.shape[:3], dtype=np.uint8)
    for object_id in (1, 2):
        labels[(rgb == np.array(color_for_id(object_id))).all(-1)] = object_id
    assert ((labels > 0) | (rgb == np.array(BACKGROUND_COLOR)).all(-1)).all()  # nothing but objects and background
    return labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_nodes_are_listed_with_tooltips(client: ComfyClient) -> None:
    info = client.object_info()
    for node_id in NODES:
        node = info[node_id]
        assert node["category"] == "Through-The-Mask"
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["TTM_TrackObjects"]["output"] == ["TTM_TRAJECTORY", "IMAGE", "MASK", "STRING"]
    models = info["TTM_SAM3TrackerLoader"]["input"]["required"]["model"]
    options = models[1]["options"] if models[0] == "COMBO" else models[0]
    assert "ttm-tiny-sam3" in options


def test_flow_tracker_follows_the_warped_coins_and_fits_their_paths(client: ComfyClient) -> None:
    """No model at all: the tracked label video matches the authored one, and its paths JSON has the authored
    end point of the left coin (x 250, y 152 at the last frame)."""
    workflow = track(warp_clip(), ["7", 0], ["30", 0])
    workflow["30"] = {"class_type": "TTM_FlowTracker", "inputs": {"preset": "ultrafast", "flow_side": 256}}
    result = client.run(workflow, timeout=300)
    tracked, truth = labels_of(client, result, "21"), labels_of(client, result, "23")
    assert tracked.shape == truth.shape == (FRAMES, 288, 384)
    for object_id in (1, 2):
        scores = [iou(tracked[t] == object_id, truth[t] == object_id) for t in range(FRAMES)]
        assert min(scores) >= 0.85 and np.mean(scores) >= 0.9, (object_id, scores)
    paths = json.loads(result.history["outputs"]["22"]["text"][0])
    assert paths["version"] == 1 and set(paths["objects"]) == {"left coin", "big coin"}
    last = paths["objects"]["left coin"]["keyframes"][-1]
    assert last["frame"] == FRAMES - 1 and abs(last["x"] - 250) <= 3 and abs(last["y"] - 152) <= 3


@pytest.mark.parametrize("loader", ["sam2_meta", "sam2_hf", "sam3"])
def test_sam_trackers_from_a_video_file_through_core_load_video(comfy_server, client: ComfyClient, loader: str,
                                                                 tiny_models: TinyModels) -> None:
    """The clip as an mp4 in ComfyUI's input folder, loaded by core Load Video (VIDEO, streamed), tracked by the
    tiny SAM models through their loader nodes: one label frame per video frame, frame 0 the given masks."""
    name = f"ttm_track_{uuid.uuid4().hex[:8]}.mp4"
    source = run_warp_to_mp4(comfy_server, client)
    shutil.copy(source, comfy_server.base / "input" / name)
    workflow = track(warp_clip(2), ["40", 0], ["30", 0])  # nodes 1-5 give the first-frame objects
    workflow["40"] = {"class_type": "LoadVideo", "inputs": {"file": name}}
    sam2 = {"device": "cpu", "precision": "auto", "video_tracking": True}
    workflow["30"] = {
        "sam2_meta": {"class_type": "TTM_SAM2Loader", "inputs": {"model": tiny_models.meta_small_image.name, **sam2}},
        "sam2_hf": {"class_type": "TTM_SAM2Loader", "inputs": {"model": tiny_models.hf_sam2.name, **sam2}},
        "sam3": {"class_type": "TTM_SAM3TrackerLoader",
                 "inputs": {"model": tiny_models.hf_sam3.name, "device": "cpu", "precision": "auto"}},
    }[loader]
    messages = asyncio.run(watch_prompt(comfy_server.url, workflow, None))
    assert messages[-1]["type"] == "execution_success", messages[-1]
    steps = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "20"]
    assert steps == list(range(1, FRAMES + 1))  # one progress step per tracked frame
    result = client.wait(messages[-1]["data"]["prompt_id"], timeout=60)
    tracked, truth = labels_of(client, result, "21"), labels_of(client, result, "23")
    assert tracked.shape == (FRAMES, 288, 384)
    assert np.array_equal(tracked[0], truth[0])  # frame 0 is the objects' own masks


def run_warp_to_mp4(comfy_server, client: ComfyClient) -> Path:
    workflow = load_workflow("ttm_warp_paths_api.json")
    workflow["6"]["inputs"]["num_frames"] = FRAMES
    workflow["8"]["inputs"]["filename_prefix"] = f"ttm/clip_{uuid.uuid4().hex[:8]}"
    result = client.run(workflow, timeout=300)
    (video,) = [f for f in result.files() if f.filename.endswith(".mp4")]
    return comfy_server.base / "output" / video.subfolder / video.filename


def test_trajectory_to_paths_round_trips_through_image_to_motion(client: ComfyClient) -> None:
    """Authored paths -> trajectory -> Trajectory To Paths -> Image To Motion again: the same label video
    (within the fit's pixel tolerance)."""
    workflow = warp_clip()
    del workflow["7"]
    tag = uuid.uuid4().hex[:8]
    workflow["50"] = {"class_type": "TTM_TrajectoryToPaths",
                      "inputs": {"trajectory": ["6", 0], "tolerance": 0.5, "units": "normalized", "time": "t"}}
    again = json.loads(json.dumps(workflow["6"]))
    again["inputs"]["paths"] = ["50", 0]
    workflow["51"] = again
    workflow["52"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": f"ttm/a_{tag}"}}
    workflow["53"] = {"class_type": "SaveImage", "inputs": {"images": ["51", 1], "filename_prefix": f"ttm/b_{tag}"}}
    workflow["54"] = {"class_type": "PreviewAny", "inputs": {"source": ["50", 0]}}
    result = client.run(workflow, timeout=300)
    paths = json.loads(result.history["outputs"]["54"]["text"][0])
    assert paths["units"] == "normalized" and all(0 <= k["t"] <= 1 for o in paths["objects"].values()
                                                  for k in o["keyframes"])
    first, second = labels_of(client, result, "52"), labels_of(client, result, "53")
    for object_id in (1, 2):
        assert min(iou(first[t] == object_id, second[t] == object_id) for t in range(FRAMES)) >= 0.95


def test_cancel_stops_tracking_promptly(comfy_server, client: ComfyClient) -> None:
    frames = 200
    workflow = track(warp_clip(frames), ["7", 0])
    messages = asyncio.run(watch_prompt(comfy_server.url, workflow, interrupt_on_node="20"))
    assert messages[-1]["type"] == "execution_interrupted"
    done = max(m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "20")
    assert done < frames  # stopped inside the tracking loop
    assert client.run(track(warp_clip(3), ["7", 0]), timeout=300).status == "success"  # and the next one runs


def test_bad_inputs_come_back_as_clear_errors(client: ComfyClient, tiny_models: TinyModels) -> None:
    # Frames of another size than the masks.
    workflow = track(warp_clip(3), ["60", 0])
    workflow["60"] = {"class_type": "ImageScale", "inputs": {"image": ["7", 0], "upscale_method": "nearest-exact",
                                                             "width": 192, "height": 144, "crop": "disabled"}}
    expect_failure(client, workflow, "frames", "192x144", "384x288")
    # More frames than the clip has.
    expect_failure(client, track(warp_clip(3), ["7", 0], num_frames=5), "num_frames", "3 frames")
    # A Hugging Face SAM 2 folder loaded for images only (a Meta checkpoint always tracks).
    workflow = track(warp_clip(3), ["7", 0], ["30", 0])
    workflow["30"] = {"class_type": "TTM_SAM2Loader", "inputs": {"model": tiny_models.hf_sam2.name,
                                                                 "device": "cpu", "precision": "auto",
                                                                 "video_tracking": False}}
    expect_failure(client, workflow, "tracker", "video_tracking")
    # A SAM 3 model that is not there (a SAM 2 folder is not listed for SAM 3 either).
    for missing in ("no-such-sam3", "ttm-tiny-hf-sam2"):
        workflow = track(warp_clip(3), ["7", 0], ["30", 0])
        workflow["30"] = {"class_type": "TTM_SAM3TrackerLoader",
                          "inputs": {"model": missing, "device": "cpu", "precision": "auto"}}
        expect_failure(client, workflow, "model", missing, "models/sam3")


def test_reference_video_workflow_as_shipped_recovers_the_clips_motion(client: ComfyClient) -> None:
    """workflows/ttm_reference_video_api.json exactly as shipped: the flow tracker finds the reference clip's
    known motion again (examples/ttm_coins_reference.mp4 was rendered from REFERENCE_PATHS), and the video moves
    the gold image's coins the same way."""
    from tools.make_example_assets import REFERENCE_PATHS, reference_trajectory

    workflow = load_workflow("ttm_reference_video_api.json")
    workflow["10"]["inputs"]["filename_prefix"] = f"ttm/reference_{uuid.uuid4().hex[:8]}"
    result = client.run(workflow, timeout=600)
    _, truth = reference_trajectory()
    tracked = labels_of(client, result, "11")
    assert tracked.shape == tuple(truth.labels.shape)
    labels = truth.labels.numpy()
    for object_id in (1, 2):
        scores = [iou(tracked[t] == object_id, labels[t] == object_id) for t in range(len(labels))]
        assert np.mean(scores) >= 0.9 and min(scores) >= 0.8, (object_id, [round(s, 3) for s in scores])
    paths = json.loads(result.history["outputs"]["12"]["text"][0])
    for name, spec in REFERENCE_PATHS["objects"].items():
        end = spec["keyframes"][-1]
        last = paths["objects"][name]["keyframes"][-1]
        assert abs(last["x"] - end["x"]) <= 4 and abs(last["y"] - end["y"]) <= 4, (name, last)
    # The big coin's 30 degree turn is not in the paths: a tracked trajectory is a label video, and a disc's mask
    # has no orientation to measure (its mask moments are isotropic), so the fit keeps rotation 0.


def test_a_video_made_from_frames_tracks_like_the_frames(client: ComfyClient) -> None:
    """Core Create Video (a VIDEO held as frames, not a file) into Track Objects: the same labels as the IMAGE
    batch it was made from."""
    workflow = track(warp_clip(), ["70", 0])
    workflow["70"] = {"class_type": "CreateVideo", "inputs": {"images": ["7", 0], "fps": 16.0}}
    result = client.run(workflow, timeout=300)
    from_video = labels_of(client, result, "21")
    workflow = track(warp_clip(), ["7", 0])
    from_images = labels_of(client, client.run(workflow, timeout=300), "21")
    assert from_video.shape == (FRAMES, 288, 384) and np.array_equal(from_video, from_images)


def test_generate_and_track_drafts_from_the_motion_prompt(client: ComfyClient) -> None:
    """The draft's text encoder takes Prompt Decompose's motion_text (c_motion), in both twins."""
    # ComfyUI 0.3.75 lists V3 outputs' names as their types; the tooltips say which output is which.
    outputs = client.object_info()["TTM_PromptDecompose"]["output_tooltips"]
    api = load_workflow("ttm_wan21_generate_and_track_api.json")
    (draft,) = [node for node in api.values() if node["class_type"] == "KSampler"]
    encoder = api[draft["inputs"]["positive"][0]]  # WanImageToVideo -> its positive conditioning's encoder
    text = api[encoder["inputs"]["positive"][0]]["inputs"]["text"]
    assert api[text[0]]["class_type"] == "TTM_PromptDecompose" and outputs[text[1]].startswith("The motion prompt")
