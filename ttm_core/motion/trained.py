"""Stage 1, trained: what the Stage-1 model reads and generates (shared by ``ttm-train stage1`` and the
``trained`` backend of Image To Motion).

Through-The-Mask's Stage 1 (Sec. 3.1) is a video model fine-tuned to generate the mask trajectory as
a colour-coded video (object l in ``train.palette.TRAIN_PALETTE[l - 1]``, background black) from
the first frame x(0), the first-frame masks s(0) and the motion prompt c_motion. On an
image-to-video base the two first-frame conditions enter as follows:

* s(0), colour-coded, is the base model's OWN image input: the generated video starts with it, as
  the target mask video does (Wan 2.2 TI2V pins the first latent frame to its image; Wan 2.1 I2V
  and CogVideoX I2V concatenate the image latents);
* x(0) enters by channel concatenation (``stage2.trained.trained_denoiser``, zero-initialised
  widening): the VAE latents of a video whose frame 0 is x(0) and whose other frames are mid grey
  (0 in the VAE's [-1, 1] range), the layout Wan's own image conditioning uses;
* the text is c_motion.

Object ``i`` of a trajectory (0-based, in the objects' order) is drawn in palette colour ``i + 1``.
"""

from __future__ import annotations

import torch

from ..errors import TTMInputError
from ..train.palette import TRAIN_PALETTE, colorize

GREY = 0.5
"""Pixel value (0..1) of the condition video's frames after the first: 0 in the VAE's [-1, 1] range."""


def stage1_image(first_labels: torch.Tensor) -> torch.Tensor:
    """The base model's image input: s(0) colour-coded.

    Args:
        first_labels: integer ``[H, W]``, 0 = background, 1..L = objects in palette order.
    Returns:
        float32 ``[H, W, 3]`` in 0..1.
    """
    if first_labels.ndim != 2:
        raise TTMInputError("masks", f"first-frame labels must be [H, W], got {tuple(first_labels.shape)}",
                            "pass one label map")
    return colorize(first_labels[None].to(torch.uint8))[0]


def stage1_condition(image: torch.Tensor, frames: int) -> torch.Tensor:
    """The appended condition video: x(0) then mid grey.

    Args:
        image: float ``[H, W, 3]`` in 0..1, the first frame x(0).
        frames: frames of the generated video (>= 1).
    Returns:
        float32 ``[frames, H, W, 3]`` in 0..1.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TTMInputError("image", f"x(0) must be [H, W, 3], got {tuple(image.shape)}", "pass one RGB frame")
    if frames < 1:
        raise TTMInputError("num_frames", f"{frames} frames", "generate at least one frame")
    video = torch.full((frames, *image.shape), GREY, dtype=torch.float32, device=image.device)
    video[0] = image.to(torch.float32).clamp(0.0, 1.0)
    return video


def palette_labels(labels: torch.Tensor, object_ids: tuple[int, ...]) -> torch.Tensor:
    """A label video with arbitrary object ids -> palette order (object_ids[i] -> i + 1), uint8 ``[...]``."""
    if len(object_ids) > len(TRAIN_PALETTE):
        raise TTMInputError("objects", f"{len(object_ids)} objects but the training palette has "
                            f"{len(TRAIN_PALETTE)} colours", f"use at most {len(TRAIN_PALETTE)} objects")
    lookup = torch.zeros(256, dtype=torch.uint8, device=labels.device)
    for i, object_id in enumerate(object_ids):
        lookup[int(object_id)] = i + 1
    return lookup[labels.long()]
