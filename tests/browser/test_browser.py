"""The frontend in headless Chromium: every UI workflow loads, matches its API twin, and runs."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import av
import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from common import WORKFLOWS
from native_wan import TINY_FRAMES, TINY_SIZE, tiny_workflow
from stage2_cases import server_models, tiny_model_dir  # noqa: F401 (fixtures)
from tools.browser import comfy_page
from ttm_batch.client import ComfyClient

pytestmark = [pytest.mark.server, pytest.mark.browser]
UI_WORKFLOWS = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith("_api.json"))
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

LOAD_JS = """
async (graph) => {
  await app.loadGraphData(graph);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const dialogs = [...document.querySelectorAll('.p-dialog, .p-toast-message')].map((d) => d.innerText);
  const unregistered = app.graph.nodes.map((n) => n.type).filter((t) => !LiteGraph.registered_node_types[t]);
  const prompt = (await app.graphToPrompt()).output;
  return {dialogs, unregistered, prompt};
}
"""


def problem_dialogs(dialogs: list[str]) -> list[str]:
    """Dialogs and toasts that report missing nodes or a workflow the frontend finds invalid."""
    return [d for d in dialogs if "missing" in d.lower() or "invalid" in d.lower()]


def test_there_are_ui_workflows() -> None:
    assert [p.name for p in UI_WORKFLOWS] == ["ttm_cogvideox_i2v.json", "ttm_i2vgen_xl.json", "ttm_sam2_llm.json",
                                              "ttm_wan21_i2v_patch.json", "ttm_wan22_ti2v.json", "ttm_warp_paths.json"]
    for path in UI_WORKFLOWS:
        assert path.with_name(path.stem + "_api.json").exists(), f"{path.name} has no API-format twin"


def test_missing_nodes_are_detected(comfy_server) -> None:
    """The check below can fail: a workflow with an unknown node type trips it."""
    graph = json.loads(UI_WORKFLOWS[0].read_text())
    graph["nodes"][0]["type"] = "TTM_NoSuchNode"
    with comfy_page(comfy_server.url) as page:
        state = page.evaluate(LOAD_JS, graph)
    assert problem_dialogs(state["dialogs"]) or state["unregistered"] == ["TTM_NoSuchNode"]
    assert "TTM_NoSuchNode" in " ".join(state["dialogs"]) + " ".join(state["unregistered"])


def fit_view(page) -> None:
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)


def tiny_swaps(path: Path, api: dict) -> tuple[dict[str, dict], int, bool]:
    """The widget values to change before queueing ``path`` from the page, per node id.

    Returns (swaps, expected frame count, whether it needs the native Wan server). Workflows that
    name real model files get the tiny random models of the same family instead.
    """
    if path.name.startswith("ttm_wan2"):  # native Wan: the tiny ComfyUI checkpoints; TI2V small (full-size VAE)
        size = (64, 64) if "ti2v" in path.name else TINY_SIZE
        tiny = tiny_workflow(copy.deepcopy(api), "unused", size=size, fmt="mp4")
        swaps = {node_id: {key: value for key, value in node["inputs"].items()
                           if key != "filename_prefix" and value != api[node_id]["inputs"][key]}
                 for node_id, node in tiny.items()}
        return {k: v for k, v in swaps.items() if v}, TINY_FRAMES, True
    motion = next(node for node in api.values() if node["class_type"] == "TTM_ImageToMotion")
    by_type, frames = DIFFUSERS_SWAPS.get(path.name, ({}, motion["inputs"]["num_frames"]))
    swaps = {node_id: dict(by_type[node["class_type"]]) for node_id, node in api.items()
             if node["class_type"] in by_type}
    return swaps, frames, False


QUEUE_JS = """async ([prefix, swaps]) => {
  const node = app.graph.nodes.find((n) => n.type === 'TTM_VideoCombine');
  node.widgets.find((w) => w.name === 'filename_prefix').value = prefix;
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
DIALOGS_JS = "() => [...document.querySelectorAll('.p-dialog, .p-toast-message')].map((d) => d.innerText)"


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
                             f"dialogs: {page.evaluate(DIALOGS_JS)}; console: {console[-10:]}") from None
    body = answer.value.json()
    assert answer.value.status == 200 and not body.get("node_errors"), \
        f"the server refused the prompt queued from the page: {body}; dialogs: {page.evaluate(DIALOGS_JS)}"
    return body["prompt_id"]


def test_a_prompt_the_server_refuses_fails_with_its_answer(comfy_server) -> None:
    """The queue check can fail: the Wan workflow on a server without Wan models is refused, and says why."""
    graph = json.loads((WORKFLOWS / "ttm_wan21_i2v_patch.json").read_text())
    with comfy_page(comfy_server.url) as page:
        page.evaluate("async (graph) => { await app.loadGraphData(graph); }", graph)
        with pytest.raises(AssertionError, match="refused.*wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors"):
            queue_from_page(page, f"ttm/refused_{uuid.uuid4().hex[:8]}", {})


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_loads_matches_api_twin_and_runs(request: pytest.FixtureRequest, artifacts: Path,
                                                     path: Path) -> None:
    graph = json.loads(path.read_text())
    api = json.loads(path.with_name(path.stem + "_api.json").read_text())
    swaps, frames, native = tiny_swaps(path, api)
    server = request.getfixturevalue("native_wan_server" if native else "comfy_server")
    if any(node["class_type"] == "TTM_VideoModelLoader" for node in api.values()):
        request.getfixturevalue("server_models")
    client = ComfyClient(server.url, timeout=120)
    prefix = f"ttm/browser_{uuid.uuid4().hex[:8]}"
    with comfy_page(server.url) as page:
        state = page.evaluate(LOAD_JS, graph)
        assert not problem_dialogs(state["dialogs"]), state["dialogs"]
        assert state["unregistered"] == []
        prompt = state["prompt"]
        assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in api.items()}
        for node_id, node in api.items():  # same widget values and the same links
            assert prompt[node_id]["inputs"] == node["inputs"], node_id
        fit_view(page)
        page.screenshot(path=str(artifacts / f"ui_{path.stem}_loaded.png"))

        # Queue from the page, as an artist would, with a fresh prefix so nothing is cached.
        prompt_id = queue_from_page(page, prefix, swaps)
        result = client.wait(prompt_id, timeout=600)
        assert result.status == "success", f"the prompt queued from the page failed: {result.error}"
        page.wait_for_timeout(1000)
        fit_view(page)
        page.screenshot(path=str(artifacts / f"ui_{path.stem}_ran.png"))
    videos = [item for output in result.history["outputs"].values() for item in output.get("images", [])
              if item["filename"].endswith(".mp4")]
    assert len(videos) == 1 and videos[0]["filename"].startswith(prefix.split("/")[1])
    file = server.base / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    with av.open(str(file)) as container:
        count = sum(1 for _ in container.decode(video=0))
    assert count == frames
