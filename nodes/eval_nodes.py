"""TTM_TrajectoryAdherence: does a render follow its motion? Per-object IoU / centroid error and a plot."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..ttm_core.eval.adherence import trajectory_adherence
from ..ttm_core.eval.report import image_to_array, iou_plot
from ._common import CATEGORY, Trajectory, progress_callback
from .segment_nodes import Sam2
from .track_nodes import Tracker, _tracker


class TrajectoryAdherence(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryAdherence",
            display_name="Trajectory Adherence (Through-The-Mask)",
            category=CATEGORY,
            description="Does the video follow its trajectory? Re-tracks the video's objects from the trajectory's "
                        "first-frame masks and compares each object, frame by frame, with where the trajectory "
                        "puts it: mask IoU (1 = exactly there) and centroid error in pixels.",
            inputs=[
                io.Image.Input("video", tooltip="The rendered frames (e.g. a VAE Decode of the Stage 2 sampler)."),
                Trajectory.Input("trajectory", tooltip="The motion the video was rendered from (TTM_TRAJECTORY)."),
                io.MultiType.Input("tracker", types=[Tracker, Sam2], optional=True,
                                   tooltip="Flow Tracker, SAM3 Tracker Loader or SAM2 Loader (video tracking on). "
                                           "Not connected: the flow tracker with its defaults (no model)."),
                io.Boolean.Input("fit_to_video", default=True,
                                 tooltip="A trajectory of another size or length than the video is fitted to it "
                                         "first (centre crop, resize, resample), as Stage 2 does; off: an error."),
            ],
            outputs=[
                io.String.Output("report", tooltip="Per object: mean and worst IoU, centroid error; then the clip."),
                io.Image.Output("plot", tooltip="Per-object IoU over the frames (one line per object, in its "
                                                "colour)."),
                io.Float.Output("mean_iou", tooltip="The clip's mean IoU over objects and frames (0..1)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, video: torch.Tensor, trajectory: Any, fit_to_video: bool, tracker: Any = None
                ) -> io.NodeOutput:
        handle, managed = _tracker(tracker)
        device = managed.load() if managed else torch.device("cpu")
        result = trajectory_adherence(video, trajectory, handle, fit=fit_to_video, device=device,
                                      progress=progress_callback(cls.hidden.unique_id))
        plot = image_to_array(iou_plot(result.object_rows(), "IoU with the trajectory"))
        return io.NodeOutput(result.report(), torch.from_numpy(plot)[None], float(result.per_clip()["mean_iou"]))
