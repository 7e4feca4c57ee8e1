"""CogVideoX (1.0 / 1.5 I2V) in diffusers: the family adapter.

=================  ========  ======  =======  =======  ==========================================
variant            VAE t     VAE s   patch    px/token token order
=================  ========  ======  =======  =======  ==========================================
CogVideoX 1.0 I2V  4 causal  8       1x2x2    16       [text ; (t, y, x)] joint sequence
CogVideoX 1.5 I2V  4 causal  8       2x2x2    16       [text ; (t, y, x)], latent frames padded at
                                                       the FRONT to an even count (the pipeline pads
                                                       one latent frame there and drops it after
                                                       decoding)
=================  ========  ======  =======  =======  ==========================================

One JOINT attention per block (``transformer_blocks.i.attn1``) over [text ; video] carries both
masked self- and masked cross-attention; the local prompts join it as extra keys. The pipeline
batches classifier-free guidance as [uncond ; cond] and keeps its latents as [B, F, C, H, W].
CogVideoX 1.0's learned positional embeddings fix its size (720 x 480) and length (49 frames).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from ...types import PretrainedModel
from ..attention.grids import VideoGeometry
from ..attention.kernels import partitioned_attention, sdpa
from ..attention.processors import MaskedProcessor, rows_only, selects_no_row
from .base import CAUSAL_4K1, Family, ModelIndex, Site, Variant

if TYPE_CHECKING:
    from ..attention.layers import MaskedBlockLayers
    from ..attention.state import LocalContext, MaskedAttentionState

logger = logging.getLogger(__name__)

COGVIDEOX_10 = VideoGeometry("cogvideox-1.0-i2v", temporal_ratio=4, causal=True, spatial_ratio=8, patch=(1, 2, 2))
COGVIDEOX_15 = VideoGeometry("cogvideox-1.5-i2v", temporal_ratio=4, causal=True, spatial_ratio=8, patch=(2, 2, 2),
                             pad_front=True)


def _corner_weights(a: float, b: float) -> dict[tuple[bool, bool], float]:
    """Bilinear weights of (masked self on?, masked cross on?) for strengths a (self) and b (cross)."""
    weights = {(False, False): (1 - a) * (1 - b), (True, False): a * (1 - b),
               (False, True): (1 - a) * b, (True, True): a * b}
    return {corner: w for corner, w in weights.items() if w > 0.0}


class CogVideoXJointProcessor(MaskedProcessor):
    """CogVideoX ``attn1``: the joint [text ; video] attention with masked self and masked cross.

    Local-prompt tokens join the joint sequence as extra keys: the model's ``text_proj`` then this
    block's own ``norm1`` modulation (text branch, read from the block's ``temb``), exactly what
    the global prompt's tokens get at block 0. Text rows never see them; video rows see object
    l's tokens inside l's box.
    """

    def __init__(self, name: str, state: MaskedAttentionState, original: Any, block: PretrainedModel,
                 layers: MaskedBlockLayers | None = None, local: LocalContext | None = None) -> None:
        super().__init__(name, state, original, layers, local)
        self.block = block
        self.temb: torch.Tensor | None = None

    def capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the block: remember this step's time embedding."""
        self.temb = kwargs.get("temb", args[2] if len(args) > 2 else None)

    def _local_tokens(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        local = self.local_context.get(like.device, like.dtype)[None].expand(batch, -1, -1)
        if self.temb is None:
            raise RuntimeError("CogVideoX masked cross-attention needs the block's temb (pre-hook not installed)")
        _, modulated, _, _ = self.block.norm1(local, local, self.temb)
        return modulated

    def __call__(self, attn: PretrainedModel, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        a, b = self.state.self_strength, self.state.cross_strength
        if (a == 0.0 and b == 0.0) or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        self.state.calls[self.name] += 1
        text_len = encoder_hidden_states.shape[1]
        batch, num_video = hidden_states.shape[:2]
        rows = self.state.cross_row_index(batch, hidden_states.device) if b else None
        if selects_no_row(rows):  # no batch row takes the local prompts: masked self only
            b, rows = 0.0, None
            if a == 0.0:
                return self.original(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb)
        if self.new_layers:
            video, text = self.original(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb)
            extra = torch.zeros_like(video)
            if a:
                layer = self.masked_self_layer
                rope = (lambda t: _cog_rope(t, image_rotary_emb)) if image_rotary_emb is not None else None
                plan = self.state.video_self_plan(num_video)
                extra = extra + a * layer(self._layer_input(layer, hidden_states), plan, rope,
                                          self.state.backend).to(video.dtype)
            if b:
                cross_layer = self.masked_cross_layer
                x = self._layer_input(cross_layer, hidden_states)
                context = self.local_context.get(x.device, x.dtype)[None].expand(batch, -1, -1)
                cross = cross_layer(x, context, self.state.local_plan(num_video), self.state.backend).to(video.dtype)
                if rows is not None:
                    cross = rows_only(cross, rows)
                extra = extra + b * cross
            return video + extra, text

        joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = (rearrange(proj(joint), "b n (h d) -> b h n d", h=attn.heads)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q = torch.cat([q[:, :, :text_len], _cog_rope(q[:, :, text_len:], image_rotary_emb)], dim=2)
            k = torch.cat([k[:, :, :text_len], _cog_rope(k[:, :, text_len:], image_rotary_emb)], dim=2)
        k_local = v_local = None
        if b:
            local = self._local_tokens(batch, hidden_states)
            k_local = rearrange(attn.to_k(local), "b m (h d) -> b h m d", h=attn.heads)
            if attn.norm_k is not None:
                k_local = attn.norm_k(k_local)
            v_local = rearrange(attn.to_v(local), "b m (h d) -> b h m d", h=attn.heads)

        def corners(select: torch.Tensor | None, cross_on: bool) -> torch.Tensor:
            pick = (lambda t: t) if select is None else (lambda t: t.index_select(0, select))
            rows_q, rows_k, rows_v = pick(q), pick(k), pick(v)
            total = None
            for (self_on, with_cross), weight in _corner_weights(a, b if cross_on else 0.0).items():
                if not self_on and not with_cross:
                    part = sdpa(rows_q, rows_k, rows_v)
                else:
                    plan = self.state.joint_plan(text_len, num_video, self_on, with_cross)
                    keys, values = rows_k, rows_v
                    if with_cross:  # [text ; video ; local prompts], built for the selected rows only
                        keys = torch.cat([rows_k, pick(k_local)], dim=2)
                        values = torch.cat([rows_v, pick(v_local)], dim=2)
                    part = partitioned_attention(rows_q, keys, values, plan, backend=self.state.backend)
                    del keys, values
                part = part if weight == 1.0 else part * weight
                total = part if total is None else total + part
            if total is None:  # the corner weights sum to 1, so one of them is above 0
                raise RuntimeError(f"no attention corner has a weight at strengths {a} and {b}")
            return total

        if rows is None:
            out = corners(None, True)
        else:  # each classifier-free-guidance half computed once: local prompts on the `rows` only
            keep = torch.ones(batch, dtype=torch.bool, device=rows.device)
            keep[rows] = False
            others = keep.nonzero().flatten()
            cross_part = corners(rows, True)
            out = cross_part.new_empty(batch, *cross_part.shape[1:]).index_copy_(0, rows, cross_part)
            del cross_part
            if others.numel():
                out.index_copy_(0, others, corners(others, False))
        out = attn.to_out[1](attn.to_out[0](rearrange(out, "b h n d -> b n (h d)")))
        text_out, video_out = out.split([text_len, num_video], dim=1)
        return video_out, text_out


def _cog_rope(x: torch.Tensor, image_rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    # diffusers annotates (cos, sin) as tuple[Tensor] and the result as a tuple; it returns one tensor
    return apply_rotary_emb(x, image_rotary_emb)  # type: ignore[arg-type, return-value]


class CogVideoXFamily(Family):
    name = "cogvideox"
    denoiser_classes = ("CogVideoXTransformer3DModel",)
    variants = (
        Variant("cogvideox-1.0-i2v", "CogVideoX 1.0 I2V", "CogVideoXImageToVideoPipeline", ("transformer",),
                CAUSAL_4K1, 5, (480, 720), True, 49, 50, 6.0, 8.0, "T5-XXL"),
        Variant("cogvideox-1.5-i2v", "CogVideoX 1.5 I2V", "CogVideoXImageToVideoPipeline", ("transformer",),
                CAUSAL_4K1, 5, (768, 1360), False, 81, 50, 6.0, 16.0, "T5-XXL"),
    )
    pipeline_classes = ("CogVideoXImageToVideoPipeline",)
    unsupported: ClassVar[dict[str, str]] = {
        "CogVideoXPipeline": "a text-to-video CogVideoX; Stage 2 animates an image, so use CogVideoX-5b-I2V or "
                             "CogVideoX1.5-5B-I2V",
        "CogVideoXVideoToVideoPipeline": "CogVideoX video-to-video; use the I2V model (CogVideoX-5b-I2V)",
    }

    # -------------------------------------------------------------- masked attention on a denoiser
    def geometry(self, model: PretrainedModel, vae: PretrainedModel | None = None) -> VideoGeometry:
        config = model.config
        p, pt = config.patch_size, config.patch_size_t
        base = COGVIDEOX_10 if pt is None else COGVIDEOX_15
        return VideoGeometry(base.name, config.temporal_compression_ratio, True, 8, (pt or 1, p, p),
                             pad_front=pt is not None)

    def sites(self, model: PretrainedModel) -> list[Site]:
        return [Site(i, f"transformer_blocks.{i}", f"transformer_blocks.{i}.attn1", None)
                for i in range(len(model.transformer_blocks))]

    def local_prompt_width(self, model: PretrainedModel) -> int | None:
        return int(model.config.text_embed_dim)

    def local_context_projector(self, model: PretrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """``patch_embed.text_proj`` (before the per-block modulation)."""
        return model.patch_embed.text_proj

    def layer_context_width(self, model: PretrainedModel, dim: int) -> int | None:
        return dim  # local prompts reach the new layers through the model's own text projection

    def site_processors(self, name: str, site: Site, modules: dict[str, nn.Module], saved: dict[str, Any],
                        state: Any, layers: Any, local: Any) -> tuple[dict[str, Any], list[Any]]:
        key = f"{site.self_attn}.processor"
        block = modules[site.block]
        processor = CogVideoXJointProcessor(f"{name}.{site.self_attn}", state, saved[key], block, layers, local)
        return {key: processor}, [block.register_forward_pre_hook(processor.capture, with_kwargs=True)]

    # -------------------------------------------------------------------- its diffusers pipelines
    def detect(self, index: ModelIndex, refuse: Callable[[str], Exception]) -> Variant:
        if "transformer" not in index.components:
            raise refuse("it has no transformer")
        patch_t = index.component_config("transformer").get("patch_size_t")
        return self.variant("cogvideox-1.0-i2v" if patch_t is None else "cogvideox-1.5-i2v")

    def latents_to_bcfhw(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b f c h w -> b c f h w")

    def latents_from_bcfhw(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b c f h w -> b f c h w")

    def encode_reference(self, pipeline: Any, video: torch.Tensor, device: torch.device) -> torch.Tensor:
        vae = pipeline.vae
        x = rearrange(video, "f h w c -> 1 c f h w").to(device, vae.dtype) * 2.0 - 1.0
        return vae.encode(x).latent_dist.mode().to(torch.float32) * vae.config.scaling_factor

    def text_tokens(self, pipeline: Any) -> int:
        return int(pipeline.transformer.config.max_text_seq_length)

    def encode_prompt(self, pipeline: Any, text: str, device: torch.device, max_tokens: int) -> torch.Tensor:
        return pipeline._get_t5_prompt_embeds(prompt=text, num_videos_per_prompt=1, max_sequence_length=max_tokens,
                                              device=device)

    def fixed_size(self, variant: Variant, pipeline: Any, geometry: VideoGeometry
                   ) -> tuple[tuple[int, int], int] | None:
        config = pipeline.transformer.config
        if not (variant.fixed_size and config.use_learned_positional_embeddings):
            return None
        ratio = geometry.spatial_ratio
        return (config.sample_height * ratio, config.sample_width * ratio), int(config.sample_frames)

    def pipeline_kwargs(self, pipeline: Any, fps: float) -> dict[str, object]:
        return {"max_sequence_length": self.text_tokens(pipeline)}


    # ------------------------------------------------------------------ training (ttm-train)
    # What CogVideoXImageToVideoPipeline.__call__ / prepare_latents build around the latents, rebuilt
    # for a training step so a trained checkpoint sees at inference exactly what it was trained on.
    def training_check(self, pipeline: Any, num_frames: int, height: int, width: int) -> None:
        """Refuse clip sizes the pipeline would not generate as trained (naming the config key)."""
        from ...errors import TTMInputError

        config = pipeline.transformer.config
        ratio = int(pipeline.vae_scale_factor_spatial)
        latent_frames = (num_frames - 1) // int(pipeline.vae_scale_factor_temporal) + 1
        if height % (ratio * config.patch_size) or width % (ratio * config.patch_size):
            raise TTMInputError("data.size", f"{height}x{width} is not a multiple of {ratio * config.patch_size} px",
                                f"use a size divisible by {ratio * config.patch_size}")
        if (num_frames - 1) % int(pipeline.vae_scale_factor_temporal):
            raise TTMInputError("data.frames", f"{num_frames} frames", "use 1 + 4k frames (e.g. 49)")
        if config.use_learned_positional_embeddings:
            size = (config.sample_height * ratio, config.sample_width * ratio)
            frames = int(config.sample_frames)
            if (height, width) != size or num_frames != frames:
                raise TTMInputError("data.size", f"{height}x{width}, {num_frames} frames: this CogVideoX has learned "
                                    f"positional embeddings for {size[0]}x{size[1]}, {frames} frames only",
                                    f"set data.size: [{size[0]}, {size[1]}] and data.frames: {frames}")
        pt = config.patch_size_t
        if pt is not None and latent_frames % pt:
            # CogVideoX 1.5 pads the latents to a multiple of patch_size_t at inference; training on
            # clips that need no padding keeps the trained and the inferred inputs identical.
            raise TTMInputError("data.frames", f"{num_frames} frames are {latent_frames} latent frames, not a "
                                f"multiple of CogVideoX 1.5's temporal patch {pt}",
                                f"use frames = 1 + 4k with k + 1 divisible by {pt} (e.g. 77 or 85)")

    def training_image_condition(self, pipeline: Any, image: torch.Tensor, num_frames: int,
                                 device: torch.device) -> dict[str, torch.Tensor]:
        """The first frame's latents as the pipeline builds them, zero-padded to every latent frame.

        Args:
            image: float ``[H, W, 3]`` in 0..1 (quantised to 8 bits, as the pipeline's PIL input is).
        Returns:
            ``image_latents`` float32 ``[1, F_lat, C, h, w]`` (the VAE mode; the pipeline samples).
        """
        from diffusers.utils.torch_utils import get_module_execution_device

        vae = pipeline.vae
        image = image.clamp(0.0, 1.0).mul(255.0).round().div(255.0)
        x = rearrange(image.to(torch.float32), "h w c -> 1 c 1 h w") * 2.0 - 1.0
        latents = vae.encode(x.to(get_module_execution_device(vae), vae.dtype)).latent_dist.mode()
        latents = rearrange(latents.to(device, torch.float32), "b c f h w -> b f c h w")
        scale = float(pipeline.vae_scaling_factor_image)
        latents = latents / scale if vae.config.invert_scale_latents else latents * scale
        latent_frames = (num_frames - 1) // int(pipeline.vae_scale_factor_temporal) + 1
        padding = latents.new_zeros(1, latent_frames - 1, *latents.shape[2:])
        return {"image_latents": torch.cat([latents, padding], dim=1)}

    def training_call(self, pipeline: Any, noisy: torch.Tensor, timestep: torch.Tensor,
                      image_condition: dict[str, torch.Tensor], prompt_embeds: torch.Tensor,
                      extra: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The denoiser's keyword arguments for one training forward (no loss mask).

        Args:
            noisy: x_t ``[B, C, F_lat, h, w]`` (converted to CogVideoX's ``[B, F, C, h, w]`` here).
            timestep: ``[B]`` timesteps 0..999.
            image_condition: ``training_image_condition`` of each clip, concatenated on the batch.
            prompt_embeds: ``[B, L, D]`` T5 states.
            extra: appended condition latents ``[B, C_extra, F_lat, h, w]`` or None.
        """
        transformer = pipeline.transformer
        x = torch.cat([self.latents_from_bcfhw(noisy), image_condition["image_latents"].to(noisy)], dim=2)
        if extra is not None:
            x = torch.cat([x, self.latents_from_bcfhw(extra).to(x)], dim=2)
        ratio = int(pipeline.vae_scale_factor_spatial)
        height, width = noisy.shape[-2] * ratio, noisy.shape[-1] * ratio
        rope = None
        if transformer.config.use_rotary_positional_embeddings:
            rope = pipeline._prepare_rotary_positional_embeddings(height, width, x.shape[1], x.device)
        ofs = None if transformer.config.ofs_embed_dim is None else x.new_full((1,), fill_value=2.0)
        kwargs: dict[str, Any] = dict(hidden_states=x, encoder_hidden_states=prompt_embeds,
                                      timestep=timestep.round().long(), ofs=ofs, image_rotary_emb=rope,
                                      return_dict=False)
        return kwargs, None


COGVIDEOX = CogVideoXFamily()
