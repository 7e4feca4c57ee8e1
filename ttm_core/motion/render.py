"""Stage 1 (Image-to-Motion), ``paths`` backend: render the mask trajectory s^ from paths.

Each object's first-frame mask is moved by its per-frame affine (see ``poses.pose_affines``)
and the label video is painted back to front, so the front-most object owns shared pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import TTMInputError
from ..types import Objects, ProgressFn, Trajectory
from .paths import ObjectPath, sample_path
from .poses import IDENTITY, is_identity, mask_centroids, pose_affines


def affine_grid(affines: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grids for ``F.grid_sample`` that apply forward affines to images.

    Args:
        affines: float64 ``[N, 2, 3]`` maps from source to target pixel coordinates.
        size: (H, W) of source and target.
    Returns:
        float32 ``[N, H, W, 2]``: for each target pixel centre, its source in [-1, 1]
        (align_corners=False convention, the same continuous coordinates as ours).
    """
    height, width = size
    linear, offset = affines[:, :, :2], affines[:, :, 2]
    inverse = torch.linalg.inv(linear)
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    target = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, 2] (x, y)
    source = torch.einsum("nij,nhwj->nhwi", inverse, target[None] - offset[:, None, None, :])
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    return (source * scale - 1.0).to(torch.float32)


def warp(images: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """Move images by forward affines (bilinear, zeros outside the source).

    Args:
        images: float ``[N, C, H, W]``.
        affines: float64 ``[N, 2, 3]`` source -> target pixel coordinates.
    Returns:
        float ``[N, C, H, W]``; an identity affine returns the image unchanged.
    """
    out = images.clone()
    moving = ~is_identity(affines)
    if bool(moving.any()):
        grid = affine_grid(affines[moving], (images.shape[-2], images.shape[-1])).to(images.device)
        out[moving] = F.grid_sample(images[moving], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


def render_labels(masks: torch.Tensor, affines: torch.Tensor, ids: Sequence[int], depth_order: Sequence[int],
                  progress: ProgressFn | None = None) -> torch.Tensor:
    """Paint the label video: every object's mask moved by its affine, back to front.

    Args:
        masks: float ``[L, H, W]`` first-frame masks in 0..1.
        affines: float64 ``[T, L, 2, 3]``.
        ids: label value of each mask.
        depth_order: ids from front to back.
        progress: called with (frame + 1, T) after each frame.
    Returns:
        uint8 ``[T, H, W]``; a pixel belongs to the front-most object whose moved mask
        covers it by at least half.
    """
    num_frames = affines.shape[0]
    height, width = masks.shape[-2:]
    index_of = {object_id: i for i, object_id in enumerate(ids)}
    back_to_front = [index_of[i] for i in reversed(depth_order)]
    labels = torch.zeros(num_frames, height, width, dtype=torch.uint8)
    for t in range(num_frames):
        moved = warp(masks[:, None].to(torch.float32), affines[t])[:, 0]
        for i in back_to_front:
            labels[t][moved[i] >= 0.5] = ids[i]
        if progress is not None:
            progress(t + 1, num_frames)
    return labels


def trajectory_from_paths(objects: Objects, paths: Sequence[ObjectPath | None], num_frames: int, fps: float,
                          depth_order: Sequence[int] = (), progress: ProgressFn | None = None) -> Trajectory:
    """Stage 1, paths backend: the mask trajectory of objects moved along their paths.

    Args:
        objects: the objects and their first-frame masks.
        paths: one path per object (``None``: the object stays still).
        num_frames: T >= 1.
        fps: playback rate (> 0).
        depth_order: ids front to back; empty = the objects' order (object 1 in front).
        progress: called per rendered frame.
    Returns:
        the Trajectory, carrying the exact per-frame affines.
    """
    if len(paths) != objects.count:
        raise TTMInputError("paths", f"{len(paths)} paths for {objects.count} objects",
                            "give one entry per object (None keeps it still)")
    if num_frames < 1:
        raise TTMInputError("num_frames", f"{num_frames} frames", "use at least 1 frame")
    order = tuple(depth_order) or objects.ids
    if sorted(order) != sorted(objects.ids):
        raise TTMInputError("depth_order", f"{list(order)} is not an ordering of the object ids {list(objects.ids)}",
                            "list every object id (or name) once, front first")
    centroids = mask_centroids(objects.masks)
    affines = torch.empty(num_frames, objects.count, 2, 3, dtype=torch.float64)
    for i, path in enumerate(paths):
        if path is None:
            affines[:, i] = IDENTITY
            continue
        poses = sample_path(path, num_frames)
        affines[:, i] = pose_affines(poses[:, None], centroids[i:i + 1])[:, 0]
    # Authoring tools put the rest pose at frame 0; snap round-off there so that still
    # objects and un-moved frames take the exact (copy) path in every renderer.
    affines[is_identity(affines, tol=1e-6)] = IDENTITY
    labels = render_labels(objects.masks, affines, objects.ids, order, progress)
    return Trajectory(labels=labels, objects=objects, fps=fps, depth_order=order, transforms=affines)
