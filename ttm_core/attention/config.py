"""What to install: the masks (a token grid), the local prompts, K, the strengths and the mode."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import TTMInputError
from .grids import TokenGrid
from .kernels import BACKENDS
from .plan import LocalPromptLayout

MODES = ("training_free", "new_layers")


@dataclass(frozen=True)
class MaskedAttentionConfig:
    """How masked attention is applied.

    Attributes:
        mode: ``"training_free"``: the block's own attention weights are reused with the masks
            and blended with the stock output by the strengths (strength 0 = stock output,
            exactly). ``"new_layers"``: added masked attention layers (``MaskedLayers``) whose
            output projections start at zero; what training and trained checkpoints use.
        num_blocks: K, masked blocks counted from the input side; ``None`` = the family default
            (DiTs: a quarter of the blocks, the paper's 10 of 40; UNets: the encoder's spatial
            attention blocks, the paper's K = 6).
        self_strength: masked self-attention strength in [0, 1].
        cross_strength: masked cross-attention strength in [0, 1] (ignored without local prompts).
        backend: attention backend for the masked parts: auto | loop | varlen | flex.
    """

    mode: str = "training_free"
    num_blocks: int | None = None
    self_strength: float = 1.0
    cross_strength: float = 1.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TTMInputError("mode", f"unknown masked-attention mode {self.mode!r}", f"use one of {MODES}")
        if self.num_blocks is not None and (not isinstance(self.num_blocks, int) or self.num_blocks < 0):
            raise TTMInputError("num_blocks", f"K = {self.num_blocks!r} is not a block count",
                                "use a whole number >= 0 (0 disables masking), or leave it empty for the default")
        for name in ("self_strength", "cross_strength"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise TTMInputError(name, f"{value!r} is outside 0..1", "use a strength between 0 and 1")
            object.__setattr__(self, name, float(value))
        if self.backend not in BACKENDS:
            raise TTMInputError("backend", f"unknown attention backend {self.backend!r}", f"use one of {BACKENDS}")


@dataclass(frozen=True, eq=False)
class MaskedAttentionPlan:
    """Everything the masked processors need for one generation.

    Attributes:
        grid: the trajectory on the model's token grid (``grids.token_grid``).
        local_prompts: one text-encoder output per object, float ``[tokens_l, D]`` (real tokens
            only, no padding), in ``grid.object_ids`` order; D is the encoder width the model's
            own prompt has (Wan: umT5 4096, CogVideoX: T5 4096, I2VGen-XL: CLIP 1024). Empty =
            no masked cross-attention (always so for Stable Video Diffusion).
        config: mode, K, strengths, backend.
    """

    grid: TokenGrid
    local_prompts: tuple[torch.Tensor, ...] = ()
    config: MaskedAttentionConfig = field(default_factory=MaskedAttentionConfig)
    layout: LocalPromptLayout | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        prompts = tuple(self.local_prompts)
        object.__setattr__(self, "local_prompts", prompts)
        if not prompts:
            return
        count = len(self.grid.object_ids)
        if len(prompts) != count:
            raise TTMInputError("local_prompts", f"{len(prompts)} local prompts for {count} objects",
                                "give one encoded local prompt per object, in the objects' order")
        width = None
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, torch.Tensor) or prompt.ndim != 2 or prompt.shape[0] < 1 \
                    or not prompt.is_floating_point():
                shape = tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__
                raise TTMInputError("local_prompts", f"local prompt {i + 1} is {shape}, not a float [tokens, width]",
                                    "pass the text encoder's hidden states of each local prompt, batch removed")
            if width is not None and prompt.shape[1] != width:
                raise TTMInputError("local_prompts", f"local prompt {i + 1} has width {prompt.shape[1]}, "
                                    f"the others {width}", "encode all local prompts with the same text encoder")
            width = prompt.shape[1]
        object.__setattr__(self, "layout", LocalPromptLayout.of(prompts))

    @property
    def has_local_prompts(self) -> bool:
        return bool(self.local_prompts)

    def local_tokens(self) -> torch.Tensor:
        """float ``[M, D]``: the local prompts concatenated in object order."""
        return torch.cat(self.local_prompts, dim=0)
