"""What one masked-attention installation applies (``MaskedAttentionPlan``) and the state its
processors share: switches, grouping plans and caches.

diffusers forwards no extra arguments to Wan's or SVD's processors, so every processor of one
installation reads this object instead. The grouping plans are built once (the trajectory does
not change between denoising steps) and moved to the compute device once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...errors import TTMInputError
from ..settings import MaskedAttention
from .grids import TokenGrid
from .plan import LocalPromptLayout, Partition, cross_partition, joint_partition, self_groups

logger = logging.getLogger(__name__)

FRAME_GROUP_STRIDE = 256
"""UNet self-attention groups are (frame, object id): key = frame * 256 + id (ids are 0..255)."""


@dataclass(frozen=True, eq=False)
class MaskedAttentionPlan:
    """Everything the masked processors need for one generation.

    Attributes:
        grid: the trajectory on the model's token grid (``grids.token_grid``).
        local_prompts: one text-encoder output per object, float ``[tokens_l, D]`` (real tokens
            only, no padding), in ``grid.object_ids`` order; D is the encoder width the model's
            own prompt has (Wan: umT5 4096, CogVideoX: T5 4096, I2VGen-XL: CLIP 1024). Empty =
            no masked cross-attention (always so for Stable Video Diffusion).
        masking: K, strengths, window, mode, backend (``settings.MaskedAttention``).
    """

    grid: TokenGrid
    local_prompts: tuple[torch.Tensor, ...] = ()
    masking: MaskedAttention = field(default_factory=MaskedAttention)
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


class MaskedAttentionState:
    """Switches and caches of one ``masked_attention`` installation.

    Attributes:
        plan: the plan being applied.
        enabled: False makes every masked processor return the stock output (exactly).
        cross_rows: None = local prompts reach every batch row; otherwise one bool per batch row
            (e.g. ``(False, True)`` for a classifier-free-guidance batch [uncond ; cond], so the
            local prompts condition only the conditional half). Processors called with a batch
            of another size raise.
        calls: how many masked (non-stock) calls each attention module made; for tests and logs.
    """

    def __init__(self, plan: MaskedAttentionPlan) -> None:
        self.plan = plan
        self.enabled = True
        self.cross_rows: tuple[bool, ...] | None = None
        self.calls: Counter[str] = Counter()
        self._partitions: dict[tuple, Partition] = {}
        self._grids: dict[int, TokenGrid] = {}
        self._in_box: dict[int, torch.Tensor] = {}

    # switches -------------------------------------------------------------------------------
    @property
    def self_strength(self) -> float:
        return self.plan.masking.self_strength if self.enabled else 0.0

    @property
    def cross_strength(self) -> float:
        if not self.enabled or not self.plan.has_local_prompts:
            return 0.0
        return self.plan.masking.cross_strength

    @property
    def backend(self) -> str:
        return self.plan.masking.backend

    def cross_row_index(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """int64 batch rows that get local prompts, or None for all of them."""
        if self.cross_rows is None:
            return None
        if len(self.cross_rows) != batch:
            raise ValueError(f"cross_rows has {len(self.cross_rows)} entries for a batch of {batch}")
        if all(self.cross_rows):
            return None
        return torch.tensor([i for i, on in enumerate(self.cross_rows) if on], dtype=torch.int64, device=device)

    # plans ------------------------------------------------------------------------------------
    def _memo(self, key: tuple, build: Callable[[], Partition]) -> Partition:
        if key not in self._partitions:
            self._partitions[key] = build()
            logger.debug("masked attention plan %s: %d parts, rho %.3f", key, len(self._partitions[key]),
                         self._partitions[key].rho)
        return self._partitions[key]

    def grid_for(self, tokens_per_frame: int | None = None) -> TokenGrid:
        """The plan's grid (DiTs) or the UNet level holding ``tokens_per_frame`` tokens per frame."""
        grid = self.plan.grid
        if tokens_per_frame is None or not grid.geometry.multi_level:
            return grid
        if tokens_per_frame not in self._grids:
            self._grids[tokens_per_frame] = grid.level_for_tokens(tokens_per_frame)
        return self._grids[tokens_per_frame]

    def in_box(self, tokens_per_frame: int | None = None) -> torch.Tensor:
        grid = self.grid_for(tokens_per_frame)
        if grid.level not in self._in_box:
            self._in_box[grid.level] = grid.in_box()
        return self._in_box[grid.level]

    def video_self_plan(self, num_tokens: int) -> Partition:
        """Masked self-attention over a DiT's N video tokens (all frames together)."""
        grid = self.plan.grid
        if num_tokens != grid.num_tokens:
            raise ValueError(f"the model has {num_tokens} video tokens but the plan's grid {grid.shape} has "
                             f"{grid.num_tokens}: build the grid for the size and frame count being generated")
        return self._memo(("video_self",), lambda: self_groups(grid.ids))

    def video_cross_plan(self, num_tokens: int, shared_keys: int) -> Partition:
        """Masked cross-attention over N video tokens; keys [shared (global prompt) ; local prompts]."""
        self.video_self_plan(num_tokens)  # size check
        layout = self.plan.layout
        assert layout is not None

        def build() -> Partition:
            owner = torch.cat([torch.zeros(shared_keys, dtype=torch.int64), layout.owner])
            return cross_partition(self.in_box(), owner)

        return self._memo(("video_cross", shared_keys), build)

    def joint_plan(self, text_len: int, num_tokens: int, masked_self: bool, masked_cross: bool) -> Partition:
        """CogVideoX joint plan: rows [text ; video], keys [text ; video ; local prompts]."""
        self.video_self_plan(num_tokens)
        grid = self.plan.grid
        layout = self.plan.layout

        def build() -> Partition:
            return joint_partition(text_len, grid.ids if masked_self else None,
                                   self.in_box() if masked_cross else None,
                                   layout.owner if masked_cross and layout is not None else None)

        return self._memo(("joint", text_len, masked_self, masked_cross), build)

    def unet_self_plan(self, tokens_per_frame: int) -> Partition:
        """Masked self-attention per frame on a UNet level, rows flattened as (frame, y, x)."""
        grid = self.grid_for(tokens_per_frame)
        frames = grid.shape[0]

        def build() -> Partition:
            frame = torch.arange(frames).repeat_interleave(tokens_per_frame)
            return self_groups(frame * FRAME_GROUP_STRIDE + grid.ids)

        return self._memo(("unet_self", tokens_per_frame), build)

    def unet_cross_plan(self, tokens_per_frame: int, shared_keys: int) -> Partition:
        """Masked cross-attention per frame on a UNet level; per frame keys [context ; local prompts]."""
        grid = self.grid_for(tokens_per_frame)
        layout = self.plan.layout
        assert layout is not None
        frames = grid.shape[0]

        def build() -> Partition:
            owner = torch.cat([torch.zeros(shared_keys, dtype=torch.int64), layout.owner])
            frame = torch.arange(frames).repeat_interleave(tokens_per_frame)
            return cross_partition(self.in_box(tokens_per_frame), owner, row_frames=frame,
                                   frame_key_stride=int(owner.numel()))

        return self._memo(("unet_cross", tokens_per_frame, shared_keys), build)

    def local_plan(self, num_tokens: int) -> Partition:
        """New-layer masked cross-attention of DiT video tokens over the local prompts only."""
        layout = self.plan.layout
        assert layout is not None
        self.video_self_plan(num_tokens)
        return self._memo(("local",), lambda: cross_partition(self.in_box(), layout.owner))

    def unet_local_plan(self, tokens_per_frame: int) -> Partition:
        """New-layer masked cross-attention on a UNet level over the local prompts only (flattened frames)."""
        layout = self.plan.layout
        assert layout is not None
        return self._memo(("unet_local", tokens_per_frame),
                          lambda: cross_partition(self.in_box(tokens_per_frame), layout.owner))


class LocalContext:
    """A model's local-prompt states as its attention layers read them, cached per device/dtype.

    Args:
        tokens: float ``[M, D]`` concatenated local prompts (text-encoder states).
        project: the model's own text projection (``families.local_context_projector``). It is
            treated as frozen: computed without gradients.
    """

    def __init__(self, tokens: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.tokens = tokens
        self.project = project
        self._cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """float ``[M, C]`` on ``device`` in ``dtype``."""
        key = (str(device), dtype)
        if key not in self._cache:
            module = self.project if isinstance(self.project, torch.nn.Module) else None
            param = next(module.parameters()) if module is not None else None
            source = self.tokens.to(device=device, dtype=param.dtype if param is not None else dtype)
            with torch.no_grad():
                self._cache[key] = self.project(source[None])[0].to(dtype)
        return self._cache[key]
