"""Small pure helpers for routing one attention call of a patched model (no ComfyUI here).

An attention override sees one call at a time: q, k, v and the batch layout. These functions
answer which batch rows are conditional, which prompt keys a token may see in the joint masked
cross-attention, and how a training-free strength blends the stock and masked results.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cond_rows(cond_or_uncond: Sequence[int], batch: int) -> torch.Tensor:
    """bool ``[batch]``: the rows of conditional chunks.

    ComfyUI batches CFG as equal chunks, one per entry of ``cond_or_uncond`` (0 = the
    positive/conditional prompt, 1 = the negative one). Local prompts apply to conditional
    rows only (the negative prompt has no objects).
    """
    if not cond_or_uncond:
        return torch.ones(batch, dtype=torch.bool)
    if batch % len(cond_or_uncond):
        raise ValueError(f"batch {batch} does not split into {len(cond_or_uncond)} CFG chunks")
    per_chunk = batch // len(cond_or_uncond)
    return torch.tensor([c == 0 for c in cond_or_uncond], dtype=torch.bool).repeat_interleave(per_chunk)


def cross_visibility(in_box: torch.Tensor, key_owner: torch.Tensor, text_len: int) -> torch.Tensor:
    """bool ``[n, text_len + M]``: the joint masked cross-attention's visible keys per token.

    Keys are [global prompt (text_len) ; local prompts (M)]. Every token sees the global prompt;
    object l's local-prompt keys only where the token lies in l's box (Through-The-Mask Sec. 3.2,
    M_cross from per-frame bounding boxes); overlapping boxes see all their objects' prompts.

    Args:
        in_box: bool ``[n, L]`` for the tokens concerned.
        key_owner: int64 ``[M]``, the 1-based object of every local-prompt key.
        text_len: number of global-prompt keys.
    """
    local = in_box.index_select(1, (key_owner.to(in_box.device) - 1).clamp_min(0))
    shared = torch.ones(in_box.shape[0], text_len, dtype=torch.bool, device=in_box.device)
    return torch.cat([shared, local], dim=1)


def blend(stock: torch.Tensor | None, masked: torch.Tensor, strength: float) -> torch.Tensor:
    """(1 - s) * stock + s * masked, returning either input unchanged at s = 0 or s = 1.

    ``stock`` may be None at s >= 1, where callers skip computing it."""
    if strength >= 1.0:
        return masked
    if stock is None:
        raise ValueError(f"blending at strength {strength} needs the stock output")
    if strength <= 0.0:
        return stock
    return torch.lerp(stock, masked.to(stock.dtype), strength)
