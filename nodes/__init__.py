"""ComfyUI adapters of the pack: schemas, validation, progress; the work is in ttm_core."""

from __future__ import annotations

import torch
from comfy_api.latest import ComfyExtension, io

from ..ttm_core.environment import check_torch

check_torch(torch.__version__)  # before the node modules: a too-old torch is named, not a confusing AttributeError

from . import format_nodes
from ._models import register_model_folders
from .eval_nodes import TrajectoryAdherence
from .llm_nodes import LLMEndpoint, LLMLoader
from .model_nodes import VideoModelLoader
from .motion_nodes import ImageToMotion
from .object_nodes import ObjectsFromMasks
from .patch_nodes import PatchModel
from .prompt_nodes import PromptDecompose
from .segment_nodes import DetectorLoader, SAM2Loader, SAM2Segment
from .stage2_nodes import DiffusersMotionToVideo, MaskedMotionToVideo, WanMotionToVideo, WarpMotionToVideo
from .track_nodes import FlowTracker, SAM3TrackerLoader, TrackObjects, TrajectoryToPaths
from .trained_nodes import TrainedCheckpointLoader
from .trajectory_io_nodes import LoadTrajectory, SaveTrajectory
from .video_nodes import VideoCombine

NODES: list[type[io.ComfyNode]] = [
    PromptDecompose,
    ObjectsFromMasks,
    ImageToMotion,
    WarpMotionToVideo,
    WanMotionToVideo,
    DiffusersMotionToVideo,
    MaskedMotionToVideo,
    PatchModel,
    VideoCombine,
    # segmentation and LLM prompt decomposition (issue 5)
    SAM2Loader,
    SAM2Segment,
    DetectorLoader,
    LLMLoader,
    LLMEndpoint,
    VideoModelLoader,
    # Stage 1 from a video (issue 11)
    TrackObjects,
    SAM3TrackerLoader,
    FlowTracker,
    TrajectoryToPaths,
    # core's and the peers' formats (issue 12)
    *format_nodes.NODES,
    # saved trajectories (issue 12)
    SaveTrajectory,
    LoadTrajectory,
    # trained Stage 2 (issue 13)
    TrainedCheckpointLoader,
    # evaluation (issue 16)
    TrajectoryAdherence,
]


def _output_names_shown(node: type[io.ComfyNode]) -> type[io.ComfyNode]:
    """``node`` with each output's id as its shown name: ComfyUI labels an output by its ``display_name``
    or else by its TYPE (STRING, STRING, STRING), never by its id; one place instead of every schema."""
    define = node.define_schema.__func__  # type: ignore[attr-defined]
    if getattr(define, "names_outputs", False):
        return node

    def define_schema(cls: type[io.ComfyNode]) -> io.Schema:
        schema = define(cls)
        for output in schema.outputs or []:
            output.display_name = output.display_name or output.id
        return schema

    define_schema.names_outputs = True  # type: ignore[attr-defined]
    node.define_schema = classmethod(define_schema)  # type: ignore[method-assign,assignment]
    return node


class ThroughTheMaskExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [_output_names_shown(node) for node in NODES]


async def comfy_entrypoint() -> ThroughTheMaskExtension:
    return ThroughTheMaskExtension()
