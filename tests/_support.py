"""Helpers shared by the test modules (importable: pyproject puts tests/ on the path)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())
