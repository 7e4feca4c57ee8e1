"""UNet video models in diffusers (I2VGen-XL; Stable Video Diffusion for masked attention only): the
family adapters.

================  ========  ======  =======  ===============================================
model             VAE t     VAE s   patch    token order
================  ========  ======  =======  ===============================================
I2VGen-XL / SVD   none      8       none     batch = b * F + f, sequence = y * w + x at every
                                             UNet level l (8 * 2^l px per token, ceil(h / 2^l))
================  ========  ======  =======  ===============================================

Sites are the spatial transformer blocks (``...attentions.i.transformer_blocks.j``), encoder first
(the paper's K = 6 encoder spatial blocks is the default). Masked self-attention is per frame
(a token sees its own object in its own frame; temporal attentions stay stock). I2VGen-XL cross-
attends to CLIP states (local prompts join as extra keys); Stable Video Diffusion takes no prompt,
so it gets masked self-attention only, and its pipeline is not a Stage 2 model (no text).
I2VGen-XL steps its latents as a batch of frames, ``[(B F), C, H, W]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from ...errors import TTMInputError
from ...types import PretrainedModel
from ..attention.grids import VideoGeometry
from ..attention.kernels import partitioned_attention, sdpa
from ..attention.processors import MaskedProcessor, note_delegated, rows_only, selects_no_row
from ..attention.routing import blend
from .base import ANY_FRAMES, Family, ModelIndex, Site, Variant

if TYPE_CHECKING:
    from ..attention.state import MaskedAttentionState

logger = logging.getLogger(__name__)

I2VGEN_XL = VideoGeometry("i2vgen-xl", temporal_ratio=1, causal=False, spatial_ratio=8, multi_level=True)
SVD = VideoGeometry("stable-video-diffusion", temporal_ratio=1, causal=False, spatial_ratio=8, multi_level=True)
_UNET_SITE = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))"
                        r"\.attentions\.(\d+)\.transformer_blocks\.(\d+)$")


def _unet_supported(attn: PretrainedModel, hidden_states: torch.Tensor) -> str | None:
    """Why diffusers' AttnProcessor2_0 features outside BasicTransformerBlock rule us out, or None."""
    if hidden_states.ndim != 3:
        return "4-D hidden states"
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection:
        return "spatial/group norm or residual connection inside the attention"
    return None


def _unet_out(attn: PretrainedModel, out: torch.Tensor, frames: int, like: torch.Tensor) -> torch.Tensor:
    """``[B, H, F * n, D]`` -> ``[(B F), n, C]`` through to_out (AttnProcessor2_0's tail)."""
    hidden = rearrange(out, "b h (f n) d -> (b f) n (h d)", f=frames).to(like.dtype)
    hidden = attn.to_out[1](attn.to_out[0](hidden))
    return hidden / attn.rescale_output_factor


def _unet_frames(state: MaskedAttentionState, hidden_states: torch.Tensor) -> tuple[int, int]:
    frames = state.plan.grid.shape[0]
    if hidden_states.shape[0] % frames:
        raise ValueError(f"attention batch {hidden_states.shape[0]} is not a multiple of the plan's {frames} frames")
    return hidden_states.shape[0] // frames, frames


class UNetSelfProcessor(MaskedProcessor):
    """UNet spatial ``attn1``: per-frame self-attention + masked self-attention (same frame, same object)."""

    def __call__(self, attn: PretrainedModel, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        strength = self.state.self_strength
        why = _unet_supported(attn, hidden_states) if strength else None
        if strength == 0.0 or why or encoder_hidden_states is not None or attention_mask is not None:
            if why:
                note_delegated(self.name, why)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        self.state.calls[self.name] += 1
        _, frames = _unet_frames(self.state, hidden_states)
        tokens = hidden_states.shape[1]
        plan = self.state.unet_self_plan(tokens)
        if self.new_layers:
            stock = self.original(attn, hidden_states, None, None, temb, *args, **kwargs)
            layer = self.masked_self_layer
            x = rearrange(self._layer_input(layer, hidden_states), "(b f) n c -> b (f n) c", f=frames)
            extra = rearrange(layer(x, plan, None, self.state.backend), "b (f n) c -> (b f) n c", f=frames)
            return stock + strength * extra.to(stock.dtype)
        q, k, v = (rearrange(proj(hidden_states), "bf n (h d) -> bf h n d", h=attn.heads)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        stock = rearrange(sdpa(q, k, v), "(b f) h n d -> b h (f n) d", f=frames) if strength < 1.0 else None
        q, k, v = (rearrange(t, "(b f) h n d -> b h (f n) d", f=frames) for t in (q, k, v))
        masked = partitioned_attention(q, k, v, plan, backend=self.state.backend)
        return _unet_out(attn, blend(stock, masked, strength), frames, hidden_states)


class UNetCrossProcessor(MaskedProcessor):
    """I2VGen-XL spatial ``attn2``: context cross-attention + masked cross-attention over local prompts."""

    def __call__(self, attn: PretrainedModel, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        strength = self.state.cross_strength
        why = _unet_supported(attn, hidden_states) if strength else None
        rows = None
        if strength and not why:
            rows = self.state.cross_row_index(_unet_frames(self.state, hidden_states)[0], hidden_states.device)
        if (strength == 0.0 or why or encoder_hidden_states is None or attention_mask is not None
                or selects_no_row(rows)):
            if why:
                note_delegated(self.name, why)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        self.state.calls[self.name] += 1
        batch, frames = _unet_frames(self.state, hidden_states)
        tokens = hidden_states.shape[1]
        if self.new_layers:
            stock = self.original(attn, hidden_states, encoder_hidden_states, None, temb, *args, **kwargs)
            layer = self.masked_cross_layer
            x = rearrange(self._layer_input(layer, hidden_states), "(b f) n c -> b (f n) c", f=frames)
            context = self.local_context.get(x.device, x.dtype)[None].expand(batch, -1, -1)
            extra = layer(x, context, self.state.unet_local_plan(tokens), self.state.backend)
            if rows is not None:
                extra = rows_only(extra, rows)
            return stock + strength * rearrange(extra, "b (f n) c -> (b f) n c", f=frames).to(stock.dtype)
        context = encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        local = self.local_context.get(hidden_states.device, hidden_states.dtype)
        local = local[None].expand(context.shape[0], -1, -1)
        joint = torch.cat([context, local], dim=1)  # per frame: [context ; local prompts]
        q = rearrange(attn.to_q(hidden_states), "bf n (h d) -> bf h n d", h=attn.heads)
        k = rearrange(attn.to_k(joint), "bf m (h d) -> bf h m d", h=attn.heads)
        v = rearrange(attn.to_v(joint), "bf m (h d) -> bf h m d", h=attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        shared = context.shape[1]
        stock = None
        if strength < 1.0 or rows is not None:
            stock = rearrange(sdpa(q, k[:, :, :shared], v[:, :, :shared]), "(b f) h n d -> b h (f n) d", f=frames)
        q, k, v = (rearrange(t, "(b f) h n d -> b h (f n) d", f=frames) for t in (q, k, v))
        plan = self.state.unet_cross_plan(tokens, shared)
        if rows is None:
            out = blend(stock, partitioned_attention(q, k, v, plan, backend=self.state.backend), strength)
        else:
            pick = lambda t: t.index_select(0, rows)  # noqa: E731
            masked = partitioned_attention(pick(q), pick(k), pick(v), plan, backend=self.state.backend)
            out = stock.index_copy(0, rows, blend(pick(stock), masked, strength))
        return _unet_out(attn, out, frames, hidden_states)


class _UNetFamily(Family):
    """What I2VGen-XL and Stable Video Diffusion share: sites, geometry, per-frame processors."""

    base_geometry: VideoGeometry = I2VGEN_XL
    cross_attention = False

    def geometry(self, model: PretrainedModel, vae: PretrainedModel | None = None) -> VideoGeometry:
        spatial = 8
        if vae is not None and hasattr(vae.config, "block_out_channels"):
            spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        return VideoGeometry(self.base_geometry.name, 1, False, spatial, multi_level=True)

    def sites(self, model: PretrainedModel) -> list[Site]:
        found = []
        for name, _ in model.named_modules():
            match = _UNET_SITE.match(name)
            if match is None:
                continue
            stage = 0 if match.group(2) is not None else (1 if match.group(1) == "mid_block" else 2)
            block = int(match.group(2) or match.group(3) or 0)
            found.append(((stage, block, int(match.group(4)), int(match.group(5))), name))
        found.sort()
        return [Site(i, name, f"{name}.attn1", f"{name}.attn2" if self.cross_attention else None)
                for i, (_, name) in enumerate(found)]

    def default_num_blocks(self, model: PretrainedModel) -> int:
        """The encoder's spatial blocks (the paper's K = 6)."""
        return sum(1 for s in self.sites(model) if s.block.startswith("down_blocks."))

    def site_processors(self, name: str, site: Site, modules: dict[str, nn.Module], saved: dict[str, Any],
                        state: Any, layers: Any, local: Any) -> tuple[dict[str, Any], list[Any]]:
        self_key = f"{site.self_attn}.processor"
        out: dict[str, Any] = {self_key: UNetSelfProcessor(f"{name}.{site.self_attn}", state, saved[self_key], layers)}
        if site.cross_attn is not None:
            cross_key = f"{site.cross_attn}.processor"
            out[cross_key] = UNetCrossProcessor(f"{name}.{site.cross_attn}", state, saved[cross_key], layers, local)
        return out, []

    def step_to_bcfhw(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return rearrange(x, "(b f) c h w -> b c f h w", f=frames)

    def step_from_bcfhw(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b c f h w -> (b f) c h w").contiguous()


class I2VGenXLFamily(_UNetFamily):
    name = "i2vgen_xl"
    denoiser_classes = ("I2VGenXLUNet",)
    base_geometry = I2VGEN_XL
    cross_attention = True
    variants = (Variant("i2vgen-xl", "I2VGen-XL", "I2VGenXLPipeline", ("unet",),
                        ANY_FRAMES, 2, (704, 1280), False, 16, 50, 9.0, 16.0, "OpenCLIP ViT-H"),)
    pipeline_classes = ("I2VGenXLPipeline",)

    def local_prompt_width(self, model: PretrainedModel) -> int | None:
        return int(model.config.cross_attention_dim)

    def local_context_projector(self, model: PretrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """Identity: its cross-attention reads CLIP states directly."""
        return lambda x: x

    def layer_context_width(self, model: PretrainedModel, dim: int) -> int | None:
        return self.local_prompt_width(model)  # raw encoder states

    def detect(self, index: ModelIndex, refuse: Callable[[str], Exception]) -> Variant:
        if "unet" not in index.components:
            raise refuse("it has no unet")
        return self.variant("i2vgen-xl")

    def encode_reference(self, pipeline: Any, video: torch.Tensor, device: torch.device, chunk: int = 8
                         ) -> torch.Tensor:
        vae = pipeline.vae
        parts = []
        for start in range(0, video.shape[0], chunk):
            x = rearrange(video[start:start + chunk], "f h w c -> f c h w").to(device, vae.dtype) * 2.0 - 1.0
            parts.append(vae.encode(x).latent_dist.mode().to(torch.float32))
        return rearrange(torch.cat(parts), "f c h w -> 1 c f h w") * vae.config.scaling_factor

    def text_tokens(self, pipeline: Any) -> int:
        return int(pipeline.tokenizer.model_max_length)

    def encode_prompt(self, pipeline: Any, text: str, device: torch.device, max_tokens: int) -> torch.Tensor:
        # encode_prompt reads the guidance scale only to decide on the negative prompt.
        pipeline._guidance_scale = 1.0
        embeds, _ = pipeline.encode_prompt(text, device, 1, None, clip_skip=None)
        return embeds

    def pipeline_kwargs(self, pipeline: Any, fps: float) -> dict[str, object]:
        return {"target_fps": max(1, round(fps)), "decode_chunk_size": 8, "clip_skip": None}


class SVDFamily(_UNetFamily):
    name = "svd"
    denoiser_classes = ("UNetSpatioTemporalConditionModel",)
    base_geometry = SVD
    unsupported: ClassVar[dict[str, str]] = {
        "StableVideoDiffusionPipeline": "Stable Video Diffusion, which takes no text prompt, so the per-object "
                                        "prompts of Through-The-Mask cannot apply; use I2VGen-XL as the UNet model"}

    def local_prompt_width(self, model: PretrainedModel) -> int | None:
        return None

    def local_context_projector(self, model: PretrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
        raise TTMInputError("local_prompts", "Stable Video Diffusion takes no prompt, so it has no local prompts",
                            "use masked self-attention only (no local prompts) with Stable Video Diffusion")

    def layer_context_width(self, model: PretrainedModel, dim: int) -> int | None:
        return None  # no prompt, no masked cross-attention layer


I2VGENXL = I2VGenXLFamily()
SVD_FAMILY = SVDFamily()
