"""Typed payloads that travel between the nodes.

Frozen dataclasses that validate themselves on construction, so a node downstream never
receives a half-valid payload. Tensors follow ComfyUI's conventions: masks are float32
``[B, H, W]`` in 0..1, images float32 ``[B, H, W, 3]`` in 0..1.

Vocabulary (Through-The-Mask, Yariv et al. 2025, Sec. 3):
    * ``Prompts``: the caption split into a global prompt c, a motion prompt c_motion and one
      local prompt c_local(l) per movable object l.
    * ``Objects``: the prompts plus the first-frame instance masks s(0), one per object, each
      with a stable id (1..L, the label it carries in every trajectory) and a constant colour.
    * ``Trajectory``: the mask trajectory s^, a label video ``[T, H, W]`` (0 = background,
      l = object l, one label per pixel, the depth order decides overlaps).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import TTMInputError

ProgressFn = Callable[[int, int], None]
"""progress(done, total), called after each unit of work (frame, step). It may raise to cancel
(ComfyUI's interrupt does); ttm_core functions clean up in ``finally`` blocks."""

PretrainedModel = Any
"""A model of diffusers, transformers or Meta's sam2, or one of its modules (a diffusers ``Attention``,
a VAE, a pipeline, a scheduler), as ttm_core receives it.

Deliberately ``Any``: their attributes are dynamic (config values such as
``model.config.patch_size``, submodules such as ``model.blocks`` or ``attn.to_q``, pipeline
components). Typed as ``torch.nn.Module``, every such attribute resolves through
``Module.__getattr__`` to ``Tensor | Module``, so a config value or a call of ``attn.to_q`` is a
type error. The concrete classes cannot be named instead: models are recognised by class name and
ttm_core imports diffusers, transformers and sam2 only where it loads them (sam2 may not be
installed at all). Runtime ``isinstance(x, nn.Module)`` checks still guard what users pass in."""

MAX_OBJECTS = 8
"""Most objects one shot can carry.

Eight keeps the colour-coded trajectory readable (one Okabe-Ito colour each), matches what the
paper's prompts produce (one to four movable objects), and bounds the number of attention
groups the masked-attention stage runs per block."""

MAX_NAME_LENGTH = 64

PALETTE: tuple[tuple[int, int, int], ...] = (
    # Okabe-Ito: distinguishable with the common colour-vision deficiencies.
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermilion
    (204, 121, 167),  # reddish purple
    (255, 255, 255),  # white
)
BACKGROUND_COLOR = (0, 0, 0)


def color_for_id(object_id: int) -> tuple[int, int, int]:
    """The constant colour of object ``object_id`` (1-based) in every preview and trajectory."""
    return PALETTE[(object_id - 1) % len(PALETTE)]


@dataclass(frozen=True)
class ObjectPrompt:
    """One movable object: a short unique ``name`` and its local prompt c_local(l)."""

    name: str
    local_prompt: str

    def __post_init__(self) -> None:
        name = self.name.strip()
        if not name:
            raise TTMInputError("objects", "an object has an empty name",
                                "give every object a name, e.g. 'cat: a ginger cat jumps'")
        if len(name) > MAX_NAME_LENGTH:
            raise TTMInputError("objects", f"object name {name[:20]!r}... is {len(name)} characters long",
                                f"use a name of at most {MAX_NAME_LENGTH} characters")
        if any(c in name for c in "\n\r\t:"):
            raise TTMInputError("objects", f"object name {name!r} contains a colon, tab or line break",
                                "use a plain name such as 'left dog'")
        if not self.local_prompt.strip():
            raise TTMInputError("objects", f"object {name!r} has an empty local prompt",
                                f"describe the object after the colon, e.g. '{name}: a {name} that ...'")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "local_prompt", self.local_prompt.strip())


@dataclass(frozen=True)
class Prompts:
    """The decomposed caption: global prompt c, motion prompt c_motion, local prompts c_local.

    ``objects`` may be empty (a shot with no movable object); ``Objects`` needs at least one.
    """

    global_prompt: str
    motion_prompt: str
    objects: tuple[ObjectPrompt, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        object.__setattr__(self, "global_prompt", self.global_prompt.strip())
        object.__setattr__(self, "motion_prompt", self.motion_prompt.strip())
        if len(self.objects) > MAX_OBJECTS:
            raise TTMInputError("objects", f"{len(self.objects)} objects were given",
                                f"keep at most {MAX_OBJECTS} movable objects; merge or drop static ones")
        seen: dict[str, str] = {}
        for obj in self.objects:
            key = obj.name.casefold()
            if key in seen:
                raise TTMInputError("objects", f"the name {obj.name!r} is used twice",
                                    "give each object a unique name, e.g. 'left dog' and 'right dog'")
            seen[key] = obj.name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objects)

    def index_of(self, key: str) -> int:
        """0-based index of the object called ``key`` (case-insensitive) or with id ``key`` ("1").

        Raises TTMInputError naming the known objects when there is none.
        """
        wanted = key.strip()
        for i, obj in enumerate(self.objects):
            if obj.name.casefold() == wanted.casefold():
                return i
        if wanted.isdigit() and 1 <= int(wanted) <= len(self.objects):
            return int(wanted) - 1
        known = ", ".join(f"{i + 1} = {o.name!r}" for i, o in enumerate(self.objects)) or "none"
        raise TTMInputError("paths", f"there is no object {key!r} (objects: {known})",
                            "address objects by their name or their 1-based id")


@dataclass(frozen=True, eq=False)
class Objects:
    """Prompts plus first-frame instance masks s(0): object ``ids[i]`` is ``prompts.objects[i]``.

    Attributes:
        prompts: the decomposed caption; one object prompt per mask.
        masks: float32 ``[L, H, W]`` in 0..1, one (possibly soft) mask per object. Masks may
            overlap here; the trajectory's depth order decides who owns shared pixels.
        ids: stable 1-based ids, the label value each object carries in trajectories.
        colors: constant RGB colour per object (0..255), used by every preview.
    """

    prompts: Prompts
    masks: torch.Tensor
    ids: tuple[int, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        count = len(self.prompts.objects)
        if count == 0:
            raise TTMInputError("prompts", "the prompts name no objects",
                                "add one line 'name: local prompt' per movable object")
        masks = self.masks
        if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
            shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise TTMInputError("masks", f"expected a mask batch [objects, H, W], got {shape}",
                                "connect a MASK (one mask per object)")
        if masks.shape[0] != count:
            raise TTMInputError("masks", f"{masks.shape[0]} masks for {count} objects "
                                f"({', '.join(self.prompts.names)})",
                                "give exactly one mask per object, in the order of the object lines")
        masks = masks.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).contiguous()
        object.__setattr__(self, "masks", masks)
        for i, name in enumerate(self.prompts.names):
            if not bool((masks[i] > 0.5).any()):
                raise TTMInputError("masks", f"the mask of object {i + 1} ({name!r}) is empty",
                                    "paint the object in the mask editor or pass a non-empty mask")
        ids = tuple(self.ids) or tuple(range(1, count + 1))
        if len(ids) != count or len(set(ids)) != count or any(not 1 <= i <= 255 for i in ids):
            raise TTMInputError("ids", f"ids {ids} are not {count} distinct values in 1..255",
                                "leave ids empty to number objects 1..L")
        object.__setattr__(self, "ids", ids)
        colors = tuple(tuple(int(v) for v in c) for c in self.colors) or tuple(color_for_id(i) for i in ids)
        if len(colors) != count or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
            raise TTMInputError("colors", f"colours {colors} are not one RGB triple per object",
                                "leave colours empty to use the default palette")
        object.__setattr__(self, "colors", colors)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the first frame."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def binary(self) -> torch.Tensor:
        """bool ``[L, H, W]``: the masks thresholded at 0.5."""
        return self.masks > 0.5


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The mask trajectory s^: where every object is in every frame.

    Attributes:
        labels: uint8 ``[T, H, W]``; 0 = background, ``objects.ids[i]`` = object i.
        objects: the objects the labels refer to.
        fps: frames per second the trajectory is meant to be played at (> 0).
        depth_order: object ids from front to back; decides overlaps and compositing order.
        transforms: optional float64 ``[T, L, 2, 3]`` affine maps taking first-frame pixel
            coordinates (x, y) of object i to frame t. Known when the motion was authored
            (paths); ``None`` when the trajectory was generated or tracked, in which case
            renderers estimate the motion from the labels.
    """

    labels: torch.Tensor
    objects: Objects
    fps: float
    depth_order: tuple[int, ...] = ()
    transforms: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        labels = self.labels
        if not isinstance(labels, torch.Tensor) or labels.ndim != 3 or labels.dtype != torch.uint8:
            raise TTMInputError("trajectory", "labels must be a uint8 tensor [T, H, W]",
                                "build trajectories with ttm_core.motion")
        if labels.shape[0] < 1:
            raise TTMInputError("trajectory", "the label video has no frames", "use at least one frame")
        if tuple(labels.shape[1:]) != self.objects.size:
            raise TTMInputError("trajectory", f"label frames are {tuple(labels.shape[1:])} but the object "
                                f"masks are {self.objects.size} (H, W)",
                                "render the trajectory from these objects, at their size")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise TTMInputError("fps", f"fps {self.fps} is not a positive number", "use e.g. 16")
        allowed = {0, *self.objects.ids}
        unknown: list[int] = []
        # Only when a value up to the largest label is no id can a label be unknown: a max() pass
        # decides that for the usual ids 1..L, the histogram names the strays otherwise.
        if not set(range(int(labels.max()) + 1)) <= allowed:
            present = torch.bincount(labels.reshape(-1).to(torch.int64), minlength=256).nonzero().flatten().tolist()
            unknown = sorted(set(present) - allowed)
        if unknown:
            raise TTMInputError("trajectory", f"labels {unknown} belong to no object (ids {self.objects.ids})",
                                "use 0 for background and the objects' ids for objects")
        order = tuple(self.depth_order) or self.objects.ids
        if sorted(order) != sorted(self.objects.ids):
            raise TTMInputError("depth_order", f"{order} is not an ordering of the object ids {self.objects.ids}",
                                "list every object id once, front to back")
        object.__setattr__(self, "depth_order", order)
        if self.transforms is not None:
            expected = (labels.shape[0], self.objects.count, 2, 3)
            if tuple(self.transforms.shape) != expected:
                raise TTMInputError("trajectory", f"transforms have shape {tuple(self.transforms.shape)}, "
                                    f"expected {expected}", "pass one 2x3 affine per frame and object")
            object.__setattr__(self, "transforms", self.transforms.detach().to("cpu", torch.float64))

    @property
    def num_frames(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return self.objects.size

    def object_masks(self) -> torch.Tensor:
        """bool ``[T, L, H, W]``: per-frame mask of each object (in ``objects.ids`` order)."""
        ids = torch.tensor(self.objects.ids, dtype=torch.uint8)
        return self.labels[:, None] == ids[None, :, None, None]

    def foreground(self) -> torch.Tensor:
        """float32 ``[T, H, W]`` in {0, 1}: 1 where any object is."""
        return (self.labels > 0).to(torch.float32)

    def color_video(self) -> torch.Tensor:
        """float32 ``[T, H, W, 3]`` in 0..1: the colour-coded trajectory (background black)."""
        lut = torch.zeros(256, 3, dtype=torch.float32)
        lut[0] = torch.tensor(BACKGROUND_COLOR, dtype=torch.float32) / 255.0
        for object_id, color in zip(self.objects.ids, self.objects.colors):
            lut[object_id] = torch.tensor(color, dtype=torch.float32) / 255.0
        # An embedding lookup with int32 indices: a third of the index memory of lut[labels.long()].
        return torch.nn.functional.embedding(self.labels.to(torch.int32), lut.to(self.labels.device))
