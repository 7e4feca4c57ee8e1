"""A trained Stage 2 checkpoint drives both Stage 2 backends in a real ComfyUI via the shipped workflow.

workflows/ttm_trained_stage2_api.json loads one checkpoint (models/ttm) with Trained Checkpoint Loader
and feeds it to Motion To Video · diffusers (Wan 2.2 TI2V-5B in diffusers format) and · Wan native
(the same base model as ComfyUI loads it). Here the tiny test bases of the two formats differ in
shape (the diffusers one has a 32-wide text encoder, ComfyUI builds Wan with 4096), so each backend
gets a checkpoint of its own tiny base: the shipped loader feeds the diffusers node and a second
loader the native node. The checkpoints are random "trained" ones; tests/support/trained_checkpoints.py
prepares the models and the graph (as for the golden and browser tests).
"""

from __future__ import annotations

import copy
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import WORKFLOWS, expect_failure
from trained_checkpoints import (
    DIFFUSERS_CKPT,
    NATIVE_CKPT,
    NATIVE_LOADER,
    install_trained_models,
    tiny_trained_workflow,
)
from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def trained_models(native_wan_server) -> Path:
    """The tiny diffusers TI2V and one trained checkpoint per tiny base, in the native server's models/."""
    return install_trained_models(native_wan_server.base / "models")


def graph(trained: bool = True, diffusers_ckpt: str = DIFFUSERS_CKPT) -> dict:
    """The shipped workflow on the tiny models (64 x 64, 9 frames, 2 steps, png), optionally untrained."""
    run = uuid.uuid4().hex[:8]
    wf = tiny_trained_workflow(json.loads((WORKFLOWS / "ttm_trained_stage2_api.json").read_text()),
                               f"ttm/trained_{run}", trained=trained)
    if trained:
        wf["3"]["inputs"]["checkpoint"] = diffusers_ckpt
    return wf


def frames(client: ComfyClient, result, node: str) -> np.ndarray:
    files = sorted((f for f in result.files() if f.node_id == node and f.filename.endswith(".png")),
                   key=lambda f: f.filename)
    assert files, list(result.files())
    return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f))).convert("RGB")) for f in files]).astype(float)


def test_the_shipped_workflow_runs_the_checkpoint_in_both_backends(native_wan_client: ComfyClient,
                                                                   trained_models: Path) -> None:
    info = native_wan_client.object_info()["TTM_TrainedCheckpointLoader"]
    assert info["output"] == ["TTM_TRAINED"]
    assert {DIFFUSERS_CKPT, NATIVE_CKPT} <= set(info["input"]["required"]["checkpoint"][1]["options"])
    for node in ("TTM_DiffusersMotionToVideo", "TTM_WanMotionToVideo"):
        assert native_wan_client.object_info()[node]["input"]["optional"]["trained"][0] == "TTM_TRAINED"
    trained = native_wan_client.run(graph(), timeout=900)
    stock = native_wan_client.run(graph(trained=False), timeout=900)
    text = "\n".join(trained.history["outputs"]["5"].get("text", []))
    assert f"trained checkpoint {DIFFUSERS_CKPT}" in text
    loader_text = "\n".join(trained.history["outputs"]["3"].get("text", []))
    assert "Stage 2 checkpoint for wan2.2-ti2v-5b" in loader_text and "K = 1" in loader_text
    for node in ("6", "8"):
        ours, plain = frames(native_wan_client, trained, node), frames(native_wan_client, stock, node)
        assert ours.shape == plain.shape and ours.shape[0] == 9
        assert np.abs(ours - plain).max() > 8, f"node {node}: the checkpoint did not change the video"


def test_a_checkpoint_of_another_base_is_refused_naming_the_input(native_wan_client: ComfyClient,
                                                                  trained_models: Path) -> None:
    wrong = graph(diffusers_ckpt=NATIVE_CKPT)  # the native tiny base's checkpoint on the diffusers tiny base
    expect_failure(native_wan_client, wrong, "trained:", f"{NATIVE_CKPT} was trained on", "Fix: load the base model")
    swapped = copy.deepcopy(graph())
    swapped[NATIVE_LOADER]["inputs"]["checkpoint"] = DIFFUSERS_CKPT
    del swapped["5"]  # the native node alone, with the diffusers base's checkpoint
    del swapped["6"]
    expect_failure(native_wan_client, swapped, "trained:", f"{DIFFUSERS_CKPT} was trained on")
