"""Trajectory adherence: does a generated video follow its mask trajectory?

The generated video's objects are re-tracked from the trajectory's first-frame masks s(0) with one of the
pack's trackers (``ttm_core.segment.track``; the weights-free flow tracker by default), and each tracked
object is compared frame by frame with where the trajectory s^ puts it:

* **IoU**: area(tracked AND intended) / area(tracked OR intended) of the object's masks in that frame;
* **centroid error**: distance in pixels between the two masks' centroids (pixel centres at integers).

Frames where the trajectory has the object nowhere (hidden, outside) and the tracker found nothing either
are left out of both (NaN); a frame where only one of the two has the object has IoU 0 and no centroid
error (NaN). A tracker is a measuring instrument with its own error: on the procedural scenes the flow
tracker reaches IoU 0.97-0.99 against the truth (``python -m benchmarks flow-track``), so adherence
figures above ~0.97 are within the instrument's noise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import TTMInputError
from ..types import ProgressFn, Trajectory

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Adherence:
    """Per object (L, in ``ids`` order) and frame (T) comparison of a video's objects with its trajectory.

    Attributes:
        ids: object ids; names: their names; colors: their RGB colours (0..255).
        iou: float64 ``[T, L]``, mask IoU (NaN where neither has the object).
        centroid_error: float64 ``[T, L]``, pixels (NaN where either lacks the object).
        diagonal: the frame diagonal in pixels (centroid errors are also given as a share of it).
        tracked: uint8 ``[T, H, W]`` the label video the tracker found.
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    iou: np.ndarray
    centroid_error: np.ndarray
    diagonal: float
    tracked: torch.Tensor

    def per_object(self) -> list[dict[str, Any]]:
        """One summary per object: mean / min IoU, share of frames with IoU >= 0.5, mean / max centroid error
        (pixels and share of the diagonal), frames counted."""
        rows = []
        for i, (object_id, name) in enumerate(zip(self.ids, self.names)):
            rows.append({"id": object_id, "name": name, **_summary(self.iou[:, i], self.centroid_error[:, i],
                                                                   self.diagonal)})
        return rows

    def object_rows(self) -> list[dict[str, Any]]:
        """``per_object`` plus each object's colour and its IoU and centroid error per frame (JSON-ready lists;
        NaN where not measured)."""
        rows = self.per_object()
        for i, row in enumerate(rows):
            row["color"] = list(self.colors[i])
            row["iou"] = self.iou[:, i].tolist()
            row["centroid_error_px"] = self.centroid_error[:, i].tolist()
        return rows

    def report(self) -> str:
        """A few lines for people: per object its mean and worst IoU and centroid error, then the clip's."""
        lines = []
        for row in self.per_object():
            lines.append(f"object {row['id']} ({row['name']}): mean IoU {row['mean_iou']:.3f} (worst "
                         f"{row['min_iou']:.3f}, IoU >= 0.5 in {row['iou_at_0.5']:.0%} of {row['frames']} frames), "
                         f"centroid error mean {row['mean_centroid_error_px']:.1f} px, max "
                         f"{row['max_centroid_error_px']:.1f} px")
        clip = self.per_clip()
        lines.append(f"clip: mean IoU {clip['mean_iou']:.3f}, mean centroid error "
                     f"{clip['mean_centroid_error_px']:.1f} px ({clip['mean_centroid_error_share']:.1%} of the "
                     "frame diagonal)")
        return "\n".join(lines)

    def per_clip(self) -> dict[str, Any]:
        """The clip's summary over all objects and frames (the same fields as ``per_object``)."""
        return _summary(self.iou.reshape(-1), self.centroid_error.reshape(-1), self.diagonal)


def _nan_stat(values: np.ndarray, fn: Any) -> float:
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if finite.size else math.nan


def _summary(iou: np.ndarray, error: np.ndarray, diagonal: float) -> dict[str, Any]:
    counted = np.isfinite(iou)
    return {
        "mean_iou": _nan_stat(iou, np.mean),
        "min_iou": _nan_stat(iou, np.min),
        "iou_at_0.5": float((iou[counted] >= 0.5).mean()) if counted.any() else math.nan,
        "mean_centroid_error_px": _nan_stat(error, np.mean),
        "max_centroid_error_px": _nan_stat(error, np.max),
        "mean_centroid_error_share": _nan_stat(error, np.mean) / diagonal,
        "frames": int(counted.sum()),
    }


def _centroids(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``[N, H, W]`` -> (float64 ``[N, 2]`` (x, y) centroids, bool ``[N]`` non-empty)."""
    count = masks.flatten(1).sum(1).to(torch.float64)
    height, width = masks.shape[-2:]
    ys = torch.arange(height, dtype=torch.float64)
    xs = torch.arange(width, dtype=torch.float64)
    m = masks.to(torch.float64)
    cx = (m.sum(1) * xs).sum(1) / count.clamp_min(1)
    cy = (m.sum(2) * ys).sum(1) / count.clamp_min(1)
    return torch.stack([cx, cy], dim=1), count > 0


def compare_labels(tracked: torch.Tensor, trajectory: Trajectory) -> Adherence:
    """Compare a label video with the trajectory's, object by object and frame by frame (no tracking).

    Args:
        tracked: uint8 ``[T, H, W]`` label video (the same ids as the trajectory's objects), T and size as the
            trajectory's.
        trajectory: the intended motion s^.
    Returns:
        ``Adherence``.
    """
    if not isinstance(tracked, torch.Tensor) or tracked.dtype != torch.uint8 or tracked.ndim != 3:
        raise TTMInputError("tracked", "expected a uint8 label video [T, H, W]", "pass a tracker's label video")
    if tuple(tracked.shape) != tuple(trajectory.labels.shape):
        raise TTMInputError("tracked", f"the label video is {tuple(tracked.shape)} (T, H, W), the trajectory "
                            f"{tuple(trajectory.labels.shape)}", "track the video the trajectory was rendered for")
    ids = trajectory.objects.ids
    count = len(ids)
    frames = trajectory.num_frames
    iou = np.full((frames, count), math.nan)
    error = np.full((frames, count), math.nan)
    for t in range(frames):
        ids_t = torch.tensor(ids, dtype=torch.uint8)[:, None, None]
        ours = tracked[t][None] == ids_t
        want = trajectory.labels[t][None] == ids_t
        inter = (ours & want).flatten(1).sum(1).to(torch.float64)
        union = (ours | want).flatten(1).sum(1).to(torch.float64)
        c_ours, has_ours = _centroids(ours)
        c_want, has_want = _centroids(want)
        for i in range(count):
            if union[i] > 0:
                iou[t, i] = float(inter[i] / union[i])
            if has_ours[i] and has_want[i]:
                error[t, i] = float(torch.linalg.vector_norm(c_ours[i] - c_want[i]))
    height, width = trajectory.size
    return Adherence(ids, trajectory.objects.prompts.names, trajectory.objects.colors, iou, error,
                     math.hypot(height, width), tracked)


def check_video(video: Any, trajectory: Trajectory, name: str = "video") -> None:
    """Refuse a video that cannot be compared with the trajectory (before any tracking)."""
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[-1] not in (3, 4):
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise TTMInputError(name, f"expected frames [T, H, W, 3] in 0..1, got {shape}", "pass a decoded video")
    if tuple(video.shape[1:3]) != trajectory.size:
        raise TTMInputError(name, f"the video is {video.shape[2]}x{video.shape[1]}, the trajectory "
                            f"{trajectory.size[1]}x{trajectory.size[0]}",
                            "score the video rendered from this trajectory (the same size), or fit the "
                            "trajectory to the video's size first (Fit Trajectory)")
    if video.shape[0] != trajectory.num_frames:
        raise TTMInputError(name, f"the video has {video.shape[0]} frames, the trajectory "
                            f"{trajectory.num_frames}", "score the video rendered from this trajectory (the same "
                            "frame count), or fit the trajectory to the video's length first")


def fit_to_video(trajectory: Trajectory, frames: int, height: int, width: int) -> Trajectory:
    """The trajectory as a video of ``frames`` x ``height`` x ``width`` shows it: centre-cropped to its aspect
    (``fit_trajectory``, ComfyUI's crop of the start image), then nearest frames and nearest-pixel labels
    (``resample_labels``), first-frame masks resized bilinearly; the frame rate scaled with the length."""
    import torch.nn.functional as F

    from ..motion.fit import fit_trajectory, resample_labels
    from ..types import Objects

    cropped = fit_trajectory(trajectory, height, width, frames)
    labels = resample_labels(cropped.labels, height, width, frames)
    masks = F.interpolate(cropped.objects.masks[:, None], size=(height, width), mode="bilinear",
                          align_corners=False, antialias=True)[:, 0]
    objects = Objects(cropped.objects.prompts, masks, cropped.objects.ids, cropped.objects.colors)
    fps = cropped.fps * (frames - 1) / (cropped.num_frames - 1) if frames > 1 and cropped.num_frames > 1 \
        else cropped.fps
    return Trajectory(labels, objects, fps, cropped.depth_order)


def trajectory_adherence(video: torch.Tensor, trajectory: Trajectory, tracker: Any = None, *, fit: bool = False,
                         device: torch.device | str = "cpu", progress: ProgressFn | None = None) -> Adherence:
    """Re-track ``video``'s objects from the trajectory's first-frame masks and compare with the trajectory.

    Args:
        video: float ``[T, H, W, 3]`` in 0..1 (a ComfyUI IMAGE batch), the trajectory's size and length.
        trajectory: the intended motion; its ``objects.masks`` start the tracks.
        tracker: ``FlowTrackSettings`` (default ``FlowTrackSettings()``), a ``Sam2Model`` that can track or a
            ``Sam3Tracker``.
        fit: a trajectory of another size or length than the video is first fitted to it (``fit_to_video``:
            centre crop to the video's aspect, resize, nearest frames), as Stage 2 fits it before rendering;
            without ``fit`` that is an error.
        device: where a SAM tracker runs (the flow tracker is OpenCV on the CPU).
        progress: called with (frames done, T) per tracked frame; raising cancels.
    Returns:
        ``Adherence``.
    """
    from ..segment.flow_track import FlowTrackSettings
    from ..segment.track import check_tracker, track_objects

    if not isinstance(trajectory, Trajectory):
        raise TTMInputError("trajectory", f"expected a trajectory, got {type(trajectory).__name__}",
                            "connect a TTM_TRAJECTORY (Image To Motion, Load Trajectory)")
    if fit and isinstance(video, torch.Tensor) and video.ndim == 4 and \
            (trajectory.num_frames, *trajectory.size) != tuple(video.shape[:3]):
        trajectory = fit_to_video(trajectory, int(video.shape[0]), int(video.shape[1]), int(video.shape[2]))
    check_video(video, trajectory)
    tracker = FlowTrackSettings() if tracker is None else tracker
    check_tracker(tracker)
    tracked = track_objects(tracker, video[..., :3], trajectory.objects, device=device, progress=progress)
    return compare_labels(tracked.labels, trajectory)
