"""Shared fixtures: one real ComfyUI server per test session, its client, the artifacts folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import ROOT
from _tiny_models import TinyModels, build_tiny_models
from tools.comfy_harness import ComfyServer
from ttm_core.client import ComfyClient


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave files for people to look at (screenshots, server logs); git-ignored."""
    folder = ROOT / "artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tiny random SAM2 (Meta + HF), detector and LLM, saved in the user layout (built once)."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path,
                 tiny_models: TinyModels) -> Iterator[ComfyServer]:
    """A real ComfyUI (the project's, or TTM_COMFYUI_DIR) with the pack, on a free loopback port.

    Its models folder holds the tiny models under the names the shipped workflows use."""
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    tiny_models.install(server.base / "models")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.copy(server.log_path, artifacts / "comfyui-test-server.log")


@pytest.fixture(scope="session")
def client(comfy_server: ComfyServer) -> ComfyClient:
    return ComfyClient(comfy_server.url, timeout=60)
