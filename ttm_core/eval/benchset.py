"""A procedural benchmark set: scenes with known objects, prompts and trajectories, deterministic by seed.

For CI and quick checks of a setup (and of the metrics themselves), not for comparing with the paper.
Each clip: a smooth random background texture and 1-3 textured objects (ellipses and boxes, each with its
own colour), every object sliding along an eased straight path (``ease-in-out``, the motion the pack's
paths use) to a random place that keeps it in frame, painted back to front. Written in ttm-batch's jobs
layout, so ``ttm-batch --jobs OUT/jobs.jsonl`` renders it with any workflow that has one Load Image and one
Load Trajectory (the trajectory file carries the objects' masks and prompts), e.g.
``workflows/ttm_saved_trajectory_warp_api.json``::

    OUT/jobs.jsonl              one ttm-batch job per clip: id, image, trajectory
    OUT/clips.jsonl             each clip in full: id, image, masks, prompt, motion, objects, trajectory, seed
                                (the other ttm-batch fields, for workflows that start from masks and prompts)
    OUT/images/<id>.png         the first frame
    OUT/masks/<id>_<k>.png      object k's first-frame mask (white on black; Load Image (as Mask), red channel)
    OUT/trajectories/<id>.npz   the mask trajectory (Save Trajectory's file format)
    OUT/reference/<id>.mp4      the scene moved exactly along its trajectory (the reference set: FVD, ViCLIP-V)
    OUT/set.json                the generator's settings (seed, count, size, frames, fps)

Same seed and settings, same files (byte for byte, up to the mp4 encoder).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from ..errors import TTMInputError
from ..motion.render import render_labels, warp
from ..motion.trajectory_file import write_trajectory
from ..types import ObjectPrompt, Objects, ProgressFn, Prompts, Trajectory
from .videos import write_video

COLORS = {"red": (0.85, 0.2, 0.15), "blue": (0.15, 0.35, 0.85), "green": (0.2, 0.7, 0.25),
          "yellow": (0.9, 0.8, 0.2), "purple": (0.6, 0.25, 0.7), "orange": (0.95, 0.55, 0.1)}
SHAPES = ("ball", "box")


@dataclass(frozen=True)
class BenchSettings:
    """How the set is made. height / width: multiples of 16 (what video models take); frames >= 2."""

    count: int = 8
    seed: int = 0
    height: int = 96
    width: int = 128
    frames: int = 17
    fps: float = 8.0
    max_objects: int = 3

    def __post_init__(self) -> None:
        checks = (("count", self.count >= 1, "1 or more clips"), ("frames", self.frames >= 2, "2 or more frames"),
                  ("height", self.height >= 32 and self.height % 16 == 0, "a multiple of 16, at least 32"),
                  ("width", self.width >= 32 and self.width % 16 == 0, "a multiple of 16, at least 32"),
                  ("fps", math.isfinite(self.fps) and self.fps > 0, "a positive frame rate, e.g. 8"),
                  ("max_objects", 1 <= self.max_objects <= 6, "1 to 6 objects"))
        for name, ok, fix in checks:
            if not ok:
                raise TTMInputError(name, f"{getattr(self, name)!r} is out of range", f"use {fix}")


@dataclass(frozen=True, eq=False)
class BenchClip:
    id: str
    frames: torch.Tensor
    trajectory: Trajectory
    prompt: str
    motion: str


def _texture(height: int, width: int, g: torch.Generator, base: tuple[float, float, float]) -> torch.Tensor:
    """float32 ``[3, H, W]``: smooth coarse blobs plus grain around ``base`` (optical flow needs texture)."""
    total = torch.zeros(1, 3, height, width)
    for cell, weight in ((24, 1.0), (6, 0.8)):
        coarse = torch.randn(1, 3, height // cell + 3, width // cell + 3, generator=g)
        total += weight * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (torch.tensor(base)[:, None, None] + 0.15 * total[0]).clamp(0, 1)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def make_clip(index: int, settings: BenchSettings) -> BenchClip:
    """Clip ``index`` of the set (independent of the others: its own generator seeded by seed and index).

    Objects never cover more than ``MAX_COVERED`` of one another in any frame (layouts that would are drawn
    again, deterministically): heavy occlusion measures the tracker, not the video model, and the set's
    reference videos should score adherence near 1.
    """
    g = torch.Generator().manual_seed(settings.seed * 1_000_003 + index)
    count = 1 + int(torch.randint(settings.max_objects, (), generator=g))
    for _attempt in range(50):
        clip = _draw(index, settings, g, count)
        if clip is not None:
            return clip
        count = max(1, count - 1) if _attempt % 10 == 9 else count
    raise RuntimeError("no layout without heavy occlusion found")  # unreachable: one object always fits


MAX_COVERED = 0.1
"""Largest share of an object's area another may cover in any frame of a generated clip."""


def _draw(index: int, settings: BenchSettings, g: torch.Generator, count: int) -> BenchClip | None:
    height, width, frames = settings.height, settings.width, settings.frames
    names = list(COLORS)
    order = torch.randperm(len(names), generator=g).tolist()
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    masks, textures, prompts, directions, boxes = [], [], [], [], []
    affines = torch.zeros(frames, count, 2, 3, dtype=torch.float64)
    affines[:, :, 0, 0] = affines[:, :, 1, 1] = 1.0
    ease = torch.tensor([0.5 - 0.5 * math.cos(math.pi * t / (frames - 1)) for t in range(frames)], dtype=torch.float64)
    for k in range(count):
        color = names[order[k]]
        shape = SHAPES[int(torch.randint(2, (), generator=g))]
        ry, rx = _uniform(g, 0.1, 0.16) * height, _uniform(g, 0.08, 0.13) * width
        cy, cx = _uniform(g, ry + 2, height - ry - 2), _uniform(g, rx + 2, width - rx - 2)
        if shape == "ball":
            mask = (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0).to(torch.float32)
        else:
            mask = (((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)).to(torch.float32)
        ty, tx = _uniform(g, ry + 2, height - ry - 2), _uniform(g, rx + 2, width - rx - 2)
        affines[:, k, 0, 2] = ease * (tx - cx)
        affines[:, k, 1, 2] = ease * (ty - cy)
        masks.append(mask)
        boxes.append((cx + ease.numpy() * (tx - cx), cy + ease.numpy() * (ty - cy), rx, ry))
        horizontal = "right" if tx > cx else "left"
        vertical = "down" if ty > cy else "up"
        direction = f"{vertical} and to the {horizontal}"
        directions.append(direction)
        article = "an" if color[0] in "aeiou" else "a"
        prompts.append(ObjectPrompt(f"{color} {shape}", f"{article} {color} textured {shape} slides {direction}"))
    for a in range(count):  # cheap test first: bounding boxes that meet in some frame, draw again
        for b in range(a):
            xa, ya, rxa, rya = boxes[a]
            xb, yb, rxb, ryb = boxes[b]
            if bool(((np.abs(xa - xb) < rxa + rxb) & (np.abs(ya - yb) < rya + ryb)).any()):
                return None
    textures = [_texture(height, width, g, COLORS[p.name.split()[0]]) for p in prompts]
    background = _texture(height, width, g, (0.45, 0.42, 0.38))
    listed = ", ".join(("an " if p.name[0] in "aeiou" else "a ") + p.name for p in prompts)
    objects = Objects(Prompts(f"{listed} on a textured grey floor",
                              "; ".join(f"the {p.name} slides {d}" for p, d in zip(prompts, directions)),
                              tuple(prompts)), torch.stack(masks))
    depth = objects.ids  # object 1 in front
    labels = render_labels(objects.masks, affines, objects.ids, depth)
    visible = (labels[:, None] == torch.tensor(objects.ids, dtype=torch.uint8)[None, :, None, None]).flatten(2).sum(2)
    if bool((visible < (1 - MAX_COVERED) * objects.binary().flatten(1).sum(1)[None]).any()):
        return None
    video = background[None].repeat(frames, 1, 1, 1)
    for k in reversed(range(count)):  # back to front, each with its bilinear alpha
        layer = torch.cat([textures[k], masks[k][None]])[None].repeat(frames, 1, 1, 1)
        moved = warp(layer, affines[:, k])
        alpha = moved[:, 3:4]
        video = video * (1 - alpha) + moved[:, :3] * alpha
    trajectory = Trajectory(labels, objects, settings.fps, depth, affines)
    clip_id = f"clip-{settings.seed:03d}-{index:03d}"
    return BenchClip(clip_id, rearrange(video, "t c h w -> t h w c").contiguous(), trajectory,
                     objects.prompts.global_prompt, objects.prompts.motion_prompt)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=False)


def generate_set(out: Path, settings: BenchSettings, progress: ProgressFn | None = None) -> list[dict[str, object]]:
    """Write the set to ``out`` (see the module docstring). Returns the clips written to ``clips.jsonl``."""
    if (out / "jobs.jsonl").exists():
        raise TTMInputError("out", f"{out} already holds a set (jobs.jsonl)", "choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    clips: list[dict[str, object]] = []
    for index in range(settings.count):
        clip = make_clip(index, settings)
        image = f"images/{clip.id}.png"
        _png(out / image, (clip.frames[0].numpy() * 255.0 + 0.5).astype(np.uint8))
        masks = []
        for k in range(clip.trajectory.objects.count):
            name = f"masks/{clip.id}_{k + 1}.png"
            _png(out / name, np.where(clip.trajectory.objects.binary()[k].numpy(), 255, 0).astype(np.uint8))
            masks.append(name)
        trajectory = f"trajectories/{clip.id}.npz"
        write_trajectory(clip.trajectory, out / trajectory)
        write_video(out / "reference" / f"{clip.id}.mp4", clip.frames, settings.fps)
        prompts = clip.trajectory.objects.prompts
        clips.append({"id": clip.id, "image": image, "masks": masks, "prompt": clip.prompt, "motion": clip.motion,
                      "objects": {o.name: o.local_prompt for o in prompts.objects}, "trajectory": trajectory,
                      "seed": settings.seed * 1000 + index})
        if progress is not None:
            progress(index + 1, settings.count)
    (out / "set.json").write_text(json.dumps({"generator": "ttm_core.eval.benchset", **asdict(settings)},
                                             indent=2) + "\n")
    (out / "clips.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in clips))
    # jobs.jsonl last: a folder with it is a finished set.
    jobs = [{"id": c["id"], "image": c["image"], "trajectory": c["trajectory"]} for c in clips]
    (out / "jobs.jsonl").write_text("".join(json.dumps(job, ensure_ascii=False) + "\n" for job in jobs))
    return clips
