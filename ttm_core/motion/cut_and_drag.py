"""The model-free cut-and-drag animation (``warp`` backend of Motion-to-Video).

Every object's pixels are moved along the trajectory and composited back to front with
soft edges over a background whose revealed parts are filled by inpainting. This is the
Time-to-Move style reference video that the training-free diffusion backend denoises from
("dual-clock"), so it is a plain function of (image, trajectory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..types import ProgressFn, Trajectory
from .poses import estimate_affines, is_identity
from .render import warp


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with edge replication; sigma 0 = identity."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3.0 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    padded = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square dilation of float ``[N, 1, H, W]`` masks by ``radius`` pixels."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def push_pull_fill(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown pixels smoothly from known ones (push-pull, Gortler et al. 1996).

    Known pixels are averaged down an image pyramid until every coarse pixel has support,
    then the pyramid is pulled back up, each level keeping what it knows and taking the rest
    from the level below. Exact where ``known`` is 1; O(H W) time and memory.

    Args:
        values: float ``[C, H, W]``.
        known: float ``[H, W]`` in 0..1 (1 = keep this pixel).
    Returns:
        float ``[C, H, W]``; mid-grey if nothing is known.
    """
    weight = known.to(values.dtype)[None, None]
    premultiplied = values[None] * weight
    levels = [(premultiplied, weight)]
    while not bool((weight > 0).all()) and max(weight.shape[-2:]) > 1:
        premultiplied = F.avg_pool2d(premultiplied, 2, ceil_mode=True)
        weight = F.avg_pool2d(weight, 2, ceil_mode=True)
        levels.append((premultiplied, weight))
    coarse_p, coarse_w = levels[-1]
    filled = torch.where(coarse_w > 0, coarse_p / coarse_w.clamp_min(1e-12), torch.full_like(coarse_p, 0.5))
    for level_p, level_w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=level_p.shape[-2:], mode="bilinear", align_corners=False)
        color = level_p / level_w.clamp_min(1e-12)
        alpha = level_w.clamp(0.0, 1.0)
        filled = color * alpha + up * (1.0 - alpha)
    return filled[0]


def check_first_frame(image: torch.Tensor, trajectory: Trajectory) -> None:
    """Raise TTMInputError unless ``image`` is one RGB image ``[H, W, 3]`` of the trajectory's size."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TTMInputError("image", f"expected one RGB image [H, W, 3], got {tuple(image.shape)}",
                            "connect a single image (the first frame)")
    if tuple(image.shape[:2]) != trajectory.size:
        raise TTMInputError("image", f"the image is {image.shape[1]}x{image.shape[0]} (WxH) but the trajectory is "
                            f"{trajectory.size[1]}x{trajectory.size[0]}",
                            "use the image the objects were segmented on, or resize it to the trajectory's size")


def cut_and_drag(image: torch.Tensor, trajectory: Trajectory, feather: float = 1.0,
                 device: torch.device | str = "cpu", progress: ProgressFn | None = None) -> torch.Tensor:
    """Render the cut-and-drag video: objects moved along the trajectory, holes inpainted.

    Per frame t (back to front in the trajectory's depth order):
        out = base_t;  out = out * (1 - a_l) + C_l,t * a_l
    where base_t is the image with the source regions of the objects displaced at t filled
    by push-pull inpainting, a_l = blur(labels_t == l, feather) is object l's soft visible
    region, and C_l,t is the object's colour layer moved by its affine (the image itself
    when the object has not moved, so an unmoved frame reproduces the image exactly).

    Args:
        image: float ``[H, W, 3]`` in 0..1, the first frame x(0).
        trajectory: the mask trajectory at the image's size.
        feather: soft-edge radius (Gaussian sigma) in pixels; 0 = hard edges.
        device: where to compute.
        progress: called with (frame + 1, T) after each frame; may raise to cancel.
    Returns:
        float32 ``[T, H, W, 3]`` in 0..1 (on the CPU).
    """
    check_first_frame(image, trajectory)
    if not (math.isfinite(feather) and feather >= 0):
        raise TTMInputError("feather", f"feather {feather} is not a non-negative number", "use e.g. 1.0")
    objects = trajectory.objects
    affines = trajectory.transforms if trajectory.transforms is not None else estimate_affines(trajectory)
    identity = is_identity(torch.nan_to_num(affines, nan=2.0))  # [T, L]
    moving = ~identity.all(0)  # [L]

    picture = rearrange(image.to(device=device, dtype=torch.float32), "h w c -> c h w").clamp(0.0, 1.0)
    source = objects.binary().to(device=device, dtype=torch.float32)[:, None]  # [L, 1, H, W]
    ring = math.ceil(2.0 * feather) + 1
    holes = gaussian_blur(dilate(source, ring), feather).clamp(0.0, 1.0)  # [L, 1, H, W]
    if bool(moving.any()):
        hole_union = holes[moving.to(holes.device)].amax(0)[0]
        background = push_pull_fill(picture, (hole_union <= 0).to(picture.dtype))
    else:
        background = picture
    # Object colours extended outward from the mask so resampled edges never pick up the
    # surroundings the object was cut from.
    layers = {i: push_pull_fill(picture, source[i, 0]) for i in range(objects.count) if bool(moving[i])}

    index_of = {object_id: i for i, object_id in enumerate(objects.ids)}
    back_to_front = [index_of[i] for i in reversed(trajectory.depth_order)]
    num_frames = trajectory.num_frames
    height, width = trajectory.size
    video = torch.empty(num_frames, height, width, 3, dtype=torch.float32)
    for t in range(num_frames):
        displaced = [i for i in range(objects.count) if not bool(identity[t, i])]
        if displaced:
            hole = holes[displaced].amax(0)
            frame = picture * (1.0 - hole) + background * hole
        else:
            frame = picture.clone()
        labels = trajectory.labels[t].to(device)
        for i in back_to_front:
            visible = (labels == objects.ids[i]).to(torch.float32)[None, None]
            if not bool(visible.any()):
                continue
            alpha = gaussian_blur(visible, feather)[0]
            if bool(identity[t, i]):
                color = picture
            else:
                color = warp(layers[i][None], affines[t, i][None])[0]
            frame = frame * (1.0 - alpha) + color * alpha
        video[t] = rearrange(frame.clamp(0.0, 1.0), "c h w -> h w c").cpu()
        if progress is not None:
            progress(t + 1, num_frames)
    return video
