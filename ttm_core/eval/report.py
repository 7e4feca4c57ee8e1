"""Results as files: JSON (everything), CSV (one row per config and clip), a markdown table (one row per
config: the paper's Table 3 shape) and PNG plots (per-object IoU over time; metric bars per config).

Plots are drawn with Pillow (already a dependency; matplotlib is not one): a plot is a few lines and
bars with axis labels, which does not justify a plotting library.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

METRIC_LABELS = {
    "fvd": "FVD (lower is better)",
    "clip_frame": "CLIPFrame",
    "viclip_t": "ViCLIP-T",
    "viclip_v": "ViCLIP-V",
    "ad": "AD (px/frame)",
    "mean_iou": "mean IoU",
    "mean_centroid_error_px": "centroid error (px)",
}
"""Column order and headings of the table and the bars (metrics not measured are left out)."""

_BAR_COLORS = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (213, 94, 0), (204, 121, 167), (86, 180, 233),
               (240, 228, 66), (120, 120, 120))


def _font(size: int = 12) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def line_plot(series: Sequence[tuple[str, Sequence[float], tuple[int, int, int]]], title: str, ylabel: str,
              size: tuple[int, int] = (640, 360), ylim: tuple[float, float] = (0.0, 1.0)) -> Image.Image:
    """Lines of ``(name, values per frame, RGB)`` over frames; NaNs break a line. Returns an RGB image."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(12)
    left, right, top, bottom = 52, width - 130, 28, height - 36
    draw.text((left, 6), title, fill=(0, 0, 0), font=_font(14))
    low, high = ylim
    frames = max((len(v) for _, v, _ in series), default=1)
    for k in range(6):  # horizontal grid and y labels
        value = low + (high - low) * k / 5
        y = bottom - (bottom - top) * k / 5
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((4, y - 7), f"{value:.2f}", fill=(60, 60, 60), font=font)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    step = max(1, math.ceil(frames / 10))
    for t in range(0, frames, step):
        x = left + (right - left) * (t / max(1, frames - 1))
        draw.text((x - 4, bottom + 4), str(t), fill=(60, 60, 60), font=font)
    draw.text(((left + right) // 2 - 16, height - 16), "frame", fill=(0, 0, 0), font=font)
    draw.text((right + 10, top - 18), ylabel, fill=(0, 0, 0), font=font)
    for row, (name, values, color) in enumerate(series):
        points: list[tuple[float, float]] = []
        for t, value in enumerate(values):
            if not math.isfinite(value):
                if len(points) > 1:
                    draw.line(points, fill=color, width=2)
                points = []
                continue
            x = left + (right - left) * (t / max(1, frames - 1))
            y = bottom - (bottom - top) * (min(max(value, low), high) - low) / (high - low)
            points.append((x, y))
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        legend_y = top + 4 + 18 * row
        draw.rectangle([right + 10, legend_y + 3, right + 22, legend_y + 11], fill=color)
        draw.text((right + 26, legend_y), name[:14], fill=(0, 0, 0), font=font)
    return image


def bar_plot(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str], panel: tuple[int, int] = (300, 220)
             ) -> Image.Image:
    """One panel per metric, one bar per config (same colour per config in every panel)."""
    configs = list(table)
    columns = min(3, max(1, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / columns))
    width, height = panel
    image = Image.new("RGB", (columns * width, rows * height + 24 + 16 * len(configs)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(12)
    for m, metric in enumerate(metrics):
        ox, oy = (m % columns) * width, (m // columns) * height
        draw.text((ox + 10, oy + 6), METRIC_LABELS.get(metric, metric), fill=(0, 0, 0), font=_font(13))
        values = [float(table[c].get(metric, math.nan)) for c in configs]
        finite = [v for v in values if math.isfinite(v)]
        low = min(0.0, *finite) if finite else 0.0
        high = max(finite) if finite else 1.0
        high = high if high > low else low + 1.0
        left, right, top, bottom = ox + 16, ox + width - 12, oy + 44, oy + height - 20
        zero = bottom - (bottom - top) * (0 - low) / (high - low)
        draw.line([(left, zero), (right, zero)], fill=(0, 0, 0))
        slot = (right - left) / max(1, len(configs))
        for c, value in enumerate(values):
            x0 = left + slot * c + slot * 0.15
            x1 = left + slot * (c + 1) - slot * 0.15
            if math.isfinite(value):
                y = bottom - (bottom - top) * (value - low) / (high - low)
                draw.rectangle([x0, min(y, zero), x1, max(y, zero)], fill=_BAR_COLORS[c % len(_BAR_COLORS)])
                draw.text((x0, min(y, zero) - 14), _fmt(value), fill=(0, 0, 0), font=font)
            else:
                draw.text((x0, zero - 14), "n/a", fill=(120, 120, 120), font=font)
    legend_top = rows * height + 8
    for c, config in enumerate(configs):
        y = legend_top + 16 * c
        draw.rectangle([10, y + 2, 22, y + 12], fill=_BAR_COLORS[c % len(_BAR_COLORS)])
        draw.text((28, y), config, fill=(0, 0, 0), font=font)
    return image


def image_to_array(image: Image.Image) -> np.ndarray:
    """float32 ``[H, W, 3]`` in 0..1 (a ComfyUI IMAGE frame)."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def markdown_table(table: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], first: str = "config") -> str:
    """A markdown table: one row per key of ``table``, one column per metric."""
    header = [first, *(METRIC_LABELS.get(m, m) for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.items():
        lines.append("| " + " | ".join([name, *(_fmt(row.get(m, math.nan)) for m in metrics)]) + " |")
    return "\n".join(lines) + "\n"


def measured_metrics(table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The metrics some config has a finite value for, in ``METRIC_LABELS`` order."""
    def has(metric: str) -> bool:
        return any(isinstance(r.get(metric), (int, float)) and math.isfinite(float(r[metric])) for r in table.values())

    return [m for m in METRIC_LABELS if has(m)]


def _clean(value: Any) -> Any:
    """JSON without NaN (null instead), numpy scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_results(out: Path, results: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``results`` (see ``ttm_core.eval.score.score_set``) as results.json, results.csv, results.md,
    metrics.png and one iou_<config>_<clip>.png per scored clip with adherence. Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    path = out / "results.json"
    path.write_text(json.dumps(_clean(results), indent=2, ensure_ascii=False) + "\n")
    written["json"] = path
    summary = results["summary"]
    metrics = measured_metrics(summary)
    path = out / "results.md"
    sizes = ", ".join(f"{name}: {results['configs'][name]['count']} clips" for name in results["configs"])
    path.write_text(markdown_table(summary, metrics) + f"\nSet sizes: {sizes}.\n")
    written["markdown"] = path
    clip_metrics = [m for m in METRIC_LABELS if m != "fvd"]
    path = out / "results.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["config", "clip", *clip_metrics])
        for name, config in results["configs"].items():
            for clip in config["clips"]:
                writer.writerow([name, clip["id"], *(_fmt(clip.get(m, math.nan)) if m in clip else ""
                                                     for m in clip_metrics)])
    written["csv"] = path
    if metrics:
        path = out / "metrics.png"
        bar_plot(summary, metrics).save(path)
        written["bars"] = path
    for name, config in results["configs"].items():
        for clip in config["clips"]:
            objects = clip.get("objects")
            if not objects:
                continue
            path = out / f"iou_{name}_{clip['id']}.png"
            iou_plot(objects, f"{name} / {clip['id']}: IoU with the trajectory").save(path)
            written[f"iou:{name}:{clip['id']}"] = path
    return written


def iou_plot(objects: Sequence[Mapping[str, Any]], title: str) -> Image.Image:
    """Per-object IoU over time from adherence rows (``name``, ``color``, ``iou`` per frame)."""
    from ..types import color_for_id

    series = []
    for row in objects:
        color = tuple(row.get("color") or color_for_id(int(row["id"])))
        if color == (255, 255, 255) or sum(color) > 600:  # a light palette colour on white: darken it
            color = tuple(int(c * 0.6) for c in color)
        values = [math.nan if v is None else float(v) for v in row["iou"]]
        series.append((f"{row['id']} {row['name']}", values, color))
    return line_plot(series, title, "IoU")
