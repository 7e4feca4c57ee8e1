"""Trajectory -> paths JSON: a tracked or planned mask trajectory as keyframes an artist can edit.

The result is the paths JSON (version 1) that Image To Motion's ``paths`` backend reads, so a
trajectory can be edited by hand and rendered again. For each object:

1. **Poses per frame** (x, y of the centroid in pixels, scale, rotation in degrees): exact from
   ``trajectory.transforms`` when present (``poses.poses_from_affines``), else estimated from the
   label video's mask moments (``poses.estimate_poses``). Angles are unwrapped over time.
2. **Absent frames** (NaN poses, e.g. an occluded tracked object): frame 0 counts as the rest
   pose when the object is absent there (the parser starts every object from its first-frame
   mask). A gap of at most ``max_gap`` frames between two visible frames is filled by linear
   interpolation (the object kept moving behind something); a longer gap holds the last seen
   pose and the object jumps to where it reappears with a ``hold`` keyframe at that frame.
   After the last visible frame the pose holds (as the parser holds after the last keyframe).
3. **Simplification**: Ramer-Douglas-Peucker over time proposes keyframes, then the fewest of them
   are kept (split, then merge). A segment between two keyframes fits when the parser's
   interpolation of it (as ``paths.sample_path`` does it) stays within the tolerances on every frame; RDP
   splits a segment that does not fit at the frame that deviates most from the straight segment.
   With ``fit_easings`` a segment may be ``linear``, ``ease_in_out``, ``ease_in`` or ``ease_out``
   (tried in that order). RDP's splits land where the deviation from a straight segment peaks,
   which for eased motion is not where the authored keyframe was (an ease_in_out start peaks
   early); a shortest path over the proposed keyframes, skipping any whose neighbours' segment
   still fits, finds the authored segments again (an eased move comes back as its one keyframe).
4. **Minimal JSON**, using the parser's rules: no keyframe at frame 0 when the object starts from
   its rest pose (the parser inserts it); a field (x and y together, scale, rotation) is left out
   when carrying the previous keyframe's value still fits every frame of both segments the
   keyframe touches; trailing keyframes that change nothing are dropped; an object that never
   leaves the tolerance of its rest pose gets no path at all.

Why RDP: it keeps keyframes on the data (keyframes sit where the object really is, which is what
an artist expects to edit), it bounds the *maximum* error per frame (the round trip's criterion;
least-squares curve fits bound an average), and its splits land on the frames of largest
deviation (turns, stops), where an animator would key. The error is measured at the same frame
(synchronous distance, not distance to the polyline), because a path places the object at frame f
by time; position, log-scale and rotation are checked together, each against its own tolerance,
since one keyframe carries all three. A minimal-keyframe dynamic programme would save a keyframe
now and then at O(T^2) segment checks of O(T) frames each; RDP needs O(T log T) frame checks on
typical motion, and the shortest path O(K^2) segment checks over its K proposals.

The bounds hold for the poses: the rendered mask's centroid adds the rasterisation error of the
mask (well under a pixel for ordinary masks). For label videos without transforms the pose is
the *visible* part's: an object partly occluded or partly outside the image is fitted where its
visible part is, and rendered whole there.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, replace

import torch

from ..errors import TTMInputError
from ..types import Trajectory
from .paths import EASINGS, PATHS_VERSION
from .poses import estimate_poses, mask_centroids, mask_radii, pose_affines, poses_from_affines, unwrap_rotation

LOG = logging.getLogger(__name__)

UNITS = ("pixels", "normalized")
TIME_KEYS = ("frame", "t")
FITTED_EASINGS = ("linear", "ease_in_out", "ease_in", "ease_out")
"""The easings a segment may take, tried in this order (linear first: the plainest key wins)."""
MIN_TOLERANCE_PX = 0.05
"""Below this the JSON's rounding (0.01 px) would take a noticeable share of the bound."""
MIN_SCALE_TOLERANCE = 0.001
MIN_ROTATION_TOLERANCE = 0.01
PIXEL_DECIMALS = 2
NORMALIZED_DECIMALS = 6
SCALE_DIGITS = 5
ROTATION_DECIMALS = 3
T_DECIMALS = 6

Pose = tuple[float, float, float, float]
"""x, y (pixels), scale (> 0), rotation (degrees, clockwise on screen)."""
_CHANNELS: tuple[tuple[str, tuple[int, ...]], ...] = (("position", (0, 1)), ("scale", (2,)), ("rotation", (3,)))


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class FitSettings:
    """How closely the keyframes follow the trajectory, and how they are written.

    Attributes:
        tolerance_px: largest distance (pixels) between a frame's centroid and the path's, >= 0.05.
        units: ``pixels`` or ``normalized`` (0..1 of width and height) for x and y.
        scale_tolerance: largest relative scale error (0.02 = 2 %), in 0.001..1; None = per
            object, the error that moves its farthest point by ``tolerance_px`` (tolerance_px / r,
            r = the first-frame mask's radius from its centroid).
        rotation_tolerance: largest angle error in degrees, in 0.01..180; None = per object, the
            angle that moves its farthest point by ``tolerance_px`` (degrees(tolerance_px / r)).
            Tying both to the object's size keeps small masks, whose estimated angle and area
            are noisy (several degrees for a 14x8 px bar), from turning that noise into keyframes,
            and keeps large objects, where one degree moves the outline by pixels, accurate.
        time_key: ``frame`` (0-based int) or ``t`` (0..1 of the clip, so the paths follow a
            change of the frame count).
        max_gap: longest run of absent frames (frames) bridged by interpolation; longer gaps
            hold the last seen pose and jump where the object reappears. >= 0.
        fit_easings: let a segment take ``ease_in_out``, ``ease_in`` or ``ease_out`` when that
            fits where ``linear`` does not (fewer keyframes for eased motion).
    """

    tolerance_px: float = 1.0
    units: str = "pixels"
    scale_tolerance: float | None = None
    rotation_tolerance: float | None = None
    time_key: str = "frame"
    max_gap: int = 8
    fit_easings: bool = True

    def __post_init__(self) -> None:
        if not (_is_number(self.tolerance_px) and self.tolerance_px >= MIN_TOLERANCE_PX):
            raise TTMInputError("tolerance_px", f"tolerance {self.tolerance_px!r} px is not a number >= "
                                f"{MIN_TOLERANCE_PX}", "use e.g. 1.0 (pixels)")
        if self.units not in UNITS:
            raise TTMInputError("units", f"unknown units {self.units!r}", f"use one of {', '.join(UNITS)}")
        scale, rotation = self.scale_tolerance, self.rotation_tolerance
        if scale is not None and not (_is_number(scale) and MIN_SCALE_TOLERANCE <= scale <= 1.0):
            raise TTMInputError("scale_tolerance", f"scale tolerance {scale!r} is not in {MIN_SCALE_TOLERANCE}..1",
                                "use e.g. 0.02 (2 % of the size), or None to follow the object's size")
        if rotation is not None and not (_is_number(rotation) and MIN_ROTATION_TOLERANCE <= rotation <= 180.0):
            raise TTMInputError("rotation_tolerance", f"rotation tolerance {rotation!r} is not in "
                                f"{MIN_ROTATION_TOLERANCE}..180 degrees",
                                "use e.g. 1.0 (degrees), or None to follow the object's size")
        if self.time_key not in TIME_KEYS:
            raise TTMInputError("time_key", f"unknown time key {self.time_key!r}",
                                "use 'frame' (0-based frames) or 't' (0..1 of the clip)")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, int) or self.max_gap < 0:
            raise TTMInputError("max_gap", f"max_gap {self.max_gap!r} is not a whole number >= 0",
                                "use e.g. 8 (frames); 0 never bridges a gap")
        if not isinstance(self.fit_easings, bool):
            raise TTMInputError("fit_easings", f"fit_easings {self.fit_easings!r} is not true or false",
                                "use true or false")


@dataclass(frozen=True)
class _Tolerance:
    """The bounds the fit keeps, already reduced by what rounding the JSON may add."""

    position: float  # pixels
    log_scale: float
    rotation: float  # degrees

    @classmethod
    def of(cls, settings: FitSettings, size: tuple[int, int], radius: float) -> _Tolerance:
        """The bounds for an object reaching ``radius`` pixels from its centroid in an image of ``size`` (H, W)."""
        reach = settings.tolerance_px / max(radius, 1.0)
        scale_tolerance = settings.scale_tolerance
        if scale_tolerance is None:
            scale_tolerance = min(max(reach, MIN_SCALE_TOLERANCE), 1.0)
        rotation_tolerance = settings.rotation_tolerance
        if rotation_tolerance is None:
            rotation_tolerance = min(max(math.degrees(reach), MIN_ROTATION_TOLERANCE), 180.0)
        if settings.units == "pixels":
            quantum = 10.0 ** -PIXEL_DECIMALS
        else:
            quantum = 10.0 ** -NORMALIZED_DECIMALS * max(size)
        # Interpolation between rounded keyframes is a convex combination of them, so the
        # rounding error of a frame is at most the keyframes' (half a quantum per coordinate).
        position = max(settings.tolerance_px - 0.5 * quantum * math.sqrt(2.0), 0.5 * settings.tolerance_px)
        log_scale = math.log1p(scale_tolerance) - 0.5 * 10.0 ** (1 - SCALE_DIGITS)
        rotation = rotation_tolerance - 0.5 * 10.0 ** -ROTATION_DECIMALS
        return cls(position, log_scale, rotation)

    def errors(self, fitted: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """Per-frame error of poses ``[..., N, 4]`` against ``[N, 4]``, in units of the bound (<= 1 fits):
        ``[..., N]``."""
        position = torch.hypot(fitted[..., 0] - data[:, 0], fitted[..., 1] - data[:, 1]) / self.position
        scale = (torch.log(fitted[..., 2]) - torch.log(data[:, 2])).abs() / self.log_scale
        rotation = (fitted[..., 3] - data[:, 3]).abs() / self.rotation
        return torch.maximum(torch.maximum(position, scale), rotation)

    def fits(self, fitted: torch.Tensor, data: torch.Tensor) -> bool:
        """Whether poses ``[N, 4]`` stay within the bounds of ``[N, 4]`` on every frame."""
        return fitted.shape[0] == 0 or float(self.errors(fitted, data).max()) <= 1.0


@dataclass(frozen=True)
class _Key:
    frame: int
    pose: Pose
    easing: str = "linear"


def _pose(row: torch.Tensor) -> Pose:
    x, y, scale, rotation = (float(v) for v in row)
    return x, y, scale, rotation


def _segments(start: Pose, end: Pose, length: int, easings: tuple[str, ...]) -> torch.Tensor:
    """float64 ``[E, length + 1, 4]``: for each of ``easings``, the poses the parser renders from a
    keyframe at ``start`` to one ``length`` frames later arriving with that easing (curve ``linear``).

    ``paths.sample_path``'s interpolation (the parser's own easing functions; position and
    rotation linear in the eased parameter, scale geometric), vectorised: the fit checks
    thousands of segments and ``sample_path`` builds a tensor per frame. The tests hold the two
    equal, and check every fitted JSON through ``sample_path`` itself.
    """
    u = torch.tensor([[EASINGS[easing](frame / length) for frame in range(length + 1)] for easing in easings],
                     dtype=torch.float64)[..., None]
    first = torch.tensor(start, dtype=torch.float64)
    last = torch.tensor(end, dtype=torch.float64)
    out = first + (last - first) * u
    log_first, log_last = math.log(start[2]), math.log(end[2])
    out[..., 2] = torch.exp(log_first + (log_last - log_first) * u[..., 0])
    out[:, -1] = last  # the parser is on the keyframe itself there
    return out


def _segment(start: Pose, end: Pose, length: int, easing: str) -> torch.Tensor:
    """float64 ``[length + 1, 4]``: ``_segments`` for one easing."""
    return _segments(start, end, length, (easing,))[0]


def _trajectory_poses(trajectory: Trajectory) -> torch.Tensor:
    """float64 ``[T, L, 4]`` poses with unwrapped angles; NaN rows where an object is absent."""
    if trajectory.transforms is not None:
        centroids = mask_centroids(trajectory.objects.masks)
        poses = poses_from_affines(trajectory.transforms, centroids)
        residual = (pose_affines(poses, centroids) - trajectory.transforms)[..., :2].abs()
        for i, name in enumerate(trajectory.objects.prompts.names):
            worst = float(torch.nan_to_num(residual[:, i], nan=0.0).max())
            if worst > 1e-6:
                LOG.warning("the transforms of %r are not rotations and scalings (shear or mirror up to %.3g); "
                            "the paths keep their closest rotation and scale", name, worst)
        period = 360.0
    else:
        poses = estimate_poses(trajectory)
        period = 180.0  # a principal axis has no head or tail
    poses[..., 3] = unwrap_rotation(poses[..., 3], period)
    invalid = ~torch.isfinite(poses).all(dim=-1) | ~(poses[..., 2] > 0)
    poses[invalid] = float("nan")
    return poses


def _fill(poses: torch.Tensor, rest: Pose, tol: _Tolerance, max_gap: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Poses ``[T, 4]`` with the absent frames filled, and the runs of frames to fit.

    Returns the filled poses and the runs (first, last frame): consecutive runs are separated
    by gaps longer than ``max_gap``, which are held and jumped (``hold``).
    """
    values = poses.clone()
    known = torch.isfinite(values).all(dim=-1).tolist()
    if not known[0] or tol.fits(torch.tensor([rest], dtype=torch.float64), values[:1]):
        values[0] = torch.tensor(rest, dtype=torch.float64)  # start from the rest pose: no key at frame 0
    known[0] = True
    frames = [t for t, seen in enumerate(known) if seen]
    runs: list[tuple[int, int]] = []
    start = 0
    for a, b in itertools.pairwise(frames):
        if b - a == 1:
            continue
        if b - a - 1 <= max_gap:
            values[a + 1:b] = _segment(_pose(values[a]), _pose(values[b]), b - a, "linear")[1:-1]
        else:
            values[a + 1:b] = values[a]
            runs.append((start, a))
            start = b
    last = frames[-1]
    values[last + 1:] = values[last]
    runs.append((start, last))
    return values, runs


def _simplify(values: torch.Tensor, start: int, end: int, tol: _Tolerance, easings: tuple[str, ...]) -> list[_Key]:
    """RDP over frames ``start``..``end`` of ``values`` ``[T, 4]``: the keys after ``start``.
    ``easings`` starts with ``linear``, whose deviation chooses the split."""
    found: list[_Key] = []
    stack = [(start, end)]
    while stack:
        a, b = stack.pop()
        errors = tol.errors(_segments(_pose(values[a]), _pose(values[b]), b - a, easings), values[a:b + 1])
        fitting = (errors.amax(dim=-1) <= 1.0).nonzero()
        if fitting.numel():
            found.append(_Key(b, _pose(values[b]), easings[int(fitting[0])]))
        else:
            # Both ends are exact, so a failing segment has an interior frame to split at.
            split = a + 1 + int(errors[0, 1:-1].argmax())
            stack += [(split, b), (a, split)]
    return sorted(found, key=lambda key: key.frame)


def _best_easing(values: torch.Tensor, a: int, b: int, tol: _Tolerance,
                 easings: tuple[str, ...]) -> tuple[float, str]:
    """(worst error, easing) of the best segment from frame ``a`` to ``b`` of ``values`` ``[T, 4]``:
    the first easing that fits (plainest first), else the one with the smallest worst error."""
    worst = tol.errors(_segments(_pose(values[a]), _pose(values[b]), b - a, easings), values[a:b + 1]).amax(dim=-1)
    fitting = (worst <= 1.0).nonzero()
    index = int(fitting[0]) if fitting.numel() else int(worst.argmin())
    return float(worst[index]), easings[index]


def _fewest(keys: list[_Key], values: torch.Tensor, tol: _Tolerance, easings: tuple[str, ...]) -> list[_Key]:
    """The fewest of one run's keys (its first and last stay) whose segments all fit: a shortest
    path over the keys, where a segment may skip keys when it fits with some easing; ties go to
    the smaller summed worst error. RDP splits where the deviation from the straight segment
    peaks, which misses corners of eased motion (an ease_in_out move's slow start peaks before
    its end); skipping finds those segments again. O(K^2) segment checks for K keys."""
    count = len(keys)
    # best[k]: (keys used, summed error, previous index, easing arriving at k)
    best: list[tuple[int, float, int, str]] = [(0, 0.0, -1, keys[0].easing)] + [(count + 1, math.inf, -1, "")] * (
        count - 1)
    for k in range(1, count):
        for i in range(k):
            used = best[i][0] + 1
            if used > best[k][0]:
                continue
            if i == k - 1:
                error, easing = 0.0, keys[k].easing  # the RDP segment: known to fit
            else:
                error, easing = _best_easing(values, keys[i].frame, keys[k].frame, tol, easings)
                if error > 1.0:
                    continue
            candidate = (used, best[i][1] + error, i, easing)
            if candidate[:2] < best[k][:2]:
                best[k] = candidate
    chosen = []
    k = count - 1
    while k > 0:
        chosen.append(_Key(keys[k].frame, keys[k].pose, best[k][3]))
        k = best[k][2]
    return [keys[0], *reversed(chosen)]


def _minimal(keys: list[_Key], values: torch.Tensor, rest: Pose, tol: _Tolerance) -> list[tuple[_Key, set[str]]]:
    """Each key with its effective pose and the fields it must write; carried fields are left out.

    A field is carried (left out, so the parser keeps the previous keyframe's value) when every
    frame of the two segments the key touches still fits with the previous value.
    """
    poses = [key.pose for key in keys]
    written: list[set[str]] = [set() for _ in keys]
    last_frame = values.shape[0] - 1

    def fits(j: int, trial: Pose) -> bool:
        frame = keys[j].frame
        if j > 0 or frame > 0:
            before, before_pose = (keys[j - 1].frame, poses[j - 1]) if j > 0 else (0, rest)
            arriving = _segment(before_pose, trial, frame - before, keys[j].easing)[1:]
            if not tol.fits(arriving, values[before + 1:frame + 1]):
                return False
        elif not tol.fits(torch.tensor([trial], dtype=torch.float64), values[:1]):
            return False
        if j + 1 < len(keys):
            after = keys[j + 1].frame
            leaving = _segment(trial, poses[j + 1], after - frame, keys[j + 1].easing)[1:-1]
            return tol.fits(leaving, values[frame + 1:after])
        held = torch.tensor([trial], dtype=torch.float64).expand(last_frame - frame, 4)
        return tol.fits(held, values[frame + 1:])

    for j in range(len(keys)):
        for channel, indices in _CHANNELS:
            previous = poses[j - 1] if j > 0 else rest
            if all(poses[j][i] == previous[i] for i in indices):
                continue
            trial = list(poses[j])
            for i in indices:
                trial[i] = previous[i]
            carried: Pose = (trial[0], trial[1], trial[2], trial[3])
            if fits(j, carried):
                poses[j] = carried
            else:
                written[j].add(channel)
    result = [(_Key(key.frame, pose, key.easing), fields) for key, pose, fields in zip(keys, poses, written)]
    while result and not result[-1][1]:
        result.pop()  # the parser holds after the last keyframe anyway
    if result and result[0][0].frame == 0 and not result[0][1]:
        result.pop(0)  # the parser inserts the rest pose at frame 0 itself
    return result


def _fit_object(poses: torch.Tensor, rest: Pose, tol: _Tolerance, settings: FitSettings,
                name: str) -> list[tuple[_Key, set[str]]]:
    """The keys of one object's poses ``[T, 4]`` (NaN rows: absent); empty = it stays still."""
    visible = torch.isfinite(poses).all(dim=-1)
    if not bool(visible.any()):
        raise TTMInputError("trajectory", f"object {name!r} is absent from every frame",
                            "give a trajectory in which the object appears, or remove the object")
    seen = poses[visible]
    if tol.fits(torch.tensor([rest], dtype=torch.float64).expand_as(seen), seen):
        return []
    values, runs = _fill(poses, rest, tol, settings.max_gap)
    easings = FITTED_EASINGS if settings.fit_easings else ("linear",)
    keys: list[_Key] = []
    for first, last in runs:
        run = [_Key(first, _pose(values[first]), "linear" if first == 0 else "hold")]
        if last > first:
            run = _fewest(run + _simplify(values, first, last, tol, easings), values, tol, easings)
        keys += run
    hidden = int((~visible).sum())
    LOG.debug("%r: %d runs, %d absent frames, %d keys before leaving fields out", name, len(runs), hidden, len(keys))
    return _minimal(keys, values, rest, tol)


def _plain(value: float, decimals: int) -> float | int:
    """``value`` rounded, written as an int when whole (152, not 152.0) and never as -0."""
    rounded = round(value, decimals) + 0.0
    return int(rounded) if rounded.is_integer() else rounded


def _time(frame: int, num_frames: int, key: str) -> float | int:
    if key == "frame" or num_frames == 1:
        return frame if key == "frame" else 0
    last = num_frames - 1
    t = round(frame / last, T_DECIMALS)
    if t * last > frame:
        # The parser reads frame t * last; a key that lands after its frame would delay a hold's jump.
        t = round(t - 10.0 ** -T_DECIMALS, T_DECIMALS)
    return _plain(t, T_DECIMALS)


def _entry(key: _Key, fields: set[str], settings: FitSettings, size: tuple[int, int],
           num_frames: int) -> dict[str, object]:
    height, width = size
    entry: dict[str, object] = {settings.time_key: _time(key.frame, num_frames, settings.time_key)}
    x, y, scale, rotation = key.pose
    if "position" in fields:
        if settings.units == "pixels":
            entry["x"], entry["y"] = _plain(x, PIXEL_DECIMALS), _plain(y, PIXEL_DECIMALS)
        else:
            entry["x"], entry["y"] = _plain(x / width, NORMALIZED_DECIMALS), _plain(y / height, NORMALIZED_DECIMALS)
    if "scale" in fields:
        entry["scale"] = _plain(float(f"{scale:.{SCALE_DIGITS}g}"), 12)
    if "rotation" in fields:
        entry["rotation"] = _plain(rotation, ROTATION_DECIMALS)
    if key.easing != "linear":
        entry["easing"] = key.easing
    return entry


def _settings(tolerance_px: float | None, units: str | None, settings: FitSettings | None) -> FitSettings:
    if settings is None:
        settings = FitSettings()
    elif not isinstance(settings, FitSettings):
        raise TTMInputError("settings", f"expected FitSettings, got {type(settings).__name__}",
                            "pass FitSettings(...) or leave it out")
    if tolerance_px is not None:
        settings = replace(settings, tolerance_px=tolerance_px)
    if units is not None:
        settings = replace(settings, units=units)
    return settings


def _fit(trajectory: Trajectory, settings: FitSettings) -> dict[str, list[dict[str, object]]]:
    """Keyframe lists by object name (only objects that move)."""
    if not isinstance(trajectory, Trajectory):
        raise TTMInputError("trajectory", f"expected a Trajectory, got {type(trajectory).__name__}",
                            "connect a TRAJECTORY (from Image To Motion or a tracker)")
    names = trajectory.objects.prompts.names
    poses = _trajectory_poses(trajectory)
    rest_xy = mask_centroids(trajectory.objects.masks)
    radii = mask_radii(trajectory.objects.masks)
    objects: dict[str, list[dict[str, object]]] = {}
    summary = []
    for i, name in enumerate(names):
        rest: Pose = (float(rest_xy[i, 0]), float(rest_xy[i, 1]), 1.0, 0.0)
        tol = _Tolerance.of(settings, trajectory.size, float(radii[i]))
        keys = _fit_object(poses[:, i], rest, tol, settings, name)
        if keys:
            objects[name] = [_entry(key, fields, settings, trajectory.size, trajectory.num_frames)
                             for key, fields in keys]
        summary.append(f"{name}: {len(keys)} keyframes" if keys else f"{name}: still")
    LOG.info("paths from the %d-frame trajectory (%s, tolerance %g px): %s", trajectory.num_frames,
             "transforms" if trajectory.transforms is not None else "label video", settings.tolerance_px,
             "; ".join(summary))
    return objects


def paths_from_trajectory(trajectory: Trajectory, *, tolerance_px: float | None = None, units: str | None = None,
                          settings: FitSettings | None = None) -> dict[str, object]:
    """The paths JSON (version 1) of a trajectory, as a dict ready for ``json.dumps``.

    Args:
        trajectory: labels uint8 ``[T, H, W]``, with exact ``transforms`` float64 ``[T, L, 2, 3]``
            or without (poses then come from the mask moments).
        tolerance_px: largest centroid error in pixels on any frame; None = ``settings``'
            (1.0 by default).
        units: ``pixels`` or ``normalized`` for x and y; None = ``settings``' (pixels by default).
        settings: the other knobs (scale and rotation tolerances, time key, gaps, easings).
    Returns:
        ``{"version": 1, "units": ..., "objects": {name: {"keyframes": [...]}}}``; objects that
        stay still are left out. ``parse_paths`` with the trajectory's objects, size, frame
        count and first-frame centroids reproduces every frame's pose within the tolerances.
    Raises:
        TTMInputError: bad settings, or an object absent from every frame.
    """
    settings = _settings(tolerance_px, units, settings)
    objects = _fit(trajectory, settings)
    return {"version": PATHS_VERSION, "units": settings.units,
            "objects": {name: {"keyframes": keys} for name, keys in objects.items()}}


def paths_json_from_trajectory(trajectory: Trajectory, *, tolerance_px: float | None = None,
                               units: str | None = None, settings: FitSettings | None = None) -> str:
    """``paths_from_trajectory`` as JSON text: one object per block, one keyframe per line."""
    settings = _settings(tolerance_px, units, settings)
    objects = _fit(trajectory, settings)
    head = f'{{"version": {PATHS_VERSION}, "units": {json.dumps(settings.units)}, "objects": {{'
    if not objects:
        return head + "}}"
    blocks = []
    for name, keys in objects.items():
        lines = ",\n    ".join(json.dumps(key, ensure_ascii=False) for key in keys)
        blocks.append(f'  {json.dumps(name, ensure_ascii=False)}: {{"keyframes": [\n    {lines}]}}')
    return head + "\n" + ",\n".join(blocks) + "}}"
