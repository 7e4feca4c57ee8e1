"""The trajectory to and from the formats of ComfyUI core and its peers (``ttm_core.motion.formats``).

In: TTM_TrajectoryFromMasks (per-object MASK batches), TTM_TrajectoryFromSAM3 (core SAM3_TRACK_DATA),
TTM_TrajectoryFromTracks (core Wan-Move TRACKS, ATI track JSON, KJNodes coordinates).
Out: TTM_TrajectoryToTracks (TRACKS for core WanMoveTrackToVideo + ATI JSON for core WanTrackToVideo),
TTM_TrajectoryToTimeToMove (cut-and-drag video + motion mask), TTM_TrajectoryToMasks (colour video, masks).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.cut_and_drag import cut_and_drag
from ..ttm_core.motion.formats import (
    ATI_LENGTH,
    TrackExportSettings,
    TrackFitSettings,
    ati_json_from_tracks,
    masks_from_trajectory,
    motion_mask,
    tracks_dict,
    tracks_from_dict,
    tracks_from_points,
    tracks_from_trajectory,
    trajectory_from_masks,
    trajectory_from_sam3,
    trajectory_from_tracks,
)
from ..ttm_core.types import MAX_OBJECTS
from ._common import CATEGORY, Objects, Prompts, Trajectory, progress_callback
from .motion_nodes import _depth_order

Tracks = io.Custom("TRACKS")
"""Core's Wan-Move TRACKS (comfy_api io.Tracks in ComfyUI >= 0.8; ComfyUI 0.3.75 lacks the class, the type
string is the same): {"track_path": float32 [T, N, 2] pixels, "track_visibility": bool [T, N]}."""
SAM3TrackData = io.Custom("SAM3_TRACK_DATA")
"""Core's SAM 3 video tracking result (comfy_extras/nodes_sam3.py SAM3_VideoTrack)."""

EXTRA_MASKS = tuple(f"mask_{i}" for i in range(2, MAX_OBJECTS + 1))
FPS = dict(default=16.0, min=0.01, max=240.0, step=0.01, tooltip="Playback rate of the trajectory.")


def _id_order(text: str, what: str) -> tuple[int, ...]:
    """Comma-separated ids ('2, 1') -> ids; empty -> ()."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise TTMInputError("depth_order", f"{text!r} is not a comma-separated list of {what}",
                            f"list {what} front to back, e.g. '2, 1', or leave it empty")
    return tuple(int(p) for p in parts)


def _outputs(trajectory) -> io.NodeOutput:
    return io.NodeOutput(trajectory, trajectory.color_video(), trajectory.foreground())


TRAJECTORY_OUTPUTS = [
    Trajectory.Output("trajectory", tooltip="The mask trajectory (TTM_TRAJECTORY)."),
    io.Image.Output("preview", tooltip="The trajectory as a colour video (one colour per object)."),
    io.Mask.Output("mask", tooltip="Per frame, where any object is (1) or background (0)."),
]


class TrajectoryFromMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryFromMasks",
            display_name="Trajectory From Masks (Through-The-Mask)",
            category=CATEGORY,
            description="A mask trajectory from one MASK batch (a mask per frame) per object - e.g. core SAM3 Track "
                        "to Mask once per object index, any video segmenter, painted frames. Frame 0's masks "
                        "become the objects.",
            inputs=[
                io.Mask.Input("masks", tooltip="Object 1's masks, one per frame (or, with object_count, every "
                                               "object's frames one object after the other)."),
                *(io.Mask.Input(name, optional=True, tooltip="Another object's masks, one per frame.")
                  for name in EXTRA_MASKS),
                io.Int.Input("object_count", default=0, min=0, max=MAX_OBJECTS,
                             tooltip="0: every mask input is one object. K: the masks input alone holds K "
                                     "objects, object 1's frames first (what Trajectory To Masks' masks gives)."),
                Prompts.Input("prompts", optional=True,
                              tooltip="Optional: one object line per object, in order (names and local prompts). "
                                      "Without it the objects are called 'object 1', 'object 2', ..."),
                io.Image.Input("image", optional=True, tooltip="Optional first frame: the masks must have its size."),
                io.Float.Input("fps", **FPS),
                io.String.Input("depth_order", default="",
                                tooltip="Object numbers front to back, e.g. '2, 1' (who owns overlaps). Empty = "
                                        "object 1 in front."),
            ],
            outputs=TRAJECTORY_OUTPUTS,
        )

    @classmethod
    def execute(cls, masks: torch.Tensor, object_count: int, fps: float, depth_order: str, prompts=None,
                image: torch.Tensor | None = None, **extra: torch.Tensor) -> io.NodeOutput:
        sources = [("masks", masks)] + [(name, extra[name]) for name in EXTRA_MASKS if extra.get(name) is not None]
        size = (int(image.shape[1]), int(image.shape[2])) if image is not None else None
        trajectory = trajectory_from_masks(sources, prompts, fps, _id_order(depth_order, "object numbers"),
                                           object_count, size)
        return _outputs(trajectory)


class TrajectoryFromSAM3(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryFromSAM3",
            display_name="Trajectory From SAM3 Track (Through-The-Mask)",
            category=CATEGORY,
            description="A mask trajectory straight from core's SAM3 Video Track (SAM3_TRACK_DATA), keeping SAM 3's "
                        "object indices: SAM 3 object k carries label k + 1. Objects must be present in frame 0.",
            inputs=[
                SAM3TrackData.Input("track_data", tooltip="track_data of core's Run SAM3 Video Track."),
                io.String.Input("object_indices", default="",
                                tooltip="SAM 3 object indices to keep, comma-separated (e.g. '0, 2'); empty = all."),
                Prompts.Input("prompts", optional=True,
                              tooltip="Optional: one object line per kept object, in the order listed. Without it "
                                      "the objects are called 'sam3 object k'."),
                io.Float.Input("fps", **FPS),
                io.String.Input("depth_order", default="",
                                tooltip="SAM 3 indices front to back, e.g. '2, 0'. Empty = the listed order."),
            ],
            outputs=TRAJECTORY_OUTPUTS,
        )

    @classmethod
    def execute(cls, track_data, object_indices: str, fps: float, depth_order: str, prompts=None) -> io.NodeOutput:
        order = tuple(k + 1 for k in _id_order(depth_order, "SAM 3 object indices"))
        return _outputs(trajectory_from_sam3(track_data, object_indices, prompts, fps, order))


class TrajectoryFromTracks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryFromTracks",
            display_name="Trajectory From Tracks (Through-The-Mask)",
            category=CATEGORY,
            description="Move the objects with point tracks: core Wan-Move TRACKS, ATI track JSON or KJNodes "
                        "SplineEditor coordinates. Each object follows the robust similarity fit (RANSAC) of the "
                        "tracks that start inside its first-frame mask.",
            inputs=[
                Objects.Input("objects", tooltip="The first-frame objects (TTM_OBJECTS)."),
                Tracks.Input("tracks", optional=True,
                             tooltip="Core TRACKS (e.g. WanMoveTracksFromCoords, GenerateTracks, Trajectory To "
                                     "Tracks)."),
                io.String.Input("track_json", optional=True, force_input=True,
                                tooltip="Or: ATI track JSON / KJNodes SplineEditor coord_str - a list of tracks, "
                                        "each a list of {x, y} pixel points, one per frame."),
                io.Int.Input("track_width", default=0, min=0, max=16384,
                             tooltip="Width of the video the tracks' pixels refer to; 0 = the objects' width."),
                io.Int.Input("track_height", default=0, min=0, max=16384,
                             tooltip="Height of the video the tracks' pixels refer to; 0 = the objects' height."),
                io.Int.Input("num_frames", default=0, min=0, max=4096,
                             tooltip="Frames of the trajectory; 0 = one per track point (ATI JSON has 121 points "
                                     "for the whole clip: set the clip's length here)."),
                io.Float.Input("fps", **FPS),
                io.Float.Input("ransac_threshold", default=3.0, min=0.1, max=100.0, step=0.1,
                               tooltip="Tracks farther than this many pixels from an object's fitted motion are "
                                       "outliers."),
                io.Boolean.Input("still_without_tracks", default=False,
                                 tooltip="Objects no track starts in stay still (on) or are an error (off)."),
                io.String.Input("depth_order", default="",
                                tooltip="Objects front to back, comma-separated names or ids. Empty = object 1 in "
                                        "front."),
            ],
            outputs=TRAJECTORY_OUTPUTS,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, objects, track_width: int, track_height: int, num_frames: int, fps: float,
                ransac_threshold: float, still_without_tracks: bool, depth_order: str, tracks=None,
                track_json: str | None = None) -> io.NodeOutput:
        has_json = track_json is not None and track_json.strip() != ""
        if (tracks is None) == (not has_json):
            raise TTMInputError("tracks", "both tracks and track_json are connected" if tracks is not None
                                else "neither tracks nor track_json is connected",
                                "connect exactly one: core TRACKS, or ATI / KJNodes JSON to track_json")
        if (track_width == 0) != (track_height == 0):
            raise TTMInputError("track_width", f"track_width {track_width} with track_height {track_height}",
                                "set both to the tracks' video size, or both to 0")
        if tracks is not None:
            path, visibility = tracks_from_dict(tracks)
            what = "tracks"
        else:
            path, visibility = tracks_from_points(track_json, "track_json")
            what = "track_json"
        size = (track_height, track_width) if track_width else None
        settings = TrackFitSettings(ransac_threshold, still_without_tracks)
        trajectory = trajectory_from_tracks(objects, path, visibility, fps, size, num_frames,
                                            _depth_order(depth_order, objects), settings, what,
                                            progress_callback(cls.hidden.unique_id),
                                            ati_points=tracks is None and path.shape[0] == ATI_LENGTH)
        return _outputs(trajectory)


class TrajectoryToTracks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryToTracks",
            display_name="Trajectory To Tracks (Through-The-Mask)",
            category=CATEGORY,
            description="Point tracks of the trajectory for core Wan-Move (WanMoveTrackToVideo's tracks) and ATI "
                        "(WanTrackToVideo's tracks JSON): points sampled inside each object, moved with it, "
                        "visible where the object is.",
            inputs=[
                Trajectory.Input("trajectory", tooltip="The mask trajectory (TTM_TRAJECTORY)."),
                io.Int.Input("points_per_object", default=32, min=1, max=4096,
                             tooltip="Tracks per object, spread over the object."),
                io.Int.Input("width", default=0, min=0, max=16384,
                             tooltip="The video's width (WanMoveTrackToVideo's width); 0 = the trajectory's. The "
                                     "trajectory is centre-cropped and scaled as core crops the start image."),
                io.Int.Input("height", default=0, min=0, max=16384,
                             tooltip="The video's height; 0 = the trajectory's."),
                io.Int.Input("num_frames", default=0, min=0, max=4096,
                             tooltip="The video's length (WanMoveTrackToVideo's length); 0 = the trajectory's."),
            ],
            outputs=[
                Tracks.Output("tracks", tooltip="Core TRACKS: track_path [T, N, 2] pixels, track_visibility [T, N]."),
                io.Int.Output("track_length", tooltip="Frames of the tracks."),
                io.String.Output("ati_tracks", tooltip="ATI track JSON (121 points per track spanning the clip) for "
                                                       "core WanTrackToVideo's tracks input."),
            ],
        )

    @classmethod
    def execute(cls, trajectory, points_per_object: int, width: int, height: int, num_frames: int) -> io.NodeOutput:
        settings = TrackExportSettings(points_per_object, width, height, num_frames)
        path, visibility, _ = tracks_from_trajectory(trajectory, settings)
        return io.NodeOutput(tracks_dict(path, visibility), int(path.shape[0]), ati_json_from_tracks(path))


class TrajectoryToTimeToMove(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryToTimeToMove",
            display_name="Trajectory To Time-to-Move (Through-The-Mask)",
            category=CATEGORY,
            description="The two inputs of Time-to-Move (e.g. kijai's WanVideo TTM nodes, the reference code): the "
                        "cut-and-drag motion video and the per-frame motion mask.",
            inputs=[
                io.Image.Input("image", tooltip="The first frame (at the trajectory's size)."),
                Trajectory.Input("trajectory", tooltip="The mask trajectory (TTM_TRAJECTORY)."),
                io.Float.Input("feather", default=1.0, min=0.0, max=32.0, step=0.1,
                               tooltip="Soft-edge radius of the pasted objects, in pixels."),
            ],
            outputs=[
                io.Image.Output("motion_video", tooltip="The cut-and-drag video: objects moved, holes filled."),
                io.Mask.Output("motion_mask", tooltip="Per frame, where the moved objects are (1)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, trajectory, feather: float) -> io.NodeOutput:
        video = cut_and_drag(image[0, ..., :3], trajectory, feather, progress=progress_callback(cls.hidden.unique_id))
        return io.NodeOutput(video, motion_mask(trajectory))


class TrajectoryToMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrajectoryToMasks",
            display_name="Trajectory To Masks (Through-The-Mask)",
            category=CATEGORY,
            description="The trajectory as a colour label video and as MASK batches, one per object.",
            inputs=[Trajectory.Input("trajectory", tooltip="The mask trajectory (TTM_TRAJECTORY).")],
            outputs=[
                io.Image.Output("label_video", tooltip="One colour per object, background black."),
                io.Mask.Output("masks", tooltip="Every object's masks, object 1's frames first (Trajectory From "
                                                "Masks reads it back with object_count)."),
                io.Int.Output("object_count", tooltip="How many objects the trajectory has."),
                Prompts.Output("prompts", tooltip="The objects' prompts, to name them again on the way back."),
                *(io.Mask.Output(f"mask_{i}", tooltip=f"Object {i}'s mask per frame (empty if there is no object {i}).")
                  for i in range(1, MAX_OBJECTS + 1)),
            ],
        )

    @classmethod
    def execute(cls, trajectory) -> io.NodeOutput:
        masks = masks_from_trajectory(trajectory)  # [L, T, H, W]
        empty = torch.zeros(trajectory.num_frames, *trajectory.size)
        singles = [masks[i] if i < masks.shape[0] else empty for i in range(MAX_OBJECTS)]
        return io.NodeOutput(trajectory.color_video(), masks.flatten(0, 1), int(masks.shape[0]),
                             trajectory.objects.prompts, *singles)


NODES: list[type[io.ComfyNode]] = [TrajectoryFromMasks, TrajectoryFromSAM3, TrajectoryFromTracks, TrajectoryToTracks,
                                   TrajectoryToTimeToMove, TrajectoryToMasks]
