"""Masked attention kernels: pure functions on q/k/v tensors, shared by every integration.

Shapes: ``q`` is ``[B, H, Nq, D]``, ``k`` and ``v`` are ``[B, H, Nk, D]`` / ``[B, H, Nk, Dv]``
(batch, heads, tokens, channels); outputs are ``[B, H, Nq, Dv]`` in the ORIGINAL row order.
A ``Partition`` (plan.py) says which keys each query row may see.

* ``partitioned_attention`` runs one attention call per part (the "loop" backend), gathering
  the part's rows and keys with ``index_select`` and scattering the result back. It calls an
  ``attention_fn(q, k, v) -> out`` of the caller's choice (default: PyTorch SDPA), so the
  ComfyUI-native patch can hand in ComfyUI's own attention function and keep its flash / sage
  speed while staying exact: no part ever needs a mask.
* Fused backends chosen at run time: ``varlen`` (PyTorch's flash-attention varlen kernel: all
  parts in one call; CUDA, fp16/bf16) and ``flex`` (FlexAttention with a block mask; groupings
  only; compiled on CUDA). Any failure falls back to the loop with one warning.
* ``masked_cross_attention_explicit`` is the small-explicit-mask alternative for cross-attention
  (mask ``[B, 1, n, M]`` over the few local-prompt keys, never N x N).
* ``naive_masked_attention`` materialises the dense boolean mask: the test reference only.

Rows that see no key get exactly zero output (SDPA would give NaN for an all-False mask row).
Never goes through ComfyUI's ``optimized_attention``: its SageAttention path drops masks; here no
call carries a mask unless the caller's explicit small cross mask.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange

from .plan import Partition

logger = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""attention_fn(q [B, H, n, D], k [B, H, m, D], v [B, H, m, Dv]) -> [B, H, n, Dv], unmasked,
softmax scale 1 / sqrt(D)."""

Backend = Literal["auto", "loop", "varlen", "flex"]
"""Attention backend of the masked parts: ``loop`` (one call per part), ``varlen``, ``flex`` (fused, CUDA),
``auto`` (the fastest that works here)."""
BACKENDS: tuple[str, ...] = get_args(Backend)

_HALF = (torch.float16, torch.bfloat16)
_warned: set[str] = set()


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked PyTorch scaled-dot-product attention (flash / memory-efficient where available)."""
    return F.scaled_dot_product_attention(q, k, v)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] != partition.num_q or k.shape[2] != partition.num_kv or v.shape[2] != partition.num_kv:
        raise ValueError(f"the plan is for {partition.num_q} queries x {partition.num_kv} keys, got "
                         f"{q.shape[2]} x {k.shape[2]}: the model runs at another size than the plan")


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


@functools.cache
def _varlen_fn() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def choose_backend(q: torch.Tensor, partition: Partition, backend: str = "auto",
                   attention_fn: AttentionFn | None = None) -> str:
    """The backend ``partitioned_attention`` will use for these inputs.

    ``auto``: a caller's ``attention_fn`` is always honoured (loop); otherwise the varlen kernel
    on CUDA in fp16/bf16 when PyTorch ships it, else the loop. ``flex`` is used only on request.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; use one of {BACKENDS}")
    if backend != "auto":
        return backend
    if attention_fn is None and q.is_cuda and q.dtype in _HALF and _varlen_fn() is not None:
        return "varlen"
    return "loop"


def partitioned_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                          attention_fn: AttentionFn | None = None, backend: str = "auto",
                          varlen_fn: Callable | None = None) -> torch.Tensor:
    """Masked attention where row i sees exactly the keys of its part, computed part by part.

    Args:
        q: ``[B, H, Nq, D]``; k: ``[B, H, Nk, D]``; v: ``[B, H, Nk, Dv]``.
        partition: the plan (``Nq == partition.num_q``, ``Nk == partition.num_kv``); moved to
            q's device once and cached.
        attention_fn: unmasked attention for one part (default SDPA); using it forces the loop.
        backend: ``auto`` | ``loop`` | ``varlen`` | ``flex`` (see ``choose_backend``).
        varlen_fn: override of PyTorch's varlen kernel (tests use a reference implementation).
    Returns:
        ``[B, H, Nq, Dv]`` in q's row order and dtype; rows in no part are exactly 0.
    """
    _check(q, k, v, partition)
    partition = partition.to(q.device)
    chosen = choose_backend(q, partition, backend, attention_fn)
    if chosen == "varlen":
        fn = varlen_fn or _varlen_fn()
        if fn is None:
            _warn_once("varlen-missing", "varlen attention is not available in this PyTorch; using the loop")
        else:
            try:
                return _varlen_attention(q, k, v, partition, fn)
            except (RuntimeError, NotImplementedError, TypeError) as error:
                _warn_once(f"varlen-{type(error).__name__}", f"varlen attention failed ({error}); using the loop")
    elif chosen == "flex":
        if not partition.is_grouping:
            _warn_once("flex-grouping", "flex attention handles self-attention groupings only; using the loop")
        else:
            try:
                return _flex_attention(q, k, v, partition)
            except (RuntimeError, NotImplementedError, ImportError) as error:
                _warn_once(f"flex-{type(error).__name__}", f"flex attention failed ({error}); using the loop")
    return _loop_attention(q, k, v, partition, attention_fn or sdpa)


def _loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                    attention_fn: AttentionFn) -> torch.Tensor:
    """One attention call per part: gather rows and keys, attend, scatter back."""
    batch, heads, num_q, _ = q.shape
    out = q.new_zeros(batch, heads, num_q, v.shape[-1])
    identity = partition.is_grouping and _is_identity(partition)
    for p in range(len(partition)):
        if identity:
            # Presorted sequence: every part is a contiguous slice, no gather or scatter needed.
            start, length = partition.offsets[p], partition.lengths[p]
            out[:, :, start:start + length] = attention_fn(q[:, :, start:start + length], k[:, :, start:start + length],
                                                           v[:, :, start:start + length])
            continue
        rows = partition.rows(p)
        keys = partition.keys(p)
        q_part = q.index_select(2, rows)
        k_part = k.index_select(2, keys)
        v_part = v.index_select(2, keys)
        out.index_copy_(2, rows, attention_fn(q_part, k_part, v_part).to(out.dtype))
    return out


def _is_identity(partition: Partition) -> bool:
    cache = partition._device_copies  # the plan's own per-device cache
    key = ("identity", str(partition.perm.device))
    if key not in cache:
        perm = partition.perm
        cache[key] = bool(torch.equal(perm, torch.arange(perm.numel(), device=perm.device)))
    return cache[key]


def _cumulative(lengths: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)


def _varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                      varlen_fn: Callable) -> torch.Tensor:
    """All parts of all batch rows packed into one varlen call (sequence = (batch, part))."""
    batch, heads, num_q, _ = q.shape
    rows = partition.perm
    keys = torch.cat([partition.keys(p) for p in range(len(partition))]) if len(partition) else rows
    key_counts = [partition.key_count(p) for p in range(len(partition))]
    q_packed = rearrange(q.index_select(2, rows), "b h n d -> (b n) h d")
    k_packed = rearrange(k.index_select(2, keys), "b h m d -> (b m) h d")
    v_packed = rearrange(v.index_select(2, keys), "b h m d -> (b m) h d")
    cu_q = _cumulative(list(partition.lengths) * batch, q.device)
    cu_k = _cumulative(key_counts * batch, q.device)
    packed = varlen_fn(q_packed, k_packed, v_packed, cu_q, cu_k, max(partition.lengths, default=0),
                       max(key_counts, default=0))
    out = q.new_zeros(batch, heads, num_q, v.shape[-1])
    out.index_copy_(2, rows, rearrange(packed, "(b n) h d -> b h n d", b=batch).to(out.dtype))
    return out


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition) -> torch.Tensor:
    """FlexAttention over the sorted sequence with a block mask "same part" (groupings only)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cache = partition._device_copies  # the plan's own per-device cache
    key = ("flex", str(q.device))
    if key not in cache:
        part_of_row = torch.repeat_interleave(torch.arange(len(partition), device=q.device),
                                              torch.tensor(partition.lengths, device=q.device))

        def same_part(b, h, q_idx, kv_idx):  # FlexAttention's mask_mod signature
            return part_of_row[q_idx] == part_of_row[kv_idx]

        block_mask = create_block_mask(same_part, None, None, partition.num_q, partition.num_kv, device=q.device)
        attend = torch.compile(flex_attention, dynamic=False) if q.is_cuda else flex_attention
        cache[key] = (block_mask, attend)
    block_mask, attend = cache[key]
    perm = partition.perm
    identity = _is_identity(partition)
    qs, ks, vs = (t if identity else t.index_select(2, perm) for t in (q, k, v))
    out_sorted = attend(qs, ks, vs, block_mask=block_mask)
    if identity:
        return out_sorted
    out = torch.empty_like(out_sorted)
    out.index_copy_(2, perm, out_sorted)
    return out


def grouped_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Partition,
                           attention_fn: AttentionFn | None = None, backend: str = "auto") -> torch.Tensor:
    """Masked self-attention: token i attends only to tokens of its own group, over all frames.

    Cost tracks sum_k n_k^2 instead of N^2 (Through-The-Mask Sec. 3.2, M_self(i, j) = 1 iff tokens
    i and j belong to the same object of s^; background tokens form their own group).

    Args:
        q, k, v: ``[B, H, N, D]`` in the model's token order, or in ``plan.perm`` order when
            ``plan`` is ``presorted()`` (DiTs may permute once per forward).
        plan: ``self_groups(ids)`` (or its ``presorted()`` form).
        attention_fn: per-group attention, e.g. ComfyUI's own (default SDPA).
        backend: see ``choose_backend``.
    Returns:
        ``[B, H, N, Dv]`` in the same row order as q.
    """
    if not plan.is_grouping:
        raise ValueError("grouped_self_attention needs a grouping plan (self_groups)")
    return partitioned_attention(q, k, v, plan, attention_fn, backend)


def masked_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Partition,
                           attention_fn: AttentionFn | None = None, backend: str = "auto") -> torch.Tensor:
    """Masked cross-attention, one unmasked call per box pattern (plan from ``cross_partition``).

    Through-The-Mask Sec. 3.2: softmax(q k^T / sqrt(d) + log M_cross) v, M_cross(l) = 1 inside
    object l's per-frame bounding box. Tokens inside no box (and with no shared key) get 0.
    """
    return partitioned_attention(q, k, v, plan, attention_fn, backend)


def masked_cross_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                    visible: torch.Tensor) -> torch.Tensor:
    """Masked cross-attention with an explicit SMALL mask over the key tokens (SDPA).

    Args:
        q: ``[B, H, N, D]``; k, v: ``[B, H, M, D]`` with M the (few) prompt keys.
        visible: bool ``[N, M]`` or ``[B, N, M]``: row n may see key m.
    Returns:
        ``[B, H, N, Dv]``; rows that see no key are 0 (they are not passed to SDPA at all).
    """
    if visible.ndim == 2:
        visible = visible[None].expand(q.shape[0], -1, -1)
    visible = visible.to(device=q.device, dtype=torch.bool)
    rows = visible.any(dim=-1).any(dim=0).nonzero().flatten()
    out = q.new_zeros(*q.shape[:3], v.shape[-1])
    if rows.numel() == 0:
        return out
    mask = visible.index_select(1, rows)[:, None]  # [B, 1, n, M]
    # A row that one batch element cannot see anything with gets a dummy key; its output is zeroed below.
    empty = ~mask.any(dim=-1, keepdim=True)
    mask = mask | (empty & (torch.arange(mask.shape[-1], device=q.device) == 0))
    part = F.scaled_dot_product_attention(q.index_select(2, rows), k, v, attn_mask=mask)
    part = part.masked_fill(empty, 0.0)
    out.index_copy_(2, rows, part.to(out.dtype))
    return out


def naive_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference: SDPA with the dense boolean mask ``[Nq, Nk]`` (True = may attend). Tests only.

    Memory grows as Nq * Nk (plus SDPA's own score matrices): never use it on a real video.
    Rows with no visible key return 0, like the grouped kernels.
    """
    mask = mask.to(device=q.device, dtype=torch.bool)
    has_key = mask.any(dim=-1)
    safe = mask | ~has_key[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe)
    return out.masked_fill(~has_key[None, None, :, None], 0.0)
