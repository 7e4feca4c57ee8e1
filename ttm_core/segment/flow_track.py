"""A weights-free object tracker: first-frame masks -> a label video, by optical flow (OpenCV's DIS).

Track Objects without any model, and a tracker whose accuracy can be measured on procedural videos with
known label videos (``benchmarks/flow_scenes.py``, ``python -m benchmarks flow-track``).

Method (every object is a rigid-ish body: its first-frame mask moved by a similarity transform, its *pose*):

1. **Flow between consecutive frames.** DIS optical flow (``cv2.DISOpticalFlow``) on grayscale uint8 frames
   resized so that their longer side is ``settings.flow_side`` pixels (the *flow grid*), backward (frame t ->
   t-1) and, for the forward-backward consistency check, forward. A pixel is reliable where the two agree
   (Sundaram et al. 2010: ``|b + f(x + b)|^2 <= 0.01 (|b|^2 + |f(x + b)|^2) + 0.5``), so occluded,
   disoccluded and textureless pixels do not vote. Both passes start from the flow the objects' last motions
   predict (inside each object's mask its last frame-to-frame motion, elsewhere 0; DIS takes it as its initial
   flow): a small object moving its own size per frame is otherwise smoothed into the static background by DIS's
   coarse pyramid levels (its flow reads ~0), and DIS then only has to find what the prediction missed.
2. **Motion of each object.** Each reliable pixel of frame t takes the label found at the end of its backward
   flow (backward warping of the previous label image with ``cv2.remap``, nearest); pixels within
   ``boundary_px`` of a label boundary are left out (flow bleeds across edges there). A similarity transform
   (``cv2.estimateAffinePartial2D``, RANSAC) fitted to each object's flow vectors predicts its pose.
3. **Re-seeding against the first frame** (every ``anchor_every`` frames): frame t is warped back into the
   first frame's coordinates by the predicted pose, DIS flow between the object's first-frame appearance and
   that warp measures what the prediction missed, and a second similarity fit (RANSAC, pixels hidden by
   objects in front left out) corrects the pose. Errors then never accumulate: every frame is registered to
   the first one, not only to the previous one. When that fails the registration is tried from the last motion
   and the mean motion continued, and when these fail too (or share < 0.75), from the two best places of the
   object's first-frame appearance (turned and scaled by the pose) by normalized cross-correlation
   (``cv2.matchTemplate``, the object's own pixels) in a window around the prediction as wide as its recent
   speed plus 4 grid pixels. A *fast* object (moving more than ``FAST_SHARE`` of its size per frame) always
   tries all these candidates and keeps the one whose appearance matches best, not the one with most inliers
   (a similar-looking neighbour can register well too). So an object the flow lost is found again by its looks
   instead of freezing where the flow left it.
4. **Masks.** The first-frame mask moved by the pose (``cv2.warpAffine``, one resampling from the original,
   so the shape never erodes or blurs); pixels outside the frame are simply not drawn, and the pose keeps the
   part that left so it comes back whole.
5. **Occlusion and depth.** Where two objects' moved masks overlap, the flow follows the surface in front: the
   object whose fitted motion explains the flow there covers the other (see ``_DepthVotes``). The covered
   object's pixels there are 0 for it; while it has no visible pixels it keeps moving by its motion model
   (constant velocity: its mean motion over the last ``velocity_frames`` frames in which it was mostly
   visible) and comes back when uncovered, re-seeded against the first frame (usually within a few frames of
   reappearing; a sliver is not enough to re-seed). The re-seeding leaves the band along an occluder's edge
   out (the flow there bleeds between the two surfaces).
   Identities cannot swap: every pixel's label comes from one object's own mask and pose.
6. **Leaving the frame.** An object keeps its pose (moving by its motion model) while outside; its pixels in
   the frame are drawn, none when it is wholly outside (``FlowTrackReport.outside``).

Input is streamed: frames are read one at a time (a tensor or any iterable of frames), so memory grows with
the clip only by the uint8 label video.

Why not propagate the masks with the dense flow itself (``cv2.remap`` of each mask with the backward flow,
frame by frame)? Measured on the procedural scenes (``benchmarks/flow_scenes.py``, 160x128, 32 frames), the
dense propagation drifts: DIS smooths the flow across object boundaries, the mask loses or gains a fraction
of a pixel at every edge every frame, and the errors add up (mean IoU 0.74 translation, 0.67 rotation, 0.65
and 0.34 on the crossing objects), where a similarity pose fitted to the object's interior flow reaches
0.98 / 0.95 / 0.97 / 0.78, and with the re-seeding against the first frame 0.99 / 1.00 / 0.99 / 0.92. The
price: a shape that bends (a walking person's legs) is followed as a whole, not in its parts.

Fast motion, measured: the shipped coins example (``examples/ttm_coins.png``, 384x288) with the left coin (42 px)
dragged ease-in/ease-out over 17 frames (up to ~35 px per frame) was lost from frame 7 on without the initial
flow and the search (mean IoU 0.43, then 0.48 over 25 frames); now 0.99 / 0.99 (min 0.97), and still 0.99 over 9
to 13 frames (~50 px per frame, more than the coin's width). The procedural ``fast`` scene (a blob a tenth of the
width accelerating to 6.7 % of the width per frame among six look-alikes, 320x256x32): 0.34 before, 0.98 now.

Coordinates: OpenCV's pixel indices (pixel centres at integers). Poses are 3x3 float64 matrices mapping
first-frame pixel coordinates to frame t (full resolution).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from einops import rearrange

from ..errors import TTMInputError
from ..types import Objects, ProgressFn, Trajectory

LOG = logging.getLogger(__name__)

PRESETS = ("ultrafast", "fast", "medium")
"""DIS presets (``cv2.DISOPTICAL_FLOW_PRESET_*``): more iterations and smaller patch strides, slower."""

MIN_SIZE = 16
"""Smallest frame side DIS accepts (its 8-pixel patches need a pyramid level of at least 16)."""


SEARCH_PEAKS = 2
"""How many best places of its appearance an object lost by its flow is registered from (``_Tracker.search``)."""

SEARCH_MIN_SCORE = 0.5
"""Normalized cross-correlation a place must reach to be tried at all."""

FAST_SHARE = 0.25
"""An object moving more than this share of its size per frame is *fast*: its re-seeding tries every candidate
pose and keeps the one whose appearance matches best (``_Tracker.reseed``)."""


def _whole(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass(frozen=True)
class FlowTrackSettings:
    """How the flow tracker works (defaults measured, see the module docstring and the README).

    Attributes:
        preset: DIS preset, one of ``PRESETS``.
        flow_side: the flow is computed on frames resized so that their longer side is this many pixels
            (never enlarged); the pose fits and the re-seeding work on that grid.
        consistency: drop pixels whose forward and backward flow disagree (a second DIS pass per frame).
        anchor_every: re-seed every object against the first frame's appearance every this many frames
            (1 = every frame; 0 = never, poses then only chain frame to frame).
        anchor_min_inliers: a re-seeding is used only if at least this share (0..1) of the object's visible
            pixels agree with the corrected pose.
        inlier_px: RANSAC's inlier distance in flow-grid pixels.
        boundary_px: flow within this many flow-grid pixels of an object boundary is not used for fitting.
        max_points: at most this many flow vectors per object and fit (evenly subsampled).
        min_points: fewer usable flow vectors than this and an object counts as unseen in that frame.
        min_visible: an object whose usable flow vectors cover less than this share (0..1) of its whole area
            moves by its last motion instead (a sliver next to an occluder mostly carries the occluder's flow).
        velocity_frames: an object's motion model (used while it is covered or unmeasured) is its mean motion per
            frame over its measured poses of this many last frames.
        velocity_visible: only frames where at least this share (0..1) of the object's in-frame area is visible
            (not covered) feed the motion model.
        bend: also follow smooth non-rigid bending (a displacement field on top of the pose, from the re-seeding).
        bend_sigma: smoothness of the bending field (Gaussian sigma, flow-grid pixels).
        bend_limit: the bending moves no point further than this share of the object's re-seeding box.
        bend_min: bending smaller than this many flow-grid pixels everywhere is ignored (the object stays rigid).
        fill_outside: re-seeding sees only the first frame's pixels around the object (not the current
            background, which did not move with it).
    """

    preset: str = "ultrafast"
    flow_side: int = 256
    consistency: bool = True
    anchor_every: int = 1
    anchor_min_inliers: float = 0.5
    inlier_px: float = 1.0
    boundary_px: int = 2
    max_points: int = 1500
    min_points: int = 12
    min_visible: float = 0.1
    velocity_frames: int = 4
    velocity_visible: float = 0.5
    bend: bool = True
    bend_sigma: float = 4.0
    bend_limit: float = 0.25
    bend_min: float = 0.3
    fill_outside: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise TTMInputError("preset", f"unknown DIS preset {self.preset!r}", f"use one of {', '.join(PRESETS)}")
        checks = (
            ("flow_side", _whole(self.flow_side, MIN_SIZE), f"an integer >= {MIN_SIZE}, e.g. 256"),
            ("anchor_every", _whole(self.anchor_every, 0), "0 (never) or a number of frames, e.g. 1"),
            ("anchor_min_inliers", 0.0 <= self.anchor_min_inliers <= 1.0, "a share in 0..1, e.g. 0.5"),
            ("inlier_px", math.isfinite(self.inlier_px) and self.inlier_px > 0, "a positive distance, e.g. 1.0"),
            ("boundary_px", self.boundary_px >= 0, "0 or more pixels, e.g. 2"),
            ("max_points", self.max_points >= self.min_points, "at least min_points, e.g. 1500"),
            ("min_points", self.min_points >= 3, "3 or more, e.g. 12"),
            ("min_visible", 0.0 <= self.min_visible < 1.0, "a share in 0..1, e.g. 0.1"),
            ("velocity_frames", _whole(self.velocity_frames, 1), "1 or more frames, e.g. 4"),
            ("velocity_visible", 0.0 <= self.velocity_visible <= 1.0, "a share in 0..1, e.g. 0.5"),
            ("bend_sigma", math.isfinite(self.bend_sigma) and self.bend_sigma > 0, "a positive sigma, e.g. 4.0"),
            ("bend_limit", 0.0 <= self.bend_limit <= 1.0, "a share in 0..1, e.g. 0.25"),
            ("bend_min", math.isfinite(self.bend_min) and self.bend_min >= 0, "0 or more pixels, e.g. 0.3"),
        )
        for name, ok, fix in checks:
            if not ok:
                raise TTMInputError(name, f"{getattr(self, name)!r} is out of range", f"use {fix}")


@dataclass(frozen=True, eq=False)
class FlowTrackReport:
    """What the flow tracker saw, per frame (T) and object (L, in ``ids`` order).

    Attributes:
        ids: the objects' ids.
        area: int64 ``[T, L]``, visible pixels of each object (its label count in that frame).
        reseeded: bool ``[T, L]``, the pose was re-registered against the first frame's appearance.
        confidence: float32 ``[T, L]`` in 0..1, the share of the object's visible interior flow vectors that
            agree with its pose (against the first frame when re-seeded, else frame to frame); 1 at frame 0,
            0 when nothing of it is visible.
        hidden: bool ``[T, L]``, inside the frame but covered by other objects (moved by its motion model).
        outside: bool ``[T, L]``, entirely outside the frame.
        depth_order: ids from front to back, estimated from the overlaps (``_DepthVotes``).
        events: one line per hidden or outside stretch, as logged.
    """

    ids: tuple[int, ...]
    area: torch.Tensor
    reseeded: torch.Tensor
    confidence: torch.Tensor
    hidden: torch.Tensor
    outside: torch.Tensor
    depth_order: tuple[int, ...]
    events: tuple[str, ...]


def _import_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as err:
        raise TTMInputError("tracker", f"OpenCV is not installed ({err})",
                            "pip install opencv-python-headless into ComfyUI's Python") from err
    return cv2


def _check_objects(objects: Objects) -> None:
    if not isinstance(objects, Objects):
        raise TTMInputError("objects", f"expected TTM_OBJECTS, got {type(objects).__name__}",
                            "connect the objects output of Objects From Masks or SAM2 Segment")
    height, width = objects.size
    if min(height, width) < MIN_SIZE:
        raise TTMInputError("objects", f"the objects' masks are {width}x{height} (WxH), too small for optical flow",
                            f"use frames and masks of at least {MIN_SIZE}x{MIN_SIZE} pixels")
    areas = objects.binary().flatten(1).sum(1)
    for i, area in enumerate(areas.tolist()):
        if area == 0:
            raise TTMInputError("objects", f"object {objects.ids[i]} ({objects.prompts.names[i]!r}) has an empty "
                                "mask in the first frame", "give every object a non-empty first-frame mask")


def _check_frame(frame: object, t: int, size: tuple[int, int]) -> torch.Tensor:
    """``frame`` if it is a float ``[H, W, 3 or 4]`` tensor of ``size`` (H, W); else a TTMInputError naming
    ``frames`` (frame 0: the objects' masks set the size)."""
    if not isinstance(frame, torch.Tensor) or frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise TTMInputError("frames", f"frame {t} is not an image [H, W, 3] (got {shape})",
                            "pass an IMAGE batch [T, H, W, 3] or an iterable of [H, W, 3] frames")
    if not frame.dtype.is_floating_point:
        raise TTMInputError("frames", f"frame {t} has {frame.dtype} pixels, expected float in 0..1",
                            "connect a ComfyUI IMAGE (float32 in 0..1), or divide 8-bit frames by 255")
    if (int(frame.shape[0]), int(frame.shape[1])) != size:
        height, width = int(frame.shape[0]), int(frame.shape[1])
        if t == 0:
            raise TTMInputError("frames", f"frames are {width}x{height} (WxH) but the objects' masks are "
                                f"{size[1]}x{size[0]}",
                                "track the video the objects were found in, or resize the frames to the masks' size")
        raise TTMInputError("frames", f"frame {t} is {width}x{height} (WxH) but frame 0 is {size[1]}x{size[0]}",
                            "pass frames of one size")
    return frame


def _frame_source(frames: torch.Tensor | Iterable[torch.Tensor], count: int | None) -> tuple[Iterator[Any], int]:
    """(an iterator over the frames, the number of frames to track), checked before any work."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise TTMInputError("count", f"count {count!r} is not a number of frames", "pass a whole number >= 1")
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
            raise TTMInputError("frames", f"expected an IMAGE batch [T, H, W, 3], got {tuple(frames.shape)}",
                                "connect an IMAGE (a video's frames)")
        if count is not None and count != frames.shape[0]:
            raise TTMInputError("count", f"count {count} but the frames tensor holds {frames.shape[0]} frames",
                                "leave count out for a tensor (it is T)")
        count = int(frames.shape[0])
        iterator: Iterator[Any] = iter(frames.unbind(0))
    else:
        if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
            raise TTMInputError("frames", f"expected an IMAGE batch or an iterable of frames, got "
                                f"{type(frames).__name__}", "connect an IMAGE (a video's frames)")
        if count is None:
            if not isinstance(frames, Sized):
                raise TTMInputError("count", f"the frames are a {type(frames).__name__} without a length and no "
                                    "count was given", "pass count=<number of frames> with an iterator of frames")
            count = len(frames)
        iterator = iter(frames)
    if count == 0:
        raise TTMInputError("frames", "the video has no frames", "connect a video with at least one frame")
    return iterator, count


def _homogeneous(affine: np.ndarray) -> np.ndarray:
    """3x3 float64 from a 2x3 affine."""
    return np.vstack([affine.astype(np.float64), [0.0, 0.0, 1.0]])


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """3x3 least-squares similarity taking points ``source`` ``[N, 2]`` to ``target`` (Umeyama, no reflection)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = (source - mu_s).astype(np.float64), (target - mu_t).astype(np.float64)
    var = float((a * a).sum())
    if var <= 0:
        return _translation(*(mu_t - mu_s))
    dot = float((a * b).sum())
    cross = float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum())
    linear = np.array([[dot, -cross], [cross, dot]]) / var
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = mu_t - linear @ mu_s
    return out


def _root(motion: np.ndarray, steps: int) -> np.ndarray:
    """3x3 similarity V with V^steps ~ ``motion`` (a 3x3 similarity, or the similarity part of an affine): the
    same scale, rotation and translation per step."""
    if steps <= 1:
        return motion.copy()
    a = 0.5 * (motion[0, 0] + motion[1, 1])
    b = 0.5 * (motion[1, 0] - motion[0, 1])
    scale, angle = math.hypot(a, b) ** (1.0 / steps), math.atan2(b, a) / steps
    linear = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    total, power = np.zeros((2, 2)), np.eye(2)
    for _ in range(steps):  # translation t per step: (1 + L + ... + L^(steps-1)) t = motion's translation
        total += power
        power = power @ linear
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = np.linalg.solve(total, motion[:2, 2])
    return out


def _reach(move: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """How far (pixels) the 3x3 ``move`` takes the corners of ``box`` (x0, y0, x1, y1), at most."""
    x0, y0, x1, y1 = box
    corners = np.array([[x0, x1, x0, x1], [y0, y0, y1, y1], [1.0, 1.0, 1.0, 1.0]])
    return float(np.abs((move @ corners)[:2] - corners[:2]).max())


def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _bbox(mask: np.ndarray, margin: int, minimum: int = 1) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the nonzero pixels of a 2D mask, grown by ``margin`` and to at least ``minimum``
    per side, clipped to the mask."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    box = [int(xs.min()) - margin, int(ys.min()) - margin, int(xs.max()) + margin + 1, int(ys.max()) + margin + 1]
    for lo, hi, limit in ((0, 2, width), (1, 3, height)):
        short = minimum - (box[hi] - box[lo])
        if short > 0:
            box[lo] -= short // 2
            box[hi] += short - short // 2
        shift = max(0, -box[lo]) - max(0, box[hi] - limit)
        box[lo], box[hi] = max(0, box[lo] + shift), min(limit, box[hi] + shift)
    return box[0], box[1], box[2], box[3]


class _Fitter:
    """Robust similarity fits of point correspondences on the flow grid."""

    def __init__(self, cv2: Any, settings: FlowTrackSettings) -> None:
        self.cv2, self.settings = cv2, settings

    def fit(self, index: np.ndarray, width: int, flow: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Similarity taking ``x + flow(x)`` to ``x`` for the flat pixel indices ``index`` of a grid of
        ``width`` columns (flow float32 ``[N, 2]`` flat). Returns (3x3 matrix, inlier share) or None."""
        s = self.settings
        if index.size < s.min_points:
            return None
        pick = index[:: max(1, index.size // s.max_points)]
        target = np.stack([pick % width, pick // width], axis=-1).astype(np.float32)
        source = target + flow[pick]
        matrix, inliers = self.cv2.estimateAffinePartial2D(
            source, target, method=self.cv2.RANSAC, ransacReprojThreshold=s.inlier_px, maxIters=2000,
            confidence=0.995, refineIters=10)
        if matrix is None or inliers is None or int(inliers.sum()) < s.min_points:
            return None
        fit = _homogeneous(matrix)
        scale = math.sqrt(abs(np.linalg.det(fit[:2, :2])))
        if not (np.isfinite(fit).all() and 0.5 <= scale <= 2.0):
            return None
        return fit, float(inliers.mean())


class _Object:
    """One object's state: its first-frame mask and appearance, its pose, and its bending.

    The object point at first-frame grid position q (inside ``anchor_box``) is at ``pose_grid(q + bend(q))`` in
    frame t: a similarity pose plus a smooth displacement field (grid pixels, zero for a rigid object).
    """

    def __init__(self, cv2: Any, mask: np.ndarray, grid: tuple[int, int], to_grid: np.ndarray,
                 settings: FlowTrackSettings) -> None:
        self.cv2 = cv2
        x0, y0, x1, y1 = _bbox(mask > 0, 1)
        self.mask = np.ascontiguousarray(mask[y0:y1, x0:x1])  # float32, soft, cropped to its box
        self.origin = _translation(x0, y0)
        self.to_grid = to_grid
        small = cv2.resize(mask, grid, interpolation=cv2.INTER_AREA)
        core = small >= 0.5 if bool((small >= 0.5).any()) else small > 0
        gx0, gy0, gx1, gy1 = _bbox(core, 1)
        self.small = np.ascontiguousarray(small[gy0:gy1, gx0:gx1])
        self.small_origin = _translation(gx0, gy0)
        self.grid_area = float(core.sum())
        # Re-seeding template: the first frame around the object on the grid (filled in by the tracker). A
        # margin of a quarter of the object's size: DIS's pyramid on the box, and so the displacement the
        # re-seeding can still correct, grows with the box.
        margin = max(8, round(0.25 * max(gx1 - gx0, gy1 - gy0)))
        ax0, ay0, ax1, ay1 = _bbox(core, margin, MIN_SIZE)
        self.anchor_box = (ax0, ay0, ax1, ay1)
        size = 2 * settings.boundary_px + 1
        inner = cv2.erode((small[ay0:ay1, ax0:ax1] >= 0.5).astype(np.uint8), np.ones((size, size), np.uint8))
        if not inner.any():  # thinner than the boundary band: use the whole mask
            inner = (small[ay0:ay1, ax0:ax1] >= 0.25).astype(np.uint8)
        self.anchor_inner = inner.astype(bool)
        self.anchor_outside = cv2.dilate((small[ay0:ay1, ax0:ax1] >= 0.25).astype(np.uint8),
                                         np.ones((5, 5), np.uint8)) == 0
        self.template: np.ndarray | None = None
        self.bend = np.zeros((ay1 - ay0, ax1 - ax0, 2), np.float32)  # grid pixels, first-frame grid coordinates
        self.bent = False
        self.pose = np.eye(3)
        self.velocity = np.eye(3)
        self.previous_pose = np.eye(3)
        self.motion = np.eye(3)  # the last frame's pose change (full resolution): the flow's initial guess
        self.previous_measured: tuple[int, np.ndarray] = (0, np.eye(3))
        self.step: np.ndarray | None = None  # this frame's fitted frame-to-frame motion (full resolution)
        self.history: list[tuple[int, np.ndarray]] = [(0, np.eye(3))]  # (frame, pose) where the pose was measured

    def measured(self, frame: int, window: int) -> None:
        """The pose of ``frame`` was measured (not only predicted): the velocity becomes the mean motion per frame
        over the measured poses of the last ``window`` frames (one frame's fit on a sliver of a half-covered
        object is off by a fraction of a pixel; carried through a whole occlusion that adds up)."""
        self.history = [(f, p) for f, p in self.history if f >= frame - window] + [(frame, self.pose)]
        first, oldest = self.history[0]
        if first == frame:  # nothing measured in the window: the motion since the last measured pose
            first, oldest = self.previous_measured
        self.velocity = _root(self.pose @ np.linalg.inv(oldest), frame - first)
        self.previous_measured = (frame, self.pose)

    def _place(self, source: np.ndarray, source_origin: np.ndarray, pose: np.ndarray, to_grid: np.ndarray,
               box: tuple[int, int, int, int]) -> np.ndarray:
        """float32 mask over ``box`` (x0, y0, x1, y1) of an output image: ``source`` (a mask whose pixel (0, 0)
        is at ``source_origin`` in first-frame coordinates) moved by ``pose`` and the bending. ``to_grid`` maps
        these first-frame coordinates to the flow grid's."""
        cv2 = self.cv2
        x0, y0, x1, y1 = box
        local = _translation(-x0, -y0) @ pose @ source_origin
        if not self.bent:
            return cv2.warpAffine(source, local[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
        inverse = np.linalg.inv(pose)
        u = np.stack([inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2],
                      inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]], axis=-1)  # first-frame coords
        ax0, ay0 = self.anchor_box[:2]
        at = (u * np.diag(to_grid)[:2] + to_grid[:2, 2] - (ax0, ay0)).astype(np.float32)
        bend = cv2.remap(self.bend, at, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # first order inverse of q -> q + bend(q); grid pixels -> these coordinates
        where = u - bend / np.diag(to_grid)[:2] - source_origin[:2, 2]
        return cv2.remap(source, where.astype(np.float32), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)

    def _reach(self) -> float:
        """How far (grid pixels) the bending moves any point."""
        return float(np.abs(self.bend).max()) if self.bent else 0.0

    def grid_mask(self, pose_grid: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """float32 ``[h, w]`` mask on the flow grid at the pose (grid coordinates)."""
        return self._place(self.small, self.small_origin, pose_grid, np.eye(3), (0, 0, grid[0], grid[1]))

    def draw(self, labels: np.ndarray, object_id: int) -> int:
        """Paint this object's mask at its pose into ``labels`` (uint8 ``[H, W]``); returns its in-frame area."""
        height, width = labels.shape
        h, w = self.mask.shape
        corners = np.array([[0, w, 0, w], [0, 0, h, h], [1, 1, 1, 1]], dtype=np.float64)
        moved = self.pose @ self.origin @ corners
        reach = math.ceil(self._reach() / min(self.to_grid[0, 0], self.to_grid[1, 1])) + 1
        x0 = max(0, math.floor(moved[0].min()) - reach)
        y0 = max(0, math.floor(moved[1].min()) - reach)
        x1 = min(width, math.ceil(moved[0].max()) + reach + 1)
        y1 = min(height, math.ceil(moved[1].max()) + reach + 1)
        if x1 <= x0 or y1 <= y0:
            return 0
        inside = self._place(self.mask, self.origin, self.pose, self.to_grid, (x0, y0, x1, y1)) >= 0.5
        labels[y0:y1, x0:x1][inside] = object_id
        return int(inside.sum())


class _DepthVotes:
    """Who covers whom, from the flow where two objects' moved masks overlap.

    The rule: in the overlap of objects a and b (both moved masks >= 0.5, flow reliable) a pixel votes for a
    when a's fitted frame-to-frame motion explains its backward flow better than b's by more than
    ``inlier_px`` (the flow there follows the surface that is visible, the one in front), and for b likewise.
    With at least ``min_votes`` votes and three times as many as the other, the front object of the pair
    is decided for this and later frames (until new evidence says otherwise); pairs that never overlap with
    distinct motions keep the objects' order (object 1 in front). Frames are composited with the current
    pairwise decisions; the trajectory's single depth order sorts objects by how many objects they were
    found in front of minus how many were found in front of them, summed over the clip (votes decide each
    pair), ties in the objects' order.
    """

    def __init__(self, count: int) -> None:
        self.relation = np.zeros((count, count), dtype=np.int8)  # [a, b] = 1: a in front of b, -1: behind
        self.votes = np.zeros((count, count), dtype=np.int64)  # [a, b]: votes for a in front of b, summed

    def observe(self, a: int, b: int, votes_a: int, votes_b: int, min_votes: int) -> None:
        self.votes[a, b] += votes_a
        self.votes[b, a] += votes_b
        if votes_a >= min_votes and votes_a >= 3 * votes_b:
            self.relation[a, b], self.relation[b, a] = 1, -1
        elif votes_b >= min_votes and votes_b >= 3 * votes_a:
            self.relation[a, b], self.relation[b, a] = -1, 1

    @staticmethod
    def _order(wins: np.ndarray) -> list[int]:
        score = wins.sum(axis=1)
        return sorted(range(len(score)), key=lambda i: (-int(score[i]), i))

    def current(self) -> list[int]:
        """Object indices front to back for compositing this frame."""
        return self._order(self.relation.astype(np.int64))

    def overall(self) -> list[int]:
        """Object indices front to back for the whole clip."""
        wins = np.sign(self.votes - self.votes.T)
        return self._order(wins)


class _Tracker:
    def __init__(self, cv2: Any, objects: Objects, settings: FlowTrackSettings, size: tuple[int, int]) -> None:
        self.cv2, self.objects, self.settings = cv2, objects, settings
        self.height, self.width = size
        scale = min(1.0, settings.flow_side / max(size))
        self.grid = (min(self.width, max(MIN_SIZE, round(self.width * scale))),
                     min(self.height, max(MIN_SIZE, round(self.height * scale))))  # (w, h)
        sx, sy = self.grid[0] / self.width, self.grid[1] / self.height
        # full-resolution pixel index p -> grid index (p + 0.5) * s - 0.5
        self.to_grid = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        self.to_full = np.linalg.inv(self.to_grid)
        preset = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{settings.preset.upper()}")
        self.flow = cv2.DISOpticalFlow_create(preset)
        self.flow.setFinestScale(0)  # the grid IS the resolution of the flow (see flow_side)
        self.anchor_flow = cv2.DISOpticalFlow_create(preset)
        self.anchor_flow.setFinestScale(0)
        gw, gh = self.grid
        xs, ys = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
        self.coords = np.dstack([xs, ys])  # [h, w, 2] (x, y)
        masks = objects.masks.numpy()
        self.tracks = [_Object(cv2, masks[i], self.grid, self.to_grid, settings) for i in range(objects.count)]
        self.fitter = _Fitter(cv2, settings)
        self.depth = _DepthVotes(objects.count)
        size_k = 2 * settings.boundary_px + 1
        self.kernel = np.ones((size_k, size_k), np.uint8)
        self.frame = 0
        self.prev: np.ndarray | None = None
        self.prev_labels: np.ndarray | None = None  # grid labels of the previous frame

    def gray(self, frame: torch.Tensor) -> np.ndarray:
        """uint8 ``[h, w]`` grayscale of one float ``[H, W, C]`` frame in 0..1, on the flow grid."""
        rgb = frame[..., :3].detach().to("cpu", torch.float32).contiguous().numpy()
        gray = self.cv2.convertScaleAbs(self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY), alpha=255.0)
        if self.grid != (self.width, self.height):
            gray = self.cv2.resize(gray, self.grid, interpolation=self.cv2.INTER_AREA)
        return gray

    def grid_pose(self, pose: np.ndarray) -> np.ndarray:
        return self.to_grid @ pose @ self.to_full

    def start(self, gray: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        for track in self.tracks:
            x0, y0, x1, y1 = track.anchor_box
            track.template = np.ascontiguousarray(gray[y0:y1, x0:x1])
        self.prev = gray
        return self.finish([False] * self.objects.count, [1.0] * self.objects.count)

    def advance(self, gray: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        cv2, s = self.cv2, self.settings
        assert self.prev is not None and self.prev_labels is not None
        self.frame += 1
        for track in self.tracks:
            track.previous_pose = track.pose
        backward = self.calc_flow(gray, self.prev, self.initial_flow(backward=True))  # [h, w, 2]: frame t -> t-1
        sample = self.coords + backward
        if s.consistency:
            forward = self.calc_flow(self.prev, gray, self.initial_flow(backward=False))
            forward_at = cv2.remap(forward, sample, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=(1e4, 1e4))
            error = backward + forward_at
            reliable = (error * error).sum(-1) <= 0.01 * ((backward * backward).sum(-1)
                                                          + (forward_at * forward_at).sum(-1)) + 0.5
        else:
            reliable = np.ones(backward.shape[:2], dtype=bool)
        # Labels carried back along the flow, with a band around every boundary left out.
        uniform = cv2.erode(self.prev_labels, self.kernel) == cv2.dilate(self.prev_labels, self.kernel)
        interior = np.where(uniform, self.prev_labels, 255).astype(np.uint8)
        carried = cv2.remap(interior, sample, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=255)
        flat = rearrange(backward, "h w c -> (h w) c")
        usable = (carried + 1).astype(np.int32) * reliable  # 0: not usable; id + 1 otherwise
        confidence = [0.0] * self.objects.count
        for i, object_id in enumerate(self.objects.ids):
            track = self.tracks[i]
            index = np.flatnonzero(usable.ravel() == object_id + 1)
            whole = track.grid_area * abs(np.linalg.det(track.pose[:2, :2]))
            found = self.fitter.fit(index, self.grid[0], flat) if index.size >= s.min_visible * whole else None
            if found is None:
                track.step = None
                track.pose = track.velocity @ track.pose
            else:
                step = self.to_full @ found[0] @ self.to_grid
                track.step = step
                track.pose = step @ track.pose
                confidence[i] = found[1]
        self.vote_depth(backward, reliable)
        reseeded = [False] * self.objects.count
        if s.anchor_every and self.frame % s.anchor_every == 0:
            for rank, i in enumerate(self.depth.current()):
                front = self.depth.current()[:rank]
                result = self.reseed(i, gray, front)
                if result is not None:
                    reseeded[i], confidence[i] = True, result
        self.prev = gray
        labels, info = self.finish(reseeded, confidence)
        for i, track in enumerate(self.tracks):
            track.motion = track.pose @ np.linalg.inv(track.previous_pose)
            # Only a mostly visible object's pose feeds its velocity: a half-covered one's fits lean towards
            # the occluder's motion, and carried through a whole occlusion a small error adds up.
            seen = info["area"][i] >= s.velocity_visible * max(1, info["in_frame"][i])
            if seen and (track.step is not None or reseeded[i]):
                track.measured(self.frame, s.velocity_frames)
        return labels, info

    def calc_flow(self, source: np.ndarray, target: np.ndarray, initial: np.ndarray | None) -> np.ndarray:
        """DIS flow from ``source`` to ``target`` (float32 ``[h, w, 2]``), started from ``initial`` if given (DIS
        takes a flow argument of the frames' size as its initial flow, downscaled to its coarsest level)."""
        return self.flow.calc(source, target, initial)

    def initial_flow(self, backward: bool) -> np.ndarray | None:
        """The flow every object's last motion predicts (frame t -> t-1 if ``backward``, else t-1 -> t): inside
        its moved mask (predicted for frame t, resp. of frame t-1), grown by ``boundary_px``, the displacement of that
        motion, elsewhere 0; objects in front painted last. None when no object moves by a pixel or more (DIS
        then starts from 0 as usual)."""
        cv2 = self.cv2
        moves = [self.grid_pose(track.motion) for track in self.tracks]
        if all(_reach(move, track.anchor_box) < 1.0 for move, track in zip(moves, self.tracks)):
            return None
        initial = np.zeros((self.grid[1], self.grid[0], 2), np.float32)
        for i in reversed(self.depth.current()):
            track, move = self.tracks[i], moves[i]
            where = track.motion @ track.pose if backward else track.pose
            inside = track.grid_mask(self.grid_pose(where), self.grid) >= 0.25
            inside = cv2.dilate(inside.astype(np.uint8), self.kernel)
            ys, xs = np.nonzero(inside)
            if xs.size == 0:
                continue
            step = np.linalg.inv(move) if backward else move
            initial[ys, xs, 0] = (step[0, 0] - 1.0) * xs + step[0, 1] * ys + step[0, 2]
            initial[ys, xs, 1] = step[1, 0] * xs + (step[1, 1] - 1.0) * ys + step[1, 2]
        return initial

    def vote_depth(self, backward: np.ndarray, reliable: np.ndarray) -> None:
        """Decide who is in front where the predicted masks of two objects overlap (``_DepthVotes``)."""
        count = self.objects.count
        if count < 2:
            return
        masks = [self.tracks[i].grid_mask(self.grid_pose(self.tracks[i].pose), self.grid) >= 0.5
                 for i in range(count)]
        gw = self.grid[0]
        flat = rearrange(backward, "h w c -> (h w) c")
        for a in range(count):
            for b in range(a + 1, count):
                overlap = np.flatnonzero((masks[a] & masks[b] & reliable).ravel())
                if overlap.size < self.settings.min_points:
                    continue
                pick = overlap[:: max(1, overlap.size // self.settings.max_points)]
                points = np.stack([pick % gw, pick // gw, np.ones(pick.size)], axis=0)  # [3, N]
                residual = []
                for i in (a, b):
                    track = self.tracks[i]
                    step = track.step if track.step is not None else track.velocity
                    back = np.linalg.inv(self.grid_pose(step)) @ points  # where the pixel was in frame t-1
                    residual.append(np.linalg.norm((back[:2] - points[:2]).T - flat[pick], axis=1))
                margin = self.settings.inlier_px
                votes_a = int(((residual[0] + margin) < residual[1]).sum())
                votes_b = int(((residual[1] + margin) < residual[0]).sum())
                self.depth.observe(a, b, votes_a, votes_b, max(self.settings.min_points, pick.size // 20))

    def reseed(self, i: int, gray: np.ndarray, front: list[int]) -> float | None:
        """Register object ``i`` to its first-frame appearance, from its predicted pose and, if that fails, from
        its last motion and its mean motion continued, and if these fail too (a fast object whose flow lost it),
        from the best places of its appearance in a window around the prediction (``search``). Corrects the
        pose; returns the inlier share (None: not re-seeded)."""
        cv2 = self.cv2
        track = self.tracks[i]
        occluded = np.zeros(gray.shape, bool)
        for j in front:
            occluded |= self.tracks[j].grid_mask(self.grid_pose(self.tracks[j].pose), self.grid) >= 0.5
        planes = cv2.merge([gray, np.full(gray.shape, 255, np.uint8), occluded.astype(np.uint8) * 255])
        guesses = [track.pose]
        for motion in (track.motion, track.velocity):
            guess = motion @ track.previous_pose
            if all(_reach(self.grid_pose(guess @ np.linalg.inv(other)), track.anchor_box) >= 1.0
                   for other in guesses):
                guesses.append(guess)
        # A fast object (moving more than a quarter of its size per frame) may have been registered to a
        # similar-looking neighbour: all its candidates are tried and the one that looks most like it wins.
        fast = self.speed(track) > FAST_SHARE * max(track.small.shape) * math.sqrt(
            abs(np.linalg.det(track.pose[:2, :2])))
        found = [f for f in (self.register(track, planes, g) for g in guesses[:1]) if f is not None]
        for guess in guesses[1:]:
            if found and max(f[0] for f in found) >= 0.9 and not fast:
                break
            result = self.register(track, planes, guess)
            if result is not None:
                found.append(result)
        if fast or not found or max(f[0] for f in found) < 0.75:
            for guess in self.search(track, gray, occluded, guesses[1] if len(guesses) > 1 else guesses[0]):
                result = self.register(track, planes, guess)
                if result is not None:
                    found.append(result)
        if not found:
            return None
        if fast and len(found) > 1:
            best = max(found, key=lambda f: self.likeness(track, planes, f[1], track.bend if f[2] is None else f[2]))
        else:
            best = max(found, key=lambda f: f[0])
        track.pose = best[1]
        if best[2] is not None:
            track.bend = best[2]
            track.bent = bool(np.abs(track.bend).max() >= self.settings.bend_min)
        return best[0]

    def speed(self, track: _Object) -> float:
        """How far (grid pixels) the object's last motion or its mean motion moves it per frame, the larger."""
        return max(_reach(self.grid_pose(m), track.anchor_box) for m in (track.motion, track.velocity))

    def search(self, track: _Object, gray: np.ndarray, occluded: np.ndarray, pose: np.ndarray) -> list[np.ndarray]:
        """Poses where the object's first-frame appearance (turned and scaled as by ``pose``) best matches frame t
        by normalized cross-correlation (``cv2.matchTemplate``, the object's own pixels only), within a window
        around ``pose`` as wide as the object's recent motion per frame plus 4 grid pixels; best first, at most
        ``SEARCH_PEAKS``. Nothing for an object a quarter covered by objects in front or reaching out of the
        frame (its visible part says too little)."""
        cv2 = self.cv2
        assert track.template is not None
        x0, y0 = track.anchor_box[:2]
        to_frame = self.grid_pose(pose) @ _translation(x0, y0)
        h, w = track.template.shape
        corners = to_frame @ np.array([[0, w, 0, w], [0, 0, h, h], [1.0, 1.0, 1.0, 1.0]])
        bx0, by0 = math.floor(corners[0].min()), math.floor(corners[1].min())
        bx1, by1 = math.ceil(corners[0].max()) + 1, math.ceil(corners[1].max()) + 1
        gw, gh = self.grid
        if bx0 < 0 or by0 < 0 or bx1 > gw or by1 > gh:
            return []
        local = _translation(-bx0, -by0) @ to_frame
        size = (bx1 - bx0, by1 - by0)
        picture = cv2.warpAffine(track.template, local[:2], size, flags=cv2.INTER_LINEAR)
        inner = cv2.warpAffine(track.anchor_inner.astype(np.uint8) * 255, local[:2], size,
                               flags=cv2.INTER_LINEAR) >= 128
        if int(inner.sum()) < self.settings.min_points or int((inner & occluded[by0:by1, bx0:bx1]).sum()) > \
                0.25 * int(inner.sum()):
            return []
        radius = round(4 + self.speed(track))
        rx0, ry0 = max(0, bx0 - radius), max(0, by0 - radius)
        rx1, ry1 = min(gw, bx1 + radius), min(gh, by1 + radius)
        score = cv2.matchTemplate(gray[ry0:ry1, rx0:rx1], picture, cv2.TM_CCOEFF_NORMED,
                                  mask=inner.astype(np.uint8))
        score = np.nan_to_num(score, nan=-1.0, posinf=-1.0, neginf=-1.0)
        out = []
        for _ in range(SEARCH_PEAKS):
            _, peak, _, (px, py) = cv2.minMaxLoc(score)
            if peak < SEARCH_MIN_SCORE:
                break
            shift = _translation(rx0 + px - bx0, ry0 + py - by0)
            out.append(self.to_full @ shift @ self.to_grid @ pose)
            # the next peak at least half the object's size away
            half_w, half_h = max(1, (bx1 - bx0) // 4), max(1, (by1 - by0) // 4)
            score[max(0, py - half_h):py + half_h + 1, max(0, px - half_w):px + half_w + 1] = -1.0
        return out

    def view(self, track: _Object, planes: np.ndarray, pose: np.ndarray,
             bend: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame t seen in first-frame coordinates at ``pose`` and ``bend`` (box pixel q shows frame t at
        pose_grid(q + origin + bend(q))): (uint8 picture over ``track.anchor_box``, bool mask of its interior
        pixels that are in the frame and not covered by objects in front)."""
        cv2, s = self.cv2, self.settings
        x0, y0, x1, y1 = track.anchor_box
        size = (x1 - x0, y1 - y0)
        to_frame = self.grid_pose(pose) @ _translation(x0, y0)
        if track.bent:
            where = self.box_coords(size) + bend
            where = where @ to_frame[:2, :2].T.astype(np.float32) + to_frame[:2, 2].astype(np.float32)
            seen = cv2.remap(planes, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(0, 0, 0))
        else:
            seen = cv2.warpAffine(planes, to_frame[:2], size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        covered = seen[..., 2] > 0
        if s.boundary_px and covered.any():
            # the flow bleeds across the occluder's edge too: its band does not vote
            covered = cv2.dilate(covered.astype(np.uint8), self.kernel) > 0
        return np.ascontiguousarray(seen[..., 0]), track.anchor_inner & (seen[..., 1] == 255) & ~covered

    def likeness(self, track: _Object, planes: np.ndarray, pose: np.ndarray, bend: np.ndarray) -> float:
        """Normalized cross-correlation (-1..1) of the object's first-frame appearance and frame t seen at ``pose``
        over its visible interior (-1 when too little is visible)."""
        assert track.template is not None
        picture, visible = self.view(track, planes, pose, bend)
        if int(visible.sum()) < self.settings.min_points:
            return -1.0
        a = track.template[visible].astype(np.float32)
        b = picture[visible].astype(np.float32)
        a, b = a - a.mean(), b - b.mean()
        norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        return float((a * b).sum()) / norm if norm > 0 else -1.0

    def register(self, track: _Object, planes: np.ndarray,
                 pose: np.ndarray) -> tuple[float, np.ndarray, np.ndarray | None] | None:
        """Register ``track`` to its first-frame appearance from ``pose`` (``planes``: frame t, 255, covered by
        objects in front): (share of its visible pixels explained, corrected pose, corrected bending or None if
        unchanged), or None when it does not match."""
        cv2, s = self.cv2, self.settings
        assert track.template is not None
        x0, y0, x1, y1 = track.anchor_box
        size = (x1 - x0, y1 - y0)
        picture, visible = self.view(track, planes, pose, track.bend)
        index = np.flatnonzero(visible.ravel())
        if index.size < max(s.min_points, s.min_visible * track.grid_area):
            return None
        if s.fill_outside:
            # Outside the object only the template's own pixels: the background around the object (which
            # did not move with it) must not pull its edges.
            picture = np.where(track.anchor_outside, track.template, picture)
        flow = self.anchor_flow.calc(np.ascontiguousarray(picture), track.template, None)
        found = self.fitter.fit(index, size[0], rearrange(flow, "h w c -> (h w) c"))
        if found is None:
            return None
        fit, share = found  # fit: template (first-frame) positions -> where they are seen
        bend = None
        if s.bend:
            # What the similarity leaves, per visible interior pixel; the bending is the smooth field through
            # the interior's values (measured ones updated), extended outwards (normalized convolution).
            coords = self.box_coords(size)
            moved = (coords + flow) @ fit[:2, :2].T.astype(np.float32) + fit[:2, 2].astype(np.float32)
            residual = coords - moved
            length = np.sqrt((residual * residual).sum(-1))
            measured = visible & (length <= s.bend_limit * max(size))
            raw = track.bend + np.where(measured[..., None], residual, 0.0).astype(np.float32)
            weight = track.anchor_inner.astype(np.float32)
            smooth = cv2.GaussianBlur(raw * weight[..., None], (0, 0), s.bend_sigma)
            support = cv2.GaussianBlur(weight, (0, 0), s.bend_sigma)
            bend = smooth / (support[..., None] + 0.05)
            left = raw - bend
            explained = visible & ((left * left).sum(-1) <= s.inlier_px ** 2)
            share = float(explained.sum()) / float(visible.sum())
            bend = np.clip(bend, -s.bend_limit * max(size), s.bend_limit * max(size))
            # The bending keeps only what no similarity explains: its best similarity over the object moves
            # into the pose (else pose and bending would trade the same motion back and forth and drift).
            inner = coords[track.anchor_inner]
            rigid = _similarity(inner, inner + bend[track.anchor_inner])
            undo = np.linalg.inv(rigid)
            bend = ((coords + bend) @ undo[:2, :2].T.astype(np.float32) + undo[:2, 2].astype(np.float32) - coords)
            fit = fit @ rigid
        if share < s.anchor_min_inliers:
            return None
        correction = _translation(x0, y0) @ fit @ _translation(-x0, -y0)
        return share, pose @ self.to_full @ correction @ self.to_grid, bend

    def box_coords(self, size: tuple[int, int]) -> np.ndarray:
        """float32 ``[h, w, 2]`` (x, y) pixel coordinates of a box of ``size`` (w, h)."""
        xs, ys = np.meshgrid(np.arange(size[0], dtype=np.float32), np.arange(size[1], dtype=np.float32))
        return np.dstack([xs, ys])

    def finish(self, reseeded: list[bool], confidence: list[float]) -> tuple[np.ndarray, dict[str, Any]]:
        """Composite this frame's labels back to front; keep the grid labels for the next frame."""
        order = self.depth.current()
        ids = self.objects.ids
        labels = np.zeros((self.height, self.width), np.uint8)
        grid_labels = np.zeros((self.grid[1], self.grid[0]), np.uint8)
        in_frame = [0] * len(ids)
        for i in reversed(order):
            track = self.tracks[i]
            in_frame[i] = track.draw(labels, ids[i])
            grid_labels[track.grid_mask(self.grid_pose(track.pose), self.grid) >= 0.5] = ids[i]
        self.prev_labels = grid_labels
        counts = np.bincount(labels.ravel(), minlength=256)
        area = [int(counts[object_id]) for object_id in ids]
        info = {"area": area, "in_frame": in_frame, "reseeded": reseeded,
                "confidence": [c if a > 0 else 0.0 for c, a in zip(confidence, area)]}
        return labels, info


def _stretches(flags: list[bool]) -> list[tuple[int, int]]:
    """(first, last) frame of every run of True."""
    runs: list[tuple[int, int]] = []
    start = None
    for t, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = t
        elif not flag and start is not None:
            runs.append((start, t - 1))
            start = None
    return runs


def _events(objects: Objects, hidden: torch.Tensor, outside: torch.Tensor) -> list[str]:
    lines = []
    last = hidden.shape[0] - 1
    for i, (object_id, name) in enumerate(zip(objects.ids, objects.prompts.names)):
        for first, end in _stretches(hidden[:, i].tolist()):
            back = f", visible again from frame {end + 1}" if end < last else ", still covered at the end"
            lines.append(f"object {object_id} ({name!r}) is covered in frames {first}-{end}; "
                         f"moved by its last motion meanwhile{back}")
        for first, end in _stretches(outside[:, i].tolist()):
            back = f", back in frame {end + 1}" if end < last else ""
            lines.append(f"object {object_id} ({name!r}) is outside the frame in frames {first}-{end}{back}")
    return lines


def track_objects_by_flow(frames: torch.Tensor | Iterable[torch.Tensor], objects: Objects, *,
                          count: int | None = None, progress: ProgressFn | None = None,
                          settings: FlowTrackSettings = FlowTrackSettings()) -> tuple[torch.Tensor, FlowTrackReport]:
    """Track every object from its first-frame mask through ``frames`` by optical flow (no model weights).

    Frames are read one at a time and never stacked: memory grows with the clip only by the uint8 label video
    (and a few numbers per frame), so a video can be decoded frame by frame into this function.

    Args:
        frames: float ``[T, H, W, 3]`` (or RGBA ``[..., 4]``, alpha ignored) in 0..1, a ComfyUI IMAGE on any
            device; or an iterable of float ``[H, W, 3 or 4]`` frames in 0..1 (a generator, a list). Frame 0 is
            the frame the objects' masks were made on; every frame must have the masks' size.
        objects: the objects; masks ``[L, H, W]``, each non-empty.
        count: how many frames to track; required for an iterable without a length (a generator), else its
            length (for a tensor, T; giving another number is an error). Frames after the count-th are not read.
        progress: called with (frames done, count) after every frame, frame 0 included; raising from it (a
            cancel) stops tracking at once (nothing is kept, no further frame is read).
        settings: see ``FlowTrackSettings``.
    Returns:
        (labels, report): uint8 ``[T, H, W]`` label video (T = count; 0 = background, ``objects.ids[i]`` =
        object i; the object in front owns shared pixels), and what happened per frame and object
        (``FlowTrackReport``).
    Raises:
        TTMInputError: bad objects, count or frame 0 (checked before any work), a later frame of another
            shape or kind, an iterable that ends before ``count`` frames, or OpenCV missing.
    """
    if not isinstance(settings, FlowTrackSettings):
        raise TTMInputError("settings", f"expected FlowTrackSettings, got {type(settings).__name__}",
                            "pass FlowTrackSettings(...) or leave settings out")
    _check_objects(objects)
    source, count = _frame_source(frames, count)
    cv2 = _import_cv2()
    height, width = objects.size
    labels = torch.zeros(count, height, width, dtype=torch.uint8)
    shape = (count, objects.count)
    area = torch.zeros(shape, dtype=torch.int64)
    in_frame = torch.zeros(shape, dtype=torch.int64)
    reseeded = torch.zeros(shape, dtype=torch.bool)
    confidence = torch.zeros(shape, dtype=torch.float32)
    tracker: _Tracker | None = None
    for t in range(count):
        frame = next(source, None)
        if frame is None:
            raise TTMInputError("frames", f"the frames ended after {t} of the {count} frames announced by count",
                                "pass count equal to the number of frames the iterable yields")
        frame = _check_frame(frame, t, (height, width))
        if tracker is None:
            tracker = _Tracker(cv2, objects, settings, (height, width))
        gray = tracker.gray(frame)
        del frame
        frame_labels, info = tracker.start(gray) if t == 0 else tracker.advance(gray)
        labels[t] = torch.from_numpy(frame_labels)
        area[t] = torch.tensor(info["area"])
        in_frame[t] = torch.tensor(info["in_frame"])
        reseeded[t] = torch.tensor(info["reseeded"])
        confidence[t] = torch.tensor(info["confidence"])
        if progress is not None:
            progress(t + 1, count)
    assert tracker is not None  # count >= 1
    hidden = (in_frame > 0) & (area == 0)
    outside = in_frame == 0
    events = _events(objects, hidden, outside)
    for line in events:
        LOG.info("flow tracker: %s", line)
    order = tuple(objects.ids[i] for i in tracker.depth.overall())
    report = FlowTrackReport(objects.ids, area, reseeded, confidence, hidden, outside, order, tuple(events))
    return labels, report


def trajectory_by_flow(frames: torch.Tensor | Iterable[torch.Tensor], objects: Objects, fps: float, *,
                       count: int | None = None, progress: ProgressFn | None = None,
                       settings: FlowTrackSettings = FlowTrackSettings()) -> tuple[Trajectory, FlowTrackReport]:
    """The mask trajectory of ``objects`` tracked through ``frames`` (``track_objects_by_flow``), with the depth
    order estimated from where the objects overlap (front first; see ``_DepthVotes`` for the rule).

    Args:
        frames, objects, count, progress, settings: as for ``track_objects_by_flow`` (a tensor or an iterable
            of frames).
        fps: the frame rate the trajectory is played at (> 0).
    Returns:
        (trajectory, report); the trajectory (labels uint8 ``[T, H, W]``) carries no transforms (renderers
        estimate motion from labels).
    """
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise TTMInputError("fps", f"fps {fps!r} is not a positive number", "use the video's frame rate, e.g. 16")
    labels, report = track_objects_by_flow(frames, objects, count=count, progress=progress, settings=settings)
    return Trajectory(labels, objects, float(fps), report.depth_order), report
