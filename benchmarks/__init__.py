"""Benchmarks of the pack (not tests): ``python -m benchmarks <subcommand>``; see ``__main__``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, report: Any) -> Path:
    """Write a benchmark's report as JSON, creating its folder (``artifacts/`` is not in a fresh clone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
