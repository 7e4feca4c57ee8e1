"""TTM_TrackObjects, TTM_SAM3TrackerLoader, TTM_FlowTracker, TTM_TrajectoryToPaths: Stage 1 from a video.

A draft video from any I2V graph, or any loaded video, becomes the mask trajectory: each object is
followed from its first-frame mask by SAM 2, SAM 3 or a weights-free optical-flow tracker. The
result is also fitted into paths JSON, the editable intermediate the paths backend reads.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import InputImpl, io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.fit_paths import UNITS, FitSettings, paths_json_from_trajectory
from ..ttm_core.segment.flow_track import MIN_SIZE, PRESETS, FlowTrackSettings
from ..ttm_core.segment.frames import FrameSource, TensorFrames, VideoFrames, select
from ..ttm_core.segment.sam3 import SAM3_INSTALL_HINT, load_sam3_tracker, sam3_available
from ..ttm_core.segment.track import check_inputs, check_tracker, track_objects
from ._common import CATEGORY, Objects, Trajectory, check_combo, progress_callback
from ._models import (
    DEVICES,
    PRECISIONS,
    SAM3_FOLDER,
    Managed,
    check_entry,
    compute_dtype,
    devices,
    manage,
    resolve,
    sam3_entries,
)
from .segment_nodes import Sam2

Tracker = io.Custom("TTM_TRACKER")
"""A tracker for Track Objects: nodes._models.Managed around a ttm_core Sam3Tracker, or
ttm_core.segment.flow_track.FlowTrackSettings (no model)."""


class SAM3TrackerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_SAM3TrackerLoader",
            display_name="SAM3 Tracker Loader (Through-The-Mask)",
            category=CATEGORY,
            description="Load SAM 3's video tracker (transformers' Sam3TrackerVideoModel) from models/sam3, for "
                        "Track Objects. The facebook/sam3 folder works as it is; nothing is downloaded.",
            inputs=[
                io.Combo.Input("model", options=sam3_entries(),
                               tooltip="A Hugging Face folder in models/sam3: facebook/sam3 (config.json with "
                                       "model_type sam3_video, model.safetensors, processor files) or a saved "
                                       "Sam3TrackerVideoModel."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device (GPU when there is one), managed with its other "
                                       "models; cpu: always on the CPU."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="Compute precision on GPUs (autocast; the weights stay fp32). auto: bf16 "
                                       "where supported, else fp16. CPUs always use fp32."),
            ],
            outputs=[Tracker.Output("tracker", tooltip="SAM 3's tracker (TTM_TRACKER), for Track Objects.")],
        )

    @classmethod
    def validate_inputs(cls, model=None, device=None, precision=None) -> bool | str:
        for check in (check_combo("device", device, DEVICES), check_combo("precision", precision, PRECISIONS),
                      check_entry("model", model, sam3_entries(), SAM3_FOLDER)):
            if check is not True:
                return check
        if not sam3_available():
            return f"model: the installed transformers has no SAM 3 tracker. Fix: {SAM3_INSTALL_HINT}"
        return True

    @classmethod
    def execute(cls, model: str, device: str, precision: str) -> io.NodeOutput:
        load_device, offload_device = devices(device)
        handle = load_sam3_tracker(resolve(SAM3_FOLDER, model), device=offload_device)
        return io.NodeOutput(manage(handle, handle.modules(), load_device, offload_device,
                                    compute_dtype(precision, load_device)))


class FlowTracker(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_FlowTracker",
            display_name="Flow Tracker (Through-The-Mask)",
            category=CATEGORY,
            description="A tracker that needs no model: each object's mask is carried along dense optical flow "
                        "(OpenCV DIS) as a moving, scaling, rotating shape, checked against the flow every frame. "
                        "Best for rigid objects and clean drafts; use SAM 2 / SAM 3 for deforming ones.",
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default=FlowTrackSettings().preset,
                               tooltip="OpenCV DIS optical-flow preset: ultrafast, fast or medium (slower, "
                                       "steadier on low-texture objects)."),
                io.Int.Input("flow_side", default=FlowTrackSettings().flow_side, min=MIN_SIZE, max=4096,
                             tooltip="Flow is computed on frames scaled so their longer side is this many "
                                     "pixels (never enlarged); masks stay at full size. Larger = finer, slower."),
            ],
            outputs=[Tracker.Output("tracker", tooltip="The flow tracker (TTM_TRACKER), for Track Objects.")],
        )

    @classmethod
    def validate_inputs(cls, preset=None) -> bool | str:
        return check_combo("preset", preset, PRESETS)

    @classmethod
    def execute(cls, preset: str, flow_side: int) -> io.NodeOutput:
        return io.NodeOutput(FlowTrackSettings(preset=preset, flow_side=flow_side))


def frame_source(frames: Any) -> FrameSource:
    """An IMAGE batch as it is; a core VIDEO from a file (Load Video) streamed from that file, decoded frame by
    frame; any other VIDEO (e.g. Create Video's frames in memory) from its components.

    The file's frame count, rate and size are read by PyAV (``frames._probe``: the container's count, else
    its packets counted), not taken from core's estimates (its count falls back to duration x rate, its
    rate to 1 fps)."""
    if isinstance(frames, torch.Tensor):
        return TensorFrames(frames, name="frames")
    if isinstance(frames, InputImpl.VideoFromFile):
        return VideoFrames(frames.get_stream_source(), name="frames")
    if hasattr(frames, "get_components"):  # frames in memory already (VideoFromComponents and the like)
        components = frames.get_components()
        return TensorFrames(components.images, fps=float(components.frame_rate), name="frames")
    raise TTMInputError("frames", f"{type(frames).__name__} is neither an IMAGE batch nor a VIDEO",
                        "connect frames from an I2V graph (IMAGE) or core Load Video (VIDEO)")


def _tracker(tracker: Any) -> tuple[Any, Managed | None]:
    """(ttm_core tracker, the managed model around it or None) for the socket value; nothing connected = the
    flow tracker. Nothing is loaded here."""
    if tracker is None:
        return FlowTrackSettings(), None
    if isinstance(tracker, Managed):
        return tracker.handle, tracker
    return tracker, None


class TrackObjects(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrackObjects",
            display_name="Track Objects (Through-The-Mask)",
            category=CATEGORY,
            description="Stage 1 from a video: follow every object from its first-frame mask through the frames "
                        "(a draft from any I2V graph, or a loaded video) and make the mask trajectory, plus its "
                        "paths JSON to edit in Image To Motion's paths backend.",
            inputs=[
                io.MultiType.Input("frames", types=[io.Image, io.Video],
                                   tooltip="The clip: an IMAGE batch (e.g. a VAE Decode) or a VIDEO (core Load "
                                           "Video; streamed from the file, frame by frame). Its first tracked "
                                           "frame must be the one the objects were found in, at the same size."),
                Objects.Input("objects", tooltip="The objects (first-frame masks) to follow (TTM_OBJECTS)."),
                io.MultiType.Input("tracker", types=[Tracker, Sam2], optional=True,
                                   tooltip="SAM2 Loader (video tracking on), SAM3 Tracker Loader or Flow Tracker. "
                                           "Not connected: the flow tracker with its defaults (no model)."),
                io.Int.Input("num_frames", default=0, min=0, max=4096,
                             tooltip="Frames in the trajectory; 0 = every frame there is. More than the clip "
                                     "has is an error (frames are never repeated or invented)."),
                io.Int.Input("stride", default=1, min=1, max=64,
                             tooltip="Take every n-th frame (2 turns a 30 fps video into a 15 fps trajectory)."),
                io.Int.Input("start_frame", default=0, min=0, max=100000,
                             tooltip="The first frame to track (the objects' masks belong to this frame)."),
                io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.01,
                               tooltip="Frame rate of the trajectory; 0 = the video's divided by the stride "
                                       "(16 for an IMAGE batch)."),
                io.Float.Input("paths_tolerance", default=1.0, min=0.05, max=64.0, step=0.05,
                               tooltip="paths_json: the keyframes stay within this many pixels of every "
                                       "tracked centroid (larger = fewer keyframes)."),
            ],
            outputs=[
                Trajectory.Output("trajectory", tooltip="The tracked mask trajectory (TTM_TRAJECTORY)."),
                io.Image.Output("preview", tooltip="The trajectory as a colour video (one colour per object)."),
                io.Mask.Output("mask", tooltip="Per frame, where any object is (1) or background (0)."),
                io.String.Output("paths_json", tooltip="The motion as paths JSON (keyframes per object): paste it "
                                                       "into Image To Motion's paths to edit and re-render."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, frames: Any, objects, num_frames: int, stride: int, start_frame: int, fps: float,
                paths_tolerance: float, tracker: Any = None) -> io.NodeOutput:
        source = frame_source(frames)
        clip = select(source, num_frames=num_frames, stride=stride, start=start_frame, fps=fps)
        handle, managed = _tracker(tracker)
        check_inputs(source, objects)  # the cheap refusals first: only then is a model moved to its device
        check_tracker(handle)
        device, dtype = (managed.load(), managed.dtype) if managed else (torch.device("cpu"), torch.float32)
        tracked = track_objects(handle, source, objects, clip, device=device, dtype=dtype,
                                progress=progress_callback(cls.hidden.unique_id))
        trajectory = tracked.trajectory()
        paths = paths_json_from_trajectory(trajectory, tolerance_px=paths_tolerance)
        return io.NodeOutput(trajectory, trajectory.color_video(), trajectory.foreground(), paths)


class TrajectoryToPaths(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryToPaths",
            display_name="Trajectory To Paths (Through-The-Mask)",
            category=CATEGORY,
            description="Fit keyframes (centre, scale, rotation, easing) to any mask trajectory - tracked, planned "
                        "or drawn - as paths JSON for Image To Motion's paths backend, so the motion can be edited.",
            inputs=[
                Trajectory.Input("trajectory", tooltip="The mask trajectory (TTM_TRAJECTORY)."),
                io.Float.Input("tolerance", default=1.0, min=0.05, max=64.0, step=0.05,
                               tooltip="Largest distance in pixels between a frame's centroid and the path's; "
                                       "larger = fewer keyframes."),
                io.Combo.Input("units", options=list(UNITS), default=FitSettings().units,
                               tooltip="pixels, or normalized (0..1 of width and height: the paths then fit any "
                                       "image size)."),
                io.Combo.Input("time", options=["frame", "t"], default="frame",
                               tooltip="frame: 0-based frame numbers; t: 0..1 of the clip (the paths follow a "
                                       "change of num_frames)."),
            ],
            outputs=[io.String.Output("paths_json", tooltip="Paths JSON version 1, one keyframe per line.")],
        )

    @classmethod
    def validate_inputs(cls, units=None, time=None) -> bool | str:
        for check in (check_combo("units", units, UNITS), check_combo("time", time, ("frame", "t"))):
            if check is not True:
                return check
        return True

    @classmethod
    def execute(cls, trajectory, tolerance: float, units: str, time: str) -> io.NodeOutput:
        settings = FitSettings(tolerance_px=tolerance, units=units, time_key=time)
        return io.NodeOutput(paths_json_from_trajectory(trajectory, settings=settings))
