"""Procedural videos with KNOWN label videos, for measuring trackers (``ttm_core.segment.flow_track``).

Every object is a shape with a smooth random texture of its own over a differently textured
background. Object ``i`` moves by the per-frame affine of its poses (``ttm_core.motion.poses.pose_affines``:
x, y of the centroid, scale, rotation in degrees clockwise), optionally bent by a travelling wave (a
non-rigid motion); mask and texture are moved with the project's renderer (``render.affine_grid`` +
``grid_sample``, exactly what ``render.warp`` does) and composited back to front with their bilinear
alpha. The ground-truth label video follows ``render.render_labels``' rule: a pixel belongs to the
front-most object whose moved mask covers it by at least half (for rigid scenes it IS
``render_labels``' output; a test checks that).

Used by the flow-tracker tests (small sizes) and ``python -m benchmarks flow-track`` (832x480).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from ttm_core.motion.poses import mask_centroids, pose_affines
from ttm_core.motion.render import affine_grid
from ttm_core.types import ObjectPrompt, Objects, Prompts


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene.

    Attributes:
        name: which scene.
        frames: float32 ``[T, H, W, 3]`` in 0..1 (a ComfyUI IMAGE batch).
        labels: uint8 ``[T, H, W]``, the true label video (0 = background, ``objects.ids``).
        objects: the objects with their first-frame masks (``labels[0] == id``'s source masks).
        depth_order: ids front to back, as rendered.
        affines: float64 ``[T, L, 2, 3]``, each object's affine from frame 0 (before any bending).
    """

    name: str
    frames: torch.Tensor
    labels: torch.Tensor
    objects: Objects
    depth_order: tuple[int, ...]
    affines: torch.Tensor


def smooth_texture(height: int, width: int, generator: torch.Generator, base: Sequence[float],
                   contrast: float = 0.22, cells: Sequence[int] = (24, 6)) -> torch.Tensor:
    """A random smooth colour texture: float32 ``[3, H, W]`` in 0..1 around the colour ``base``.

    Octaves of Gaussian noise drawn on grids of ``cells`` pixels per sample and upsampled bicubically
    (coarse blobs plus finer grain, so optical flow has something to lock on at every scale).
    """
    total = torch.zeros(1, 3, height, width)
    for cell in cells:
        coarse = torch.randn(1, 3, max(2, math.ceil(height / cell)) + 1, max(2, math.ceil(width / cell)) + 1,
                             generator=generator)
        total += F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    luminance = torch.randn(1, 1, max(2, height // cells[-1]) + 1, max(2, width // cells[-1]) + 1, generator=generator)
    total += F.interpolate(luminance, size=(height, width), mode="bicubic", align_corners=False)
    total = total / total.std()
    colour = torch.tensor(base, dtype=torch.float32).view(1, 3, 1, 1)
    return (colour + contrast * total).clamp(0.0, 1.0)[0]


def ellipse(height: int, width: int, center: tuple[float, float], radii: tuple[float, float],
            angle: float = 0.0) -> torch.Tensor:
    """bool ``[H, W]``: pixels whose centre lies in the ellipse (continuous coordinates, angle in degrees)."""
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    y, x = torch.meshgrid(ys - center[1], xs - center[0], indexing="ij")
    theta = math.radians(angle)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def rectangle(height: int, width: int, center: tuple[float, float], half: tuple[float, float],
              angle: float = 0.0) -> torch.Tensor:
    """bool ``[H, W]``: pixels whose centre lies in the rotated rectangle."""
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    y, x = torch.meshgrid(ys - center[1], xs - center[0], indexing="ij")
    theta = math.radians(angle)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    return (u.abs() <= half[0]) & (v.abs() <= half[1])


def blob(height: int, width: int, center: tuple[float, float], radius: float, generator: torch.Generator,
         wobble: float = 0.25) -> torch.Tensor:
    """bool ``[H, W]``: an irregular star-shaped blob (radius varying smoothly with the angle)."""
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    y, x = torch.meshgrid(ys - center[1], xs - center[0], indexing="ij")
    phase = torch.rand(4, generator=generator, dtype=torch.float64) * 2 * math.pi
    amplitude = torch.rand(4, generator=generator, dtype=torch.float64) * wobble / 2
    angle = torch.atan2(y, x)
    r = torch.full_like(angle, radius)
    for k in range(4):
        r = r * (1.0 + amplitude[k] * torch.sin((k + 2) * angle + phase[k]))
    return (x * x + y * y).sqrt() <= r


Bend = Callable[[int, torch.Tensor], torch.Tensor]
"""bend(t, p): displacement (in first-frame pixels, float64 ``[..., 2]``) added to first-frame source
positions ``p`` (``[..., 2]``, x, y) of frame ``t``: a non-rigid motion on top of the affine."""


def wave_bend(amplitude: float, wavelength: float, frames: int, center_y: float) -> Bend:
    """A sideways travelling wave across the object (a flag, a swimming fish) growing to ``amplitude`` px."""

    def bend(t: int, p: torch.Tensor) -> torch.Tensor:
        grow = amplitude * min(1.0, t / max(1, frames // 3))
        dx = grow * torch.sin(2 * math.pi * ((p[..., 1] - center_y) / wavelength - t / 12.0))
        return torch.stack([dx, torch.zeros_like(dx)], dim=-1)

    return bend


def render_scene(name: str, masks: torch.Tensor, poses: torch.Tensor, *, depth_order: Sequence[int] = (),
                 seed: int = 0, noise: float = 0.01, bends: Sequence[Bend | None] = (),
                 distractors: torch.Tensor | None = None) -> Scene:
    """Render textured objects moving over a textured background.

    Args:
        masks: bool ``[L, H, W]`` first-frame masks.
        poses: float64 ``[T, L, 4]``: (x, y) of the centroid, scale, rotation in degrees (clockwise).
        depth_order: ids (1..L) front to back; empty = object 1 in front.
        seed: texture and noise seed.
        noise: standard deviation of per-frame Gaussian pixel noise (0..1 units).
        bends: per object, an optional non-rigid bend (``wave_bend``).
        distractors: bool ``[K, H, W]``, static blobs painted into the background, each with a texture of its own
            in object 1's colour (look-alikes a tracker must not jump to; not objects, label 0).
    Returns:
        the Scene; frames and labels at ``masks``' size.
    """
    count, height, width = masks.shape
    frames_count = poses.shape[0]
    generator = torch.Generator().manual_seed(seed)
    palette = [(0.85, 0.55, 0.25), (0.25, 0.55, 0.85), (0.35, 0.8, 0.4), (0.8, 0.3, 0.6), (0.9, 0.85, 0.3)]
    background = smooth_texture(height, width, generator, (0.45, 0.45, 0.42), contrast=0.18, cells=(40, 9))
    textures = torch.stack([smooth_texture(height, width, generator, palette[i % len(palette)])
                            for i in range(count)])  # [L, 3, H, W]
    for area in distractors if distractors is not None else ():
        background = torch.where(area, smooth_texture(height, width, generator, palette[0]), background)
    affines = pose_affines(poses, mask_centroids(masks))
    names = [f"object {i + 1}" for i in range(count)]
    objects = Objects(Prompts("scene", "", tuple(ObjectPrompt(n, n) for n in names)), masks.to(torch.float32))
    order = tuple(depth_order) or objects.ids
    back_to_front = [objects.ids.index(i) for i in reversed(order)]
    layers = torch.cat([textures, masks[:, None].to(torch.float32)], dim=1)  # [L, 4, H, W]: colour + mask
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    frames = torch.empty(frames_count, height, width, 3, dtype=torch.float32)
    labels = torch.zeros(frames_count, height, width, dtype=torch.uint8)
    for t in range(frames_count):
        grid = affine_grid(affines[t], (height, width)).to(torch.float64)  # [L, H, W, 2] in [-1, 1]
        for i, bend in enumerate(bends):
            if bend is not None:
                source = (grid[i] + 1.0) / scale  # first-frame pixel coordinates (x, y)
                grid[i] = (source + bend(t, source)) * scale - 1.0
        moved = F.grid_sample(layers, grid.to(torch.float32), mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        picture = background.clone()
        for i in back_to_front:
            alpha = moved[i, 3:4]
            picture = picture * (1.0 - alpha) + moved[i, :3] * alpha
            labels[t][moved[i, 3] >= 0.5] = objects.ids[i]
        if noise > 0:
            picture = picture + noise * torch.randn(picture.shape, generator=generator)
        frames[t] = rearrange(picture.clamp(0.0, 1.0), "c h w -> h w c")
    return Scene(name, frames, labels, objects, order, affines)


def _linear(start: Sequence[float], end: Sequence[float], frames: int) -> torch.Tensor:
    """float64 ``[T, 4]`` poses moving linearly from ``start`` to ``end`` (x, y, scale, rotation)."""
    u = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)[:, None]
    a = torch.tensor(start, dtype=torch.float64)
    b = torch.tensor(end, dtype=torch.float64)
    return a + (b - a) * u


def make_scene(name: str, height: int = 128, width: int = 160, frames: int = 32, objects: int = 2,
               seed: int = 0) -> Scene:
    """One of ``SCENES`` at the given size (sizes are relative: motions scale with the frame).

    translation: a blob slides across a third of the frame.  scaling: a blob grows 1.7x.
    rotation: an elongated rectangle turns 120 degrees.  crossing: two objects swap sides, object 1
    passing in front of object 2 (almost covering it for a frame or two).  occlusion: a big object 1 passes
    over a small, slowly moving object 2, hiding it completely for several frames.  exit: a blob leaves through the
    right edge.  bending: a fish-like ellipse translates while a travelling wave bends it (non-rigid).
    several: ``objects`` blobs on separate paths (the benchmark's scene; some cross).
    fast: a small blob (a tenth of the width) races along the lower part of an ellipse, accelerating from rest to 7.5 %
    of the width per frame at mid-clip and slowing down again (at 32 frames; more frames turn it further, at the
    same speeds), among six static look-alike blobs painted into the background, while a bigger object 2
    drifts slowly across the top.
    """
    h, w = height, width
    generator = torch.Generator().manual_seed(seed + 1)
    s = min(h, w)
    if name == "translation":
        mask = blob(h, w, (0.3 * w, 0.45 * h), 0.22 * s, generator)
        return render_scene(name, mask[None], _linear((0.3 * w, 0.45 * h, 1, 0), (0.65 * w, 0.58 * h, 1, 0),
                                                      frames)[:, None], seed=seed)
    if name == "scaling":
        mask = blob(h, w, (0.5 * w, 0.5 * h), 0.18 * s, generator)
        return render_scene(name, mask[None], _linear((0.5 * w, 0.5 * h, 1, 0), (0.52 * w, 0.47 * h, 1.7, 0),
                                                      frames)[:, None], seed=seed)
    if name == "rotation":
        mask = rectangle(h, w, (0.5 * w, 0.5 * h), (0.3 * s, 0.1 * s), angle=10)
        return render_scene(name, mask[None], _linear((0.5 * w, 0.5 * h, 1, 0), (0.5 * w, 0.5 * h, 1, 120),
                                                      frames)[:, None], seed=seed)
    if name == "crossing":
        front = blob(h, w, (0.22 * w, 0.5 * h), 0.2 * s, generator)
        back = ellipse(h, w, (0.78 * w, 0.5 * h), (0.16 * s, 0.13 * s))
        poses = torch.stack([_linear((0.22 * w, 0.5 * h, 1, 0), (0.8 * w, 0.55 * h, 1, 0), frames),
                             _linear((0.78 * w, 0.5 * h, 1, 0), (0.2 * w, 0.45 * h, 1, 0), frames)], dim=1)
        return render_scene(name, torch.stack([front, back]), poses, depth_order=(1, 2), seed=seed)
    if name == "occlusion":
        front = blob(h, w, (0.25 * w, 0.5 * h), 0.22 * s, generator, wobble=0.1)
        back = ellipse(h, w, (0.62 * w, 0.5 * h), (0.1 * s, 0.08 * s))
        poses = torch.stack([_linear((0.25 * w, 0.5 * h, 1, 0), (0.8 * w, 0.52 * h, 1, 0), frames),
                             _linear((0.62 * w, 0.5 * h, 1, 0), (0.45 * w, 0.48 * h, 1, 0), frames)], dim=1)
        return render_scene(name, torch.stack([front, back]), poses, depth_order=(1, 2), seed=seed)
    if name == "exit":
        mask = blob(h, w, (0.55 * w, 0.5 * h), 0.2 * s, generator)
        return render_scene(name, mask[None], _linear((0.55 * w, 0.5 * h, 1, 0), (1.45 * w, 0.55 * h, 1, 0),
                                                      frames)[:, None], seed=seed)
    if name == "bending":
        mask = ellipse(h, w, (0.35 * w, 0.5 * h), (0.12 * s, 0.34 * s))
        bend = wave_bend(0.05 * s, 0.5 * s, frames, 0.5 * h)
        return render_scene(name, mask[None], _linear((0.35 * w, 0.5 * h, 1, 0), (0.6 * w, 0.5 * h, 1, 0),
                                                      frames)[:, None], seed=seed, bends=[bend])
    if name == "several":
        masks, poses = [], []
        for i in range(objects):
            y = (i + 1) / (objects + 1)
            x0, x1 = (0.2, 0.75) if i % 2 == 0 else (0.8, 0.25)
            masks.append(blob(h, w, (x0 * w, y * h), 0.6 * s / (objects + 2), generator))
            poses.append(_linear((x0 * w, y * h, 1.0, 0.0), (x1 * w, (y + 0.1 * (-1) ** i) * h, 1.2, 15.0 * (-1) ** i),
                                 frames))
        return render_scene(name, torch.stack(masks), torch.stack(poses, dim=1), seed=seed)
    if name == "fast":
        radius, peak = 0.05 * w, 0.075 * w  # the blob's radius; its top speed per frame
        rx, ry, cx, cy = 0.33 * w, 0.3 * h, 0.5 * w, 0.45 * h
        t = torch.arange(frames, dtype=torch.float64)
        span = max(1, frames - 1)
        # speed peak * sin(pi t / span) along the ellipse (measured with rx): the angle turned by frame t
        theta = (peak / rx) * (span / math.pi) * (1.0 - torch.cos(math.pi * t / span))
        theta = theta + math.pi / 2 - 0.5 * float(theta[-1])  # the top speed at the ellipse's lowest point
        x, y = cx + rx * torch.cos(theta), cy + ry * torch.sin(theta)
        small = blob(h, w, (float(x[0]), float(y[0])), radius, generator)
        poses = [torch.stack([x, y, torch.ones_like(t), 40.0 * t / span], dim=-1),
                 _linear((0.35 * w, 0.16 * h, 1.0, 0.0), (0.55 * w, 0.18 * h, 1.0, 0.0), frames)]
        big = ellipse(h, w, (0.35 * w, 0.16 * h), (0.12 * s, 0.09 * s))
        spots = [(0.2, 0.55), (0.4, 0.78), (0.62, 0.6), (0.8, 0.8), (0.5, 0.42), (0.15, 0.85)]
        look_alikes = torch.stack([blob(h, w, (u * w, v * h), radius, generator) for u, v in spots])
        return render_scene(name, torch.stack([small, big]), torch.stack(poses, dim=1), seed=seed,
                            distractors=look_alikes)
    raise ValueError(f"unknown scene {name!r}; known: {', '.join(SCENES)}")


SCENES = ("translation", "scaling", "rotation", "crossing", "occlusion", "exit", "bending", "several", "fast")


def object_ious(predicted: torch.Tensor, truth: torch.Tensor, ids: Sequence[int],
                min_area: int = 1) -> dict[int, list[float]]:
    """Per object id, the IoU of predicted and true masks on each frame where it is visible in ``truth``.

    Args:
        predicted, truth: uint8 ``[T, H, W]`` label videos.
        min_area: frames where the true visible area is below this many pixels are skipped.
    """
    out: dict[int, list[float]] = {}
    for object_id in ids:
        p = (predicted == object_id).flatten(1)
        g = (truth == object_id).flatten(1)
        inter = (p & g).sum(1).to(torch.float64)
        union = (p | g).sum(1).to(torch.float64)
        visible = g.sum(1) >= min_area
        out[object_id] = (inter[visible] / union[visible]).tolist()
    return out


def identity_swaps(predicted: torch.Tensor, truth: torch.Tensor, ids: Sequence[int], band: int = 2) -> dict[int, int]:
    """Per object id, the most pixels (over frames) it carries in ``predicted`` where ``truth`` has ANOTHER
    object, outside a ``band``-pixel band around the true object boundaries (where one pixel can go either way).
    """
    edges = truth[:, None].to(torch.float32)
    grow = F.max_pool2d(edges, 2 * band + 1, stride=1, padding=band)
    shrink = -F.max_pool2d(-edges, 2 * band + 1, stride=1, padding=band)
    interior = (grow == shrink)[:, 0]
    out: dict[int, int] = {}
    for object_id in ids:
        wrong = (predicted == object_id) & (truth != object_id) & (truth != 0) & interior
        out[object_id] = int(wrong.flatten(1).sum(1).max())
    return out
