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

CHUNK = 16
"""Frames rendered per chunk: per-frame work is batched within a chunk; progress and cancel come per chunk."""

Box = tuple[int, int, int, int]
"""A pixel box (y0, y1, x0, x1), ends exclusive."""


def affine_grid(affines: torch.Tensor, size: tuple[int, int], origins: torch.Tensor | None = None,
                shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Sampling grids for ``F.grid_sample`` that apply forward affines to images.

    Args:
        affines: float64 ``[N, 2, 3]`` maps from source to target pixel coordinates.
        size: (H, W) of the source (and of the whole target).
        origins: optional int ``[N, 2]`` (y, x): each grid covers only the target box of ``shape``
            starting there (a crop of the target); default: the whole target.
        shape: (h, w) of that box; default ``size``.
    Returns:
        float32 ``[N, h, w, 2]``: for each target pixel centre, its source in [-1, 1] of the whole
        source (align_corners=False convention, the same continuous coordinates as ours); a box's
        grid equals the same pixels of the whole-frame grid.
    """
    height, width = size
    box_h, box_w = shape if shape is not None else size
    if origins is None:
        origins = torch.zeros(affines.shape[0], 2, dtype=torch.int64)
    linear, offset = affines[:, :, :2].to(torch.float64), affines[:, :, 2].to(torch.float64)
    inverse = torch.linalg.inv(linear)
    # One affine map from the box's normalized coordinates u (F.affine_grid's base grid) to the source's:
    # target pixel x = origin + (u + 1) w / 2, source = inverse (x - offset), normalized 2 source / W - 1.
    half = torch.tensor([box_w / 2.0, box_h / 2.0], dtype=torch.float64)
    to_source = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    start = origins[:, [1, 0]].to(torch.float64) + half - offset  # x at u = 0, minus the offset: [N, 2]
    theta = torch.cat([inverse * half[None, None, :], torch.einsum("nij,nj->ni", inverse, start)[..., None]], -1)
    theta = theta * to_source[None, :, None]
    theta[:, :, 2] -= 1.0
    grid = F.affine_grid(theta, [affines.shape[0], 1, box_h, box_w], align_corners=False)
    return grid.to(torch.float32)


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


def integer_shifts(affines: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """bool ``[...]``: which affines (``[..., 2, 3]``) are whole-pixel translations (identity included):
    bilinear resampling by them is a copy, so renderers take the copy path."""
    linear_is_identity = ((affines[..., :2] - torch.eye(2, dtype=affines.dtype)).abs() <= 1e-9).flatten(-2).all(-1)
    offset = affines[..., 2]
    return linear_is_identity & ((offset - offset.round()).abs() <= tol).all(-1)


def support_box(mask: torch.Tensor) -> Box | None:
    """The box of a ``[H, W]`` mask's non-zero pixels (everything bilinear resampling can carry), or None."""
    rows = torch.nonzero(mask.any(1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def moved_boxes(affines: torch.Tensor, box: Box) -> torch.Tensor:
    """int64 ``[N, 4]`` (y0, y1, x0, x1), unclipped: target pixels that bilinear sampling of the source
    ``box`` by each affine can reach (its pixels' bilinear support, half a pixel beyond the box, mapped
    and rounded out by a pixel)."""
    y0, y1, x0, x1 = box
    corners = torch.tensor([[x0 - 0.5, y0 - 0.5], [x1 + 0.5, y0 - 0.5], [x0 - 0.5, y1 + 0.5], [x1 + 0.5, y1 + 0.5]],
                           dtype=torch.float64)
    moved = torch.einsum("nij,cj->nci", affines[:, :, :2], corners) + affines[:, None, :, 2]  # [N, 4, 2] (x, y)
    low, high = moved.amin(1).floor() - 1, moved.amax(1).ceil() + 1
    return torch.stack([low[:, 1], high[:, 1], low[:, 0], high[:, 0]], dim=-1).to(torch.int64)


def clip_box(box: Box, size: tuple[int, int]) -> Box:
    y0, y1, x0, x1 = box
    return max(0, y0), min(size[0], y1), max(0, x0), min(size[1], x1)


def render_labels(masks: torch.Tensor, affines: torch.Tensor, ids: Sequence[int], depth_order: Sequence[int],
                  progress: ProgressFn | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """Paint the label video: every object's mask moved by its affine, back to front.

    Only each object's box is resampled (``F.grid_sample`` on the box's pixels, batched over a chunk of
    frames); whole-pixel translations (still objects included) are copies. The result equals resampling
    whole frames.

    Args:
        masks: float ``[L, H, W]`` first-frame masks in 0..1.
        affines: float64 ``[T, L, 2, 3]``.
        ids: label value of each mask.
        depth_order: ids from front to back.
        progress: called with (frame + 1, T) for every frame, after each chunk of frames; may raise to cancel.
        chunk: frames per chunk.
    Returns:
        uint8 ``[T, H, W]`` (on the masks' device); a pixel belongs to the front-most object whose
        moved mask covers it by at least half.
    """
    num_frames = affines.shape[0]
    height, width = masks.shape[-2:]
    index_of = {object_id: i for i, object_id in enumerate(ids)}
    back_to_front = [index_of[i] for i in reversed(depth_order)]
    masks = masks.to(torch.float32)
    labels = torch.zeros(num_frames, height, width, dtype=torch.uint8, device=masks.device)
    boxes = [support_box(mask > 0) for mask in masks]
    copies = integer_shifts(affines)  # [T, L]
    for start in range(0, num_frames, chunk):
        stop = min(num_frames, start + chunk)
        for i in back_to_front:
            box = boxes[i]
            if box is None:
                continue
            copy_frames = [t for t in range(start, stop) if bool(copies[t, i])]
            if copy_frames:
                y0, y1, x0, x1 = box
                covered = masks[i, y0:y1, x0:x1] >= 0.5
                for t in copy_frames:
                    dx, dy = (round(float(v)) for v in affines[t, i, :, 2])
                    _paste(labels[t], covered, (y0 + dy, x0 + dx), ids[i])
            resampled = [t for t in range(start, stop) if not bool(copies[t, i])]
            if resampled:
                frames = torch.tensor(resampled)
                reach = moved_boxes(affines[frames, i], box)
                shape = (int((reach[:, 1] - reach[:, 0]).max()), int((reach[:, 3] - reach[:, 2]).max()))
                grid = affine_grid(affines[frames, i], (height, width), reach[:, [0, 2]], shape).to(masks.device)
                source = masks[i][None, None].expand(len(resampled), 1, height, width)
                moved = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                for k, t in enumerate(resampled):
                    _paste(labels[t], moved[k, 0] >= 0.5, (int(reach[k, 0]), int(reach[k, 2])), ids[i])
        if progress is not None:
            for t in range(start, stop):
                progress(t + 1, num_frames)
    return labels


def _paste(canvas: torch.Tensor, covered: torch.Tensor, origin: tuple[int, int], value: int) -> None:
    """Set ``canvas`` [H, W] to ``value`` where bool ``covered`` [h, w], placed at (y, x) = origin, is set
    (clipped to the canvas)."""
    oy, ox = origin
    size = (canvas.shape[0], canvas.shape[1])
    y0, y1, x0, x1 = clip_box((oy, oy + covered.shape[0], ox, ox + covered.shape[1]), size)
    if y1 <= y0 or x1 <= x0:
        return
    canvas[y0:y1, x0:x1][covered[y0 - oy:y1 - oy, x0 - ox:x1 - ox]] = value


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
