"""Shared adapters between ComfyUI and ttm_core: custom socket types, progress, combos."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

CATEGORY = "Through-The-Mask"

Prompts = io.Custom("TTM_PROMPTS")
"""ttm_core.types.Prompts: global prompt, motion prompt, per-object local prompts."""
Objects = io.Custom("TTM_OBJECTS")
"""ttm_core.types.Objects: the prompts plus first-frame instance masks, ids and colours."""
Trajectory = io.Custom("TTM_TRAJECTORY")
"""ttm_core.types.Trajectory: the mask trajectory (label video) plus objects and fps."""


def progress_callback(node_id: str | None = None) -> Callable[[int, int], None]:
    """A ttm_core progress callback driving ComfyUI's progress bar and honouring cancel.

    The interrupt check runs before every update, so a cancel stops ttm_core's loop at the
    next frame; ttm_core's own ``finally`` blocks then clean up.
    """
    bar: list[comfy.utils.ProgressBar] = []

    def report(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not bar:
            bar.append(comfy.utils.ProgressBar(total, node_id=node_id))
        bar[0].update_absolute(done, total)

    return report


def check_combo(name: str, value: object, options: Sequence[str]) -> bool | str:
    """validate_inputs helper: ComfyUI does not check V3 combo values itself."""
    if value is None or value in options:
        return True
    return f"{name}: {value!r} is not one of {', '.join(options)}"
