"""Finding model files and folders under the model roots (ComfyUI's folder_paths gives the roots).

Checkpoints are single files; Hugging Face models are folders with a ``config.json``. Entries are
named by their path relative to the root they are in (``sam2.1_hiera_tiny.pt``,
``facebook-sam2.1-hiera-tiny``, ``org/model``), the way ComfyUI names files in its combos.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import TTMInputError

MAX_DEPTH = 3


def model_type(folder: Path) -> str | None:
    """The ``model_type`` of a Hugging Face folder's ``config.json``; None without a readable one."""
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def list_entries(roots: Iterable[Path], *, suffixes: Sequence[str] = (),
                 folder_types: Callable[[str | None], bool] | None = None) -> list[str]:
    """Model entries under ``roots``: files ending in ``suffixes`` and HF folders accepted by
    ``folder_types`` (called with the folder's ``model_type``); nothing inside an HF folder is
    listed separately. Sorted, without duplicates."""
    found: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        stack = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                children = sorted(folder.iterdir())
            except OSError:
                continue
            for child in children:
                if child.name.startswith("."):
                    continue
                if child.is_dir():
                    if (child / "config.json").is_file():
                        if folder_types is not None and folder_types(model_type(child)):
                            found.add(child.relative_to(root).as_posix())
                    elif depth + 1 < MAX_DEPTH:
                        stack.append((child, depth + 1))
                elif suffixes and child.suffix in suffixes:
                    found.add(child.relative_to(root).as_posix())
    return sorted(found)


def resolve_entry(roots: Iterable[Path], entry: str, input_name: str, folder_name: str) -> Path:
    """The path of ``entry`` under the first root that has it; refuses paths leaving the root."""
    roots = [Path(r) for r in roots]
    if not entry or Path(entry).is_absolute() or ".." in Path(entry).parts:
        raise TTMInputError(input_name, f"{entry!r} is not a name inside models/{folder_name}",
                            f"pick an entry from models/{folder_name}")
    for root in roots:
        path = root / entry
        if path.exists():
            return path
    where = ", ".join(str(r) for r in roots) or f"models/{folder_name}"
    raise TTMInputError(input_name, f"{entry!r} was not found in {where}",
                        f"put the model into models/{folder_name} (see docs/SEGMENTATION_AND_PROMPTS.md) and "
                        "refresh the node list (press R)")
