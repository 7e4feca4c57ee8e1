"""Procedural scenes of the model-free path (Image To Motion ``paths`` + the ``warp`` cut-and-drag) and
their golden outputs: the label video and the warp frames captured BEFORE the crop-based renderer
(issue 18), so the fast renderer can be held to the old one's output.

``tests/data/golden_modelfree.npz`` holds, per case: ``<case>/labels`` (uint8 ``[T, H, W]``) and
``<case>/frames`` (uint8 ``[T, H, W, 3]``, round(255 x) of the float frames). ``tools/golden_modelfree.py``
writes it; rewrite it only when the renderer's behaviour changes on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ttm_core.motion.cut_and_drag import cut_and_drag
from ttm_core.motion.paths import Keyframe, ObjectPath
from ttm_core.motion.poses import mask_centroids
from ttm_core.motion.render import trajectory_from_paths
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

GOLDEN_MODELFREE = Path(__file__).resolve().parents[1] / "data" / "golden_modelfree.npz"


def texture(height: int, width: int) -> torch.Tensor:
    """float32 ``[H, W, 3]`` in 0..1: smooth colour waves plus a fine checker, so any resampling error shows."""
    ys = torch.arange(height, dtype=torch.float64)[:, None]
    xs = torch.arange(width, dtype=torch.float64)[None, :]
    r = 0.5 + 0.35 * torch.sin(xs / 5.0 + ys / 11.0)
    g = 0.5 + 0.35 * torch.cos(ys / 4.0 - xs / 13.0)
    b = 0.5 + 0.25 * torch.sin((xs + ys) / 3.0) + 0.1 * (((xs.long() + ys.long()) % 2) * 2 - 1)
    return torch.stack([r, g, b], -1).clamp(0, 1).to(torch.float32)


def ellipse(height: int, width: int, cx: float, cy: float, rx: float, ry: float, soft: bool = False) -> torch.Tensor:
    """float32 ``[H, W]`` mask of an ellipse; ``soft`` gives it a 0..1 ramp one pixel wide at the rim."""
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    r = torch.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    if soft:
        return (1.0 - (r - 1.0) * min(rx, ry)).clamp(0.0, 1.0)
    return (r <= 1.0).to(torch.float32)


def objects_of(masks: list[torch.Tensor]) -> Objects:
    prompts = Prompts("g", "m", tuple(ObjectPrompt(f"o{i + 1}", f"object {i + 1}") for i in range(len(masks))))
    return Objects(prompts, torch.stack(masks))


def painted(image: torch.Tensor, objects: Objects) -> torch.Tensor:
    """The texture with each object tinted, so objects differ from their surroundings."""
    image = image.clone()
    for i, mask in enumerate(objects.masks):
        tint = torch.tensor([(0.9, 0.2, 0.1), (0.1, 0.8, 0.2), (0.2, 0.3, 0.9), (0.9, 0.9, 0.1)][i % 4])
        image = image * (1 - 0.6 * mask[..., None]) + 0.6 * mask[..., None] * (0.5 * tint + 0.5 * image)
    return image


def line(frames: int, start: tuple[float, float], end: tuple[float, float], scale: float = 1.0,
         rotation: float = 0.0, easing: str = "linear") -> ObjectPath:
    return ObjectPath((Keyframe(0, *start), Keyframe(frames - 1, end[0], end[1], scale, rotation, easing)))


@dataclass(frozen=True)
class Case:
    """One procedural scene: image, trajectory and the feather of its warp render."""

    image: torch.Tensor
    trajectory: Trajectory
    feather: float


def _case(height: int, width: int, frames: int, masks: list[torch.Tensor],
          moves: Callable[[list[tuple[float, float]]], list[ObjectPath | None]], feather: float = 1.0,
          depth_order: tuple[int, ...] = (), tracked: bool = False) -> Case:
    objects = objects_of(masks)
    image = painted(texture(height, width), objects)
    centres = [tuple(c) for c in mask_centroids(objects.masks).tolist()]
    trajectory = trajectory_from_paths(objects, moves(centres), frames, 8.0, depth_order)  # type: ignore[arg-type]
    if tracked:  # a trajectory without transforms: the warp estimates the motion from the labels
        trajectory = Trajectory(trajectory.labels, objects, trajectory.fps, trajectory.depth_order)
    return Case(image, trajectory, feather)


H, W, T = 48, 64, 9


def _translation() -> Case:
    masks = [ellipse(H, W, 16.3, 14.2, 7.5, 5.0), ellipse(H, W, 44.0, 34.0, 6.0, 6.0)]
    return _case(H, W, T, masks, lambda c: [line(T, c[0], (c[0][0] + 16, c[0][1] + 8)),
                                            line(T, c[1], (c[1][0] - 11.3, c[1][1] - 3.7))])


def _scale() -> Case:
    masks = [ellipse(H, W, 30.0, 24.0, 8.0, 5.0, soft=True)]
    return _case(H, W, T, masks, lambda c: [line(T, c[0], (c[0][0] + 3.5, c[0][1] - 2.0), scale=1.8)],
                 feather=1.5)


def _rotation() -> Case:
    masks = [ellipse(H, W, 24.0, 22.0, 11.0, 3.5), ellipse(H, W, 50.0, 12.0, 4.0, 4.0)]
    return _case(H, W, T, masks, lambda c: [line(T, c[0], (c[0][0] + 6.0, c[0][1] + 5.0), 0.7, 75.0, "ease_in_out"),
                                            None])


def _crossing() -> Case:
    masks = [ellipse(H, W, 12.0, 24.0, 7.0, 7.0), ellipse(H, W, 52.0, 24.0, 6.0, 9.0),
             ellipse(H, W, 32.0, 8.0, 5.0, 4.0)]
    return _case(H, W, T, masks, lambda c: [line(T, c[0], (c[1][0], c[1][1] + 1.5)),
                                            line(T, c[1], (c[0][0], c[0][1] - 1.0), rotation=-30.0),
                                            line(T, c[2], (c[2][0] + 0.5, c[2][1] + 30.0), scale=1.3)],
                 depth_order=(2, 3, 1))


def _leaving() -> Case:
    masks = [ellipse(H, W, 54.0, 20.0, 7.0, 6.0), ellipse(H, W, 10.0, 40.0, 6.0, 5.0)]
    return _case(H, W, T, masks, lambda c: [line(T, c[0], (c[0][0] + 30.0, c[0][1] - 4.0)),
                                            line(T, c[1], (c[1][0] - 5.5, c[1][1] + 14.0), 1.4, 20.0)],
                 feather=0.0)


def _odd() -> Case:
    height, width = 37, 53
    masks = [ellipse(height, width, 9.0, 9.0, 6.0, 4.0), ellipse(height, width, 40.0, 26.0, 5.0, 7.0)]
    return _case(height, width, 7, masks, lambda c: [line(7, c[0], (c[0][0] + 25.0, c[0][1] + 18.0), 1.2, -40.0),
                                                     line(7, c[1], (c[1][0] - 3.0, c[1][1] - 33.0))],
                 feather=2.0)


def _tracked() -> Case:
    masks = [ellipse(H, W, 18.0, 16.0, 8.0, 5.0), ellipse(H, W, 44.0, 32.0, 5.0, 7.0)]
    return _case(H, W, T, masks, lambda c: [line(T, c[0], (c[0][0] + 20.0, c[0][1] + 9.0), 1.2, 25.0),
                                            line(T, c[1], (c[1][0] - 8.0, c[1][1]))], tracked=True)


def _circle() -> Case:
    """Integer and sub-pixel steps mixed: a path bent by a middle keyframe, smooth curve."""
    masks = [ellipse(H, W, 20.0, 20.0, 5.0, 6.0), ellipse(H, W, 40.0, 30.0, 8.0, 8.0)]

    def moves(c: list[tuple[float, float]]) -> list[ObjectPath | None]:
        x, y = c[0]
        bent = ObjectPath((Keyframe(0, x, y), Keyframe(4, x + 8.0, y + 8.0), Keyframe(8, x + 16.0, y)), curve="smooth")
        return [bent, line(T, c[1], (c[1][0] + 8.0, c[1][1] - 8.0))]

    return _case(H, W, T, masks, moves, feather=0.5)


CASES: dict[str, Callable[[], Case]] = {
    "translation": _translation, "scale": _scale, "rotation": _rotation, "crossing": _crossing,
    "leaving": _leaving, "odd_size": _odd, "tracked": _tracked, "curve": _circle,
}
"""The issue's procedural scenes (translation, scale, rotation, crossing objects, objects leaving the
frame, odd sizes) plus a tracked trajectory (no transforms) and a bent smooth path."""


def render(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 labels ``[T, H, W]``, float32 frames ``[T, H, W, 3]``) of one case with the current code."""
    case = CASES[name]()
    frames = cut_and_drag(case.image, case.trajectory, case.feather)
    return case.trajectory.labels, frames


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return torch.round(frames.clamp(0, 1) * 255).to(torch.uint8)


def edge_band(labels: torch.Tensor, width: int) -> torch.Tensor:
    """bool ``[T, H, W]``: pixels within ``width`` px of a label change (where edges may move)."""
    if width <= 0:
        return torch.zeros(labels.shape, dtype=torch.bool)
    padded = torch.nn.functional.pad(labels[:, None].to(torch.float32), (1, 1, 1, 1), mode="replicate")
    centre = padded[..., 1:-1, 1:-1]
    change = torch.zeros_like(centre, dtype=torch.bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        change |= padded[..., dy:dy + centre.shape[-2], dx:dx + centre.shape[-1]] != centre
    grown = torch.nn.functional.max_pool2d(change.to(torch.float32), 2 * width + 1, 1, width)
    return grown[:, 0] > 0


def feather_band(feather: float) -> int:
    """Pixels around an edge that a feather of ``feather`` px may change: the blur's reach plus one."""
    return max(1, math.ceil(3.0 * feather) + 1) if feather > 0 else 1
