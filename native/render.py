"""The one-node path (Masked Motion To Video, Wan native): patch the user's Wan model and sample it.

Everything is ComfyUI's own machinery: WanImageToVideo / Wan22ImageToVideoLatent build the
conditioning and latent, common_ksampler samples (progress bar per step, cancel, model
loading and offloading as KSampler has them), the VAE decodes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's own top-level nodes module (the pack's are imported relatively)
import torch
from comfy_extras.nodes_wan import Wan22ImageToVideoLatent, WanImageToVideo

from ..ttm_core.errors import TTMInputError
from ..ttm_core.stage2.families.wan import WAN22_TI2V
from ..ttm_core.stage2.settings import Sampling, Stage2Settings
from ..ttm_core.stage2.trained import TrainedWeights
from ..ttm_core.types import Trajectory
from .patch import patch_wan
from .wan import check_wan

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class NativeSampling:
    """ComfyUI's sampler settings of the one-node path.

    Attributes:
        sampling: seed, steps, cfg, negative prompt, size and frames (0 = from the image / trajectory).
        sampler_name, scheduler: ComfyUI's sampler and scheduler names.
        expert_switch: with a second expert (Wan 2.2 A14B), the fraction of the steps the first runs.
    """

    sampling: Sampling
    sampler_name: str = "euler"
    scheduler: str = "simple"
    expert_switch: float = 0.5

    def __post_init__(self) -> None:
        if self.sampler_name not in comfy.samplers.SAMPLER_NAMES:
            raise TTMInputError("sampler_name", f"{self.sampler_name!r} is not a ComfyUI sampler",
                                f"use one of {', '.join(comfy.samplers.SAMPLER_NAMES[:6])}, ...")
        if self.scheduler not in comfy.samplers.SCHEDULER_NAMES:
            raise TTMInputError("scheduler", f"{self.scheduler!r} is not a ComfyUI scheduler",
                                f"use one of {', '.join(comfy.samplers.SCHEDULER_NAMES)}")
        if not (math.isfinite(self.expert_switch) and 0.0 <= self.expert_switch <= 1.0):
            raise TTMInputError("expert_switch", f"{self.expert_switch} is outside 0..1",
                                "give a fraction of the steps")


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


def render(model: Any, clip: Any, vae: Any, image: torch.Tensor, trajectory: Trajectory, settings: Stage2Settings,
           native: NativeSampling, model_2: Any = None, clip_vision: Any = None,
           trained: TrainedWeights | None = None) -> torch.Tensor:
    """Render Stage 2 with a native Wan model (``trained``: a Stage 2 checkpoint of it); returns float32
    ``[F, H, W, 3]`` frames."""
    info = check_wan(model)
    sampling = native.sampling
    multiple = 32 if info.geometry is WAN22_TI2V else 16
    width, height, frames = video_size(image[0], trajectory, sampling.width, sampling.height, sampling.num_frames,
                                       multiple)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(trajectory.objects.prompts.global_prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(sampling.negative_prompt))
    start = image[:1]
    if info.geometry is WAN22_TI2V:
        latent = Wan22ImageToVideoLatent.execute(vae, width, height, frames, 1, start_image=start).args[0]
    else:
        vision = clip_vision.encode_image(start, crop=False) if clip_vision is not None else None
        positive, negative, latent = WanImageToVideo.execute(positive, negative, vae, width, height, frames, 1,
                                                             start_image=start, clip_vision_output=vision).args
    steps, seed, cfg = sampling.steps, sampling.seed, sampling.cfg
    schedule = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), native.scheduler, steps)
    patched, patched_2, _ = patch_wan(model, clip, trajectory, settings, vae, image[0], latent["samples"], model_2,
                                      schedule=schedule, trained=trained)
    ksampler = dict(seed=seed, steps=steps, cfg=cfg, sampler_name=native.sampler_name, scheduler=native.scheduler,
                    positive=positive, negative=negative)
    if patched_2 is None:
        (latent,) = comfy_nodes.common_ksampler(patched, latent=latent, **ksampler)
    else:
        switch = min(steps - 1, max(1, math.floor(native.expert_switch * steps + 0.5)))
        (latent,) = comfy_nodes.common_ksampler(patched, latent=latent, start_step=0, last_step=switch,
                                                force_full_denoise=False, **ksampler)
        (latent,) = comfy_nodes.common_ksampler(patched_2, latent=latent, disable_noise=True, start_step=switch,
                                                last_step=10000, force_full_denoise=True, **ksampler)
    images = vae.decode(latent["samples"])
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images.float().cpu()
