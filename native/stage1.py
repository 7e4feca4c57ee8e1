"""Stage 1, trained, on ComfyUI's own Wan: a Stage-1 checkpoint generates the mask trajectory from the
user's native Wan MODEL / CLIP / VAE (the ``trained`` backend of Image To Motion without a diffusers folder).

The inputs are the ones ``ttm-train stage1`` trained on (``ttm_core.motion.trained``), built with
ComfyUI's own machinery:

* s(0), colour-coded (``stage1_image``), is the Wan's OWN image input: ``WanImageToVideo`` (Wan 2.1
  I2V: first-frame mask + image latents, CLIP vision of s(0) when ``clip_vision`` is connected, as the
  diffusers pipeline's image encoder sees it) or ``Wan22ImageToVideoLatent`` (TI2V: the first latent
  frame pinned to s(0));
* x(0) enters by channel concatenation: the VAE latents of ``stage1_condition(x(0))`` (x(0) then mid
  grey) appended to ``x`` by a DIFFUSION_MODEL wrapper of the sampler's clone, the checkpoint's widened
  patch embedding object-patched in (``native.trained.TrainedInputs``, shared with Stage 2);
* the text is c_motion; the negative is the empty prompt (the trainer's text dropout).

``common_ksampler`` samples (ComfyUI's progress bar per step, cancel, model loading and offloading as
KSampler has them); the VAE decodes; ``read_generated`` reads the colours back into labels. The
user's MODEL is never changed: the patches live on a clone that ComfyUI unpatches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.patcher_extension
import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's own top-level nodes module (the pack's are imported relatively)
import torch
from comfy_extras.nodes_wan import Wan22ImageToVideoLatent, WanImageToVideo

from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.trained import (
    Stage1Sampling,
    check_stage1_checkpoint,
    grid_size,
    read_generated,
    stage1_condition,
    stage1_image,
    stage1_request,
)
from ..ttm_core.stage2.families import VARIANTS
from ..ttm_core.stage2.families.wan import WAN22_TI2V
from ..ttm_core.stage2.trained import TrainedWeights
from ..ttm_core.train.palette import DecodedLabels
from ..ttm_core.types import Objects, Trajectory
from .trained import TrainedInputs, native_variant
from .wan import check_wan

LOG = logging.getLogger(__name__)
KEY = "through_the_mask_stage1"


@dataclass(frozen=True)
class NativeStage1:
    """The ComfyUI side of one native Stage-1 generation.

    Attributes:
        model, clip, vae: the checkpoint's base Wan (MODEL, its umT5 CLIP, its VAE).
        clip_vision: Wan 2.1 I2V: CLIP vision (clip_vision_h), or None (then no image tokens, as Wan 2.1 I2V
            runs without one in ComfyUI).
        sampler_name, scheduler: ComfyUI's sampler and scheduler names.
    """

    model: Any
    clip: Any
    vae: Any
    clip_vision: Any = None
    sampler_name: str = "euler"
    scheduler: str = "simple"

    def __post_init__(self) -> None:
        for name in ("model", "clip", "vae"):
            if getattr(self, name) is None:
                raise TTMInputError(name, f"the trained backend on a native Wan needs its {name.upper()}",
                                    f"connect the Wan {name.upper()} the checkpoint was trained on (or a diffusers "
                                    "folder through video_model)")
        if self.sampler_name not in comfy.samplers.SAMPLER_NAMES:
            raise TTMInputError("sampler_name", f"{self.sampler_name!r} is not a ComfyUI sampler",
                                f"use one of {', '.join(comfy.samplers.SAMPLER_NAMES[:6])}, ...")
        if self.scheduler not in comfy.samplers.SCHEDULER_NAMES:
            raise TTMInputError("scheduler", f"{self.scheduler!r} is not a ComfyUI scheduler",
                                f"use one of {', '.join(comfy.samplers.SCHEDULER_NAMES)}")


def _check_frames(frames: int) -> None:
    """Wan's causal VAE makes 1 + 4k frames; another length is refused (never resampled)."""
    if (frames - 1) % 4:
        lower = (frames - 1) // 4 * 4 + 1
        raise TTMInputError("num_frames", f"{frames} frames is not a length Wan generates (1 + 4k)",
                            f"set num_frames to {lower} or {lower + 4}")


def generate_native(native: NativeStage1, weights: TrainedWeights, image: torch.Tensor, objects: Objects,
                    motion_prompt: str, settings: Stage1Sampling, depth_order: tuple[int, ...] = ()
                    ) -> tuple[Trajectory, DecodedLabels]:
    """Stage 1, trained, on a native Wan: the trajectory and the decoder's reading (``read_generated``).

    Args:
        native: the Wan MODEL / CLIP / VAE (+ CLIP vision) and the sampler.
        weights: a Stage-1 checkpoint of that Wan (``stage2.trained.load_trained``).
        image: float ``[H, W, 3]`` in 0..1, x(0), at the objects' size.
        objects: the objects (object i is drawn in palette colour i + 1).
        motion_prompt: c_motion.
        settings: frames (1 + 4k), steps and cfg (0: the variant's recommended), seed, fps.
        depth_order: object ids front to back (empty: the objects' order).
    Raises:
        TTMInputError: a checkpoint of another stage / palette / base, more objects than the palette, a length
            or size Wan cannot make, before anything is encoded or sampled.
    """
    if not isinstance(weights, TrainedWeights):
        raise TTMInputError("trained", f"got a {type(weights).__name__}, not a trained checkpoint",
                            "connect Trained Checkpoint Loader (Through-The-Mask) with a Stage 1 checkpoint")
    info = check_wan(native.model)
    check_stage1_checkpoint(weights, "trained")
    variant = VARIANTS[native_variant(info)]
    ti2v = info.geometry is WAN22_TI2V
    if not isinstance(settings, Stage1Sampling):
        raise TTMInputError("settings", f"expected Stage1Sampling, got {type(settings).__name__}",
                            "pass Stage1Sampling(...)")
    if not isinstance(objects, Objects):
        raise TTMInputError("objects", f"got a {type(objects).__name__}", "connect SAM2 Segment's objects")
    _check_frames(settings.frames)
    size, notes = grid_size(objects.size, 32 if ti2v else 16, f"native {variant.label}")
    request = stage1_request(image, objects, settings, size, notes, depth_order)
    height, width = size
    frames = settings.frames
    steps = settings.steps or variant.default_steps
    cfg = settings.cfg or variant.default_cfg
    model, clip, vae = native.model, native.clip, native.vae

    s0 = stage1_image(request.palette_first)[None]
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(motion_prompt))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    if ti2v:
        latent = Wan22ImageToVideoLatent.execute(vae, width, height, frames, 1, start_image=s0).args[0]
    else:
        vision = native.clip_vision.encode_image(s0, crop=False) if native.clip_vision is not None else None
        positive, negative, latent = WanImageToVideo.execute(positive, negative, vae, width, height, frames, 1,
                                                             start_image=s0, clip_vision_output=vision).args
    # x(0) then mid grey, in the model's latent space (as Family.encode_reference gives the trainer).
    encoded = vae.encode(stage1_condition(request.x0, frames))
    condition = model.model.process_latent_in(encoded.float()).cpu()
    if tuple(condition.shape[2:]) != tuple(latent["samples"].shape[2:]):
        raise TTMInputError("vae", f"the VAE makes a {tuple(condition.shape[1:])} latent but the sampler's is "
                            f"{tuple(latent['samples'].shape[1:])}", "use the VAE that belongs to this Wan model")
    inputs = TrainedInputs(weights, model, info, condition, 1)
    patched = model.clone()
    inputs.install(patched)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY,
                                 inputs.diffusion_model_wrapper)
    LOG.info("Stage 1 (native %s, %s): %dx%d, %d frames, %d steps, cfg %g, seed %d, %d objects", variant.label,
             Path(weights.source).name, width, height, frames, steps, cfg, settings.seed, objects.count)
    (latent,) = comfy_nodes.common_ksampler(patched, settings.seed, steps, cfg, native.sampler_name,
                                            native.scheduler, positive, negative, latent)
    video = vae.decode(latent["samples"])
    if video.ndim == 5:
        video = video.reshape(-1, *video.shape[-3:])
    video = video[:frames].float().cpu().clamp(0.0, 1.0)
    return read_generated(video, request)
