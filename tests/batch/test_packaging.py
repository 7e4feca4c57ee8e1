"""Packaging of ttm-batch (batch/): it installs from PyPI into a fresh venv without torch, and its
declared dependency floors really run a job against a real ComfyUI.

These tests build a venv and install from the package index (about 20-60 s); they need network
access to PyPI, which is why they carry their own marker: ``pytest -m "not packaging"`` skips them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from common import ROOT, WORKFLOWS
from tools.comfy_harness import ComfyServer

pytestmark = pytest.mark.packaging
BATCH = ROOT / "batch"
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    """The environment of a process in the fresh venv: nothing of this checkout or this venv leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _pip_output(result: subprocess.CompletedProcess[str]) -> str:
    # This machine kind's pip.conf names an extra index folder that does not exist: pip warns for every package.
    lines = (result.stdout + result.stderr).splitlines()
    return "\n".join(line for line in lines if not re.match(r"^WARNING: Location '.*' is ignored", line))[-4000:]


class Venv:
    """A fresh virtual environment with ``pip install <copy of batch/>`` done."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"
        self.script = root / "bin" / "ttm-batch"

    def pip(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = _run([str(self.python), "-m", "pip", "install", "-q", *args], cwd=self.root)
        assert result.returncode == 0, _pip_output(result)
        return result

    def version(self, distribution: str) -> str:
        result = _run([str(self.python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
                      cwd=self.root)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture(scope="module")
def batch_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("packaging")
    # Install from a copy of batch/ alone: proves the folder is self-contained (nothing from ../ is
    # needed) and keeps the build's build/ and *.egg-info out of the checkout.
    source = base / "ttm-batch-src"
    shutil.copytree(BATCH, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    created = subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], capture_output=True, text=True,
                             timeout=120)
    assert created.returncode == 0, created.stderr
    venv = Venv(base / "venv")
    venv.pip(str(source))
    return venv


def test_ttm_batch_installs_without_torch(batch_venv: Venv, tmp_path: Path) -> None:
    assert batch_venv.script.is_file(), "pip did not install the ttm-batch console script"
    shown = _run([str(batch_venv.script), "--help"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: ttm-batch"), shown.stdout
    for option in ("--server", "--workflow", "--jobs", "--out", "--resume"):
        assert option in shown.stdout
    as_module = _run([str(batch_venv.python), "-m", "ttm_batch", "--help"], cwd=tmp_path)
    assert as_module.returncode == 0 and as_module.stdout == shown.stdout, as_module.stderr
    for heavy in ("torch", "ttm_core", "numpy"):
        imported = _run([str(batch_venv.python), "-c", f"import {heavy}"], cwd=tmp_path)
        assert imported.returncode != 0 and f"No module named '{heavy}'" in imported.stderr, \
            f"{heavy} is importable in the fresh ttm-batch venv: {imported.stderr}"


def _floors() -> dict[str, str]:
    """{distribution: floor} from batch/pyproject.toml's dependencies ("name>=X.Y").

    Read with a pattern, not tomllib, which Python 3.10 (the packages' oldest Python) lacks."""
    block = re.search(r"^dependencies = \[(.*?)^\]", (BATCH / "pyproject.toml").read_text(), re.M | re.S)
    assert block, "batch/pyproject.toml has no dependencies = [...] block"
    dependencies = re.findall(r'^\s*"([^"]+)"', block[1], re.M)
    floors = {}
    for spec in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", spec.replace(" ", ""))
        assert match, f"batch/pyproject.toml: {spec!r} is not 'name>=floor'"
        floors[match[1]] = match[2]
    return floors


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    with ComfyServer(tmp_path_factory.mktemp("packaging-server")) as started:
        yield started


@pytest.mark.server
def test_the_declared_floors_render_a_job(batch_venv: Venv, server: ComfyServer, tmp_path: Path) -> None:
    """The floors are claims: install exactly them and render a job with the progress bars on."""
    floors = _floors()
    assert set(floors) == {"websocket-client", "tqdm"}, floors
    batch_venv.pip(*(f"{name}=={floor}" for name, floor in floors.items()))
    for name, floor in floors.items():
        assert _release(batch_venv.version(name)) == _release(floor), name
    job = {"id": "floor", "image": str(EXAMPLES / "ttm_coins.png"),
           "masks": [str(EXAMPLES / "ttm_coins_mask_left.png"), str(EXAMPLES / "ttm_coins_mask_right.png")],
           "paths": {"version": 1, "units": "pixels",
                     "objects": {"left coin": {"keyframes": [{"t": 1.0, "x": 130, "y": 152}]}}},
           "overrides": {"Image to Motion.num_frames": 7}}
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(job) + "\n")
    out = tmp_path / "out"
    # --progress on: the tqdm bars and tqdm.contrib.logging run although stderr is a pipe.
    result = _run([str(batch_venv.script), "--server", server.url, "--workflow",
                   str(WORKFLOWS / "ttm_warp_paths_api.json"), "--jobs", str(jobs), "--out", str(out),
                   "--progress", "on"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(e["job"], e["status"]) for e in entries] == [("floor", "done")]
    assert "jobs" in result.stderr  # the overall bar was drawn
    (video,) = entries[0]["files"]
    with av.open(str(out / video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 7
