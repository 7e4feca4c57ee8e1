"""Model families: one adapter file each (``wan.py``, ``cogvideox.py``, ``unet.py``), registered here.

``family_of(model)`` finds the adapter of a loaded denoiser; ``FAMILIES`` lists the adapters,
``VARIANTS`` every diffusers pipeline the diffusers engine runs (key -> ``Variant``) and
``family_of_variant`` the adapter of one. Folder detection (``model_index.json``) is in ``detect``.
See ``base.Family`` for what an adapter holds.
"""

from __future__ import annotations

from torch import nn

from ...errors import TTMInputError
from ...types import PretrainedModel
from ..attention.grids import VideoGeometry
from ..attention.layers import MaskedBlockLayers, MaskedCrossAttentionLayer, MaskedLayers, MaskedSelfAttentionLayer
from .base import ANY_FRAMES, CAUSAL_4K1, Family, ModelIndex, Site, Variant
from .cogvideox import COGVIDEOX, COGVIDEOX_10, COGVIDEOX_15
from .unet import I2VGEN_XL, I2VGENXL, SVD, SVD_FAMILY
from .wan import WAN, WAN21_I2V, WAN22_I2V_A14B, WAN22_TI2V, WAN_TEXT_TOKENS

FAMILIES: tuple[Family, ...] = (WAN, COGVIDEOX, I2VGENXL, SVD_FAMILY)
VARIANTS: dict[str, Variant] = {variant.key: variant for family in FAMILIES for variant in family.variants}
SUPPORTED_TEXT = ("CogVideoX 1.0 / 1.5 I2V, Wan 2.1 I2V, Wan 2.2 I2V-A14B, Wan 2.2 TI2V-5B or I2VGen-XL in diffusers "
                  "format (a folder with model_index.json, e.g. THUDM/CogVideoX-5b-I2V, "
                  "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers or ali-vilab/i2vgen-xl)")

__all__ = [
    "ANY_FRAMES", "CAUSAL_4K1", "COGVIDEOX", "COGVIDEOX_10", "COGVIDEOX_15", "FAMILIES", "I2VGENXL", "I2VGEN_XL",
    "SUPPORTED_TEXT", "SVD", "SVD_FAMILY", "VARIANTS", "WAN", "WAN21_I2V", "WAN22_I2V_A14B", "WAN22_TI2V",
    "WAN_TEXT_TOKENS", "Family", "ModelIndex", "Site", "Variant", "default_num_blocks", "family_of",
    "family_of_variant", "geometry_for", "masked_layers", "models_of", "sites",
]


def family_of(model: PretrainedModel) -> Family:
    """The adapter of a supported diffusers denoiser (recognised by class name)."""
    for family in FAMILIES:
        if family.handles(model):
            return family
    raise TTMInputError("model", f"{type(model).__name__} is not a supported video model",
                        "use Wan 2.1/2.2, CogVideoX 1.0/1.5 I2V, I2VGen-XL or Stable Video Diffusion (diffusers)")


def family_of_variant(variant: Variant) -> Family:
    """The adapter whose diffusers pipelines include ``variant``."""
    for family in FAMILIES:
        if variant in family.variants:
            return family
    raise KeyError(variant.key)


def geometry_for(model: PretrainedModel, vae: PretrainedModel | None = None) -> VideoGeometry:
    """The token geometry of a loaded denoiser (and its VAE, when given)."""
    return family_of(model).geometry(model, vae)


def sites(model: PretrainedModel) -> list[Site]:
    """The denoiser's masked-attention sites from the input side."""
    return family_of(model).sites(model)


def default_num_blocks(model: PretrainedModel) -> int:
    """The paper's K for this denoiser: DiTs 10 of 40 (a quarter, at least 1); UNets the encoder's spatial blocks."""
    return family_of(model).default_num_blocks(model)


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


def masked_layers(model: PretrainedModel, num_blocks: int) -> MaskedLayers:
    """New (zero-initialised) masked attention layers sized for the first ``num_blocks`` sites of ``model``."""
    family = family_of(model)
    found = family.sites(model)
    if not 0 < num_blocks <= len(found):
        raise TTMInputError("masked_blocks", f"K = {num_blocks} but the model has {len(found)} blocks",
                            f"use 1..{len(found)}")
    modules = dict(model.named_modules())
    blocks = []
    for site in found[:num_blocks]:
        attn = modules[site.self_attn]
        dim = attn.to_q.in_features
        heads = attn.heads
        # Local prompts reach the layer through the model's own text projection (Wan, CogVideoX)
        # or as raw encoder states (I2VGen-XL cross-attends to CLIP states directly); none without text.
        context = family.layer_context_width(model, dim)
        cross = MaskedCrossAttentionLayer(dim, context, heads) if context is not None else None
        blocks.append(MaskedBlockLayers(MaskedSelfAttentionLayer(dim, heads), cross))
    return MaskedLayers(family.name, blocks)
