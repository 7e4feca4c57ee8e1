"""What every family's masked attention processors share (the processors themselves live in the
family adapters: ``stage2/families/wan.py``, ``cogvideox.py``, ``unet.py``).

Paper order inside a block (Sec. 3.2): self-attention -> masked self-attention -> cross-attention
-> masked cross-attention. The processors sit in the block's attention slots, so each masked
attention joins its stock partner's sub-layer (same normalised input, same residual branch and
gate): the self slot computes self + masked self, the cross slot cross + masked cross, and the
self sub-layer still runs before the cross sub-layer.

Modes (``settings.MaskedAttention.mode``):

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
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: the family adapters import this module while they load
    from .layers import MaskedBlockLayers, MaskedCrossAttentionLayer, MaskedSelfAttentionLayer
    from .state import LocalContext, MaskedAttentionState

logger = logging.getLogger(__name__)

_UNSUPPORTED_LOGGED: set[str] = set()


def rows_only(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x`` with every batch row outside ``rows`` zeroed (local prompts reach the conditional rows only)."""
    return torch.zeros_like(x).index_copy(0, rows, x.index_select(0, rows))


def selects_no_row(rows: torch.Tensor | None) -> bool:
    """True when ``cross_rows`` selects no batch row at all (the call is then plain stock cross-attention)."""
    return rows is not None and rows.numel() == 0


def note_delegated(name: str, why: str) -> None:
    """Log once per attention module that it used the stock processor, and why."""
    if name not in _UNSUPPORTED_LOGGED:
        _UNSUPPORTED_LOGGED.add(name)
        logger.warning("masked attention skipped in %s: %s (stock attention used)", name, why)


class MaskedProcessor:
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
        return self.state.plan.masking.mode == "new_layers"

    # Installation (``attention.install``) hands every processor its site's layers in new-layers mode
    # (refusing to install without them) and the local prompts whenever the plan has any (the only
    # case with a cross strength above 0); these raise if that ever stops being so.
    @property
    def masked_self_layer(self) -> MaskedSelfAttentionLayer:
        """The site's new masked self-attention layer (new-layers mode)."""
        if self.layers is None:
            raise RuntimeError(f"{self.name}: new-layers mode without the site's masked layers")
        return self.layers.masked_self

    @property
    def masked_cross_layer(self) -> MaskedCrossAttentionLayer:
        """The site's new masked cross-attention layer (new-layers mode, families with text)."""
        if self.layers is None or self.layers.masked_cross is None:
            raise RuntimeError(f"{self.name}: new-layers mode without the site's masked cross-attention layer")
        return self.layers.masked_cross

    @property
    def local_context(self) -> LocalContext:
        """The local prompts as the model reads them (masked cross-attention)."""
        if self.local is None:
            raise RuntimeError(f"{self.name}: masked cross-attention without local prompts")
        return self.local

    def _layer_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dtype = next(layer.parameters()).dtype
        return x.to(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
