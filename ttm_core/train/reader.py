"""Training samples from ``ttm-data`` shards, at a model family's sizes, in a reproducible order.

``ShardReader`` is a ``torch.utils.data.IterableDataset`` yielding ``TrainingSample``. On construction
it indexes the shards (tar headers and each sample's small JSON, no video decoded), so it knows every
sample, its length and where its bytes are; a sample is then read with one seek. That makes the
order exact and cheap to resume:

* epoch order: a permutation of all samples from ``(seed, epoch)`` (or shard order without shuffle);
* ranks: the order is cut to a multiple of ``world_size`` and rank r takes every world_size-th sample
  (all ranks see the same number of samples, like ``DistributedSampler(drop_last=True)``);
* ``skip``: the first ``skip`` samples of this rank's order are passed over without reading them (the
  trainer's data position after a resume);
* DataLoader workers take every num_workers-th of what remains, so a DataLoader (``batch_size`` as
  usual) sees the same sequence whatever its worker count.

Each sample is cut to ``frames`` frames (a window starting at a seeded offset from ``(seed, epoch,
key)``, or at frame 0), resized to cover ``(height, width)`` and centre-cropped (area interpolation for
the frames, nearest for the labels, which stay exact ids). Clips shorter than ``frames`` are left out
when indexing (logged), so the sample count never changes while iterating.
``family_sizes`` gives (height, width, frames) for a diffusers variant key (``"wan2.1-i2v"``): frames
on its VAE's 1 + 4k rule, sides multiples of its pixels per token.
"""

from __future__ import annotations

import json
import logging
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import TTMInputError
from .clips import cover_crop
from .sample import TrainingSample
from .shards import FRAMES_EXT, LABELS_EXT, META_EXT, decode_frames, decode_labels

LOG = logging.getLogger(__name__)


def family_sizes(key: str, height: int | None = None, width: int | None = None,
                 frames: int | None = None) -> tuple[int, int, int]:
    """(height, width, frames) a diffusers variant trains at: the given values (or the variant's defaults)
    rounded DOWN to the nearest valid ones (sides: multiples of its pixels per token; frames: 1 + 4k for
    the causal video VAEs). A variant with a fixed size (CogVideoX 1.0) only takes its own.

    Raises TTMInputError for an unknown key (listing the known ones) or a size below one token.
    """
    from ..stage2 import families
    from ..stage2.families import CAUSAL_4K1, VARIANTS

    if key not in VARIANTS:
        raise TTMInputError("family", f"unknown model family {key!r}", f"use one of {', '.join(sorted(VARIANTS))}")
    variant = VARIANTS[key]
    geometries = [getattr(families, name) for name in dir(families)]
    geometry = next((g for g in geometries if getattr(g, "name", None) == key and hasattr(g, "pixels_per_token")),
                    None)
    rows, cols = geometry.pixels_per_token if geometry is not None else (16, 16)
    h = height or variant.default_size[0]
    w = width or variant.default_size[1]
    f = frames or variant.default_frames
    if h < rows or w < cols:
        raise TTMInputError("size", f"{w}x{h} is smaller than one token of {variant.label} ({cols}x{rows} px)",
                            f"use at least {cols}x{rows}")
    h, w = h - h % rows, w - w % cols
    if variant.frames_rule == CAUSAL_4K1:
        f = 1 + 4 * ((f - 1) // 4) if f >= 1 else 1
    if f < variant.min_frames:
        raise TTMInputError("frames", f"{variant.label} needs at least {variant.min_frames} frames, got {f}",
                            f"use {variant.min_frames} or more (1 + 4k)")
    if variant.fixed_size and ((h, w) != variant.default_size or f != variant.default_frames):
        dh, dw = variant.default_size
        raise TTMInputError("size", f"{variant.label} only runs at {dw}x{dh} with {variant.default_frames} frames "
                            f"(got {w}x{h}, {f})", f"leave height, width and frames at {dh}, {dw}, "
                            f"{variant.default_frames}")
    return h, w, f


@dataclass(frozen=True)
class _Entry:
    shard: str
    key: str
    members: dict[str, tuple[int, int]]  # extension -> (offset of data, size)
    frames: int


def _index_shard(path: Path, min_frames: int) -> tuple[list[_Entry], int]:
    """The samples of one shard (those with at least ``min_frames`` frames) and how many were too short."""
    entries: list[_Entry] = []
    short = 0
    grouped: dict[str, dict[str, tuple[int, int]]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                if key not in grouped:
                    grouped[key] = {}
                    order.append(key)
                grouped[key][ext] = (info.offset_data, info.size)
    except tarfile.TarError as err:
        raise TTMInputError("shards", f"{path} is not a readable tar ({err})",
                            "rebuild it with ttm-data build (the manifest resumes the rest)") from None
    with open(path, "rb") as stream:
        for key in order:
            members = grouped[key]
            missing = [e for e in (FRAMES_EXT, LABELS_EXT, META_EXT) if e not in members]
            if missing:
                raise TTMInputError("shards", f"{path.name}:{key} lacks {', '.join(missing)}",
                                    "rebuild the shard with ttm-data build")
            offset, size = members[META_EXT]
            stream.seek(offset)
            count = int(json.loads(stream.read(size).decode("utf-8"))["frames"])
            if count < min_frames:
                short += 1
                continue
            entries.append(_Entry(str(path), key, members, count))
    return entries, short


def find_shards(source: Path | str | Sequence[Path | str]) -> list[Path]:
    """The shards of ``ttm-data`` output folders (sorted per folder) and/or the given shard files, in order."""
    if isinstance(source, (str, Path)):
        source = [source]
    found: list[Path] = []
    for item in source:
        path = Path(item)
        if path.is_file():
            found.append(path)
            continue
        shards = sorted(path.glob("shard-*.tar")) if path.is_dir() else []
        if not shards:
            raise TTMInputError("data", f"{path} is neither a shard nor a folder holding shard-*.tar",
                                f"build the data first: ttm-data build ... --out {path}")
        found.extend(shards)
    if not found:
        raise TTMInputError("data", "no shards were given", "pass ttm-data output folders or shard files")
    return found


class ShardReader(IterableDataset):
    """``TrainingSample`` s from shards (see the module docstring for order, ranks and skipping).

    Args:
        source: a ``ttm-data`` output folder, one shard or a list of shards.
        height, width: sample size in pixels; frames: frames per sample (0 = each clip's own length;
            then a DataLoader needs batch_size 1).
        seed, epoch: the shuffle and window-offset seeds (``set_epoch`` between epochs).
        shuffle: permute the samples per epoch (else shard order).
        random_window: start each sample's frame window at a seeded offset (else frame 0).
        skip: samples of this rank's order to pass over (a resumed trainer's data position).
        rank, world_size: this process's share of the data.
    """

    def __init__(self, source: Path | str | Sequence[Path | str], height: int, width: int, frames: int, *,
                 seed: int = 0, epoch: int = 0, shuffle: bool = True, random_window: bool = True, skip: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        for name, value, low in (("height", height, 1), ("width", width, 1), ("frames", frames, 0),
                                 ("skip", skip, 0), ("world_size", world_size, 1), ("epoch", epoch, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TTMInputError(name, f"{value!r} is not a whole number >= {low}", f"use e.g. {max(low, 1)}")
        if not 0 <= rank < world_size:
            raise TTMInputError("rank", f"rank {rank} is outside 0..{world_size - 1}", "pass the process's rank")
        self.height, self.width, self.frames = height, width, frames
        self.seed, self.epoch, self.shuffle, self.random_window = seed, epoch, shuffle, random_window
        self.skip, self.rank, self.world_size = skip, rank, world_size
        self.entries: list[_Entry] = []
        short = 0
        for shard in find_shards(source):
            found, too_short = _index_shard(shard, max(1, frames))
            self.entries.extend(found)
            short += too_short
        if short:
            LOG.warning("left out %d clip(s) shorter than %d frames", short, frames)
        if len(self.entries) < world_size:
            raise TTMInputError("data", f"{len(self.entries)} usable sample(s) for {world_size} ranks",
                                "build more clips, or lower frames / the number of processes")

    @classmethod
    def for_family(cls, source: Path | str | Sequence[Path | str], family: str, height: int | None = None,
                   width: int | None = None, frames: int | None = None, **kwargs: object) -> ShardReader:
        """A reader at ``family_sizes(family, height, width, frames)``."""
        h, w, f = family_sizes(family, height, width, frames)
        return cls(source, h, w, f, **kwargs)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """Indices into ``entries`` this rank reads this epoch, after ``skip`` (DataLoader workers not applied)."""
        count = len(self.entries)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(count).tolist()
        else:
            order = list(range(count))
        order = order[:count - count % self.world_size]
        return order[self.rank::self.world_size][self.skip:]

    def __len__(self) -> int:
        return len(self.order())

    def __iter__(self) -> Iterator[TrainingSample]:
        order = self.order()
        info = get_worker_info()
        if info is not None:
            order = order[info.id::info.num_workers]
        for index in order:
            yield self.read(index)

    def read(self, index: int) -> TrainingSample:
        """Sample ``index`` of ``entries``, cut and resized."""
        entry = self.entries[index]
        data = {}
        with open(entry.shard, "rb") as stream:
            for ext, (offset, size) in entry.members.items():
                stream.seek(offset)
                data[ext] = stream.read(size)
        where = f"{Path(entry.shard).name}:{entry.key}"
        meta = json.loads(data[META_EXT].decode("utf-8"))
        frames = decode_frames(data[FRAMES_EXT], where)
        labels = decode_labels(data[LABELS_EXT], entry.frames, where)
        count = self.frames or entry.frames
        start = 0
        if self.random_window and entry.frames > count:
            rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(entry.key.encode("utf-8"))])
            start = int(rng.integers(0, entry.frames - count + 1))
        frames, labels = frames[start:start + count], labels[start:start + count]
        if frames.shape[1:3] != (self.height, self.width):
            frames = np.stack([cover_crop(f, self.height, self.width) for f in frames])
            labels = np.stack([cover_crop(lab, self.height, self.width, nearest=True) for lab in labels])
        return TrainingSample(
            key=entry.key, frames=torch.from_numpy(frames).to(torch.float32).div_(255.0),
            labels=torch.from_numpy(np.ascontiguousarray(labels)), global_prompt=str(meta["global_prompt"]),
            motion_prompt=str(meta["motion_prompt"]), local_prompts=tuple(meta["local_prompts"]),
            names=tuple(meta["names"]), fps=float(meta["fps"]), origin=f"{entry.shard}#{start}+{count}")
