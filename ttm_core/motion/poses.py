"""Object poses: where an object is, as mask moments and as per-frame affine maps.

The one place where a trajectory's geometry lives, below every renderer and parser of the motion
room: centroids of masks, the affine map of a pose (x, y, scale, rotation about the centroid), and
poses estimated back from a label video (for trajectories that carry no transforms, e.g. tracked
ones). Coordinates are continuous image coordinates: pixel (i, j) covers [i, i+1) x [j, j+1).
"""

from __future__ import annotations

import math

import torch

from ..types import Trajectory

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def mask_centroids(masks: torch.Tensor) -> torch.Tensor:
    """Centroids of binary masks in continuous pixel coordinates (pixel centres at i + 0.5).

    Args:
        masks: bool or float ``[L, H, W]`` (thresholded at 0.5).
    Returns:
        float64 ``[L, 2]`` (x, y); NaN for an empty mask.
    """
    binary = (masks > 0.5).to(torch.float64)
    _, height, width = binary.shape
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    area = binary.sum(dim=(1, 2))
    cx = (binary.sum(dim=1) * xs).sum(dim=1) / area
    cy = (binary.sum(dim=2) * ys).sum(dim=1) / area
    return torch.stack([cx, cy], dim=-1)


def mask_radii(masks: torch.Tensor) -> torch.Tensor:
    """How far each mask reaches from its centroid: the farthest pixel centre's distance plus half
    a pixel (so one pixel has radius 0.5).

    Args:
        masks: bool or float ``[L, H, W]`` (thresholded at 0.5).
    Returns:
        float64 ``[L]`` in pixels; NaN for an empty mask.
    """
    centroids = mask_centroids(masks)
    radii = torch.full((masks.shape[0],), float("nan"), dtype=torch.float64)
    for i, mask in enumerate(masks > 0.5):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if xs.numel():
            dx = xs.to(torch.float64) + 0.5 - centroids[i, 0]
            dy = ys.to(torch.float64) + 0.5 - centroids[i, 1]
            radii[i] = float(torch.hypot(dx, dy).max()) + 0.5
    return radii


def is_identity(affine: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """bool ``[...]``: which 2x3 affines (``[..., 2, 3]``) leave every point where it is."""
    return ((affine - IDENTITY.to(affine)).abs() <= tol).flatten(-2).all(-1)


def pose_affines(poses: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Affine maps from first-frame coordinates to each frame.

    Args:
        poses: float64 ``[T, L, 4]`` (x, y, scale, rotation in degrees, clockwise on screen).
        centroids: float64 ``[L, 2]`` first-frame centroids (x, y).
    Returns:
        float64 ``[T, L, 2, 3]``: p' = s R(theta) (p - c0) + (x, y).
    """
    theta = torch.deg2rad(poses[..., 3])
    s = poses[..., 2]
    cos, sin = s * torch.cos(theta), s * torch.sin(theta)
    # With y pointing down, [[cos, -sin], [sin, cos]] turns clockwise on screen.
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    translation = poses[..., :2] - torch.einsum("tlij,lj->tli", linear, centroids.to(torch.float64))
    return torch.cat([linear, translation[..., None]], dim=-1)


def _orientation(mask: torch.Tensor) -> tuple[float, float]:
    """(angle in degrees, elongation in 0..1) of a binary ``[H, W]`` mask from its moments."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    x, y = xs.to(torch.float64), ys.to(torch.float64)
    dx, dy = x - x.mean(), y - y.mean()
    mu20, mu02, mu11 = (dx * dx).mean(), (dy * dy).mean(), (dx * dy).mean()
    angle = 0.5 * math.atan2(float(2 * mu11), float(mu20 - mu02))
    spread = float(mu20 + mu02)
    elongation = math.sqrt(float((mu20 - mu02) ** 2 + 4 * mu11 ** 2)) / spread if spread > 0 else 0.0
    return math.degrees(angle), elongation


def poses_from_affines(affines: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Poses of affine maps: the inverse of ``pose_affines`` for similarity maps.

    Args:
        affines: float ``[T, L, 2, 3]`` maps from first-frame coordinates to each frame.
        centroids: float ``[L, 2]`` first-frame centroids (x, y) in pixels.
    Returns:
        float64 ``[T, L, 4]`` (x, y, scale, rotation in degrees in (-180, 180], clockwise on
        screen): where each centroid goes, and the scale and angle of the closest similarity
        (exact for maps made by ``pose_affines``; shear or a reflection is averaged out).
        NaN where an affine is NaN.
    """
    affines = affines.to(torch.float64)
    linear = affines[..., :2]
    xy = torch.einsum("tlij,lj->tli", linear, centroids.to(torch.float64)) + affines[..., 2]
    # The similarity part of [[a, b], [c, d]] is s [[cos, -sin], [sin, cos]] with
    # s cos = (a + d) / 2 and s sin = (c - b) / 2.
    cos2 = linear[..., 0, 0] + linear[..., 1, 1]
    sin2 = linear[..., 1, 0] - linear[..., 0, 1]
    scale = torch.hypot(cos2, sin2) / 2.0
    rotation = torch.rad2deg(torch.atan2(sin2, cos2))
    return torch.cat([xy, scale[..., None], rotation[..., None]], dim=-1)


def unwrap_rotation(rotation: torch.Tensor, period: float = 360.0) -> torch.Tensor:
    """Angles made continuous over time: each frame's angle moves to the representative (mod
    ``period``) nearest the previous frame's, so a turn through 180 degrees does not jump back.

    Args:
        rotation: float ``[T, ...]`` angles in degrees; NaN (absent) frames are skipped and kept.
        period: 360 for full angles, 180 for principal axes (an axis has no head or tail).
    Returns:
        float64 ``[T, ...]``.
    """
    out = rotation.to(torch.float64).clone()
    columns = out.reshape(out.shape[0], -1)
    half = period / 2.0
    for column in range(columns.shape[1]):
        previous: float | None = None
        for t in range(columns.shape[0]):
            value = float(columns[t, column])
            if math.isnan(value):
                continue
            if previous is not None:
                value = previous + (value - previous + half) % period - half
                columns[t, column] = value
            previous = value
    return columns.reshape(out.shape)


def estimate_poses(trajectory: Trajectory, min_elongation: float = 0.2) -> torch.Tensor:
    """Per-frame poses of each object estimated from the label video (mask moments).

    For trajectories that carry no transforms (generated or tracked). The position is the
    centroid of the object's pixels in the frame, the scale the square root of its area over
    the first-frame mask's, the rotation the turn of its principal axis since the first frame
    (only for shapes elongated enough to have one, else 0). An occluded object reads as smaller
    and its centroid as the visible part's.

    Returns:
        float64 ``[T, L, 4]`` (x, y in pixels, scale, rotation in degrees in [-90, 90), clockwise
        on screen; an axis turned by 180 degrees is the same axis, see ``unwrap_rotation``);
        NaN where the object is absent from a frame.
    """
    objects = trajectory.objects
    source = objects.binary()
    source_area = source.flatten(1).sum(1).to(torch.float64)
    source_angle = [_orientation(m) for m in source]
    poses = torch.full((trajectory.num_frames, objects.count, 4), float("nan"), dtype=torch.float64)
    for t in range(trajectory.num_frames):
        masks = trajectory.labels[t][None] == torch.tensor(objects.ids, dtype=torch.uint8)[:, None, None]
        centroids = mask_centroids(masks)
        for i in range(objects.count):
            area = float(masks[i].sum())
            if area == 0:
                continue
            rotation = 0.0
            angle, elongation = _orientation(masks[i])
            if elongation >= min_elongation and source_angle[i][1] >= min_elongation:
                rotation = (angle - source_angle[i][0] + 90.0) % 180.0 - 90.0
            scale = math.sqrt(area / float(source_area[i]))
            poses[t, i] = torch.tensor([centroids[i, 0], centroids[i, 1], scale, rotation], dtype=torch.float64)
    return poses


def estimate_affines(trajectory: Trajectory, min_elongation: float = 0.2) -> torch.Tensor:
    """Per-frame affines of each object estimated from the label video (``estimate_poses``).

    Returns:
        float64 ``[T, L, 2, 3]``; NaN where the object is absent from a frame.
    """
    poses = estimate_poses(trajectory, min_elongation)
    affines = pose_affines(poses, mask_centroids(trajectory.objects.binary()))
    # Snap near-identity estimates so that unmoved objects are copied, not resampled.
    affines[is_identity(torch.nan_to_num(affines, nan=2.0), tol=1e-6)] = IDENTITY
    return affines
