"""The model-free path at 832x480x81: our chain vs a plain integer-paste cut-and-drag (issue 18).

Our chain is what the nodes call, as library functions: Objects From Masks (``segment.masks.objects_from_masks``)
-> Image To Motion, paths backend (``motion.render.trajectory_from_paths`` plus the node's two video outputs,
``Trajectory.color_video`` and ``foreground``) -> Masked Motion To Video, warp (``motion.cut_and_drag``).
The baseline is written here: the kind of cut-and-drag a popular peer node does, pasting each object's cut-out
at its integer position (numpy), the objects' rectangles inpainted once with their border's mean colour, and the
label video written by the same pastes. It neither scales nor rotates, so in the scale + rotation rows it still
only translates (the comparison the issue asks for).

Per (objects, motion) row, interleaved rounds of: ours (the whole chain), Image To Motion alone, and the
baseline; medians and ratios (also of the fastest round: on a shared machine the baseline's 388 MiB of
fresh pages sometimes cost seconds), and each variant's peak extra resident memory over its rounds
(``peak_memory.PeakRSS``, outputs included: the float32 frames of 832x480x81 alone are 388 MiB).
Translation rows move every object a whole number of pixels per frame (the baseline's case); scale +
rotation rows add scale 1.6 and 90 degrees.

    python -m benchmarks modelfree [--objects 1,3,8] [--rounds 3] [--threads 2] [--size 832x480] [--frames 81]
                                   [--json FILE]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import write_json  # noqa: E402
from benchmarks.peak_memory import PeakRSS, fixed_mmap_threshold  # noqa: E402
from ttm_core.motion.cut_and_drag import cut_and_drag  # noqa: E402
from ttm_core.motion.paths import Keyframe, ObjectPath  # noqa: E402
from ttm_core.motion.poses import mask_centroids  # noqa: E402
from ttm_core.motion.render import trajectory_from_paths  # noqa: E402
from ttm_core.segment.masks import objects_from_masks  # noqa: E402
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory  # noqa: E402

LOG = logging.getLogger(__name__)
MOTIONS = ("translation", "scale_rotation")


@dataclass(frozen=True)
class Scene:
    """A textured first frame, one MASK batch of ellipses and a path per object."""

    image: torch.Tensor  # float32 [1, H, W, 3]
    masks: torch.Tensor  # float32 [L, H, W]
    prompts: Prompts
    paths: tuple[ObjectPath, ...]
    frames: int


def make_scene(objects: int, motion: str, height: int = 480, width: int = 832, frames: int = 81) -> Scene:
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    image = torch.stack([0.5 + 0.4 * torch.sin(xs / 23 + ys / 41), 0.5 + 0.4 * torch.cos(ys / 17 - xs / 53),
                         0.5 + 0.3 * torch.sin((xs + ys) / 9)], -1)
    masks, paths = [], []
    steps = frames - 1
    for i in range(objects):
        cx, cy = width * (0.15 + 0.7 * ((i * 0.37) % 1.0)), height * (0.2 + 0.6 * ((i * 0.61) % 1.0))
        rx, ry = (36.0 + 9 * (i % 3)) * width / 832, (28.0 + 7 * (i % 2)) * height / 480
        mask = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0).to(torch.float32)
        masks.append(mask)
        image = image * (1 - 0.5 * mask[..., None]) + 0.5 * mask[..., None] * torch.tensor([0.9, 0.3, 0.1])
        # Whole pixels per frame: (2 or -1, 1 or -1) x steps.
        pace = max(1, width // 416)  # 2 px per frame at 832 wide
        dx, dy = (pace if i % 2 == 0 else -1) * steps, (1 if i % 3 else -1) * steps
        scale, rotation = (1.6, 90.0) if motion == "scale_rotation" else (1.0, 0.0)
        paths.append((dx, dy, scale, rotation))
    stacked = torch.stack(masks)
    centres = mask_centroids(stacked).tolist()
    object_paths = tuple(ObjectPath((Keyframe(0, x, y), Keyframe(steps, x + dx, y + dy, s, r)))
                         for (x, y), (dx, dy, s, r) in zip(centres, paths))
    prompts = Prompts("g", "m", tuple(ObjectPrompt(f"object{i + 1}", "a thing") for i in range(objects)))
    return Scene(image[None].contiguous(), stacked, prompts, object_paths, frames)


def image_to_motion(scene: Scene, objects: Objects) -> tuple[Trajectory, torch.Tensor, torch.Tensor]:
    """What Image To Motion's paths backend returns: the trajectory, its colour video and foreground."""
    trajectory = trajectory_from_paths(objects, scene.paths, scene.frames, 16.0)
    return trajectory, trajectory.color_video(), trajectory.foreground()


def ours(scene: Scene) -> torch.Tensor:
    """The whole chain as the nodes call it."""
    objects = objects_from_masks(scene.prompts, [("masks", scene.masks)], tuple(scene.masks.shape[1:]))
    trajectory, _, _ = image_to_motion(scene, objects)
    return cut_and_drag(scene.image[0], trajectory, 1.0)


def baseline(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Integer-paste cut-and-drag: rectangles inpainted once, cut-outs pasted at rounded positions."""
    image = scene.image[0].numpy()
    masks = scene.masks.numpy() > 0.5
    height, width = masks.shape[1:]
    background = image.copy()
    cutouts = []
    for mask in masks:
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        ring = np.concatenate([image[max(0, y0 - 1), x0:x1], image[min(height - 1, y1), x0:x1],
                               image[y0:y1, max(0, x0 - 1)], image[y0:y1, min(width - 1, x1)]])
        background[y0:y1, x0:x1] = ring.mean(0)
        cutouts.append((y0, x0, image[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy()))
    offsets = [[(round(p.keyframes[1].x - p.keyframes[0].x) * t // (scene.frames - 1),
                 round(p.keyframes[1].y - p.keyframes[0].y) * t // (scene.frames - 1)) for t in range(scene.frames)]
               for p in scene.paths]
    video = np.empty((scene.frames, height, width, 3), dtype=np.float32)
    labels = np.zeros((scene.frames, height, width), dtype=np.uint8)
    for t in range(scene.frames):
        frame = video[t]
        frame[:] = background
        for i in reversed(range(len(cutouts))):  # object 1 in front
            y0, x0, pixels, mask = cutouts[i]
            dx, dy = offsets[i][t]
            ty, tx = y0 + dy, x0 + dx
            sy0, sx0 = max(0, -ty), max(0, -tx)
            sy1, sx1 = min(mask.shape[0], height - ty), min(mask.shape[1], width - tx)
            if sy1 <= sy0 or sx1 <= sx0:
                continue
            window = (slice(ty + sy0, ty + sy1), slice(tx + sx0, tx + sx1))
            keep = mask[sy0:sy1, sx0:sx1]
            frame[window][keep] = pixels[sy0:sy1, sx0:sx1][keep]
            labels[t][window][keep] = i + 1
    return video, labels


def run_modelfree_benchmark(object_counts: tuple[int, ...], rounds: int, threads: int, height: int = 480,
                            width: int = 832, frames: int = 81) -> dict:
    torch.set_num_threads(threads)
    fixed_mmap_threshold()
    warm = make_scene(1, "scale_rotation", 64, 96, 5)  # first-call costs (kernels, allocator) out of the rounds
    ours(warm), baseline(warm)
    rows = []
    for count in object_counts:
        for motion in MOTIONS:
            scene = make_scene(count, motion, height, width, frames)
            objects = objects_from_masks(scene.prompts, [("masks", scene.masks)], tuple(scene.masks.shape[1:]))
            variants: dict[str, Callable[[], object]] = {
                "ours": lambda s=scene: ours(s),
                "image_to_motion": lambda s=scene, o=objects: image_to_motion(s, o),
                "baseline": lambda s=scene: baseline(s),
            }
            times: dict[str, list[float]] = {name: [] for name in variants}
            memory: dict[str, float] = {}
            for _ in range(rounds):
                for name, fn in variants.items():
                    with PeakRSS() as peak:
                        start = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - start)
                    memory[name] = max(memory.get(name, 0.0), round(peak.extra_kib / 1024, 1))
            median = {name: statistics.median(values) for name, values in times.items()}
            fastest = {name: min(values) for name, values in times.items()}
            row = {"objects": count, "motion": motion, "seconds": {k: round(v, 4) for k, v in median.items()},
                   "min_seconds": {k: round(v, 4) for k, v in fastest.items()},
                   "ours_over_baseline_min": round(fastest["ours"] / fastest["baseline"], 2),
                   "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
                   "ours_over_baseline": round(median["ours"] / median["baseline"], 2),
                   "peak_extra_mib": memory}
            LOG.info("%s", row)
            rows.append(row)
    return {"benchmark": "modelfree", "size": f"{width}x{height}x{frames}", "feather": 1.0, "threads": threads,
            "rounds": rounds, "torch": torch.__version__, "rows": rows}


def format_table(report: dict) -> str:
    lines = [f"model-free path, {report['size']}, {report['threads']} threads, median of {report['rounds']} rounds",
             f"{'objects':>7} {'motion':<15} {'ours s':>8} {'I2M s':>7} {'baseline s':>10} {'ours/base':>9} "
             f"{'min ours/base':>13} "
             f"{'MiB ours':>8} {'MiB I2M':>8} {'MiB base':>8}"]
    for row in report["rows"]:
        s, m = row["seconds"], row["peak_extra_mib"]
        lines.append(f"{row['objects']:>7} {row['motion']:<15} {s['ours']:>8.3f} {s['image_to_motion']:>7.3f} "
                     f"{s['baseline']:>10.3f} {row['ours_over_baseline']:>8.2f}x "
                     f"{row.get('ours_over_baseline_min', float('nan')):>12.2f}x {m['ours']:>8.0f} "
                     f"{m['image_to_motion']:>8.0f} {m['baseline']:>8.0f}")
    return "\n".join(lines) + "\n"


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(","))


def _size(text: str) -> tuple[int, int]:
    width, height = (int(p) for p in text.lower().split("x"))
    return width, height


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks modelfree", description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=_counts, default=(1, 3, 8), help="object counts (default 1,3,8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, as in the issue)")
    parser.add_argument("--size", type=_size, default=(832, 480), help="frame size WxH (default 832x480)")
    parser.add_argument("--frames", type=int, default=81, help="frames (default 81)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    width, height = args.size
    report = run_modelfree_benchmark(args.objects, args.rounds, args.threads, height, width, args.frames)
    sys.stdout.write(format_table(report))
    if args.json:
        write_json(args.json, report)
        sys.stdout.write(f"wrote {args.json}\n")
    return 0
