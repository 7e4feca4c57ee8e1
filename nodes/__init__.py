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


class ThroughTheMaskExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ThroughTheMaskExtension:
    return ThroughTheMaskExtension()
