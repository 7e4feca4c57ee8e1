"""New masked attention layers (the paper's trained path), with their own state-dict keys.

Through-The-Mask (Sec. 3.2) adds NEW masked self- and masked cross-attention layers to the first
K blocks. Here each such layer is a small module whose output projection starts at zero, so an
untrained model behaves exactly like the stock one; training updates only these modules. They
live in a ``MaskedLayers`` container outside the base model (the base model's state dict stays
untouched), with keys such as::

    blocks.0.masked_self.to_q.weight      blocks.0.masked_cross.to_k.weight
    blocks.0.masked_self.to_out.weight    blocks.0.masked_cross.to_out.weight

The processors feed each layer the same normalised input as the stock attention of its
sub-layer and add its output to the stock attention output, inside the block's residual branch
(gated by the block's own gate where the block has one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from .kernels import grouped_self_attention, masked_cross_attention
from .plan import Partition

logger = logging.getLogger(__name__)

Rope = Callable[[torch.Tensor], torch.Tensor]
"""Rotary embedding applied to ``[B, H, N, D]`` queries/keys of video tokens."""


class MaskedSelfAttentionLayer(nn.Module):
    """Masked self-attention: a token attends to the tokens of its own object only.

    Args:
        dim: channels of the block's hidden states.
        heads: attention heads; ``dim`` must split evenly.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels do not split into {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(dim // heads, eps=1e-6)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, plan: Partition, rope: Rope | None = None,
                backend: str = "auto") -> torch.Tensor:
        """x: ``[B, N, C]`` (normalised block input); plan: ``self_groups`` over N. Returns ``[B, N, C]``."""
        q, k, v = (rearrange(proj(x), "b n (h d) -> b h n d", h=self.heads)
                   for proj in (self.to_q, self.to_k, self.to_v))
        q, k = self.norm_q(q), self.norm_k(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = grouped_self_attention(q, k, v, plan, backend=backend)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class MaskedCrossAttentionLayer(nn.Module):
    """Masked cross-attention: a token attends to object l's local prompt inside l's box only.

    Keys and values are the concatenated local prompts (the paper's c_local); tokens inside no
    box get exactly zero (hence no output bias).

    Args:
        dim: channels of the block's hidden states.
        context_dim: channels of the local-prompt states the layer reads.
        heads: attention heads.
    """

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels do not split into {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.norm_q = nn.RMSNorm(dim // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(dim // heads, eps=1e-6)
        # No bias: a bias would add a constant to tokens inside no box, which must get nothing.
        self.to_out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def forward(self, x: torch.Tensor, context: torch.Tensor, plan: Partition, backend: str = "auto") -> torch.Tensor:
        """x: ``[B, N, C]``; context: ``[B, M, Cc]``; plan: ``cross_partition`` (N x M). Returns ``[B, N, C]``."""
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k = rearrange(self.to_k(context), "b m (h d) -> b h m d", h=self.heads)
        v = rearrange(self.to_v(context), "b m (h d) -> b h m d", h=self.heads)
        out = masked_cross_attention(self.norm_q(q), self.norm_k(k), v, plan, backend=backend)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class MaskedBlockLayers(nn.Module):
    """The new layers of one block: ``masked_self`` and (families with text) ``masked_cross``."""

    def __init__(self, masked_self: MaskedSelfAttentionLayer, masked_cross: MaskedCrossAttentionLayer | None) -> None:
        super().__init__()
        self.masked_self = masked_self
        self.masked_cross = masked_cross


class MaskedLayers(nn.Module):
    """New masked attention layers for the first K blocks of one model.

    Build with ``families.masked_layers(model, num_blocks)``; save and load with the usual
    ``state_dict()`` / ``load_state_dict()`` (keys ``blocks.<i>.masked_self.*`` and
    ``blocks.<i>.masked_cross.*``). Move it with the model: ``layers.to(device, dtype)``.

    Attributes:
        family: the model family it was built for.
        blocks: one ``MaskedBlockLayers`` per masked block, input side first.
    """

    def __init__(self, family: str, blocks: list[MaskedBlockLayers]) -> None:
        super().__init__()
        self.family = family
        self.blocks = nn.ModuleList(blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)
