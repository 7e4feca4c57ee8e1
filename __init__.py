"""Through-The-Mask for ComfyUI (Yariv et al., CVPR 2025): mask-trajectory image-to-video.

ComfyUI entry point only; the nodes are in ``nodes/`` and the library in ``ttm_core/``.
"""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"
"""The path editor on Image To Motion (a frontend extension; see web/ttm_path_editor.js)."""

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
