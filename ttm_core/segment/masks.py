"""First-frame object masks from any MASK source (mask editor, segmentation nodes, files)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import TTMInputError
from ..types import MAX_OBJECTS, Objects, Prompts


def as_mask_batch(mask: torch.Tensor, input_name: str) -> torch.Tensor:
    """A ComfyUI MASK (``[H, W]`` or ``[B, H, W]``, float 0..1) as float32 ``[B, H, W]``."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TTMInputError(input_name, f"expected a MASK [H, W] or [B, H, W], got {shape}", "connect a MASK output")
    batch = mask[None] if mask.ndim == 2 else mask
    if batch.shape[0] == 0:
        raise TTMInputError(input_name, "the mask batch is empty", "connect a non-empty MASK")
    return batch.detach().to("cpu", torch.float32)


def split_components(mask: torch.Tensor, min_area: int) -> list[torch.Tensor]:
    """Split a mask into its connected regions (8-connected), ordered left to right.

    Args:
        mask: float ``[H, W]`` (thresholded at 0.5).
        min_area: regions smaller than this many pixels are dropped as specks.
    Returns:
        float32 ``[H, W]`` masks, one per region, sorted by centroid x (then y).
    """
    binary = (mask > 0.5).numpy()
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    regions = []
    for label in range(1, count + 1):
        region = labels == label
        area = int(region.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(region)
        regions.append((float(xs.mean()), float(ys.mean()), torch.from_numpy(region.astype(np.float32))))
    regions.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in regions]


def objects_from_masks(prompts: Prompts, masks: Sequence[tuple[str, torch.Tensor]], image_size: tuple[int, int],
                       split: bool = False, min_area: int = 16) -> Objects:
    """Build Objects from MASK inputs: every mask of every batch is one object, in order.

    Args:
        prompts: one object line per mask.
        masks: (input name, MASK) pairs in socket order; names go into error messages.
        image_size: (H, W) of the first frame; every mask must have it.
        split: split each mask into connected regions (left to right) first, so one painted
            mask can hold several objects.
        min_area: with ``split``, regions below this many pixels are ignored.
    """
    height, width = image_size
    collected: list[torch.Tensor] = []
    for name, mask in masks:
        batch = as_mask_batch(mask, name)
        if tuple(batch.shape[1:]) != (height, width):
            raise TTMInputError(name,
                                f"the mask is {batch.shape[2]}x{batch.shape[1]} but the image is {width}x{height}",
                                "make the masks on this image, or resize them to the image size")
        for index, single in enumerate(batch):
            if split:
                parts = split_components(single, min_area)
                if not parts:
                    raise TTMInputError(name, f"mask {index + 1} has no region of at least {min_area} px",
                                        "paint the objects, or lower min_area")
                collected.extend(parts)
            else:
                if not bool((single > 0.5).any()):
                    position = len(collected)
                    which = (f"object {position + 1}, {prompts.objects[position].name!r}"
                             if position < len(prompts.objects) else f"object {position + 1}, which has no object line")
                    raise TTMInputError(name, f"mask {index + 1} of this input ({which}) is empty",
                                        "paint the object in the mask editor, or disconnect the input")
                collected.append(single)
    if not collected:
        raise TTMInputError("masks", "no masks were given", "connect one mask per object")
    if len(collected) > MAX_OBJECTS:
        raise TTMInputError("masks", f"{len(collected)} masks (objects) were given",
                            f"use at most {MAX_OBJECTS} objects")
    if not prompts.objects:
        raise TTMInputError("prompts", "the prompts name no objects (zero objects)",
                            "add one line 'name: local prompt' per movable object in Prompt Decompose")
    if len(collected) != len(prompts.objects):
        raise TTMInputError("masks", f"{len(collected)} masks for {len(prompts.objects)} objects "
                            f"({', '.join(prompts.names)})",
                            "give exactly one mask per object line, in the same order")
    return Objects(prompts, torch.stack(collected))


def overlay_preview(image: torch.Tensor, objects: Objects, opacity: float = 0.55) -> torch.Tensor:
    """float32 ``[1, H, W, 3]``: the image with each object tinted in its colour."""
    out = image[..., :3].detach().to("cpu", torch.float32).clone()
    for mask, color in zip(objects.masks, objects.colors):
        tint = torch.tensor(color, dtype=torch.float32) / 255.0
        alpha = (mask * opacity)[..., None]
        out = out * (1.0 - alpha) + tint * alpha
    return out[None]
