"""Grouping plans: which query rows see which keys, built once and reused by every block.

A masked attention whose mask is block-structured never needs its N x N mask: sort the query
rows by "what they may see" once (a stable sort by group key), then attend part by part. Cost
and memory track sum_k n_k * m_k instead of N * M (Through-The-Mask's masked self-attention is
block-diagonal once tokens are sorted by object id; its masked cross-attention has one part per
combination of boxes a token lies in).

A ``Partition`` is that plan: ``perm`` lists the covered query rows sorted by part, ``offsets``
and ``lengths`` cut it into parts, ``kv[p]`` lists the keys part p sees (``None``: the part's own
rows, i.e. self-attention within a group). Rows in no part see nothing; kernels give them zeros.
All index tensors are int64 on the CPU; ``to(device)`` caches device copies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

MAX_DENSE_MASK_ELEMENTS = 64 * 1024 * 1024
"""Reference masks above this many entries are refused (64 Mi bools; 480p video is 17k-33k
tokens, i.e. 300 Mi - 1.1 Gi entries: exactly what the grouped path exists to avoid)."""


@dataclass(frozen=True, eq=False)
class Partition:
    """Query rows split into parts; part p's rows attend to exactly the keys ``kv[p]``.

    Attributes:
        perm: int64 ``[n_covered]``: covered query rows, grouped by part (stable order inside).
        offsets: start of each part in ``perm``.
        lengths: rows per part (> 0).
        kv: per part, int64 key indices, or ``None`` for "the part's own rows" (self-attention
            restricted to the group; then num_q == num_kv).
        num_q: query rows in total (rows absent from ``perm`` get zero output).
        num_kv: keys in total.
        labels: one integer label per part (object id, box pattern, ...), for logs and tests.
    """

    perm: torch.Tensor
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    kv: tuple[torch.Tensor | None, ...]
    num_q: int
    num_kv: int
    labels: tuple[int, ...] = ()
    _device_copies: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = len(self.lengths)
        if len(self.offsets) != parts or len(self.kv) != parts:
            raise ValueError("offsets, lengths and kv must have one entry per part")
        if not self.labels:
            object.__setattr__(self, "labels", tuple(range(parts)))
        if self.perm.dtype != torch.int64 or self.perm.ndim != 1:
            raise ValueError("perm must be an int64 vector")
        expected = 0
        for offset, length in zip(self.offsets, self.lengths):
            if offset != expected or length <= 0:
                raise ValueError(f"parts must tile perm: offsets {self.offsets}, lengths {self.lengths}")
            expected += length
        if expected != self.perm.numel():
            raise ValueError(f"parts cover {expected} rows but perm has {self.perm.numel()}")
        if self.perm.numel():
            if int(self.perm.min()) < 0 or int(self.perm.max()) >= self.num_q:
                raise ValueError(f"perm indexes outside 0..{self.num_q - 1}")
            if int(torch.bincount(self.perm, minlength=self.num_q).max()) > 1:
                raise ValueError("a query row belongs to two parts")
        for keys in self.kv:
            if keys is None:
                if self.num_q != self.num_kv:
                    raise ValueError("a self-attention part needs as many keys as queries")
            elif keys.dtype != torch.int64 or keys.ndim != 1 or keys.numel() == 0 or \
                    int(keys.min()) < 0 or int(keys.max()) >= self.num_kv:
                raise ValueError(f"key indices of a part must be a non-empty int64 vector in 0..{self.num_kv - 1}")

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, part: int) -> torch.Tensor:
        """int64 query rows of ``part``."""
        return self.perm[self.offsets[part]:self.offsets[part] + self.lengths[part]]

    def keys(self, part: int) -> torch.Tensor:
        """int64 keys ``part`` attends to."""
        keys = self.kv[part]
        return self.rows(part) if keys is None else keys

    def key_count(self, part: int) -> int:
        keys = self.kv[part]
        return self.lengths[part] if keys is None else int(keys.numel())

    @property
    def is_grouping(self) -> bool:
        """Every part attends within its own rows and all rows are covered: block-diagonal after sorting."""
        return all(k is None for k in self.kv) and self.perm.numel() == self.num_q

    @property
    def rho(self) -> float:
        """sum_p n_p * m_p / (N * M): the share of the dense attention's work this plan does."""
        work = sum(self.lengths[p] * self.key_count(p) for p in range(len(self)))
        return work / max(1, self.num_q * self.num_kv)

    def to(self, device: torch.device | str) -> Partition:
        """This plan with its index tensors on ``device`` (cached: the copy is made once)."""
        device = torch.device(device)
        if device == self.perm.device:
            return self
        key = str(device)
        if key not in self._device_copies:
            moved = Partition(self.perm.to(device), self.offsets, self.lengths,
                              tuple(None if k is None else k.to(device) for k in self.kv),
                              self.num_q, self.num_kv, self.labels)
            self._device_copies[key] = moved
        return self._device_copies[key]

    def presorted(self) -> Partition:
        """The plan for a sequence already permuted by ``perm`` (a DiT can permute once per forward).

        Only for groupings: row i of the permuted sequence is original row ``perm[i]``.
        """
        if not self.is_grouping:
            raise ValueError("only a grouping (self-attention parts covering every row) can be presorted")
        return Partition(torch.arange(self.num_q, dtype=torch.int64, device=self.perm.device), self.offsets,
                         self.lengths, self.kv, self.num_q, self.num_kv, self.labels)

    def dense_mask(self) -> torch.Tensor:
        """bool ``[num_q, num_kv]``: the naive mask this plan stands for. Test reference only.

        Refuses above ``MAX_DENSE_MASK_ELEMENTS``.
        """
        if self.num_q * self.num_kv > MAX_DENSE_MASK_ELEMENTS:
            raise ValueError(f"refusing a {self.num_q} x {self.num_kv} dense mask: use the grouped kernels")
        mask = torch.zeros(self.num_q, self.num_kv, dtype=torch.bool, device=self.perm.device)
        for p in range(len(self)):
            rows = self.rows(p)
            mask[rows[:, None], self.keys(p)[None, :]] = True
        return mask


def partition_by_class(classes: torch.Tensor, keys_of_class: Callable[[int], torch.Tensor | None],
                       num_kv: int) -> Partition:
    """Group query rows by an integer class and give each class its keys.

    Args:
        classes: int64 ``[N]``; rows with a negative class are left out (zero output).
        keys_of_class: class -> int64 key indices, ``None`` for "the class's own rows"
            (self-attention), or an empty tensor to leave the class out.
        num_kv: total number of keys.
    Returns:
        the Partition, parts ordered by class value.
    """
    classes = classes.to(torch.int64).flatten().cpu()
    order = torch.sort(classes, stable=True).indices
    sorted_classes = classes[order]
    values, counts = torch.unique_consecutive(sorted_classes, return_counts=True)
    perm_parts: list[torch.Tensor] = []
    lengths: list[int] = []
    kvs: list[torch.Tensor | None] = []
    labels: list[int] = []
    start = 0
    for value, count in zip(values.tolist(), counts.tolist()):
        rows = order[start:start + count]
        start += count
        if value < 0:
            continue
        keys = keys_of_class(value)
        if keys is not None:
            keys = keys.to(torch.int64).flatten().cpu()
            if keys.numel() == 0:
                continue
        perm_parts.append(rows)
        lengths.append(count)
        kvs.append(keys)
        labels.append(value)
    perm = torch.cat(perm_parts) if perm_parts else torch.zeros(0, dtype=torch.int64)
    offsets = tuple(int(x) for x in torch.tensor([0, *lengths[:-1]], dtype=torch.int64).cumsum(0).tolist()) \
        if lengths else ()
    return Partition(perm, offsets, tuple(lengths), tuple(kvs), int(classes.numel()), num_kv, tuple(labels))


def self_groups(ids: torch.Tensor) -> Partition:
    """Masked self-attention plan: token i sees token j iff ids[i] == ids[j] (background is a group).

    Args:
        ids: int64 ``[N]`` group of each token (object id, 0 = background; any integers work,
            e.g. ``frame * 256 + id`` for per-frame groups).
    """
    ids = ids.to(torch.int64).flatten()
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError("group ids must be >= 0")
    return partition_by_class(ids, lambda _: None, int(ids.numel()))


def box_patterns(in_box: torch.Tensor) -> torch.Tensor:
    """int64 ``[N]``: bit l-1 set where the token lies in object l's box (from bool ``[N, L]``)."""
    if in_box.shape[-1] > 62:
        raise ValueError("at most 62 objects fit a box pattern")
    weights = 2 ** torch.arange(in_box.shape[-1], dtype=torch.int64)
    return (in_box.to(torch.int64) * weights).sum(dim=-1)


def cross_partition(in_box: torch.Tensor, key_owner: torch.Tensor, *, row_frames: torch.Tensor | None = None,
                    frame_key_stride: int = 0) -> Partition:
    """Masked cross-attention plan: a token sees object l's local-prompt keys only inside l's box.

    Args:
        in_box: bool ``[N, L]`` token n lies inside object l's box of its frame (overlapping
            boxes see all their objects' prompts).
        key_owner: int64 ``[M]``: 0 = a key every row sees (the global prompt in the joint form),
            l >= 1 = a key of object l's local prompt.
        row_frames: optional int64 ``[N]``: frame of each row when every frame has its own block
            of M keys (UNets attend per frame: keys flattened as (frame, key)).
        frame_key_stride: keys per frame block (>= M) with ``row_frames``.
    Returns:
        the Partition, one part per (frame,) box pattern. Rows that see no key at all (outside
        every box and no shared key) are left out, so they receive exactly zero: no
        local-prompt contribution.
    """
    in_box = in_box.to(torch.bool).cpu()
    key_owner = key_owner.to(torch.int64).flatten().cpu()
    num_objects = in_box.shape[1]
    if key_owner.numel() and int(key_owner.max()) > num_objects:
        raise ValueError(f"key owners go up to {int(key_owner.max())} but there are {num_objects} objects")
    span = 2 ** num_objects
    classes = box_patterns(in_box)
    num_kv = int(key_owner.numel())
    if row_frames is not None:
        if frame_key_stride < key_owner.numel():
            raise ValueError("frame_key_stride must be at least the number of keys per frame")
        row_frames = row_frames.to(torch.int64).flatten().cpu()
        classes = row_frames * span + classes
        num_kv = (int(row_frames.max()) + 1) * frame_key_stride if row_frames.numel() else 0
    owner_bit = torch.where(key_owner > 0, 2 ** (key_owner - 1).clamp(min=0), 0)
    shared = key_owner == 0

    def keys_of(value: int) -> torch.Tensor:
        frame, pattern = divmod(value, span)
        visible = shared | ((owner_bit & pattern) != 0)
        return visible.nonzero().flatten() + frame * frame_key_stride

    return partition_by_class(classes, keys_of, num_kv)


def joint_partition(text_len: int, video_groups: torch.Tensor | None, video_in_box: torch.Tensor | None,
                    key_owner: torch.Tensor | None) -> Partition:
    """CogVideoX's joint attention over [text ; video] with the two masks, local keys appended.

    Query rows: [text (T) ; video (N)]. Keys: [text (T) ; video (N) ; local prompts (M)].
    Text rows see text and video, as in the stock model (they never see local prompts).
    A video row sees all text keys, plus
      * the video tokens of its own group (masked self) when ``video_groups`` is given, else all
        video tokens;
      * object l's local-prompt keys when it lies in l's box (masked cross) when ``video_in_box``
        is given, else no local key.

    Args:
        text_len: T.
        video_groups: int64 ``[N]`` object id per video token, or None.
        video_in_box: bool ``[N, L]`` or None.
        key_owner: int64 ``[M]`` (1-based object per local key), needed with ``video_in_box``.
    """
    if video_groups is not None:
        num_video = video_groups.numel()
    elif video_in_box is not None:
        num_video = video_in_box.shape[0]
    else:
        raise ValueError("give video_groups or video_in_box")
    if video_in_box is None:
        local = torch.zeros(0, dtype=torch.int64)
    elif key_owner is None:
        raise ValueError("video_in_box needs key_owner")
    else:
        local = key_owner.to(torch.int64).flatten().cpu()
    num_local = local.numel()
    num_objects = video_in_box.shape[1] if video_in_box is not None else 0
    span = 2 ** num_objects
    text_keys = torch.arange(text_len, dtype=torch.int64)
    all_video = torch.arange(text_len, text_len + num_video, dtype=torch.int64)
    groups = video_groups.to(torch.int64).flatten().cpu() if video_groups is not None else \
        torch.zeros(num_video, dtype=torch.int64)
    patterns = box_patterns(video_in_box.cpu()) if video_in_box is not None else \
        torch.zeros(num_video, dtype=torch.int64)
    # class 0: text rows; video rows: 1 + group * span + box pattern
    classes = torch.cat([torch.zeros(text_len, dtype=torch.int64), 1 + groups * span + patterns])
    owner_bit = torch.where(local > 0, 2 ** (local - 1).clamp(min=0), 0)
    group_members: dict[int, torch.Tensor] = {}
    if video_groups is not None:
        order = torch.sort(groups, stable=True)
        values, counts = torch.unique_consecutive(order.values, return_counts=True)
        for value, rows in zip(values.tolist(), torch.split(order.indices, counts.tolist())):
            group_members[value] = rows + text_len

    def keys_of(value: int) -> torch.Tensor:
        if value == 0:
            return torch.arange(text_len + num_video, dtype=torch.int64)
        group, pattern = divmod(value - 1, span)
        video_keys = group_members[group] if video_groups is not None else all_video
        local_keys = ((owner_bit & pattern) != 0).nonzero().flatten() + text_len + num_video
        return torch.cat([text_keys, video_keys, local_keys])

    return partition_by_class(classes, keys_of, text_len + num_video + num_local)


@dataclass(frozen=True, eq=False)
class LocalPromptLayout:
    """Where each object's local-prompt tokens sit in the concatenated local key sequence.

    Attributes:
        lengths: tokens per object, in object order (object l = index l - 1).
        owner: int64 ``[sum(lengths)]``: 1-based object of each local key.
    """

    lengths: tuple[int, ...]
    owner: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if any(n <= 0 for n in self.lengths):
            raise ValueError(f"every local prompt needs at least one token, got lengths {self.lengths}")
        owner = torch.repeat_interleave(torch.arange(1, len(self.lengths) + 1, dtype=torch.int64),
                                        torch.tensor(self.lengths, dtype=torch.int64))
        object.__setattr__(self, "owner", owner)

    @classmethod
    def of(cls, prompts: Sequence[torch.Tensor]) -> LocalPromptLayout:
        return cls(tuple(int(p.shape[-2]) for p in prompts))

    @property
    def total(self) -> int:
        return sum(self.lengths)
