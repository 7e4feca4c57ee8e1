"""Against a real ComfyUI server: every format node of issue 12 in workflows built on the shipped warp workflow
(two coins on authored paths): trajectory -> TRACKS / ATI JSON -> trajectory, -> masks -> trajectory,
-> Time-to-Move inputs, core-built SAM3_TRACK_DATA -> trajectory, and bad input.

ComfyUI 0.3.75 has no Wan-Move or SAM 3 nodes: TRACKS travel between the pack's own nodes (the dict core's
WanMoveTracksFromCoords builds), and SAM3_TRACK_DATA comes from a test-only node that packs masks as core's
comfy/ldm/sam3/tracker.py does (tests/support/core_formats_node.py)."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import ROOT, expect_failure, load_workflow
from tools.comfy_harness import ComfyServer
from ttm_batch.client import ComfyClient
from ttm_core.types import BACKGROUND_COLOR, color_for_id

pytestmark = pytest.mark.server
NODES = ["TTM_TrajectoryFromMasks", "TTM_TrajectoryFromSAM3", "TTM_TrajectoryFromTracks", "TTM_TrajectoryToTracks",
         "TTM_TrajectoryToTimeToMove", "TTM_TrajectoryToMasks"]
FRAMES = 9


def coins(frames: int = FRAMES) -> dict:
    """Nodes 1-6 of the shipped warp workflow: image 1, objects 5, the authored trajectory 6."""
    workflow = load_workflow("ttm_warp_paths_api.json")
    workflow["6"]["inputs"]["num_frames"] = frames
    del workflow["7"], workflow["8"], workflow["9"]
    return workflow


def save(workflow: dict, node: str, images: list) -> None:
    workflow[node] = {"class_type": "SaveImage",
                      "inputs": {"images": images, "filename_prefix": f"ttm/formats_{uuid.uuid4().hex[:8]}"}}


def frames_of(client: ComfyClient, result, node_id: str) -> np.ndarray:
    files = sorted((f for f in result.files() if f.node_id == node_id), key=lambda f: f.filename)
    return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f))).convert("RGB")) for f in files])


def labels_of(client: ComfyClient, result, node_id: str, ids=(1, 2)) -> np.ndarray:
    rgb = frames_of(client, result, node_id)
    labels = np.zeros(rgb.shape[:3], dtype=np.uint8)
    for object_id in ids:
        labels[(rgb == np.array(color_for_id(object_id))).all(-1)] = object_id
    assert ((labels > 0) | (rgb == np.array(BACKGROUND_COLOR)).all(-1)).all()
    return labels


def mean_iou(a: np.ndarray, b: np.ndarray, ids=(1, 2)) -> float:
    scores = [((a[t] == i) & (b[t] == i)).sum() / max(((a[t] == i) | (b[t] == i)).sum(), 1)
              for t in range(a.shape[0]) for i in ids]
    return float(np.mean(scores))


def test_nodes_are_listed_with_tooltips(client: ComfyClient) -> None:
    info = client.object_info()
    for node_id in NODES:
        node = info[node_id]
        assert node["category"] == "Through-The-Mask"
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["TTM_TrajectoryToTracks"]["output"] == ["TRACKS", "INT", "STRING"]
    assert info["TTM_TrajectoryFromTracks"]["input"]["optional"]["tracks"][0] == "TRACKS"
    assert info["TTM_TrajectoryFromSAM3"]["input"]["required"]["track_data"][0] == "SAM3_TRACK_DATA"


def test_round_trips_through_tracks_ati_json_masks_and_time_to_move(client: ComfyClient) -> None:
    workflow = coins()
    workflow["20"] = {"class_type": "TTM_TrajectoryToTracks",
                      "inputs": {"trajectory": ["6", 0], "points_per_object": 24, "width": 0, "height": 0,
                                 "num_frames": 0}}
    fit = {"objects": ["5", 0], "track_width": 0, "track_height": 0, "fps": 16.0, "ransac_threshold": 3.0,
           "still_without_tracks": False, "depth_order": ""}
    workflow["21"] = {"class_type": "TTM_TrajectoryFromTracks", "inputs": {**fit, "tracks": ["20", 0], "num_frames": 0}}
    workflow["22"] = {"class_type": "TTM_TrajectoryFromTracks",
                      "inputs": {**fit, "track_json": ["20", 2], "num_frames": FRAMES}}
    workflow["23"] = {"class_type": "TTM_TrajectoryToMasks", "inputs": {"trajectory": ["6", 0]}}
    workflow["24"] = {"class_type": "TTM_TrajectoryFromMasks",
                      "inputs": {"masks": ["23", 1], "object_count": ["23", 2], "prompts": ["23", 3],
                                 "image": ["1", 0], "fps": 16.0, "depth_order": ""}}
    workflow["25"] = {"class_type": "TTM_TrajectoryFromMasks",
                      "inputs": {"masks": ["23", 4], "mask_2": ["23", 5], "object_count": 0, "fps": 16.0,
                                 "depth_order": ""}}
    workflow["26"] = {"class_type": "TTM_TrajectoryToTimeToMove",
                      "inputs": {"image": ["1", 0], "trajectory": ["24", 0], "feather": 1.0}}
    workflow["27"] = {"class_type": "MaskToImage", "inputs": {"mask": ["26", 1]}}
    workflow["28"] = {"class_type": "PreviewAny", "inputs": {"source": ["20", 1]}}
    workflow["29"] = {"class_type": "PreviewAny", "inputs": {"source": ["20", 2]}}
    for node, source in {"30": ["6", 1], "31": ["21", 1], "32": ["22", 1], "33": ["24", 1], "34": ["25", 1],
                         "35": ["23", 0], "36": ["27", 0], "37": ["26", 0]}.items():
        save(workflow, node, source)
    result = client.run(workflow, timeout=300)
    truth = labels_of(client, result, "30")
    assert truth.shape == (FRAMES, 288, 384)
    assert mean_iou(labels_of(client, result, "31"), truth) >= 0.9  # TRACKS
    assert mean_iou(labels_of(client, result, "32"), truth) >= 0.9  # ATI JSON (121 points)
    assert np.array_equal(labels_of(client, result, "33"), truth)  # masks batch + object_count: exact
    assert np.array_equal(labels_of(client, result, "34"), truth)  # one MASK per object: exact
    assert np.array_equal(labels_of(client, result, "35"), truth)  # the label video output
    motion = frames_of(client, result, "36")[..., 0]
    assert np.array_equal(motion > 127, truth > 0)  # Time-to-Move's motion mask
    assert frames_of(client, result, "37").shape == (FRAMES, 288, 384, 3)
    assert result.history["outputs"]["28"]["text"][0] == str(FRAMES)
    ati = json.loads(result.history["outputs"]["29"]["text"][0])
    assert len(ati) == 48 and all(len(track) == 121 for track in ati)


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda w: w.update({"20": {"class_type": "TTM_TrajectoryFromTracks",
                                "inputs": {"objects": ["5", 0], "track_width": 0, "track_height": 0, "num_frames": 0,
                                           "fps": 16.0, "ransac_threshold": 3.0, "still_without_tracks": False,
                                           "depth_order": ""}}}),
     ["neither tracks nor track_json is connected"]),
    (lambda w: w.update({"19": {"class_type": "PrimitiveString", "inputs": {"value": "[{\"x\": 10, \"y\": NaN}]"}},
                         "20": {"class_type": "TTM_TrajectoryFromTracks",
                                "inputs": {"objects": ["5", 0], "track_json": ["19", 0], "track_width": 0,
                                           "track_height": 0, "num_frames": 0, "fps": 16.0, "ransac_threshold": 3.0,
                                           "still_without_tracks": False, "depth_order": ""}}}),
     ["track_json: point 0 has a coordinate nan"]),
    (lambda w: w.update({"19": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
                         "20": {"class_type": "TTM_TrajectoryFromMasks",
                                "inputs": {"masks": ["2", 0], "mask_2": ["19", 0], "object_count": 0, "fps": 16.0,
                                           "depth_order": ""}}}),
     ["mask_2: the masks are 64x64 but masks is 384x288"]),
    (lambda w: w.update({"20": {"class_type": "TTM_TrajectoryFromMasks",
                                "inputs": {"masks": ["2", 0], "prompts": ["4", 0], "object_count": 0, "fps": 16.0,
                                           "depth_order": ""}}}),
     ["prompts: the prompts name 2 objects", "but 1 mask batches were given"]),
])
def test_bad_input_is_named(client: ComfyClient, edit, needles: list[str]) -> None:
    workflow = coins(2)
    edit(workflow)
    workflow["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 1]}}
    expect_failure(client, workflow, *needles)


@pytest.fixture(scope="module")
def sam3_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[ComfyServer]:
    """A ComfyUI with the pack and the test-only node that builds SAM3_TRACK_DATA as core does."""
    base = tmp_path_factory.mktemp("comfyui-sam3-data")
    (base / "custom_nodes").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "support" / "core_formats_node.py", base / "custom_nodes" / "ttm_test_sam3_data.py")
    server = ComfyServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.copy(server.log_path, artifacts / "comfyui-sam3-data.log")


def test_sam3_track_data_becomes_the_trajectory(sam3_server: ComfyServer) -> None:
    """The coins' masks packed as core's SAM 3 tracker packs them (at twice the size, as SAM 3 works at its own
    resolution) come back as the same label video, SAM 3 objects 0 and 1 as ids 1 and 2."""
    client = ComfyClient(sam3_server.url, timeout=60)
    workflow = coins()
    workflow["20"] = {"class_type": "TTM_TrajectoryToMasks", "inputs": {"trajectory": ["6", 0]}}
    workflow["21"] = {"class_type": "TestSAM3TrackData",
                      "inputs": {"mask_0": ["20", 4], "mask_1": ["20", 5], "scale": 2}}
    workflow["22"] = {"class_type": "TTM_TrajectoryFromSAM3",
                      "inputs": {"track_data": ["21", 0], "object_indices": "", "prompts": ["4", 0], "fps": 16.0,
                                 "depth_order": ""}}
    save(workflow, "30", ["6", 1])
    save(workflow, "31", ["22", 1])
    result = client.run(workflow, timeout=300)
    assert np.array_equal(labels_of(client, result, "31"), labels_of(client, result, "30"))
    bad = coins(2)
    bad["20"], bad["21"] = workflow["20"], workflow["21"]
    bad["22"] = {**workflow["22"], "inputs": {**workflow["22"]["inputs"], "object_indices": "0, 7"}}
    bad["23"] = {"class_type": "PreviewImage", "inputs": {"images": ["22", 1]}}
    expect_failure(client, bad, "object_indices: '7' is not an object index of this track data (0..1)")
