"""The frontend in headless Chromium: every UI workflow loads, matches its API twin, and runs.

Every test runs on each frontend ``frontends()`` names: ComfyUI 0.3.75's own (1.32.9) and the newest one
(1.58.1, served with --front-end-root by the ``*_newest_frontend`` server fixtures).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from common import ROOT, WORKFLOWS
from native_wan import TINY_FRAMES, TINY_SIZE, tiny_workflow
from stage2_cases import link_tiny_models, tiny_model_dir  # noqa: F401 (fixture)
from tools.browser import DIALOGS_JS, comfy_page, dialogs, fit_view, frontend_version, problem_dialogs, redraw
from tools.comfy_harness import ComfyServer, frontend_root, frontends
from trained_checkpoints import (
    NATIVE_CKPT,
    STAGE1_FRAMES,
    install_stage1_models,
    install_trained_models,
    tiny_stage1_workflow,
    tiny_trained_workflow,
)
from ttm_batch.client import ComfyClient
from ttm_core.motion.trajectory_file import read_trajectory

pytestmark = [pytest.mark.server, pytest.mark.browser]
REFERENCE_FRAMES = 33
"""Frames of examples/ttm_coins_reference.mp4 (tools/make_example_assets.py)."""
NOT_ON_PROJECT_COMFYUI = {
    "ttm_wanmove_tracks.json": "core's WanMoveTrackToVideo needs ComfyUI >= 0.8: on the project's ComfyUI 0.3.75 the "
                               "frontend cannot even load it (a missing node type); test_wanmove_workflow.py "
                               "checks it against core 0.8.0's schema instead",
}
"""Shipped UI workflows the frontend test cannot load on the project's ComfyUI, and why."""
UI_WORKFLOWS = sorted(p for p in WORKFLOWS.glob("*.json")
                      if not p.name.endswith("_api.json") and p.name not in NOT_ON_PROJECT_COMFYUI)
# Workflows of the diffusers backend name the real model folders; before queueing from the page the test
# swaps in a tiny random model of the same family (widget values per node type) and expects its frame count;
# native Wan workflows get the tiny native checkpoints (native_wan.tiny_workflow) and run on the native server.
DIFFUSERS_SWAPS = {
    "ttm_cogvideox_i2v.json": ({"TTM_VideoModelLoader": {"model": "tiny/cogvideox-1.0-i2v"},
                                "TTM_ImageToMotion": {"num_frames": 9},
                                "TTM_DiffusersMotionToVideo": {"steps": 2}}, 9),
    "ttm_i2vgen_xl.json": ({"TTM_VideoModelLoader": {"model": "tiny/i2vgen-xl"},
                            "TTM_ImageToMotion": {"num_frames": 4},
                            "TTM_DiffusersMotionToVideo": {"steps": 2, "width": 64, "height": 64}}, 4),
}
# The trained workflow runs both backends on the native server with trained_checkpoints' tiny models. Its
# tiny bases differ in shape (unlike the real ones), so each backend needs a checkpoint of its own: the page
# adds a second Trained Checkpoint Loader for the native node, as an artist would (trained_checkpoints explains).
TRAINED_UI = ("ttm_trained_stage2.json",)
# The Stage 1 workflow runs on the plain server with the tiny TI2V and a random Stage 1 checkpoint of it.
STAGE1_UI = ("ttm_stage1_trained.json",)

FRONTENDS = list(frontends())
# The server fixtures (tests/conftest.py) by kind, for ComfyUI's own frontend; the newest frontend's twins
# carry the suffix below.
SERVER_FIXTURES = {"plain": "comfy_server", "native": "native_wan_server"}
NEWEST_SUFFIX = "_newest_frontend"

STATE_JS = """async () => {
  const unregistered = app.graph.nodes.map((n) => n.type).filter((t) => !LiteGraph.registered_node_types[t]);
  const prompt = (await app.graphToPrompt()).output;
  return {unregistered, prompt};
}"""


@pytest.fixture(params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    """The version of the frontend the test's page runs."""
    return request.param


def server_for(request: pytest.FixtureRequest, kind: str, frontend: str) -> ComfyServer:
    """The session's server of ``kind`` ("plain" or "native") serving ``frontend``."""
    own = frontend_root(frontend) is None
    return request.getfixturevalue(SERVER_FIXTURES[kind] + ("" if own else NEWEST_SUFFIX))


@contextmanager
def frontend_page(server: ComfyServer, frontend: str) -> Iterator[Page]:
    """A started page of ``server`` that checks it really runs ``frontend``."""
    with comfy_page(server.url) as page:
        assert frontend_version(page) == frontend, f"{server.url} serves frontend {frontend_version(page)}"
        yield page


def load(page: Page, graph: dict) -> None:
    """Load a UI-format workflow and wait until the canvas has drawn all of its nodes."""
    page.evaluate("async (graph) => { await app.loadGraphData(graph); }", graph)
    page.wait_for_function("(count) => app.graph.nodes.length === count", arg=len(graph["nodes"]), timeout=20_000)
    redraw(page)


def test_there_are_ui_workflows() -> None:
    assert [p.name for p in UI_WORKFLOWS] == [
        "ttm_cogvideox_i2v.json", "ttm_i2vgen_xl.json", "ttm_reference_video.json", "ttm_sam2_llm.json",
        "ttm_saved_trajectory_warp.json", "ttm_stage1_trained.json", "ttm_trained_stage2.json",
        "ttm_wan21_generate_and_track.json",
        "ttm_wan21_i2v_patch.json", "ttm_wan21_plan_llm.json", "ttm_wan22_ti2v.json", "ttm_warp_paths.json"]
    for path in UI_WORKFLOWS:
        assert path.with_name(path.stem + "_api.json").exists(), f"{path.name} has no API-format twin"
    # Exempt, by name and with its reason: only the Wan-Move workflow, which uses a node 0.3.75 lacks.
    assert list(NOT_ON_PROJECT_COMFYUI) == ["ttm_wanmove_tracks.json"]
    assert "WanMoveTrackToVideo needs ComfyUI >= 0.8" in NOT_ON_PROJECT_COMFYUI["ttm_wanmove_tracks.json"]
    exempt = json.loads((WORKFLOWS / "ttm_wanmove_tracks.json").read_text())
    assert "WanMoveTrackToVideo" in {node["type"] for node in exempt["nodes"]}


def test_missing_nodes_are_detected(request: pytest.FixtureRequest, artifacts: Path, frontend: str) -> None:
    """The dialog check of the workflow test can fail: a workflow with an unknown node type trips it.

    1.32.9 says so in a dialog (role dialog), 1.58.1 in a warning toast (role status); both name the node.
    """
    graph = json.loads(UI_WORKFLOWS[0].read_text())
    graph["nodes"][0]["type"] = "TTM_NoSuchNode"
    with frontend_page(server_for(request, "plain", frontend), frontend) as page:
        load(page, graph)
        try:
            page.wait_for_function(f"() => ({DIALOGS_JS})().some((text) => text.includes('TTM_NoSuchNode'))",
                                   timeout=20_000)
        except PlaywrightTimeoutError:
            pytest.fail(f"no dialog or toast names the missing node; dialogs: {dialogs(page)}")
        shown = dialogs(page)
        state = page.evaluate(STATE_JS)
        page.screenshot(path=str(artifacts / f"ui_missing_nodes_{frontend}.png"))
    assert [text for text in problem_dialogs(shown) if "TTM_NoSuchNode" in text], shown
    assert state["unregistered"] == ["TTM_NoSuchNode"]


def declared(info: dict, node: dict, inputs: dict) -> dict:
    """``inputs`` without the frontend's own display widgets, which differ between frontends and are not
    inputs of the node (core Load Video's ``video-preview`` from 1.58.1, Preview as Text's ``preview``)."""
    spec = info[node["class_type"]]["input"]
    names = {*spec.get("required", {}), *spec.get("optional", {})}
    return {key: value for key, value in inputs.items() if key in names}


@dataclass(frozen=True)
class TinyRun:
    """How the test runs a UI workflow from the page on tiny models.

    swaps: widget values to change, per node id of the loaded graph; added: nodes to add from the page,
    each ``{"type", "widgets", "links": [[target node id, input name], ...]}`` (its output 0 wired there);
    frames: the frame count of each video; native: whether it needs the native Wan server.
    """

    swaps: dict[str, dict]
    frames: int
    native: bool
    added: list[dict] = field(default_factory=list)


def widget_changes(api: dict, tiny: dict) -> tuple[dict[str, dict], list[dict]]:
    """The widget values ``tiny`` changes in ``api`` (links and output prefixes aside) and the nodes it adds."""
    swaps = {node_id: {key: value for key, value in node["inputs"].items()
                       if key != "filename_prefix" and not isinstance(value, list)
                       and value != api[node_id]["inputs"].get(key)}
             for node_id, node in tiny.items() if node_id in api}
    added = [{"type": node["class_type"],
              "widgets": {k: v for k, v in node["inputs"].items() if not isinstance(v, list)},
              "links": [[target_id, name] for target_id, target in tiny.items()
                        for name, value in target["inputs"].items() if value == [node_id, 0]]}
             for node_id, node in tiny.items() if node_id not in api]
    return {k: v for k, v in swaps.items() if v}, added


def tiny_swaps(path: Path, api: dict) -> TinyRun:
    """What to change before queueing ``path`` from the page (``TinyRun``).

    Workflows that name real model files get the tiny random models of the same family instead.
    """
    if path.name in TRAINED_UI:  # both backends, each with a checkpoint of its tiny base
        swaps, added = widget_changes(api, tiny_trained_workflow(copy.deepcopy(api), "unused", fmt="mp4"))
        return TinyRun(swaps, TINY_FRAMES, True, added)
    if path.name in STAGE1_UI:
        swaps, added = widget_changes(api, tiny_stage1_workflow(copy.deepcopy(api), "unused", fmt="mp4"))
        assert not added
        return TinyRun(swaps, STAGE1_FRAMES, False)
    if path.name.startswith("ttm_wan2"):  # native Wan: the tiny ComfyUI checkpoints; TI2V small (full-size VAE)
        size = (64, 64) if "ti2v" in path.name else TINY_SIZE
        swaps, added = widget_changes(api, tiny_workflow(copy.deepcopy(api), "unused", size=size, fmt="mp4"))
        assert not added
        return TinyRun(swaps, TINY_FRAMES, True)
    motion = [node for node in api.values() if node["class_type"] == "TTM_ImageToMotion"]
    saved = [node for node in api.values() if node["class_type"] == "TTM_LoadTrajectory"]
    # Without Image To Motion the trajectory is loaded (the saved file's frames) or tracked through the reference
    # clip (every one of its frames).
    if motion:
        length = motion[0]["inputs"]["num_frames"]
    elif saved:
        file = ROOT / "examples" / saved[0]["inputs"]["file"]
        length = read_trajectory(file, shown=file.name).num_frames
    else:
        length = REFERENCE_FRAMES
    by_type, frames = DIFFUSERS_SWAPS.get(path.name, ({}, length))
    swaps = {node_id: dict(by_type[node["class_type"]]) for node_id, node in api.items()
             if node["class_type"] in by_type}
    return TinyRun(swaps, frames, False)


ADD_JS = """(added) => {
  for (const spec of added) {
    const node = LiteGraph.createNode(spec.type);
    if (!node) throw new Error(`the frontend cannot create ${spec.type}`);
    app.graph.add(node);
    for (const [name, value] of Object.entries(spec.widgets)) {
      const widget = node.widgets.find((w) => w.name === name);
      if (!widget) throw new Error(`the new ${spec.type} has no widget ${name}`);
      widget.value = value;
    }
    for (const [id, input] of spec.links) {
      const target = app.graph.getNodeById(Number(id));
      const slot = target.findInputSlot(input);
      if (slot < 0) throw new Error(`node ${id} (${target.type}) has no input ${input}`);
      node.pos = [target.pos[0] - 420, target.pos[1] + target.size[1] + 60];
      if (!node.connect(0, target, slot)) throw new Error(`cannot link ${spec.type} to node ${id}.${input}`);
    }
  }
  app.graph.setDirtyCanvas(true, true);
}"""


def add_from_page(page: Page, added: list[dict]) -> dict:
    """Add ``added``'s nodes to the loaded graph with the frontend's own calls; returns the page's prompt after."""
    page.evaluate(ADD_JS, added)
    redraw(page)
    return page.evaluate(STATE_JS)["prompt"]


QUEUE_JS = """async ([prefix, swaps]) => {
  for (const node of app.graph.nodes.filter((n) => n.type === 'TTM_VideoCombine')) {
    node.widgets.find((w) => w.name === 'filename_prefix').value = prefix;
  }
  for (const [id, values] of Object.entries(swaps)) {
    const target = app.graph.getNodeById(Number(id));
    for (const [name, value] of Object.entries(values)) {
      const widget = target.widgets.find((w) => w.name === name);
      if (!widget) throw new Error(`node ${id} (${target.type}) has no widget ${name}`);
      widget.value = value;
    }
  }
  return String(await app.queuePrompt(0, 1));
}"""


def queue_from_page(page: Page, prefix: str, swaps: dict[str, dict]) -> str:
    """Queue the loaded graph as an artist would (app.queuePrompt); returns the prompt id the server gave it.

    Waits for the page's own POST /prompt and its answer, so a prompt the frontend never sent or the
    server refused fails here with the answer, the page's dialogs and its console, not after a timeout.
    """
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    returned = "app.queuePrompt was not reached"
    try:
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt"),
                                  timeout=60_000) as answer:
            returned = page.evaluate(QUEUE_JS, [prefix, swaps])
    except PlaywrightTimeoutError:
        raise AssertionError(f"the page sent no POST /prompt (app.queuePrompt returned {returned}); "
                             f"dialogs: {dialogs(page)}; console: {console[-10:]}") from None
    body = answer.value.json()
    assert answer.value.status == 200 and not body.get("node_errors"), \
        f"the server refused the prompt queued from the page: {body}; dialogs: {dialogs(page)}"
    return body["prompt_id"]


def test_a_prompt_the_server_refuses_fails_with_its_answer(request: pytest.FixtureRequest, frontend: str) -> None:
    """The queue check can fail: the Wan workflow on a server without Wan models is refused, and says why."""
    graph = json.loads((WORKFLOWS / "ttm_wan21_i2v_patch.json").read_text())
    with frontend_page(server_for(request, "plain", frontend), frontend) as page:
        load(page, graph)
        with pytest.raises(AssertionError, match=r"refused.*wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors"):
            queue_from_page(page, f"ttm/refused_{uuid.uuid4().hex[:8]}", {})


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_loads_matches_api_twin_and_runs(request: pytest.FixtureRequest, artifacts: Path,
                                                     frontend: str, path: Path) -> None:
    graph = json.loads(path.read_text())
    api = json.loads(path.with_name(path.stem + "_api.json").read_text())
    run = tiny_swaps(path, api)
    server = server_for(request, "native" if run.native else "plain", frontend)
    if path.name in TRAINED_UI:  # before the page asks /object_info, so the loaders list the files
        install_trained_models(server.base / "models")
    elif any(node["class_type"] == "TTM_VideoModelLoader" for node in api.values()):
        link_tiny_models(server, request.getfixturevalue("tiny_model_dir"))
        if path.name in STAGE1_UI:  # after the link: the checkpoints beside the linked tiny TI2V
            install_stage1_models(server.base / "models")
    client = ComfyClient(server.url, timeout=120)
    prefix = f"ttm/browser_{uuid.uuid4().hex[:8]}"
    with frontend_page(server, frontend) as page:
        load(page, graph)
        assert not problem_dialogs(dialogs(page)), dialogs(page)
        state = page.evaluate(STATE_JS)
        assert state["unregistered"] == []
        prompt = state["prompt"]
        assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in api.items()}
        info = client.object_info()
        for node_id, node in api.items():  # same widget values and the same links, for every declared input
            assert declared(info, node, prompt[node_id]["inputs"]) == declared(info, node, node["inputs"]), node_id
        fit_view(page)
        page.screenshot(path=str(artifacts / f"ui_{path.stem}_{frontend}_loaded.png"))

        if run.added:  # nodes the tiny run needs besides the shipped ones, added and wired from the page
            edited = add_from_page(page, run.added)
            types = sorted(node["class_type"] for node in edited.values())
            assert types == sorted([*(node["class_type"] for node in api.values()),
                                    *(spec["type"] for spec in run.added)]), types
            if path.name in TRAINED_UI:  # the native node now reads the native base's checkpoint
                native_loader = next(node for node in edited.values() if node["class_type"] == "TTM_WanMotionToVideo"
                                     )["inputs"]["trained"][0]
                assert edited[native_loader]["inputs"]["checkpoint"] == NATIVE_CKPT, edited[native_loader]

        # Queue from the page, as an artist would, with a fresh prefix so nothing is cached.
        prompt_id = queue_from_page(page, prefix, run.swaps)
        result = client.wait(prompt_id, timeout=600)
        assert result.status == "success", f"the prompt queued from the page failed: {result.error}"
        videos = [(node_id, item) for node_id, output in result.history["outputs"].items()
                  for item in output.get("images", []) if item["filename"].endswith(".mp4")]
        combines = sum(node["class_type"] == "TTM_VideoCombine" for node in api.values())
        assert len(videos) == combines and all(v["filename"].startswith(prefix.split("/")[1]) for _, v in videos), \
            videos
        # The page shows the results: its websocket delivered each node's output and the node's player loaded it.
        for video_node, video in videos:
            page.wait_for_function("([id, name]) => JSON.stringify(app.nodeOutputs?.[id] ?? {}).includes(name)",
                                   arg=[video_node, video["filename"]], timeout=30_000)
            page.wait_for_function("(name) => [...document.querySelectorAll('video')].some((v) => "
                                   "v.src.includes(encodeURIComponent(name)) && v.readyState >= 2)",
                                   arg=video["filename"], timeout=30_000)
        fit_view(page)
        page.screenshot(path=str(artifacts / f"ui_{path.stem}_{frontend}_ran.png"))
        # Dialogs the frontend raised late (after its asynchronous load-time checks) show by now.
        assert not problem_dialogs(dialogs(page)), dialogs(page)
    for _, video in videos:
        file = server.base / "output" / video["subfolder"] / video["filename"]
        with av.open(str(file)) as container:
            count = sum(1 for _ in container.decode(video=0))
        assert count == run.frames, video["filename"]


LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
LEGACY_UI = sorted(p for p in LEGACY.glob("*.json") if not p.name.endswith("_api.json"))


@pytest.mark.parametrize("path", LEGACY_UI, ids=lambda p: p.name)
def test_workflows_saved_before_the_split_still_load(request: pytest.FixtureRequest, frontend: str,
                                                     path: Path) -> None:
    """The shipped UI workflows as they were before Masked Motion To Video was split: the deprecated node loads
    with every widget value in place (tests/server/test_golden.py renders their API twins)."""
    graph = json.loads(path.read_text())
    api = json.loads(path.with_name(path.stem + "_api.json").read_text())
    assert any(node["type"] == "TTM_MaskedMotionToVideo" for node in graph["nodes"])
    server = server_for(request, "native" if path.name.startswith("ttm_wan2") else "plain", frontend)
    with frontend_page(server, frontend) as page:
        load(page, graph)
        assert not problem_dialogs(dialogs(page)), dialogs(page)
        state = page.evaluate(STATE_JS)
    assert state["unregistered"] == []
    assert {k: v["class_type"] for k, v in state["prompt"].items()} == {k: v["class_type"] for k, v in api.items()}
    info = ComfyClient(server.url, timeout=60).object_info()
    for node_id, node in api.items():
        loaded = dict(state["prompt"][node_id]["inputs"])
        for name in set(loaded) - set(node["inputs"]):  # optional inputs added since (Image To Motion's plan
            spec = info[node["class_type"]]["input"].get("optional", {}).get(name)  # settings): at their defaults
            assert spec is not None and loaded.pop(name) == spec[1].get("default"), (node_id, name)
        assert loaded == node["inputs"], node_id
