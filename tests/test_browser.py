"""The frontend in headless Chromium: every UI workflow loads, matches its API twin, and runs."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import av
import pytest

from _support import WORKFLOWS
from stage2_support import server_models, tiny_model_dir  # noqa: F401 (fixtures)
from tools.browser import comfy_page
from ttm_core.client import ComfyClient

pytestmark = [pytest.mark.server, pytest.mark.browser]
UI_WORKFLOWS = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith("_api.json"))
# Workflows of the diffusers backend name the real model folders; before queueing from the page the test
# swaps in a tiny random model of the same family (widget values per node type) and expects its frame count.
TINY_SWAPS = {
    "ttm_cogvideox_i2v.json": ({"TTM_VideoModelLoader": {"model": "tiny/cogvideox-1.0-i2v"},
                                "TTM_ImageToMotion": {"num_frames": 9},
                                "TTM_MaskedMotionToVideo": {"steps": 2}}, 9),
    "ttm_i2vgen_xl.json": ({"TTM_VideoModelLoader": {"model": "tiny/i2vgen-xl"},
                            "TTM_ImageToMotion": {"num_frames": 4},
                            "TTM_MaskedMotionToVideo": {"steps": 2, "width": 64, "height": 64}}, 4),
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
    assert [p.name for p in UI_WORKFLOWS] == ["ttm_cogvideox_i2v.json", "ttm_i2vgen_xl.json", "ttm_warp_paths.json"]
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


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_loads_matches_api_twin_and_runs(comfy_server, client: ComfyClient, artifacts: Path,
                                                     server_models: Path, path: Path) -> None:
    graph = json.loads(path.read_text())
    api = json.loads(path.with_name(path.stem + "_api.json").read_text())
    prefix = f"ttm/browser_{uuid.uuid4().hex[:8]}"
    with comfy_page(comfy_server.url) as page:
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
        before = set(client._request("GET", "/history") or {})
        swaps, frames = TINY_SWAPS.get(path.name, ({}, api["6"]["inputs"]["num_frames"]))
        page.evaluate("""async ([prefix, swaps]) => {
            const node = app.graph.nodes.find((n) => n.type === 'TTM_VideoCombine');
            node.widgets.find((w) => w.name === 'filename_prefix').value = prefix;
            for (const [type, values] of Object.entries(swaps)) {
              const target = app.graph.nodes.find((n) => n.type === type);
              for (const [name, value] of Object.entries(values)) target.widgets.find((w) => w.name === name).value = value;
            }
            await app.queuePrompt(0, 1);
        }""", [prefix, swaps])
        deadline = time.monotonic() + 300
        entry = None
        while time.monotonic() < deadline and entry is None:
            history = client._request("GET", "/history") or {}
            for prompt_id in set(history) - before:
                if history[prompt_id].get("status", {}).get("completed"):
                    entry = history[prompt_id]
            time.sleep(0.5)
        assert entry is not None, "the prompt queued from the page did not finish"
        page.wait_for_timeout(1000)
        fit_view(page)
        page.screenshot(path=str(artifacts / f"ui_{path.stem}_ran.png"))
    videos = [item for output in entry["outputs"].values() for item in output.get("images", [])
              if item["filename"].endswith(".mp4")]
    assert len(videos) == 1 and videos[0]["filename"].startswith(prefix.split("/")[1])
    file = comfy_server.base / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    with av.open(str(file)) as container:
        count = sum(1 for _ in container.decode(video=0))
    assert count == frames
