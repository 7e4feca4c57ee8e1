"""Fitting a trajectory to the video a model renders, and the reference video for guidance.

A diffusion backend renders at its own size and frame count (e.g. 832x480, 81 frames), which
need not be the trajectory's. Core ComfyUI nodes (WanImageToVideo, Wan22ImageToVideoLatent)
fit the start image by scaling it to cover the target and cropping the centre; the trajectory
is fitted the same way here, so objects, token grids and the reference stay aligned with the
image the model actually sees. Frames are matched by nearest index, the rule the token grids
use: video frame f shows trajectory frame floor(f (T - 1) / (F - 1) + 1/2).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..types import Objects, Trajectory

LOG = logging.getLogger(__name__)


def frame_map(source_frames: int, target_frames: int) -> list[int]:
    """For each of ``target_frames`` video frames, the trajectory frame it shows:
    floor(f (T - 1) / (F - 1) + 1/2), halves rounded up (Python's round() would round them to even).
    The one nearest-frame rule of the reference, the token grids and the diffusers frame plans."""
    if target_frames <= 1 or source_frames <= 1:
        return [0] * target_frames
    return [math.floor(f * (source_frames - 1) / (target_frames - 1) + 0.5) for f in range(target_frames)]


def center_crop_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centre crop of ``size`` (H, W) with ``target``'s aspect.

    Exactly the crop ComfyUI applies to a start image (``comfy.utils.common_upscale`` with crop
    "center": the margin is rounded, the crop is what is left between two equal margins), so masks,
    TRACKS and the image stay aligned pixel for pixel.
    """
    height, width = size
    target_h, target_w = target
    old_aspect, new_aspect = width / height, target_w / target_h
    if old_aspect > new_aspect:  # source is wider: crop the sides
        left = round((width - width * (new_aspect / old_aspect)) / 2)
        return 0, left, height, max(1, width - 2 * left)
    if old_aspect < new_aspect:
        top = round((height - height * (old_aspect / new_aspect)) / 2)
        return top, 0, max(1, height - 2 * top), width
    return 0, 0, height, width


def fit_trajectory(trajectory: Trajectory, height: int, width: int, num_frames: int) -> Trajectory:
    """The trajectory as the model will see it: centre-cropped to the video's aspect ratio.

    Only the crop happens here (labels stay exact); the token grids and the reference resample
    to the final size themselves. The transforms are dropped when cropping (renderers then
    estimate motion from the labels); a note is logged when anything is adapted.
    """
    top, left, crop_h, crop_w = center_crop_box(trajectory.size, (height, width))
    changed = (crop_h, crop_w) != trajectory.size
    if trajectory.num_frames != num_frames or changed or (crop_h, crop_w) != (height, width):
        LOG.info("fitting the %dx%d, %d-frame trajectory to a %dx%d, %d-frame video%s", trajectory.size[1],
                 trajectory.size[0], trajectory.num_frames, width, height, num_frames,
                 f" (centre crop to {crop_w}x{crop_h} first, as core Wan nodes crop the start image)"
                 if changed else "")
    if not changed:
        return trajectory
    labels = trajectory.labels[:, top:top + crop_h, left:left + crop_w].contiguous()
    masks = trajectory.objects.masks[:, top:top + crop_h, left:left + crop_w].contiguous()
    try:
        objects = Objects(trajectory.objects.prompts, masks, trajectory.objects.ids, trajectory.objects.colors)
    except TTMInputError as err:
        raise TTMInputError("trajectory", f"{err.problem} after cropping the {trajectory.size[1]}x"
                            f"{trajectory.size[0]} trajectory to the {width}x{height} video's aspect ratio",
                            "render at an aspect ratio closer to the image's, or keep objects away from the "
                            "edges that the crop removes") from None
    return Trajectory(labels, objects, trajectory.fps, trajectory.depth_order)


def resample_video(frames: torch.Tensor, height: int, width: int, num_frames: int) -> torch.Tensor:
    """float ``[T, H0, W0, 3]`` -> ``[num_frames, height, width, 3]``: nearest frames, bilinear
    (antialiased) resize. The input must already have the target aspect ratio."""
    picked = frames[frame_map(frames.shape[0], num_frames)]
    if tuple(picked.shape[1:3]) == (height, width):
        return picked.contiguous()
    chw = rearrange(picked, "t h w c -> t c h w")
    resized = F.interpolate(chw, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return rearrange(resized, "t c h w -> t h w c").clamp(0.0, 1.0).contiguous()


def resample_labels(labels: torch.Tensor, height: int, width: int, num_frames: int | None = None) -> torch.Tensor:
    """uint8 ``[T, H0, W0]`` -> ``[num_frames, height, width]``: nearest frames, nearest-pixel resize, so
    every pixel keeps an exact id (a colour-coded video drawn from it has only palette colours, as the
    trained checkpoints saw in training). The input must already have the target aspect ratio."""
    picked = labels if num_frames is None else labels[frame_map(labels.shape[0], num_frames)]
    if tuple(picked.shape[1:3]) == (height, width):
        return picked.contiguous()
    resized = F.interpolate(picked[:, None].float(), size=(height, width), mode="nearest-exact")
    return resized[:, 0].round().to(torch.uint8).contiguous()


def crop_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float ``[H0, W0, 3]`` centre-cropped to the aspect ratio of (height, width)."""
    top, left, crop_h, crop_w = center_crop_box((image.shape[0], image.shape[1]), (height, width))
    return image[top:top + crop_h, left:left + crop_w]
