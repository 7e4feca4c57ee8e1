"""ComfyUI's own Wan models as the native engine sees them: what is supported, its geometry, its text encoder.

The token geometries are the diffusers family adapter's (``ttm_core.stage2.families.wan``):
ComfyUI's WanModel patchifies exactly like diffusers' (1 x 2 x 2, (t, y, x) row-major), with the
Wan 2.1 VAE (8 px per latent pixel) or the Wan 2.2 TI2V VAE (16 px).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import comfy.model_base
import torch
from comfy.ldm.wan.model import WanI2VCrossAttention, WanModel

from ..ttm_core.errors import TTMInputError
from ..ttm_core.stage2.attention.grids import VideoGeometry
from ..ttm_core.stage2.families.wan import WAN21_I2V, WAN22_TI2V
from ..ttm_core.types import Prompts

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class WanInfo:
    """What the engine needs to know about a loaded Wan MODEL.

    Attributes:
        geometry: its token geometry (``WAN21_I2V`` or ``WAN22_TI2V``).
        num_blocks: transformer blocks.
        i2v_cross: its cross-attention also attends to CLIP image tokens (Wan 2.1 I2V).
    """

    geometry: VideoGeometry
    num_blocks: int
    i2v_cross: bool

    @property
    def default_num_blocks(self) -> int:
        """The paper's K: a quarter of the blocks (10 of 40), at least one."""
        return max(1, round(self.num_blocks / 4))


def check_wan(model: Any, input_name: str = "model") -> WanInfo:
    """The facts of a supported native Wan MODEL; a clear error naming the input otherwise."""
    base = getattr(model, "model", None)
    diffusion = getattr(base, "diffusion_model", None)
    supported = type(base) in (comfy.model_base.WAN21, comfy.model_base.WAN22) and type(diffusion) is WanModel
    if not supported:
        kind = type(base).__name__ if base is not None else type(model).__name__
        model_type = getattr(getattr(base, "model_type", None), "name", "unknown")
        raise TTMInputError(input_name, f"this MODEL is {kind} ({type(diffusion).__name__}, {model_type}), not a "
                            "Wan 2.1 / 2.2 model the patch supports",
                            "load Wan 2.1 I2V, Wan 2.2 I2V-A14B (either expert) or Wan 2.2 TI2V-5B with Load "
                            "Diffusion Model")
    geometry = WAN22_TI2V if base.latent_format.latent_channels == 48 else WAN21_I2V
    i2v_cross = isinstance(diffusion.blocks[0].cross_attn, WanI2VCrossAttention)
    return WanInfo(geometry, len(diffusion.blocks), i2v_cross)


def encode_local_prompts(clip: Any, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Each object's local prompt through the model's text encoder (the CLIP input).

    Returns:
        float32 ``[M, D]`` states of all local prompts concatenated in object order (trailing
        all-zero padding rows, as umT5 pads to 512, are dropped) and int64 ``[M]`` owners
        (1-based object index of every key).
    """
    states, owners = [], []
    for index, obj in enumerate(prompts.objects, start=1):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(obj.local_prompt))[0][0][0]  # [L, D]
        nonzero = (cond.abs().amax(dim=-1) > 0).nonzero().flatten()
        length = int(nonzero.max()) + 1 if nonzero.numel() else 1
        states.append(cond[:length].float().cpu())
        owners.append(torch.full((length,), index, dtype=torch.int64))
    return torch.cat(states), torch.cat(owners)
