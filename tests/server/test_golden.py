"""Every shipped workflow, and the same workflows as shipped before the one-node-per-engine split, renders the
golden frames captured before the redesign (tests/support/golden.py explains the comparison)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common import WORKFLOWS
from golden import GOLDEN, NOT_ON_PROJECT_COMFYUI, STAGE1, TRAINED, compare, frames_of, needs_native, prepared, stem
from stage2_cases import server_models, tiny_model_dir  # noqa: F401 (fixtures)
from trained_checkpoints import install_stage1_models, install_trained_models

pytestmark = pytest.mark.server
LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
SHIPPED = sorted(p for p in WORKFLOWS.glob("*_api.json") if stem(p.name) not in NOT_ON_PROJECT_COMFYUI)
CASES = [*SHIPPED, *sorted(LEGACY.glob("*_api.json"))]
EXACT = os.environ.get("TTM_GOLDEN_EXACT") == "1"
"""TTM_GOLDEN_EXACT=1 demands identical frames (this machine kind); by default one 8-bit level of rounding
on another CPU passes (golden.compare)."""


def test_every_shipped_workflow_has_golden_frames() -> None:
    assert {stem(p.name) for p in SHIPPED} == {p.stem for p in GOLDEN.glob("*.npz")}
    shipped = {stem(p.name) for p in WORKFLOWS.glob("*_api.json")}
    assert shipped - {stem(p.name) for p in SHIPPED} == set(NOT_ON_PROJECT_COMFYUI) <= shipped


def test_only_the_wanmove_workflow_is_exempt() -> None:
    """The one shipped workflow without golden frames needs core nodes ComfyUI 0.3.75 lacks, and says so."""
    assert list(NOT_ON_PROJECT_COMFYUI) == ["ttm_wanmove_tracks"]
    reason = NOT_ON_PROJECT_COMFYUI["ttm_wanmove_tracks"]
    assert "WanMoveTrackToVideo needs ComfyUI >= 0.8" in reason and "0.3.75" in reason
    api = json.loads((WORKFLOWS / "ttm_wanmove_tracks_api.json").read_text())
    assert "WanMoveTrackToVideo" in {node["class_type"] for node in api.values()}
    assert {stem(p.name) for p in LEGACY.glob("*_api.json")} < {stem(p.name) for p in SHIPPED}


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_workflow_renders_its_golden_frames(request: pytest.FixtureRequest, path: Path) -> None:
    if needs_native(path.name):
        client = request.getfixturevalue("native_wan_client")
        if stem(path.name) in TRAINED:
            install_trained_models(request.getfixturevalue("native_wan_server").base / "models")
    else:
        request.getfixturevalue("server_models")
        client = request.getfixturevalue("client")
        if stem(path.name) in STAGE1:
            install_stage1_models(request.getfixturevalue("comfy_server").base / "models")
    graph = prepared(path.name, json.loads(path.read_text()))
    for node in graph.values():  # a fresh prefix per case: ComfyUI would serve an identical prompt from its cache
        if node["class_type"] == "TTM_VideoCombine":  # (keeping prepared's per-node suffix, if any)
            node["inputs"]["filename_prefix"] = node["inputs"]["filename_prefix"].replace(
                "golden/", f"golden/{path.parent.name}_", 1)
    frames = frames_of(client, client.run(graph, timeout=900))
    verdict = compare(frames, path.name)
    assert verdict == "identical" or not EXACT, f"{path.name}: {verdict}, not identical"
