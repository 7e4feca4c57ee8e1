"""The `comfy` backend of Masked Motion To Video: patch the user's Wan model and sample it.

Everything is ComfyUI's own machinery: WanImageToVideo / Wan22ImageToVideoLatent build the
conditioning and latent, common_ksampler samples (progress bar per step, cancel, model
loading and offloading as KSampler has them), the VAE decodes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's own top-level nodes module (the pack's are imported relatively)
import torch
from comfy_extras.nodes_wan import Wan22ImageToVideoLatent, WanImageToVideo

from ..ttm_core.attention.grids import WAN22_TI2V
from ..ttm_core.errors import TTMInputError
from ..ttm_core.types import Trajectory
from .native_wan import PatchSettings, check_wan, patch_wan

LOG = logging.getLogger(__name__)


def video_size(image: torch.Tensor, trajectory: Trajectory, width: int, height: int, length: int,
               multiple: int) -> tuple[int, int, int]:
    """(width, height, frames): 0 means 'from the image / trajectory', rounded to what Wan takes."""
    if width == 0:
        width = max(multiple, image.shape[1] // multiple * multiple)
    if height == 0:
        height = max(multiple, image.shape[0] // multiple * multiple)
    if width % multiple or height % multiple:
        raise TTMInputError("width", f"{width}x{height} is not a multiple of {multiple}",
                            f"use sizes divisible by {multiple} (or 0 for the image's size)")
    frames = length or trajectory.num_frames
    if (frames - 1) % 4:
        rounded = (frames - 1) // 4 * 4 + 1
        LOG.info("Through-The-Mask: %d frames is not 4k+1; Wan renders %d", frames, rounded)
        frames = rounded
    return width, height, frames


def render(model: Any, clip: Any, vae: Any, image: torch.Tensor, trajectory: Trajectory, settings: PatchSettings,
           negative_prompt: str, width: int, height: int, length: int, seed: int, steps: int, cfg: float,
           sampler_name: str, scheduler: str, model_2: Any = None, expert_switch: float = 0.5,
           clip_vision: Any = None) -> torch.Tensor:
    """Render Stage 2 with a native Wan model; returns float32 ``[F, H, W, 3]`` frames."""
    geometry, _, _ = check_wan(model)
    multiple = 32 if geometry is WAN22_TI2V else 16
    width, height, frames = video_size(image[0], trajectory, width, height, length, multiple)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(trajectory.objects.prompts.global_prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(negative_prompt))
    start = image[:1]
    if geometry is WAN22_TI2V:
        latent = Wan22ImageToVideoLatent.execute(vae, width, height, frames, 1, start_image=start).args[0]
    else:
        vision = clip_vision.encode_image(start, crop=False) if clip_vision is not None else None
        positive, negative, latent = WanImageToVideo.execute(positive, negative, vae, width, height, frames, 1,
                                                             start_image=start, clip_vision_output=vision).args
    patched, patched_2, patch = patch_wan(model, clip, trajectory, settings, vae, image[0], latent["samples"], model_2)
    patch.schedule = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    if patched_2 is None:
        (latent,) = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent)
    else:
        switch = min(steps - 1, max(1, math.floor(expert_switch * steps + 0.5)))
        (latent,) = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent, start_step=0, last_step=switch, force_full_denoise=False)
        (latent,) = comfy_nodes.common_ksampler(patched_2, seed, steps, cfg, sampler_name, scheduler, positive,
                                                negative, latent, disable_noise=True, start_step=switch,
                                                last_step=10000, force_full_denoise=True)
    images = vae.decode(latent["samples"])
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images.float().cpu()
