"""ComfyUI adapters of the pack: schemas, validation, progress; the work is in ttm_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .model_nodes import VideoModelLoader
from .motion_nodes import ImageToMotion
from .object_nodes import ObjectsFromMasks
from .prompt_nodes import PromptDecompose
from .video_nodes import MaskedMotionToVideo, VideoCombine

NODES: list[type[io.ComfyNode]] = [
    PromptDecompose,
    ObjectsFromMasks,
    ImageToMotion,
    MaskedMotionToVideo,
    VideoCombine,
    VideoModelLoader,
]


class ThroughTheMaskExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ThroughTheMaskExtension:
    return ThroughTheMaskExtension()
