"""Speed and accuracy of the weights-free flow tracker (``ttm_core.segment.flow_track``) on CPU.

A procedural scene with a known label video (``benchmarks.flow_scenes``, "several": textured blobs on
crossing paths that scale and turn) at 832x480, 81 frames, 2 objects, tracked with the default settings and
with cheaper or costlier variants (rows), interleaved round by round so that every row sees the same machine
load. Each row reports frames per second (median of the rounds, the whole ``track_objects_by_flow`` call with
frames streamed one at a time), its ratio to the goal of 30 frames/s, and the mean IoU of each object against
the true label video, so the speed/accuracy trade-off is visible. Nothing asserts a time.

Run: python -m benchmarks flow-track [--json FILE]
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Iterator, Sequence

import torch

from benchmarks.flow_scenes import Scene, identity_swaps, make_scene, object_ious
from ttm_core.segment.flow_track import FlowTrackSettings, track_objects_by_flow

GOAL_FPS = 30.0
"""Frames per second the tracker should reach at 832x480 on CPU (faster than a video plays)."""

ROWS: tuple[tuple[str, FlowTrackSettings], ...] = (
    ("default", FlowTrackSettings()),
    ("no consistency pass", FlowTrackSettings(consistency=False)),
    ("flow_side=192", FlowTrackSettings(flow_side=192)),
    ("flow_side=128", FlowTrackSettings(flow_side=128)),
    ("flow_side=384", FlowTrackSettings(flow_side=384)),
    ("preset=fast", FlowTrackSettings(preset="fast")),
)
"""The rows measured: (name, settings); the first is the default the goal is judged on."""


def _frames(scene: Scene) -> Iterator[torch.Tensor]:
    yield from scene.frames.unbind(0)


def _changed(settings: FlowTrackSettings) -> dict[str, object]:
    """The fields of ``settings`` that differ from the defaults."""
    default = FlowTrackSettings()
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if getattr(settings, f.name) != getattr(default, f.name)}


def run_flow_benchmark(height: int = 480, width: int = 832, frames: int = 81, objects: int = 2, rounds: int = 3,
                       threads: int | None = None,
                       rows: Sequence[tuple[str, FlowTrackSettings]] = ROWS) -> dict:
    """Measure every row ``rounds`` times, interleaved; return the report (JSON-able).

    Args:
        height, width, frames, objects: the scene (``make_scene("several", ...)``).
        rounds: timed runs per row (the median counts); each row also runs once untimed first (warm-up).
        threads: OpenCV's and torch's CPU threads (None: leave their defaults).
    """
    import cv2

    if threads is not None:
        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
    scene = make_scene("several", height, width, frames, objects=objects)
    count = int(scene.frames.shape[0])
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    labels: dict[str, torch.Tensor] = {}
    for name, settings in rows:  # warm-up, and the labels scored (the tracker is deterministic)
        labels[name], _ = track_objects_by_flow(_frames(scene), scene.objects, count=count, settings=settings)
    for _ in range(rounds):
        for name, settings in rows:
            started = time.perf_counter()
            track_objects_by_flow(_frames(scene), scene.objects, count=count, settings=settings)
            times[name].append(time.perf_counter() - started)
    results = []
    for name, settings in rows:
        median = statistics.median(times[name])
        ious = object_ious(labels[name], scene.labels, scene.objects.ids)
        mean_iou = {str(i): round(sum(v) / len(v), 4) for i, v in ious.items()}
        results.append({
            "name": name, "settings": _changed(settings), "rounds_s": [round(t, 4) for t in times[name]],
            "median_s": round(median, 4), "fps": round(count / median, 2),
            "ratio_to_goal": round(count / median / GOAL_FPS, 3), "iou": mean_iou,
            "min_iou": round(min(min(v) for v in ious.values()), 4),
            "identity_swaps": {str(k): v for k, v in identity_swaps(labels[name], scene.labels,
                                                                    scene.objects.ids).items()},
        })
    default = results[0]
    return {
        "scene": {"name": scene.name, "width": width, "height": height, "frames": count, "objects": objects},
        "goal_fps": GOAL_FPS, "rounds": rounds, "cpu_count": os.cpu_count(), "cv2_threads": cv2.getNumThreads(),
        "torch_threads": torch.get_num_threads(), "opencv": cv2.__version__,
        "results": results,
        "verdict": {"default_fps": default["fps"], "default_ratio_to_goal": default["ratio_to_goal"],
                    "default_meets_goal": default["fps"] >= GOAL_FPS},
    }


def format_table(report: dict) -> str:
    """The report as a text table, one line per row, then the verdict."""
    scene = report["scene"]
    lines = [f"flow tracker on CPU: {scene['width']}x{scene['height']}x{scene['frames']}, {scene['objects']} objects "
             f"(scene {scene['name']!r}), {report['rounds']} interleaved rounds, OpenCV {report['opencv']} with "
             f"{report['cv2_threads']} threads, {report['cpu_count']} CPUs",
             f"{'row':<22}{'fps':>8}{'x goal':>8}{'median s':>10}  {'mean IoU per object':<24}{'min IoU':>8}"]
    for row in report["results"]:
        ious = " ".join(f"{k}:{v:.3f}" for k, v in row["iou"].items())
        lines.append(f"{row['name']:<22}{row['fps']:>8.1f}{row['ratio_to_goal']:>8.2f}{row['median_s']:>10.3f}  "
                     f"{ious:<24}{row['min_iou']:>8.3f}")
    verdict = report["verdict"]
    lines.append(f"default settings: {verdict['default_fps']:.1f} frames/s = {verdict['default_ratio_to_goal']:.2f}x "
                 f"the goal of {report['goal_fps']:.0f} ({'met' if verdict['default_meets_goal'] else 'NOT met'})")
    return "\n".join(lines) + "\n"
