"""One trained checkpoint in both Stage 2 backends: the same numbers at the denoiser forward.

tests/support/trained_native_checks.py runs inside a real ComfyUI: ComfyUI's own Wan (the tiny
native TI2V fixture, loaded by ComfyUI's loader) and diffusers' Wan with the same weights, the same
checkpoint, input, condition latents, trajectory and local prompts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from common import ROOT
from native_wan import build_cached
from tools.comfy_harness import ComfyInstall

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    install = ComfyInstall.locate()
    model = build_cached(("wan22_ti2v",), install)["wan22_ti2v"]
    work = tmp_path_factory.mktemp("trained-native")
    out = work / "result.json"
    done = subprocess.run([install.python, str(ROOT / "tests" / "support" / "trained_native_checks.py"),
                           "--comfyui", str(install.comfy_dir), "--pack", str(ROOT), "--model", str(model),
                           "--work", str(work), "--json-out", str(out)],
                          cwd=install.comfy_dir, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(Path(out).read_text())


def test_a_trained_checkpoint_gives_the_same_numbers_in_both_backends(measured: dict) -> None:
    # The checkpoint changes the output a lot (its layers and extra channels are random, not zero) ...
    assert measured["trained_diffusers_vs_stock"] > 0.5
    assert measured["trained_native_vs_stock"] > 0.5
    # ... and both backends agree to float32 rounding, as the two stock models do.
    assert measured["stock_diffusers_vs_native"] < 1e-4
    assert measured["trained_diffusers_vs_native"] < 1e-4


def test_an_untrained_checkpoint_is_exactly_the_stock_model_in_both_backends(measured: dict) -> None:
    assert measured["zero_diffusers_vs_stock"] == 0.0
    assert measured["zero_native_vs_stock"] == 0.0


def test_comfyui_still_sees_the_stock_input_channels(measured: dict) -> None:
    """ComfyUI sizes its own concat conditioning from patch_embedding.weight; the patched embedding must not make
    it add channels (the label latents are appended by the patch)."""
    assert measured["embedding_channels_seen_by_comfyui"] == [measured["stock_channels"]]


def test_the_native_model_is_unpatched_after_the_trained_run(measured: dict) -> None:
    assert measured["native_after_vs_stock"] == 0.0
    assert measured["patch_embedding_restored"] == "Conv3d"


def test_a_stage1_checkpoint_gives_the_same_numbers_in_both_backends(measured: dict) -> None:
    """Stage 1 (no masked layers: the widened embedding and x(0)'s latents only), as Image To Motion's trained
    backend runs it on a native Wan (native.trained.TrainedInputs) and on diffusers (trained_denoiser)."""
    assert measured["stage1_native_vs_stock"] > 0.5  # the x(0) channels reach the output ...
    assert measured["stage1_diffusers_vs_native"] < 1e-4  # ... the same way in both backends
    assert measured["stage1_zero_native_vs_stock"] == 0.0 and measured["stage1_zero_diffusers_vs_native"] < 1e-4
    # A checkpoint written for the native file (ComfyUI's key names read) is the same checkpoint.
    assert measured["stage1_from_native_file_diffusers_vs_native"] < 1e-4
    assert measured["stage1_from_native_file_native_vs_stock"] == measured["stage1_native_vs_stock"]
