"""pytest plugin (loaded with -p from pyproject): collect the repo root as a plain folder.

The repo root is the ComfyUI pack, so it has an ``__init__.py`` that imports ComfyUI.
pytest would import it as a package before any test; the tests instead reach the pack
through a real ComfyUI server, and ``ttm_core`` directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if path == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
