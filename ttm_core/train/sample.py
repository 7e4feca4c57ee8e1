"""One training sample as every trainer reads it (``ttm-data``'s reader yields these)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import TTMInputError
from .palette import TRAIN_PALETTE


@dataclass(frozen=True, eq=False)
class TrainingSample:
    """A clip with its mask trajectory and prompts (the paper's training tuple).

    Attributes:
        key: the clip's unique key (shard member name).
        frames: float32 ``[F, H, W, 3]`` in 0..1.
        labels: uint8 ``[F, H, W]``; 0 = background, 1..L = objects (same F, H, W as frames).
        global_prompt: the caption c.
        motion_prompt: c_motion.
        local_prompts: c_local(l) for l = 1..L.
        names: the objects' short names, l = 1..L.
        fps: frames per second of ``frames``.
        origin: where this content came from, unique per distinct content (the reader: shard file and
            frame window); trainers key their caches on ``cache_key`` so a new window of the same clip, or
            a same-named clip of another shard folder, is never served another one's latents or grid.
    """

    key: str
    frames: torch.Tensor
    labels: torch.Tensor
    global_prompt: str
    motion_prompt: str
    local_prompts: tuple[str, ...]
    names: tuple[str, ...]
    fps: float
    origin: str = ""

    def __post_init__(self) -> None:
        f = self.frames
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != torch.float32:
            raise TTMInputError("frames", f"{self.key}: frames must be float32 [F, H, W, 3], got {tuple(f.shape)} "
                                f"{f.dtype}", "decode the clip to RGB in 0..1")
        if self.labels.dtype != torch.uint8 or tuple(self.labels.shape) != tuple(f.shape[:3]):
            raise TTMInputError("labels", f"{self.key}: labels must be uint8 {tuple(f.shape[:3])}, got "
                                f"{tuple(self.labels.shape)} {self.labels.dtype}", "rebuild the shard")
        count = len(self.local_prompts)
        if not 1 <= count <= len(TRAIN_PALETTE) or len(self.names) != count:
            raise TTMInputError("local_prompts", f"{self.key}: {count} local prompts for {len(self.names)} names",
                                f"give 1..{len(TRAIN_PALETTE)} objects, one local prompt and name each")
        top = int(self.labels.max())
        if top > count:
            raise TTMInputError("labels", f"{self.key}: label {top} but only {count} objects", "rebuild the shard")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise TTMInputError("fps", f"{self.key}: fps {self.fps}", "record the clip's frame rate")

    @property
    def cache_key(self) -> str:
        """The key caches use: ``origin`` and ``key`` together."""
        return f"{self.origin}|{self.key}"

    @property
    def num_objects(self) -> int:
        return len(self.local_prompts)
