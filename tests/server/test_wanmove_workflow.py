"""workflows/ttm_wanmove_tracks*.json (masks -> trajectory -> TRACKS -> core Wan-Move) against core's schema.

CI's ComfyUI 0.3.75 has no Wan-Move nodes (WanMoveTrackToVideo came with ComfyUI 0.8), so the core nodes are
checked against the /object_info a ComfyUI 0.8.0 server served (tests/data/core_schemas/comfyui-0.8.0.json,
written by tools/core_schemas.py) and the pack's nodes against the live 0.3.75 server: every node type exists,
every required input is given, every link joins an output to an input of the same type, every widget value fits
its spec. Everything up to Trajectory To Tracks then runs in the real 0.3.75 server and its TRACKS go through
core's own ``create_pos_embeddings`` (comfy_extras/nodes_wanmove.py, copied into a test-only node,
tests/support/wanmove_probe_node.py) as ``WanMoveTrackToVideo.execute`` calls it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import ROOT, WORKFLOWS, load_workflow
from tools.comfy_harness import ComfyServer
from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server
API = "ttm_wanmove_tracks_api.json"
SNAPSHOT = ROOT / "tests" / "data" / "core_schemas" / "comfyui-0.8.0.json"
# Combos that list files: model names are the user's (the snapshot's server had no models), images the examples.
MODEL_FILES = {("UNETLoader", "unet_name"), ("CLIPLoader", "clip_name"), ("VAELoader", "vae_name"),
               ("CLIPVisionLoader", "clip_name")}
EXAMPLE_FILES = {("LoadImage", "image"), ("LoadImageMask", "image")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[ComfyServer]:
    """The project's ComfyUI with the pack and the test-only Wan-Move probe node."""
    base = tmp_path_factory.mktemp("comfyui-wanmove")
    (base / "custom_nodes").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "support" / "wanmove_probe_node.py", base / "custom_nodes" / "ttm_test_wanmove.py")
    server = ComfyServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.copy(server.log_path, artifacts / "comfyui-wanmove.log")


@pytest.fixture(scope="module")
def schemas(server: ComfyServer) -> dict[str, dict]:
    """Core nodes from the 0.8.0 snapshot, the pack's (TTM_*) from the live server."""
    live = ComfyClient(server.url, timeout=60).object_info()
    core = json.loads(SNAPSHOT.read_text())["nodes"]
    return {**core, **{name: spec for name, spec in live.items() if name.startswith("TTM_")}}


def inputs_of(spec: dict) -> dict[str, list]:
    return {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}


def combo_options(kind: object, options: dict) -> list | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(options.get("options", []))
    return None


def widget_problem(node_type: str, name: str, spec: list, value: object) -> str | None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    choices = combo_options(kind, options)
    if (node_type, name) in MODEL_FILES:
        return None if isinstance(value, str) and value.endswith(".safetensors") else f"{value!r} is no model file"
    if (node_type, name) in EXAMPLE_FILES:
        return None if (ROOT / "examples" / str(value)).is_file() else f"{value!r} is not in examples/"
    if choices is not None:
        return None if value in choices else f"{value!r} not in {choices}"
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not an int"
        low, high, step = options.get("min", -2**63), options.get("max", 2**63), options.get("step", 1)
        if not low <= value <= high:
            return f"{value} outside [{low}, {high}]"
        return None if (value - low) % step == 0 else f"{value} is off the step {step} from {low}"
    if kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{value!r} is not a number"
        low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
        return None if low <= value <= high else f"{value} outside [{low}, {high}]"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    return f"a widget value {value!r} for the socket type {kind}"


def test_snapshot_is_core_0_8_0_with_wanmove() -> None:
    snapshot = json.loads(SNAPSHOT.read_text())
    assert snapshot["comfyui_version"] == "0.8.0" and "fc0cb10b" in snapshot["source"]["origin"]
    node = snapshot["nodes"]["WanMoveTrackToVideo"]
    assert node["python_module"] == "comfy_extras.nodes_wanmove"
    assert node["input"]["optional"]["tracks"][0] == "TRACKS"
    assert node["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]


def schema_problems(api: dict, schemas: dict[str, dict]) -> list[str]:
    problems = []
    for node_id, node in api.items():
        kind = node["class_type"]
        if kind not in schemas:
            problems.append(f"{node_id}: no node type {kind}")
            continue
        spec = inputs_of(schemas[kind])
        problems += [f"{node_id} {kind}: required input {name} not given"
                     for name in schemas[kind]["input"].get("required", {}) if name not in node["inputs"]]
        for name, value in node["inputs"].items():
            if name not in spec:
                problems.append(f"{node_id} {kind}: no input {name}")
            elif isinstance(value, list):  # a link [source id, output index]
                source = api.get(value[0])
                if source is None:
                    problems.append(f"{node_id} {kind}.{name}: links to missing node {value[0]}")
                    continue
                outputs = schemas[source["class_type"]]["output"]
                given = outputs[value[1]] if value[1] < len(outputs) else None
                wanted = spec[name][0]
                if given != wanted and "*" not in (given, wanted):
                    problems.append(f"{node_id} {kind}.{name} wants {wanted}, gets {given} from {value[0]}")
            else:
                problem = widget_problem(kind, name, spec[name], value)
                if problem:
                    problems.append(f"{node_id} {kind}.{name}: {problem}")
    return problems


def test_api_twin_fits_the_schemas(schemas: dict[str, dict]) -> None:
    api = load_workflow(API)
    assert "WanMoveTrackToVideo" in {n["class_type"] for n in api.values()}
    problems = schema_problems(api, schemas)
    assert not problems, "\n".join(problems)


def test_the_schema_check_can_fail(schemas: dict[str, dict]) -> None:
    api = load_workflow(API)
    wan = api["17"]["inputs"]
    wan["width"], wan["tracks"], wan["sampler"] = 650, ["7", 1], "euler"
    del wan["vae"]
    api["19"]["inputs"]["sampler_name"] = "no_such_sampler"
    api["99"] = {"class_type": "WanMoveTracksFromNowhere", "inputs": {}}
    assert sorted(schema_problems(api, schemas)) == sorted([
        "17 WanMoveTrackToVideo: required input vae not given",
        "17 WanMoveTrackToVideo.width: 650 is off the step 16 from 16",
        "17 WanMoveTrackToVideo.tracks wants TRACKS, gets INT from 7",
        "17 WanMoveTrackToVideo: no input sampler",
        f"19 KSampler.sampler_name: 'no_such_sampler' not in {inputs_of(schemas['KSampler'])['sampler_name'][0]}",
        "99: no node type WanMoveTracksFromNowhere"])


def test_ui_twin_has_the_same_nodes_and_links() -> None:
    api = load_workflow(API)
    graph = json.loads((WORKFLOWS / API.replace("_api.json", ".json")).read_text())
    nodes = {str(n["id"]): n["type"] for n in graph["nodes"] if n["type"] not in ("MarkdownNote", "Note")}
    assert nodes == {k: v["class_type"] for k, v in api.items()}
    links = {(str(src), out, str(dst)) for _, src, out, dst, _, _ in graph["links"]}
    assert links == {(v[0], v[1], k) for k, node in api.items() for v in node["inputs"].values()
                     if isinstance(v, list)}


def test_tracks_fit_what_wanmove_reads(server: ComfyServer) -> None:
    """Stage 1 and Trajectory To Tracks as shipped, in ComfyUI 0.3.75; the TRACKS then meet core's
    create_pos_embeddings with WanMoveTrackToVideo's width, height and length."""
    api = load_workflow(API)
    wan = api["17"]["inputs"]
    assert api["17"]["class_type"] == "WanMoveTrackToVideo" and wan["tracks"] == ["7", 0]
    tracks = api["7"]["inputs"]
    assert (tracks["width"], tracks["height"], tracks["num_frames"]) == (wan["width"], wan["height"], wan["length"])
    stage1 = {k: v for k, v in api.items() if v["class_type"].startswith("TTM_") or v["class_type"].startswith("Load")}
    del stage1["21"]  # Video Combine (of the decoded Wan video)
    assert sorted(stage1) == ["1", "2", "3", "4", "5", "6", "7"]
    stage1["30"] = {"class_type": "TestWanMoveProbe", "inputs": {"tracks": ["7", 0], "width": wan["width"],
                                                                  "height": wan["height"], "length": wan["length"]}}
    result = ComfyClient(server.url, timeout=60).run(stage1, timeout=600)
    (report,) = result.history["outputs"]["30"]["wanmove"]
    objects, points = 2, tracks["points_per_object"]
    assert report["keys"] == ["track_path", "track_visibility"]
    assert report["path_shape"] == [wan["length"], objects * points, 2] and report["path_dtype"] == "torch.float32"
    assert report["visibility_shape"] == [wan["length"], objects * points]
    assert report["visibility_dtype"] == "torch.bool" and report["finite"]
    latent_frames = report["latent_frames"]
    assert report["pos_shape"] == [objects * points, latent_frames, 2]
    # Every latent frame gets tracks (both coins stay in view), inside the 80 x 60 latent grid.
    assert min(report["placed_per_latent_frame"]) >= points
    assert report["max_row"] < wan["height"] // 8 and report["max_col"] < wan["width"] // 8
