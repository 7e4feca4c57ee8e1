"""Model families: which diffusers classes we patch, their geometry, and their attention sites.

A *site* is one transformer block that can carry masked attention: its self-attention module,
its text cross-attention module (None where the family has no prompt), and for CogVideoX the one
joint [text ; video] attention. Sites are listed from the input side, so "the first K blocks"
is ``sites(model)[:K]``. Models are recognised by class name, so importing this module does not
import diffusers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TTMInputError
from .grids import COGVIDEOX_10, COGVIDEOX_15, I2VGEN_XL, SVD, WAN21_I2V, WAN22_TI2V, VideoGeometry

logger = logging.getLogger(__name__)

WAN = "wan"
COGVIDEOX = "cogvideox"
I2VGENXL = "i2vgen_xl"
SVD_FAMILY = "svd"

_CLASSES = {
    "WanTransformer3DModel": WAN,
    "CogVideoXTransformer3DModel": COGVIDEOX,
    "I2VGenXLUNet": I2VGENXL,
    "UNetSpatioTemporalConditionModel": SVD_FAMILY,
}
UNET_FAMILIES = (I2VGENXL, SVD_FAMILY)
WAN_TEXT_TOKENS = 512
"""diffusers' WanAttnProcessor splits its cross-attention context as [image ; last 512 text tokens]."""


@dataclass(frozen=True)
class Site:
    """One block of a model that can carry masked attention.

    Attributes:
        index: 0-based position from the input side.
        block: module path of the block, e.g. ``"blocks.3"``.
        self_attn: module path of its self-attention (CogVideoX: the joint attention).
        cross_attn: module path of its text cross-attention, or None (CogVideoX: joint; SVD: no text).
    """

    index: int
    block: str
    self_attn: str
    cross_attn: str | None


def family_of(model: nn.Module) -> str:
    """``"wan"``, ``"cogvideox"``, ``"i2vgen_xl"`` or ``"svd"`` for a supported diffusers model."""
    for cls in type(model).__mro__:
        if cls.__name__ in _CLASSES:
            return _CLASSES[cls.__name__]
    raise TTMInputError("model", f"{type(model).__name__} is not a supported video model",
                        "use Wan 2.1/2.2, CogVideoX 1.0/1.5 I2V, I2VGen-XL or Stable Video Diffusion (diffusers)")


def geometry_for(model: nn.Module, vae: nn.Module | None = None) -> VideoGeometry:
    """The token geometry of a loaded model (read from its config, and the VAE's when given).

    Wan without a VAE: 48 latent channels mean the Wan 2.2 TI2V VAE (16 px per latent pixel),
    anything else the 8 px Wan 2.1 VAE (Wan 2.1 and 2.2 A14B share it).
    """
    family = family_of(model)
    config = model.config
    if family == WAN:
        spatial = None
        if vae is not None:
            spatial = getattr(vae.config, "scale_factor_spatial", None)
        if spatial is None:
            spatial = 16 if config.out_channels == 48 else 8
        temporal = getattr(vae.config, "scale_factor_temporal", None) if vae is not None else None
        base = WAN22_TI2V if spatial == 16 else WAN21_I2V
        return VideoGeometry(base.name, temporal or 4, True, int(spatial), tuple(config.patch_size))
    if family == COGVIDEOX:
        p, pt = config.patch_size, config.patch_size_t
        base = COGVIDEOX_10 if pt is None else COGVIDEOX_15
        return VideoGeometry(base.name, config.temporal_compression_ratio, True, 8, (pt or 1, p, p),
                             pad_front=pt is not None)
    spatial = 8
    if vae is not None and hasattr(vae.config, "block_out_channels"):
        spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    base = I2VGEN_XL if family == I2VGENXL else SVD
    return VideoGeometry(base.name, 1, False, spatial, multi_level=True)


_UNET_SITE = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))"
                        r"\.attentions\.(\d+)\.transformer_blocks\.(\d+)$")


def sites(model: nn.Module) -> list[Site]:
    """The model's masked-attention sites from the input side (encoder first for UNets)."""
    family = family_of(model)
    if family == WAN:
        return [Site(i, f"blocks.{i}", f"blocks.{i}.attn1", f"blocks.{i}.attn2") for i in range(len(model.blocks))]
    if family == COGVIDEOX:
        return [Site(i, f"transformer_blocks.{i}", f"transformer_blocks.{i}.attn1", None)
                for i in range(len(model.transformer_blocks))]
    found = []
    for name, _ in model.named_modules():
        match = _UNET_SITE.match(name)
        if match is None:
            continue
        stage = 0 if match.group(2) is not None else (1 if match.group(1) == "mid_block" else 2)
        block = int(match.group(2) or match.group(3) or 0)
        found.append(((stage, block, int(match.group(4)), int(match.group(5))), name))
    found.sort()
    cross = family == I2VGENXL
    return [Site(i, name, f"{name}.attn1", f"{name}.attn2" if cross else None) for i, (_, name) in enumerate(found)]


def default_num_blocks(model: nn.Module) -> int:
    """Paper defaults: DiT K = 10 of 40 (a quarter, at least 1); UNet: the encoder's spatial blocks (K = 6)."""
    family = family_of(model)
    if family in UNET_FAMILIES:
        return sum(1 for s in sites(model) if s.block.startswith("down_blocks."))
    return max(1, round(len(sites(model)) / 4))


def local_prompt_width(model: nn.Module) -> int | None:
    """Width D of the encoder states a local prompt must have for this model (None: no prompt)."""
    family = family_of(model)
    if family == WAN:
        return int(model.config.text_dim)
    if family == COGVIDEOX:
        return int(model.config.text_embed_dim)
    if family == I2VGENXL:
        return int(model.config.cross_attention_dim)
    return None


def local_context_projector(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own map from text-encoder states to what its attention layers read.

    Wan: ``condition_embedder.text_embedder`` (what the global prompt goes through);
    CogVideoX: ``patch_embed.text_proj`` (before the per-block modulation); I2VGen-XL: identity
    (its cross-attention reads CLIP states directly).
    """
    family = family_of(model)
    if family == WAN:
        return model.condition_embedder.text_embedder
    if family == COGVIDEOX:
        return model.patch_embed.text_proj
    if family == I2VGENXL:
        return lambda x: x
    raise TTMInputError("local_prompts", "Stable Video Diffusion takes no prompt, so it has no local prompts",
                        "use masked self-attention only (no local prompts) with Stable Video Diffusion")


def models_of(target: object) -> list[tuple[str, nn.Module]]:
    """The denoisers of a pipeline, a model, or a sequence of models, as (name, model) pairs.

    A Wan 2.2 A14B pipeline yields both experts: ``transformer`` (high noise) and
    ``transformer_2`` (low noise).
    """
    if isinstance(target, nn.Module):
        family_of(target)
        return [("model", target)]
    if isinstance(target, (list, tuple)):
        out = []
        for i, item in enumerate(target):
            if not isinstance(item, nn.Module):
                raise TTMInputError("model", f"item {i} is a {type(item).__name__}, not a model", "pass models")
            family_of(item)
            out.append((f"model_{i}", item))
        if not out:
            raise TTMInputError("model", "no model was given", "pass a pipeline or its transformer / unet")
        return out
    found = [(name, getattr(target, name)) for name in ("transformer", "transformer_2", "unet")
             if isinstance(getattr(target, name, None), nn.Module)]
    if not found:
        raise TTMInputError("model", f"{type(target).__name__} has no transformer or unet",
                            "pass a diffusers video pipeline or its denoiser")
    for _, model in found:
        family_of(model)
    return found
