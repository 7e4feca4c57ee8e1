"""Token grids: where every object of a mask trajectory lands in a video model's token sequence.

Masked self-attention needs one object id per token; masked cross-attention needs each object's
per-frame bounding box on the token grid (Through-The-Mask, Sec. 3.2: M_self from the
segmentation s^, M_cross from per-frame BOUNDING BOXES of s^). A model sees pixels through its
VAE (temporal and spatial compression) and, for DiTs, a patch embedding. This module is the ONE
place where that mapping lives, per family
(the tables in ``stage2/families/wan.py``, ``cogvideox.py`` and ``unet.py``; ``VideoGeometry``
describes each).

"Causal" VAEs encode frame 0 alone into latent frame 0 and frames 4t-3..4t into latent frame t,
so a video has (F - 1) / 4 + 1 latent frames. The mapping is tested against the real models'
token order (patch embeddings fed with marker tensors) and the real causal VAEs.

A token's object id is the label covering the largest share of its space-time cell (exact ties
go to the front-most object, then background). An object's box in a token frame spans every
token cell the object touches at all, so even a thin object keeps at least one token in its box.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from ...errors import TTMInputError
from ...motion.fit import frame_map
from ...types import Trajectory

logger = logging.getLogger(__name__)

MAX_UNET_LEVELS = 8
"""A UNet never downsamples more often than this (SD-style UNets: 3 times)."""


@dataclass(frozen=True)
class VideoGeometry:
    """How a model family turns video pixels into attention tokens.

    Attributes:
        name: a short label for messages and docs, e.g. ``"wan2.1-i2v"``.
        temporal_ratio: video frames per latent frame (4 for the causal video VAEs, 1 for UNets
            that denoise every frame).
        causal: the first latent frame encodes frame 0 alone (causal video VAEs).
        spatial_ratio: pixels per latent pixel along each axis (VAE downsampling).
        patch: (pt, ph, pw) latent cells folded into one token by the patch embedding.
        pad_front: latent frames are padded at the front to a multiple of ``pt`` (CogVideoX 1.5
            I2V); padded latent frames show frame 0.
        multi_level: a UNet: tokens exist at the latent resolution and at every /2 level, one
            attention batch row per frame.
    """

    name: str
    temporal_ratio: int
    causal: bool
    spatial_ratio: int
    patch: tuple[int, int, int] = (1, 1, 1)
    pad_front: bool = False
    multi_level: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        if self.temporal_ratio < 1 or self.spatial_ratio < 1 or len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"invalid geometry {self}")
        if self.multi_level and self.patch != (1, 1, 1):
            raise ValueError("multi-level (UNet) geometries have no patch embedding")

    @property
    def pixels_per_token(self) -> tuple[int, int]:
        """(rows, columns) of video pixels per token at the finest level."""
        return self.spatial_ratio * self.patch[1], self.spatial_ratio * self.patch[2]

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames the VAE makes from ``num_frames`` video frames (before any padding)."""
        self.check_frames(num_frames)
        if self.causal:
            return (num_frames - 1) // self.temporal_ratio + 1
        return num_frames // self.temporal_ratio

    def check_frames(self, num_frames: int) -> None:
        """Raise TTMInputError unless the VAE maps ``num_frames`` frames without remainder."""
        r = self.temporal_ratio
        ok = num_frames >= 1 and ((num_frames - 1) % r == 0 if self.causal else num_frames % r == 0)
        if not ok:
            fix = (f"use {r}k+1 frames, e.g. {r * max(1, (num_frames - 1) // r) + 1}" if self.causal
                   else f"use a multiple of {r} frames")
            raise TTMInputError("num_frames", f"{num_frames} frames do not fit the {self.name} VAE "
                                f"(temporal ratio {r}{', causal' if self.causal else ''})", fix)

    def check_size(self, height: int, width: int) -> None:
        """Raise TTMInputError unless (height, width) pixels map onto whole tokens."""
        ch, cw = self.pixels_per_token
        if height < ch or width < cw or height % ch or width % cw:
            raise TTMInputError("size", f"{width}x{height} pixels is not a multiple of the {self.name} token "
                                f"size {cw}x{ch}", f"use a width divisible by {cw} and a height divisible by {ch}")

    def token_frame_sources(self, num_frames: int) -> list[list[int]]:
        """Video frames behind each token frame (repeats count twice in the vote).

        Returns:
            one list of video frame indices (0-based) per token frame, in token order.
        """
        latents: list[list[int]] = []
        r = self.temporal_ratio
        for t in range(self.latent_frames(num_frames)):
            if self.causal:
                latents.append([0] if t == 0 else list(range(r * (t - 1) + 1, r * t + 1)))
            else:
                latents.append(list(range(r * t, r * (t + 1))))
        pt = self.patch[0]
        pad = (-len(latents)) % pt
        if pad and not self.pad_front:
            raise TTMInputError("num_frames", f"{len(latents)} latent frames are not a multiple of the "
                                f"{self.name} temporal patch {pt}", f"use a frame count giving a multiple of {pt}")
        latents = [[0]] * pad + latents
        return [list(itertools.chain.from_iterable(latents[i:i + pt])) for i in range(0, len(latents), pt)]

    def token_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(Tt, Ht, Wt) tokens at the finest level for a video of that size."""
        self.check_size(height, width)
        ch, cw = self.pixels_per_token
        return len(self.token_frame_sources(num_frames)), height // ch, width // cw



@dataclass(frozen=True, eq=False)
class TokenGrid:
    """Per-token object ids and per-frame object boxes on one model's token grid.

    Attributes:
        geometry: the family geometry the grid was made for.
        num_frames, height, width: the video the model generates (pixels, frames).
        object_ids: object ids in local-prompt order (``trajectory.objects.ids``).
        priority: channel order for exact ties, front-most object first, background last.
        fractions: float32 ``[L + 1, Tt, Ht, Wt]`` in 0..1: share of each token cell covered by
            background (channel 0) and by object ``object_ids[l - 1]`` (channel l).
        ids: int64 ``[Tt * Ht * Wt]`` in the model's token order: the object id of each token,
            0 = background.
        boxes: int64 ``[Tt, L, 4]``: (y0, x0, y1, x1) token box of each object per token frame,
            end-exclusive; all zeros where the object is absent in that frame.
        level: UNet resolution level (0 = latent resolution); 0 for DiTs.
    """

    geometry: VideoGeometry
    num_frames: int
    height: int
    width: int
    object_ids: tuple[int, ...]
    priority: tuple[int, ...]
    fractions: torch.Tensor
    ids: torch.Tensor = field(init=False)
    boxes: torch.Tensor = field(init=False)
    level: int = 0

    def __post_init__(self) -> None:
        frac = self.fractions
        if frac.ndim != 4 or frac.shape[0] != len(self.object_ids) + 1:
            raise ValueError(f"fractions {tuple(frac.shape)} do not match {len(self.object_ids)} objects")
        if sorted(self.priority) != list(range(len(self.object_ids) + 1)):
            raise ValueError(f"priority {self.priority} is not a channel order")
        channel = _vote(frac, self.priority)
        lut = torch.tensor((0, *self.object_ids), dtype=torch.int64)
        object.__setattr__(self, "ids", lut[channel].flatten())
        object.__setattr__(self, "boxes", _boxes(frac[1:] > 0))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Tt, Ht, Wt): token frames, rows, columns."""
        _, frames, rows, columns = self.fractions.shape  # 4-D, checked in __post_init__
        return int(frames), int(rows), int(columns)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.shape)

    def in_box(self) -> torch.Tensor:
        """bool ``[N, L]``: token n lies inside object l's box of its token frame."""
        _, ht, wt = self.shape
        ys = torch.arange(ht)[None, None, :, None]
        xs = torch.arange(wt)[None, None, None, :]
        b = self.boxes[:, :, :, None, None]
        inside = (ys >= b[:, :, 0]) & (ys < b[:, :, 2]) & (xs >= b[:, :, 1]) & (xs < b[:, :, 3])  # [Tt, L, Ht, Wt]
        return rearrange(inside, "t l h w -> (t h w) l")

    def at_level(self, level: int) -> TokenGrid:
        """The grid a UNet sees after ``level`` 2x downsamplings (sizes ceil(h / 2^level)).

        diffusers' Downsample2D (3x3 conv, stride 2, padding 1) gives ceil(h / 2) rows; token i
        of the coarser level covers finer tokens 2i and 2i + 1.
        """
        if level == 0:
            return self
        if not self.geometry.multi_level:
            raise ValueError(f"{self.geometry.name} has a single token level")
        k = 2 ** level
        frac = self.fractions
        _, _, h, w = frac.shape
        padded = F.pad(frac, (0, -w % k, 0, -h % k))
        pooled = F.avg_pool2d(padded, kernel_size=k, stride=k)
        return TokenGrid(self.geometry, self.num_frames, self.height, self.width, self.object_ids, self.priority,
                         pooled, level=self.level + level)

    def level_for_tokens(self, tokens_per_frame: int) -> TokenGrid:
        """The UNet level whose frames hold ``tokens_per_frame`` tokens (h * w)."""
        _, h, w = self.shape
        for level in range(MAX_UNET_LEVELS + 1):
            k = 2 ** level
            if math.ceil(h / k) * math.ceil(w / k) == tokens_per_frame:
                return self.at_level(level)
        raise ValueError(f"no UNet level of a {h}x{w} latent has {tokens_per_frame} tokens per frame; the model "
                         f"runs at another size than the plan ({self.width}x{self.height} px)")


def _vote(fractions: torch.Tensor, priority: Sequence[int]) -> torch.Tensor:
    """int64 ``[Tt, Ht, Wt]``: the channel with the largest share, exact ties by ``priority``."""
    order = torch.tensor(priority, dtype=torch.int64)
    return order[fractions[order].argmax(dim=0)]  # argmax returns the first maximum


def _boxes(present: torch.Tensor) -> torch.Tensor:
    """int64 ``[Tt, L, 4]`` (y0, x0, y1, x1) boxes of bool ``[L, Tt, Ht, Wt]`` cells; zeros if absent."""
    _, _, h, w = present.shape
    rows = present.any(dim=3)  # [L, Tt, Ht]
    cols = present.any(dim=2)  # [L, Tt, Wt]
    ys = torch.arange(h)
    xs = torch.arange(w)
    y0 = torch.where(rows, ys, h).amin(dim=2)
    y1 = torch.where(rows, ys + 1, 0).amax(dim=2)
    x0 = torch.where(cols, xs, w).amin(dim=2)
    x1 = torch.where(cols, xs + 1, 0).amax(dim=2)
    boxes = torch.stack([y0, x0, y1, x1], dim=-1)  # [L, Tt, 4]
    boxes[~rows.any(dim=2)] = 0
    return rearrange(boxes, "l t c -> t l c").contiguous()


def token_grid_from_labels(labels: torch.Tensor, object_ids: Sequence[int], geometry: VideoGeometry,
                           num_frames: int, height: int, width: int,
                           depth_order: Sequence[int] = ()) -> TokenGrid:
    """Map a label video onto a model's finest token grid.

    Args:
        labels: uint8 ``[T, H0, W0]``, 0 = background, other values = object ids. T need not
            equal ``num_frames``: video frame f reads label frame floor(f (T - 1) / (F - 1) + 1/2).
            (H0, W0) need not equal (height, width): labels are area-resampled.
        object_ids: the objects, in local-prompt order (ids absent from ``labels`` are allowed:
            such an object simply owns no token and no box; labels that are not in
            ``object_ids`` count as background).
        geometry: the model family's geometry.
        num_frames: F, video frames the model generates.
        height, width: pixel size of the generated video.
        depth_order: object ids front to back (exact ties go to the front-most object);
            empty = ``object_ids`` order.
    Returns:
        the TokenGrid (level 0 for UNets).
    """
    if labels.ndim != 3 or labels.dtype != torch.uint8:
        raise TTMInputError("trajectory", "labels must be a uint8 tensor [T, H, W]", "pass trajectory.labels")
    ids = tuple(int(i) for i in object_ids)
    if len(set(ids)) != len(ids) or any(not 1 <= i <= 255 for i in ids):
        raise TTMInputError("objects", f"object ids {ids} are not distinct values in 1..255", "number objects 1..L")
    order = tuple(int(i) for i in depth_order) or ids
    if sorted(order) != sorted(ids):
        raise TTMInputError("depth_order", f"{order} is not an ordering of {ids}", "list every object id once")
    sources = geometry.token_frame_sources(num_frames)
    tt, ht, wt = geometry.token_shape(num_frames, height, width)
    steps = labels.shape[0]
    to_label_frame = frame_map(steps, num_frames)  # nearest label frame, halves rounded up
    channel_of = torch.zeros(256, dtype=torch.int64)  # label value -> channel; unknown labels count as background
    channel_of[torch.tensor(ids, dtype=torch.int64)] = torch.arange(1, len(ids) + 1)
    fractions = torch.empty(len(ids) + 1, tt, ht, wt, dtype=torch.float32)
    _, label_h, label_w = labels.shape
    exact = label_h % ht == 0 and label_w % wt == 0
    if exact:
        # token cell of every label pixel (row-major), times the channel count: one bincount per frame
        cell = ((torch.arange(label_h) // (label_h // ht))[:, None] * wt
                + (torch.arange(label_w) // (label_w // wt))[None, :]) * (len(ids) + 1)
    for t, frames in enumerate(sources):
        picked = channel_of[labels[[to_label_frame[f] for f in frames]].to(torch.int64)]  # [k, H0, W0]
        if exact:  # area shares by counting (the same numbers as area pooling, much faster)
            counts = torch.bincount((cell[None] + picked).flatten(), minlength=ht * wt * (len(ids) + 1))
            share = counts.to(torch.float32).view(ht, wt, -1) / (picked.shape[0] * (label_h // ht) * (label_w // wt))
            fractions[:, t] = rearrange(share, "h w c -> c h w")
        else:
            for c in range(len(ids) + 1):  # repeated frames weigh twice
                share = (picked == c).to(torch.float32).mean(dim=0)
                fractions[c, t] = F.adaptive_avg_pool2d(share[None], (ht, wt))[0]
    priority = (*(1 + ids.index(i) for i in order), 0)
    return TokenGrid(geometry, num_frames, height, width, ids, priority, fractions)


def token_grid(trajectory: Trajectory, geometry: VideoGeometry, num_frames: int, height: int,
               width: int) -> TokenGrid:
    """The token grid of a mask trajectory s^ for a model family (see the module table).

    Args:
        trajectory: the mask trajectory; its objects' order is the local-prompt order.
        geometry: e.g. ``families.WAN21_I2V`` or ``families.geometry_for(model)``.
        num_frames: video frames the model generates (4k+1 for the causal VAEs).
        height, width: pixel size of the generated video.
    """
    return token_grid_from_labels(trajectory.labels, trajectory.objects.ids, geometry, num_frames, height, width,
                                  trajectory.depth_order)
