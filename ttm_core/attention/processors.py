"""diffusers attention processors that add Through-The-Mask's masked attention to a block.

Paper order inside a block (Sec. 3.2): self-attention -> masked self-attention -> cross-attention
-> masked cross-attention. The processors sit in the block's attention slots, so each masked
attention joins its stock partner's sub-layer (same normalised input, same residual branch and
gate): the self slot computes self + masked self, the cross slot cross + masked cross, and the
self sub-layer still runs before the cross sub-layer.

Modes (``MaskedAttentionConfig.mode``):

* training-free: the block's own projections are reused with the masks and the output is blended
  with the stock one, ``(1 - s) * stock + s * masked`` (blended before the output projection,
  which is affine). Masked self: same-object keys only. Masked cross (joint form): the stock
  text keys plus the local-prompt keys of every box the token lies in, one softmax, so tokens
  outside every box get exactly the stock cross-attention. CogVideoX has one joint attention for
  both roles; its two strengths interpolate bilinearly between the four corners
  (stock, masked self, masked cross, both), each corner one exact masked attention.
* new layers: the stock output plus ``s * layer(x)`` from ``MaskedLayers`` (zero-initialised
  output projections): masked self over same-object tokens, masked cross over the local prompts
  only (tokens outside every box: exactly zero, the paper's form).

Strength 0 or a disabled state calls the saved original processor: the stock output, bit for bit.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from einops import rearrange
from torch import nn

from .families import WAN_TEXT_TOKENS
from .kernels import partitioned_attention, sdpa
from .layers import MaskedBlockLayers
from .routing import blend
from .state import LocalContext, MaskedAttentionState

logger = logging.getLogger(__name__)

_UNSUPPORTED_LOGGED: set[str] = set()


def _corner_weights(a: float, b: float) -> dict[tuple[bool, bool], float]:
    """Bilinear weights of (masked self on?, masked cross on?) for strengths a (self) and b (cross)."""
    weights = {(False, False): (1 - a) * (1 - b), (True, False): a * (1 - b),
               (False, True): (1 - a) * b, (True, True): a * b}
    return {corner: w for corner, w in weights.items() if w > 0.0}


def _rows_only(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x`` with every batch row outside ``rows`` zeroed (local prompts reach the conditional rows only)."""
    return torch.zeros_like(x).index_copy(0, rows, x.index_select(0, rows))


def _none(rows: torch.Tensor | None) -> bool:
    """True when ``cross_rows`` selects no batch row at all (the call is then plain stock cross-attention)."""
    return rows is not None and rows.numel() == 0


def _delegate_note(name: str, why: str) -> None:
    if name not in _UNSUPPORTED_LOGGED:
        _UNSUPPORTED_LOGGED.add(name)
        logger.warning("masked attention skipped in %s: %s (stock attention used)", name, why)


class _MaskedProcessor:
    """Shared plumbing: the saved original processor, the state, the site's new layers."""

    def __init__(self, name: str, state: MaskedAttentionState, original: Any,
                 layers: MaskedBlockLayers | None = None, local: LocalContext | None = None) -> None:
        self.name = name
        self.state = state
        self.original = original
        self.layers = layers
        self.local = local

    @property
    def new_layers(self) -> bool:
        return self.state.plan.config.mode == "new_layers"

    def _layer_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dtype = next(layer.parameters()).dtype
        return x.to(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# --------------------------------------------------------------------------------------------- Wan
def _wan_projections(attn: nn.Module, x: torch.Tensor, context: torch.Tensor | None = None):
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


def _wan_out(attn: nn.Module, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, D]`` attention output -> the block's channels through to_out."""
    hidden = rearrange(out, "b h n d -> b n (h d)").type_as(like)
    return attn.to_out[1](attn.to_out[0](hidden))


class WanSelfProcessor(_MaskedProcessor):
    """Wan ``attn1``: self-attention + masked self-attention (RoPE kept, all frames)."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        strength = self.state.self_strength
        if strength == 0.0 or encoder_hidden_states is not None or attention_mask is not None:
            if strength and (encoder_hidden_states is not None or attention_mask is not None):
                _delegate_note(self.name, "called with a context or an attention mask")
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        self.state.calls[self.name] += 1
        plan = self.state.video_self_plan(hidden_states.shape[1])
        if self.new_layers:
            stock = self.original(attn, hidden_states, None, None, rotary_emb)
            layer = self.layers.masked_self
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


class WanCrossProcessor(_MaskedProcessor):
    """Wan ``attn2``: text (+ image) cross-attention + masked cross-attention over local prompts."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        strength = self.state.cross_strength
        batch, num_tokens = hidden_states.shape[:2]
        rows = self.state.cross_row_index(batch, hidden_states.device) if strength else None
        if strength == 0.0 or attention_mask is not None or encoder_hidden_states is None or _none(rows):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        self.state.calls[self.name] += 1
        if self.new_layers:
            stock = self.original(attn, hidden_states, encoder_hidden_states, None, rotary_emb)
            layer = self.layers.masked_cross
            x = self._layer_input(layer, hidden_states)
            context = self.local.get(x.device, x.dtype)[None].expand(batch, -1, -1)
            extra = layer(x, context, self.state.local_plan(num_tokens), self.state.backend).to(stock.dtype)
            if rows is not None:
                extra = _rows_only(extra, rows)
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
        local_key, local_value = _wan_kv(attn, self.local.get(hidden_states.device, hidden_states.dtype)[None])
        local_key = attn.norm_k(local_key)
        q = rearrange(query, "b n (h d) -> b h n d", h=attn.heads)
        k = rearrange(key, "b m (h d) -> b h m d", h=attn.heads)
        v = rearrange(value, "b m (h d) -> b h m d", h=attn.heads)
        k_local = rearrange(local_key, "1 m (h d) -> 1 h m d", h=attn.heads).expand(batch, -1, -1, -1)
        v_local = rearrange(local_value, "1 m (h d) -> 1 h m d", h=attn.heads).expand(batch, -1, -1, -1)
        plan = self.state.video_cross_plan(num_tokens, k.shape[2])
        stock = sdpa(q, k, v) if (strength < 1.0 or rows is not None) else None
        if rows is None:
            masked = partitioned_attention(q, torch.cat([k, k_local], 2), torch.cat([v, v_local], 2), plan,
                                           backend=self.state.backend)
            out = blend(stock, masked, strength)
        else:
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


def _wan_kv(attn: nn.Module, context: torch.Tensor):
    """Text-branch k, v of ``context`` (fused or not), as diffusers' Wan processor makes them."""
    if getattr(attn, "fused_projections", False):
        return attn.to_kv(context).chunk(2, dim=-1)
    return attn.to_k(context), attn.to_v(context)


def _wan_image_kv(attn: nn.Module, image_context: torch.Tensor):
    if getattr(attn, "fused_projections", False):
        return attn.to_added_kv(image_context).chunk(2, dim=-1)
    return attn.add_k_proj(image_context), attn.add_v_proj(image_context)


# --------------------------------------------------------------------------------------- CogVideoX
class CogVideoXJointProcessor(_MaskedProcessor):
    """CogVideoX ``attn1``: the joint [text ; video] attention with masked self and masked cross.

    Local-prompt tokens join the joint sequence as extra keys: the model's ``text_proj`` then this
    block's own ``norm1`` modulation (text branch, read from the block's ``temb``), exactly what
    the global prompt's tokens get at block 0. Text rows never see them; video rows see object
    l's tokens inside l's box.
    """

    def __init__(self, name: str, state: MaskedAttentionState, original: Any, block: nn.Module,
                 layers: MaskedBlockLayers | None = None, local: LocalContext | None = None) -> None:
        super().__init__(name, state, original, layers, local)
        self.block = block
        self.temb: torch.Tensor | None = None

    def capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the block: remember this step's time embedding."""
        self.temb = kwargs.get("temb", args[2] if len(args) > 2 else None)

    def _local_tokens(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        local = self.local.get(like.device, like.dtype)[None].expand(batch, -1, -1)
        if self.temb is None:
            raise RuntimeError("CogVideoX masked cross-attention needs the block's temb (pre-hook not installed)")
        _, modulated, _, _ = self.block.norm1(local, local, self.temb)
        return modulated

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        a, b = self.state.self_strength, self.state.cross_strength
        if (a == 0.0 and b == 0.0) or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        self.state.calls[self.name] += 1
        text_len = encoder_hidden_states.shape[1]
        batch, num_video = hidden_states.shape[:2]
        rows = self.state.cross_row_index(batch, hidden_states.device) if b else None
        if _none(rows):  # no batch row takes the local prompts: masked self only
            b, rows = 0.0, None
            if a == 0.0:
                return self.original(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb)
        if self.new_layers:
            video, text = self.original(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb)
            extra = torch.zeros_like(video)
            if a:
                layer = self.layers.masked_self
                rope = (lambda t: _cog_rope(t, image_rotary_emb)) if image_rotary_emb is not None else None
                plan = self.state.video_self_plan(num_video)
                extra = extra + a * layer(self._layer_input(layer, hidden_states), plan, rope,
                                          self.state.backend).to(video.dtype)
            if b:
                layer = self.layers.masked_cross
                x = self._layer_input(layer, hidden_states)
                context = self.local.get(x.device, x.dtype)[None].expand(batch, -1, -1)
                cross = layer(x, context, self.state.local_plan(num_video), self.state.backend).to(video.dtype)
                if rows is not None:
                    cross = _rows_only(cross, rows)
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

    return apply_rotary_emb(x, image_rotary_emb)


# ------------------------------------------------------------------------------------ UNet families
def _unet_supported(attn: nn.Module, hidden_states: torch.Tensor) -> str | None:
    """Why diffusers' AttnProcessor2_0 features outside BasicTransformerBlock rule us out, or None."""
    if hidden_states.ndim != 3:
        return "4-D hidden states"
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection:
        return "spatial/group norm or residual connection inside the attention"
    return None


def _unet_out(attn: nn.Module, out: torch.Tensor, frames: int, like: torch.Tensor) -> torch.Tensor:
    """``[B, H, F * n, D]`` -> ``[(B F), n, C]`` through to_out (AttnProcessor2_0's tail)."""
    hidden = rearrange(out, "b h (f n) d -> (b f) n (h d)", f=frames).to(like.dtype)
    hidden = attn.to_out[1](attn.to_out[0](hidden))
    return hidden / attn.rescale_output_factor


def _unet_frames(state: MaskedAttentionState, hidden_states: torch.Tensor) -> tuple[int, int]:
    frames = state.plan.grid.shape[0]
    if hidden_states.shape[0] % frames:
        raise ValueError(f"attention batch {hidden_states.shape[0]} is not a multiple of the plan's {frames} frames")
    return hidden_states.shape[0] // frames, frames


class UNetSelfProcessor(_MaskedProcessor):
    """UNet spatial ``attn1``: per-frame self-attention + masked self-attention (same frame, same object)."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        strength = self.state.self_strength
        why = _unet_supported(attn, hidden_states) if strength else None
        if strength == 0.0 or why or encoder_hidden_states is not None or attention_mask is not None:
            if why:
                _delegate_note(self.name, why)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        self.state.calls[self.name] += 1
        batch, frames = _unet_frames(self.state, hidden_states)
        tokens = hidden_states.shape[1]
        plan = self.state.unet_self_plan(tokens)
        if self.new_layers:
            stock = self.original(attn, hidden_states, None, None, temb, *args, **kwargs)
            layer = self.layers.masked_self
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


class UNetCrossProcessor(_MaskedProcessor):
    """I2VGen-XL spatial ``attn2``: context cross-attention + masked cross-attention over local prompts."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        strength = self.state.cross_strength
        why = _unet_supported(attn, hidden_states) if strength else None
        rows = None
        if strength and not why:
            rows = self.state.cross_row_index(_unet_frames(self.state, hidden_states)[0], hidden_states.device)
        if strength == 0.0 or why or encoder_hidden_states is None or attention_mask is not None or _none(rows):
            if why:
                _delegate_note(self.name, why)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        self.state.calls[self.name] += 1
        batch, frames = _unet_frames(self.state, hidden_states)
        tokens = hidden_states.shape[1]
        if self.new_layers:
            stock = self.original(attn, hidden_states, encoder_hidden_states, None, temb, *args, **kwargs)
            layer = self.layers.masked_cross
            x = rearrange(self._layer_input(layer, hidden_states), "(b f) n c -> b (f n) c", f=frames)
            context = self.local.get(x.device, x.dtype)[None].expand(batch, -1, -1)
            extra = layer(x, context, self.state.unet_local_plan(tokens), self.state.backend)
            if rows is not None:
                extra = _rows_only(extra, rows)
            return stock + strength * rearrange(extra, "b (f n) c -> (b f) n c", f=frames).to(stock.dtype)
        context = encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        local = self.local.get(hidden_states.device, hidden_states.dtype)
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
