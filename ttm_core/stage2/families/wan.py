"""Wan (2.1 I2V, 2.2 I2V-A14B, 2.2 TI2V-5B) in diffusers: the family adapter.

=================  ========  ======  =======  =======  ============================
variant            VAE t     VAE s   patch    px/token token order
=================  ========  ======  =======  =======  ============================
Wan 2.1 I2V        4 causal  8       1x2x2    16       (t, y, x) row-major
Wan 2.2 I2V-A14B   4 causal  8       1x2x2    16       (t, y, x), both experts
Wan 2.2 TI2V-5B    4 causal  16      1x2x2    32       (t, y, x) row-major
=================  ========  ======  =======  =======  ============================

Attention sites: every ``blocks.i`` has ``attn1`` (self-attention with RoPE) and ``attn2`` (cross-
attention to [image tokens ;] 512 text tokens). Masked self-attention runs in ``attn1`` over all
frames; masked cross-attention in ``attn2`` joins the local prompts (through the model's own
``condition_embedder.text_embedder``) to the text keys. Wan's pipelines call the model once with the
prompt and once with the negative prompt, so a forward pre-hook tells the two calls apart.
The ComfyUI-native engine (``native/``) uses the same geometries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from ...types import PretrainedModel
from ..attention.grids import VideoGeometry
from ..attention.kernels import partitioned_attention, sdpa
from ..attention.processors import MaskedProcessor, note_delegated, rows_only, selects_no_row
from ..attention.routing import blend
from .base import CAUSAL_4K1, Family, ModelIndex, Site, Variant

logger = logging.getLogger(__name__)

WAN21_I2V = VideoGeometry("wan2.1-i2v", temporal_ratio=4, causal=True, spatial_ratio=8, patch=(1, 2, 2))
WAN22_I2V_A14B = VideoGeometry("wan2.2-i2v-a14b", temporal_ratio=4, causal=True, spatial_ratio=8, patch=(1, 2, 2))
WAN22_TI2V = VideoGeometry("wan2.2-ti2v-5b", temporal_ratio=4, causal=True, spatial_ratio=16, patch=(1, 2, 2))
WAN_TEXT_TOKENS = 512
"""diffusers' WanAttnProcessor splits its cross-attention context as [image ; last 512 text tokens];
the pipelines pad every prompt to it."""


def _wan_projections(attn: PretrainedModel, x: torch.Tensor, context: torch.Tensor | None = None):
    """q, k, v as diffusers' Wan processor makes them (fused projections included)."""
    if context is None:
        context = x
    if getattr(attn, "fused_projections", False):
        if not attn.is_cross_attention:
            return attn.to_qkv(x).chunk(3, dim=-1)
        key, value = attn.to_kv(context).chunk(2, dim=-1)
        return attn.to_q(x), key, value
    return attn.to_q(x), attn.to_k(context), attn.to_v(context)


def _wan_rope(x: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Wan's rotary embedding on ``[B, N, H, D]`` (interleaved pairs; cos/sin ``[1, N, 1, D]``)."""
    freqs_cos, freqs_sin = rotary_emb
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _wan_rope_bhnd(rotary_emb: tuple[torch.Tensor, torch.Tensor]):
    def apply(x: torch.Tensor) -> torch.Tensor:
        return rearrange(_wan_rope(rearrange(x, "b h n d -> b n h d"), rotary_emb), "b n h d -> b h n d")
    return apply


def _wan_out(attn: PretrainedModel, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, D]`` attention output -> the block's channels through to_out."""
    hidden = rearrange(out, "b h n d -> b n (h d)").type_as(like)
    return attn.to_out[1](attn.to_out[0](hidden))


class WanSelfProcessor(MaskedProcessor):
    """Wan ``attn1``: self-attention + masked self-attention (RoPE kept, all frames)."""

    def __call__(self, attn: PretrainedModel, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        strength = self.state.self_strength
        if strength == 0.0 or encoder_hidden_states is not None or attention_mask is not None:
            if strength and (encoder_hidden_states is not None or attention_mask is not None):
                note_delegated(self.name, "called with a context or an attention mask")
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        self.state.calls[self.name] += 1
        plan = self.state.video_self_plan(hidden_states.shape[1])
        if self.new_layers:
            stock = self.original(attn, hidden_states, None, None, rotary_emb)
            layer = self.masked_self_layer
            rope = _wan_rope_bhnd(rotary_emb) if rotary_emb is not None else None
            extra = layer(self._layer_input(layer, hidden_states), plan, rope, self.state.backend)
            return stock + strength * extra.to(stock.dtype)
        query, key, value = _wan_projections(attn, hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (rearrange(t, "b n (h d) -> b n h d", h=attn.heads) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _wan_rope(query, rotary_emb), _wan_rope(key, rotary_emb)
        q, k, v = (rearrange(t, "b n h d -> b h n d") for t in (query, key, value))
        masked = partitioned_attention(q, k, v, plan, backend=self.state.backend)
        stock = sdpa(q, k, v) if strength < 1.0 else None
        return _wan_out(attn, blend(stock, masked, strength), query)


class WanCrossProcessor(MaskedProcessor):
    """Wan ``attn2``: text (+ image) cross-attention + masked cross-attention over local prompts."""

    def __call__(self, attn: PretrainedModel, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        strength = self.state.cross_strength
        batch, num_tokens = hidden_states.shape[:2]
        rows = self.state.cross_row_index(batch, hidden_states.device) if strength else None
        if strength == 0.0 or attention_mask is not None or encoder_hidden_states is None or selects_no_row(rows):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        self.state.calls[self.name] += 1
        if self.new_layers:
            stock = self.original(attn, hidden_states, encoder_hidden_states, None, rotary_emb)
            layer = self.masked_cross_layer
            x = self._layer_input(layer, hidden_states)
            context = self.local_context.get(x.device, x.dtype)[None].expand(batch, -1, -1)
            extra = layer(x, context, self.state.local_plan(num_tokens), self.state.backend).to(stock.dtype)
            if rows is not None:
                extra = rows_only(extra, rows)
            return stock + strength * extra

        image_context = None
        text_context = encoder_hidden_states
        if attn.add_k_proj is not None:
            # Same split as diffusers' WanAttnProcessor: [image tokens ; 512 text tokens].
            image_len = encoder_hidden_states.shape[1] - WAN_TEXT_TOKENS
            image_context = encoder_hidden_states[:, :image_len]
            text_context = encoder_hidden_states[:, image_len:]
        query, key, value = _wan_projections(attn, hidden_states, text_context)
        query, key = attn.norm_q(query), attn.norm_k(key)
        local_key, local_value = _wan_kv(attn, self.local_context.get(hidden_states.device, hidden_states.dtype)[None])
        local_key = attn.norm_k(local_key)
        q = rearrange(query, "b n (h d) -> b h n d", h=attn.heads)
        k = rearrange(key, "b m (h d) -> b h m d", h=attn.heads)
        v = rearrange(value, "b m (h d) -> b h m d", h=attn.heads)
        k_local = rearrange(local_key, "1 m (h d) -> 1 h m d", h=attn.heads).expand(batch, -1, -1, -1)
        v_local = rearrange(local_value, "1 m (h d) -> 1 h m d", h=attn.heads).expand(batch, -1, -1, -1)
        plan = self.state.video_cross_plan(num_tokens, k.shape[2])
        if rows is None:
            stock = sdpa(q, k, v) if strength < 1.0 else None
            masked = partitioned_attention(q, torch.cat([k, k_local], 2), torch.cat([v, v_local], 2), plan,
                                           backend=self.state.backend)
            out = blend(stock, masked, strength)
        else:
            stock = sdpa(q, k, v)
            pick = lambda t: t.index_select(0, rows)  # noqa: E731
            masked = partitioned_attention(pick(q), torch.cat([pick(k), pick(k_local)], 2),
                                           torch.cat([pick(v), pick(v_local)], 2), plan, backend=self.state.backend)
            out = stock.index_copy(0, rows, blend(pick(stock), masked, strength))
        if image_context is not None:
            key_img, value_img = _wan_image_kv(attn, image_context)
            k_img = rearrange(attn.norm_added_k(key_img), "b m (h d) -> b h m d", h=attn.heads)
            v_img = rearrange(value_img, "b m (h d) -> b h m d", h=attn.heads)
            out = out + sdpa(q, k_img, v_img).type_as(out)
        return _wan_out(attn, out, query)


def _wan_kv(attn: PretrainedModel, context: torch.Tensor):
    """Text-branch k, v of ``context`` (fused or not), as diffusers' Wan processor makes them."""
    if getattr(attn, "fused_projections", False):
        return attn.to_kv(context).chunk(2, dim=-1)
    return attn.to_k(context), attn.to_v(context)


def _wan_image_kv(attn: PretrainedModel, image_context: torch.Tensor):
    if getattr(attn, "fused_projections", False):
        return attn.to_added_kv(image_context).chunk(2, dim=-1)
    return attn.add_k_proj(image_context), attn.add_v_proj(image_context)


class WanFamily(Family):
    name = "wan"
    denoiser_classes = ("WanTransformer3DModel",)
    variants = (
        Variant("wan2.1-i2v", "Wan 2.1 I2V", "WanImageToVideoPipeline", ("transformer",),
                CAUSAL_4K1, 5, (480, 832), False, 81, 40, 5.0, 16.0, "umT5-XXL"),
        Variant("wan2.2-i2v-a14b", "Wan 2.2 I2V-A14B", "WanImageToVideoPipeline", ("transformer", "transformer_2"),
                CAUSAL_4K1, 5, (480, 832), False, 81, 40, 3.5, 16.0, "umT5-XXL"),
        Variant("wan2.2-ti2v-5b", "Wan 2.2 TI2V-5B", "WanImageToVideoPipeline", ("transformer",),
                CAUSAL_4K1, 5, (704, 1280), False, 121, 50, 5.0, 24.0, "umT5-XXL"),
    )
    pipeline_classes = ("WanImageToVideoPipeline", "WanPipeline")
    unsupported: ClassVar[dict[str, str]] = {
        "WanPipeline": "a text-to-video Wan (T2V); use an I2V model such as Wan2.1-I2V-14B-480P-Diffusers, "
                       "Wan2.2-I2V-A14B-Diffusers or Wan2.2-TI2V-5B-Diffusers"}

    # -------------------------------------------------------------- masked attention on a denoiser
    def geometry(self, model: PretrainedModel, vae: PretrainedModel | None = None) -> VideoGeometry:
        """Without a VAE: 48 latent channels mean the Wan 2.2 TI2V VAE (16 px per latent pixel),
        anything else the 8 px Wan 2.1 VAE (Wan 2.1 and 2.2 A14B share it)."""
        config = model.config
        spatial = getattr(vae.config, "scale_factor_spatial", None) if vae is not None else None
        if spatial is None:
            spatial = 16 if config.out_channels == 48 else 8
        temporal = getattr(vae.config, "scale_factor_temporal", None) if vae is not None else None
        base = WAN22_TI2V if spatial == 16 else WAN21_I2V
        return VideoGeometry(base.name, temporal or 4, True, int(spatial), tuple(config.patch_size))

    def sites(self, model: PretrainedModel) -> list[Site]:
        return [Site(i, f"blocks.{i}", f"blocks.{i}.attn1", f"blocks.{i}.attn2") for i in range(len(model.blocks))]

    def local_prompt_width(self, model: PretrainedModel) -> int | None:
        return int(model.config.text_dim)

    def local_context_projector(self, model: PretrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """``condition_embedder.text_embedder``: what the global prompt goes through."""
        return model.condition_embedder.text_embedder

    def layer_context_width(self, model: PretrainedModel, dim: int) -> int | None:
        return dim  # local prompts reach the new layers through the model's own text projection

    def site_processors(self, name: str, site: Site, modules: dict[str, nn.Module], saved: dict[str, Any],
                        state: Any, layers: Any, local: Any) -> tuple[dict[str, Any], list[Any]]:
        self_key, cross_key = f"{site.self_attn}.processor", f"{site.cross_attn}.processor"
        return {self_key: WanSelfProcessor(f"{name}.{site.self_attn}", state, saved[self_key], layers),
                cross_key: WanCrossProcessor(f"{name}.{site.cross_attn}", state, saved[cross_key], layers, local)}, []

    # -------------------------------------------------------------------- its diffusers pipelines
    def detect(self, index: ModelIndex, refuse: Callable[[str], Exception]) -> Variant:
        if "transformer" not in index.components:
            raise refuse("it has no transformer")
        if index.config.get("expand_timesteps"):
            return self.variant("wan2.2-ti2v-5b")
        if index.class_name == "WanPipeline":
            raise refuse(self.unsupported["WanPipeline"])
        if "transformer_2" in index.components:
            return self.variant("wan2.2-i2v-a14b")
        if "image_encoder" in index.components:
            return self.variant("wan2.1-i2v")
        raise refuse("a Wan image-to-video layout that is neither Wan 2.1 I2V (image_encoder), Wan 2.2 "
                     "I2V-A14B (transformer_2) nor Wan 2.2 TI2V-5B (expand_timesteps)")

    def encode_reference(self, pipeline: Any, video: torch.Tensor, device: torch.device) -> torch.Tensor:
        vae = pipeline.vae
        x = rearrange(video, "f h w c -> 1 c f h w").to(device, vae.dtype) * 2.0 - 1.0
        latents = vae.encode(x).latent_dist.mode().to(torch.float32)
        mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
        return (latents - mean) / std

    def clean_prompt(self, text: str) -> str:
        from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

        return prompt_clean(text)

    def text_tokens(self, pipeline: Any) -> int:
        return WAN_TEXT_TOKENS  # WanAttnProcessor hard-codes 512 text tokens; the pipelines pad to it

    def encode_prompt(self, pipeline: Any, text: str, device: torch.device, max_tokens: int) -> torch.Tensor:
        embeds = pipeline._get_t5_prompt_embeds(prompt=text, num_videos_per_prompt=1, max_sequence_length=max_tokens,
                                                device=device)
        return embeds.to(pipeline.transformer.dtype)  # the pipeline casts to the transformer's dtype too

    def pipeline_kwargs(self, pipeline: Any, fps: float) -> dict[str, object]:
        return {"max_sequence_length": WAN_TEXT_TOKENS}

    def load_overrides(self, folder: Path, dtype: torch.dtype, weights_variant: str | None) -> dict[str, object]:
        if dtype == torch.float32:
            return {}
        import diffusers

        # Wan's VAE in float32, as the Wan authors and diffusers recommend (a small model).
        return {"vae": diffusers.AutoencoderKLWan.from_pretrained(str(folder), subfolder="vae", dtype=torch.float32,
                                                                   local_files_only=True, variant=weights_variant)}

    @contextmanager
    def conditional_rows(self, denoisers: list[nn.Module], state: Any, negative: torch.Tensor | None,
                         do_cfg: bool) -> Iterator[None]:
        """Wan calls its model once with the prompt and once with the negative prompt: local prompts only
        reach the first call (the pre-hook recognises the negative prompt's states by their storage)."""
        pointer = negative.data_ptr() if negative is not None else None

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            uncond = pointer is not None and states is not None and states.data_ptr() == pointer
            state.cross_rows = (False,) if uncond else None

        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in denoisers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


    # ------------------------------------------------------------------ training (ttm-train)
    # What WanImageToVideoPipeline.__call__ / prepare_latents build around the latents, rebuilt for a
    # training step so a trained checkpoint sees at inference exactly the inputs it was trained on.
    def training_check(self, pipeline: Any, num_frames: int, height: int, width: int) -> None:
        """Refuse clip sizes the pipeline would not generate (naming the config key)."""
        from ...errors import TTMInputError

        ratio = int(pipeline.vae_scale_factor_spatial) * int(pipeline.transformer.config.patch_size[1])
        if height % ratio or width % ratio:
            raise TTMInputError("data.size", f"{height}x{width} is not a multiple of {ratio} px (one token)",
                                f"use a height and width divisible by {ratio}")
        if (num_frames - 1) % int(pipeline.vae_scale_factor_temporal):
            raise TTMInputError("data.frames", f"{num_frames} frames", "use 1 + 4k frames (e.g. 81)")

    def training_image_condition(self, pipeline: Any, image: torch.Tensor, num_frames: int,
                                 device: torch.device) -> dict[str, torch.Tensor]:
        """The first frame's conditioning, as the pipeline derives it (batch 1, float32).

        Args:
            image: float ``[H, W, 3]`` in 0..1 (quantised to 8 bits, as the pipeline's PIL input is).
            num_frames: frames of the clip.
        Returns:
            ``condition``: Wan 2.1 I2V ``[1, 4 + C, F_lat, h, w]`` (first-frame mask channels + the VAE
            latents of [image, zeros]); Wan 2.2 TI2V ``[1, C, 1, h, w]`` (the image's latents, which
            replace the first latent frame); and for Wan 2.1 ``image_embeds`` ``[1, N, D]`` (CLIP).
        """
        from diffusers.utils.torch_utils import get_module_execution_device

        vae = pipeline.vae
        height, width = image.shape[:2]
        image = image.clamp(0.0, 1.0).mul(255.0).round().div(255.0)
        x = rearrange(image.to(torch.float32), "h w c -> 1 c 1 h w") * 2.0 - 1.0
        expand = bool(pipeline.config.expand_timesteps)
        if not expand:  # prepare_latents: [image, zeros] over all frames
            x = torch.cat([x, x.new_zeros(1, 3, num_frames - 1, height, width)], dim=2)
        vae_device = get_module_execution_device(vae)
        latents = vae.encode(x.to(vae_device, vae.dtype)).latent_dist.mode().to(device, torch.float32)
        mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
        latents = (latents - mean) * inv_std
        out: dict[str, torch.Tensor] = {}
        if expand:
            out["condition"] = latents
        else:
            ratio = int(pipeline.vae_scale_factor_temporal)
            lat_h, lat_w = latents.shape[-2:]
            mask = torch.ones(1, 1, num_frames, lat_h, lat_w, device=device)
            mask[:, :, 1:] = 0
            first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=ratio)
            mask = torch.cat([first, mask[:, :, 1:]], dim=2).view(1, -1, ratio, lat_h, lat_w).transpose(1, 2)
            out["condition"] = torch.cat([mask, latents], dim=1)
        if pipeline.transformer.config.image_dim is not None:
            from PIL import Image

            pil = Image.fromarray(image.mul(255.0).round().to(torch.uint8).cpu().numpy())
            out["image_embeds"] = pipeline.encode_image(pil, device).to(torch.float32)
        return out

    def training_call(self, pipeline: Any, noisy: torch.Tensor, timestep: torch.Tensor,
                      image_condition: dict[str, torch.Tensor], prompt_embeds: torch.Tensor,
                      extra: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The denoiser's keyword arguments for one training forward, and the loss mask.

        Args:
            noisy: x_t ``[B, C, F_lat, h, w]``.
            timestep: ``[B]`` float timesteps (1000 sigma).
            image_condition: ``training_image_condition`` of each clip, concatenated on the batch.
            prompt_embeds: ``[B, 512, D]`` text states.
            extra: the appended condition latents ``[B, C_extra, F_lat, h, w]`` (after the stock
                channels, where ``stage2.trained.trained_denoiser`` appends them at inference), or None.
        Returns:
            (kwargs, mask): Wan 2.2 TI2V's mask ``[1, 1, F_lat, h, w]`` leaves out the first latent
            frame (the given image, never denoised); None elsewhere.
        """
        transformer = pipeline.transformer
        mask = None
        if pipeline.config.expand_timesteps:
            # Wan 2.2 TI2V: the first latent frame IS the image (timestep 0 on its tokens)
            condition = image_condition["condition"]
            mask = torch.ones(1, 1, *noisy.shape[2:], dtype=noisy.dtype, device=noisy.device)
            mask[:, :, 0] = 0
            x = (1 - mask) * condition + mask * noisy
            p_h, p_w = (int(p) for p in transformer.config.patch_size[1:])
            tokens = mask[0][0][:, ::p_h, ::p_w].flatten()
            step = tokens[None] * timestep.to(tokens)[:, None]
        else:
            x = torch.cat([noisy, image_condition["condition"]], dim=1)
            step = timestep
        if extra is not None:
            x = torch.cat([x, extra.to(x)], dim=1)
        image_embeds = image_condition.get("image_embeds")
        kwargs: dict[str, Any] = dict(hidden_states=x, timestep=step, encoder_hidden_states=prompt_embeds,
                                      encoder_hidden_states_image=image_embeds, return_dict=False)
        return kwargs, mask


WAN = WanFamily()
