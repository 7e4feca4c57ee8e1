"""Through-The-Mask for ComfyUI (Yariv et al., CVPR 2025): mask-trajectory image-to-video.

ComfyUI entry point only; the nodes are in ``nodes/`` and the library in ``ttm_core/``.
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
