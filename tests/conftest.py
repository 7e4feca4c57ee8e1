"""Shared fixtures: real ComfyUI servers (plain, and with the tiny native Wan models), clients, artifacts.

Each server serves ComfyUI's own frontend; the ``*_newest_frontend`` twins are the same servers serving
the newest frontend (requirements-frontend-new.txt) with --front-end-root, for the browser tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import ROOT
from native_wan import FIXTURES, write_native_wan
from tiny_models import TinyModels, build_tiny_models
from tools.comfy_harness import NEWEST_FRONTEND, ComfyServer, frontend_root
from ttm_batch.client import ComfyClient


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


def _serve(base: Path, artifacts: Path, log_name: str, frontend: Path | None = None) -> Iterator[ComfyServer]:
    """Start a ComfyUI on ``base``, yield it, then stop it and keep its log as artifacts/``log_name``.

    ``frontend``: a frontend folder served instead of ComfyUI's own (--front-end-root)."""
    server = ComfyServer(base, frontend_root=frontend)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.copy(server.log_path, artifacts / log_name)


def _comfy_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path, tiny_models: TinyModels,
                  log_name: str, frontend: Path | None = None) -> Iterator[ComfyServer]:
    base = tmp_path_factory.mktemp("comfyui")
    tiny_models.install(base / "models")
    yield from _serve(base, artifacts, log_name, frontend)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path,
                 tiny_models: TinyModels) -> Iterator[ComfyServer]:
    """A real ComfyUI (the project's, or TTM_COMFYUI_DIR) with the pack, on a free loopback port.

    Its models folder holds the tiny models under the names the shipped workflows use."""
    yield from _comfy_server(tmp_path_factory, artifacts, tiny_models, "comfyui-test-server.log")


@pytest.fixture(scope="session")
def comfy_server_newest_frontend(tmp_path_factory: pytest.TempPathFactory, artifacts: Path,
                                 tiny_models: TinyModels) -> Iterator[ComfyServer]:
    """``comfy_server`` serving the newest frontend (its own base directory, the same tiny models)."""
    yield from _comfy_server(tmp_path_factory, artifacts, tiny_models,
                             f"comfyui-test-server-frontend-{NEWEST_FRONTEND}.log", frontend_root(NEWEST_FRONTEND))


@pytest.fixture(scope="session")
def client(comfy_server: ComfyServer) -> ComfyClient:
    return ComfyClient(comfy_server.url, timeout=60)


def _native_wan_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path, tiny_models: TinyModels,
                       log_name: str, frontend: Path | None = None) -> Iterator[ComfyServer]:
    base = tmp_path_factory.mktemp("comfyui-native-wan")
    write_native_wan(base / "models")
    tiny_models.install(base / "models")  # SAM 2 / LLM / detector for the Stage-1 nodes of the Wan workflows
    yield from _serve(base, artifacts, log_name, frontend)


@pytest.fixture(scope="session")
def native_wan_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path,
                      tiny_models: TinyModels) -> Iterator[ComfyServer]:
    """A real ComfyUI whose models/ holds every native Wan fixture of tests/native_wan.py.

    The files are written (linked from the build cache) before the server starts, so
    the loader nodes list them from the first /object_info on.
    """
    yield from _native_wan_server(tmp_path_factory, artifacts, tiny_models, "comfyui-native-wan-server.log")


@pytest.fixture(scope="session")
def native_wan_server_newest_frontend(tmp_path_factory: pytest.TempPathFactory, artifacts: Path,
                                      tiny_models: TinyModels) -> Iterator[ComfyServer]:
    """``native_wan_server`` serving the newest frontend (its own base directory, the same fixtures)."""
    yield from _native_wan_server(tmp_path_factory, artifacts, tiny_models,
                                  f"comfyui-native-wan-server-frontend-{NEWEST_FRONTEND}.log",
                                  frontend_root(NEWEST_FRONTEND))


@pytest.fixture(scope="session")
def native_wan_models(native_wan_server: ComfyServer) -> dict[str, Path]:
    """Each native Wan fixture's path inside the native server's models/ folder, by fixture key."""
    return {key: native_wan_server.base / "models" / fixture.relpath for key, fixture in FIXTURES.items()}


@pytest.fixture(scope="session")
def native_wan_client(native_wan_server: ComfyServer) -> ComfyClient:
    return ComfyClient(native_wan_server.url, timeout=120)
