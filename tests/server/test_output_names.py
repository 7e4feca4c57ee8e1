"""Every output of the pack's nodes is shown by a name saying what it is, not by its type (STRING, STRING)."""

from __future__ import annotations

import re

import pytest

from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server


def test_every_output_is_named(client: ComfyClient) -> None:
    info = {name: node for name, node in client.object_info().items() if name.startswith("TTM_")}
    assert len(info) >= 25
    for name, node in info.items():
        for shown, kind in zip(node["output_name"], node["output"], strict=True):
            assert shown != kind and re.fullmatch(r"[a-z][a-z0-9_]*", shown), f"{name} shows an output as {shown!r}"
    assert info["TTM_ImageToMotion"]["output_name"] == ["trajectory", "preview", "mask", "paths_json"]
    assert info["TTM_PromptDecompose"]["output_name"] == ["prompts", "global_text", "motion_text", "answer"]
    assert info["TTM_WarpMotionToVideo"]["output_name"] == ["images", "fps"]
