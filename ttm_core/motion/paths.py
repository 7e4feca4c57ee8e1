"""Artist-authored motion: keyframed paths and KJNodes SplineEditor point lists.

Coordinates are continuous image coordinates: pixel (i, j) covers [i, i+1) x [j, j+1) and
its centre is (i + 0.5, j + 0.5); normalised coordinates are these divided by (W, H).
A path moves an object's first-frame mask centroid; scale and rotation act about that
centroid, so the rendered mask's centroid follows the path whatever the scale or angle.

The paths JSON (``version`` 1)::

    {"version": 1, "units": "normalized",          # or "pixels"
     "objects": {
       "cat": {"keyframes": [{"frame": 12, "x": 0.7, "y": 0.5, "easing": "ease_in_out"},
                             {"t": 1.0, "scale": 1.3, "rotation": 15}],
               "curve": "smooth"},                  # or "linear" (default)
       "2":   {"spline": "[{\\"x\\": 40, \\"y\\": 60}, ...]", "size": [512, 512],
               "anchor": "relative", "start": 0, "end": 48}}}

Keyframes: time as ``frame`` (0-based) or ``t`` (0..1 of the clip); ``x``, ``y`` place the
centroid; ``scale`` (> 0) and ``rotation`` (degrees, clockwise on screen) are optional; any
field left out keeps the previous keyframe's value. Before the first keyframe the object
starts from where it is in the image (its rest pose at frame 0); after the last it holds.
``easing`` shapes the segment that ends at the keyframe: linear, ease_in, ease_out,
ease_in_out or hold.

Splines: a KJNodes SplineEditor ``coord_str`` (a JSON list of {"x", "y"} in canvas pixels, or
a list of such lists) or a list of [x, y] pairs; ``size`` is the editor canvas [w, h]
(default: the image); the points are spread evenly over frames ``start``..``end`` (or
``start_t``..``end_t``). ``anchor`` "relative" (default) moves the object by the spline's
displacement from its first point; "absolute" puts the centroid on the points.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import TTMInputError
from ..kjnodes import parse_spline_points
from ..types import Prompts

PATHS_VERSION = 1


def _ease_in(u: float) -> float:
    return u ** 3


def _ease_out(u: float) -> float:
    return 1.0 - (1.0 - u) ** 3


def _ease_in_out(u: float) -> float:
    return 4.0 * u ** 3 if u < 0.5 else 1.0 - (-2.0 * u + 2.0) ** 3 / 2.0


def _hold(u: float) -> float:
    return 1.0 if u >= 1.0 else 0.0


EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda u: u,
    "ease_in": _ease_in,
    "ease_out": _ease_out,
    "ease_in_out": _ease_in_out,
    "hold": _hold,
}
CURVES = ("linear", "smooth")
FAR_OFF_LIMIT = 1.0
"""Positions may lie outside the image (objects leave the frame) by up to this many image
sizes; further out almost always means coordinates of another canvas size."""


@dataclass(frozen=True)
class Keyframe:
    """A fully resolved keyframe: the pose of the centroid at ``time`` (frames, float)."""

    time: float
    x: float
    y: float
    scale: float = 1.0
    rotation: float = 0.0
    easing: str = "linear"

    def __post_init__(self) -> None:
        if self.easing not in EASINGS:
            raise TTMInputError("paths", f"unknown easing {self.easing!r}", f"use one of {', '.join(EASINGS)}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise TTMInputError("paths", f"scale {self.scale} at frame {self.time:g} is not positive",
                                "use a scale above 0 (1 = original size)")


@dataclass(frozen=True)
class ObjectPath:
    """Keyframes sorted by time, the first at frame 0, plus the curve through the positions."""

    keyframes: tuple[Keyframe, ...]
    curve: str = "linear"

    def __post_init__(self) -> None:
        if not self.keyframes or self.keyframes[0].time != 0.0:
            raise TTMInputError("paths", "a path must start at frame 0", "add a keyframe at frame 0")
        times = [k.time for k in self.keyframes]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise TTMInputError("paths", f"keyframe times {times} do not increase",
                                "give each keyframe a later frame than the one before")
        if self.curve not in CURVES:
            raise TTMInputError("paths", f"unknown curve {self.curve!r}", f"use one of {', '.join(CURVES)}")


def _catmull_rom(p0: float, p1: float, p2: float, p3: float, u: float) -> float:
    """Uniform Catmull-Rom between p1 and p2 (passes through every key position)."""
    return 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)


def sample_path(path: ObjectPath, num_frames: int) -> torch.Tensor:
    """Poses per frame: float64 ``[T, 4]`` = (x, y, scale, rotation_degrees).

    Inside a segment the eased parameter drives position (linear or Catmull-Rom), scale
    (geometric, so a zoom looks even) and rotation (linear).
    """
    keys = path.keyframes
    out = torch.empty(num_frames, 4, dtype=torch.float64)
    segment = 0
    for frame in range(num_frames):
        while segment + 1 < len(keys) and keys[segment + 1].time <= frame:
            segment += 1
        k1 = keys[segment]
        if segment + 1 >= len(keys):
            out[frame] = torch.tensor([k1.x, k1.y, k1.scale, k1.rotation], dtype=torch.float64)
            continue
        k2 = keys[segment + 1]
        u = EASINGS[k2.easing]((frame - k1.time) / (k2.time - k1.time))
        if path.curve == "smooth":
            k0 = keys[segment - 1] if segment > 0 else k1
            k3 = keys[segment + 2] if segment + 2 < len(keys) else k2
            x = _catmull_rom(k0.x, k1.x, k2.x, k3.x, u)
            y = _catmull_rom(k0.y, k1.y, k2.y, k3.y, u)
        else:
            x = k1.x + (k2.x - k1.x) * u
            y = k1.y + (k2.y - k1.y) * u
        scale = math.exp(math.log(k1.scale) + (math.log(k2.scale) - math.log(k1.scale)) * u)
        rotation = k1.rotation + (k2.rotation - k1.rotation) * u
        out[frame] = torch.tensor([x, y, scale, rotation], dtype=torch.float64)
    return out


# --------------------------------------------------------------------------- parsing

def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TTMInputError("paths", f"{what} is {value!r}, not a number", f"give {what} as a number")
    return float(value)


def _time(entry: Mapping[str, object], frame_key: str, t_key: str, num_frames: int, what: str,
          default: float | None = None) -> float:
    last = num_frames - 1
    if frame_key in entry and t_key in entry:
        raise TTMInputError("paths", f"{what} gives both {frame_key!r} and {t_key!r}", "give only one of them")
    if frame_key in entry:
        value = _number(entry[frame_key], f"{what} {frame_key}")
        if not 0 <= value <= last:
            raise TTMInputError("paths", f"{what} {frame_key} {value:g} is outside frames 0..{last}",
                                f"use a frame in 0..{last}, or '{t_key}' (0..1) so it follows the frame count")
        return value
    if t_key in entry:
        value = _number(entry[t_key], f"{what} {t_key}")
        if not 0.0 <= value <= 1.0:
            raise TTMInputError("paths", f"{what} {t_key} {value:g} is outside 0..1", f"use {t_key} in 0..1")
        return value * last
    if default is None:
        raise TTMInputError("paths", f"{what} has no time", f"give '{frame_key}' (0..{last}) or '{t_key}' (0..1)")
    return default


class _Space:
    """Converts user coordinates to image pixels and checks they are not far off the image."""

    def __init__(self, units: str, size: tuple[int, int]) -> None:
        if units not in ("normalized", "pixels"):
            raise TTMInputError("paths", f"unknown units {units!r}", "use 'normalized' (0..1) or 'pixels'")
        self.units = units
        self.height, self.width = size

    def check(self, x: float, y: float, what: str) -> tuple[float, float]:
        w, h = self.width, self.height
        if not (-FAR_OFF_LIMIT * w <= x <= (1 + FAR_OFF_LIMIT) * w
                and -FAR_OFF_LIMIT * h <= y <= (1 + FAR_OFF_LIMIT) * h):
            raise TTMInputError("paths", f"{what} ({x:.1f}, {y:.1f}) px is far off the {w}x{h} image",
                                "check the units ('normalized' is 0..1) or the spline canvas 'size'")
        return x, y

    def point(self, x: float, y: float, what: str) -> tuple[float, float]:
        if self.units == "normalized":
            x, y = x * self.width, y * self.height
        return self.check(x, y, what)


def _keyframes_from_spline(entry: Mapping[str, object], rest: tuple[float, float], space: _Space,
                           num_frames: int, name: str) -> list[Keyframe]:
    groups = parse_spline_points(entry["spline"], f"paths ({name} spline)")
    if len(groups) != 1:
        raise TTMInputError("paths", f"object {name!r} has {len(groups)} splines",
                            "give one spline per object (use spline_objects to spread several)")
    points = groups[0]
    size = entry.get("size", [space.width, space.height])
    if not (isinstance(size, Sequence) and len(size) == 2):
        raise TTMInputError("paths", f"{name} spline size {size!r} is not [width, height]",
                            "give the SplineEditor canvas size as [mask_width, mask_height]")
    canvas_w, canvas_h = _number(size[0], "spline width"), _number(size[1], "spline height")
    if canvas_w <= 0 or canvas_h <= 0:
        raise TTMInputError("paths", f"{name} spline size {size!r} is not positive", "use the canvas size in pixels")
    anchor = entry.get("anchor", "relative")
    if anchor not in ("relative", "absolute"):
        raise TTMInputError("paths", f"{name} anchor {anchor!r}", "use 'relative' or 'absolute'")
    start = _time(entry, "start", "start_t", num_frames, f"{name} spline", default=0.0)
    end = _time(entry, "end", "end_t", num_frames, f"{name} spline", default=float(num_frames - 1))
    if len(points) > 1 and end <= start:
        raise TTMInputError("paths", f"{name} spline ends (frame {end:g}) before it starts ({start:g})",
                            "make 'end' later than 'start'")
    pixels = [(x * space.width / canvas_w, y * space.height / canvas_h) for x, y in points]
    if anchor == "relative":
        x0, y0 = pixels[0]
        pixels = [(rest[0] + x - x0, rest[1] + y - y0) for x, y in pixels]
    keys = []
    for i, (x, y) in enumerate(pixels):
        space.check(x, y, f"{name} spline point {i}")
        time = start if len(pixels) == 1 else start + (end - start) * i / (len(pixels) - 1)
        keys.append(Keyframe(time, x, y))
    if keys[0].time > 0:
        keys.insert(0, Keyframe(0.0, keys[0].x, keys[0].y) if anchor == "relative"
                    else Keyframe(0.0, rest[0], rest[1]))
    return keys


def _keyframes_from_list(entry: Mapping[str, object], rest: tuple[float, float], space: _Space,
                         num_frames: int, name: str) -> list[Keyframe]:
    raw = entry["keyframes"]
    if not isinstance(raw, list) or not raw:
        raise TTMInputError("paths", f"{name} keyframes is not a non-empty list", "give a list of keyframes")
    current = Keyframe(0.0, rest[0], rest[1])
    keys: list[Keyframe] = []
    for i, item in enumerate(raw):
        what = f"{name} keyframe {i}"
        if not isinstance(item, Mapping):
            raise TTMInputError("paths", f"{what} is {item!r}", "write each keyframe as an object {\"frame\": ..}")
        unknown = set(item) - {"frame", "t", "x", "y", "scale", "rotation", "easing"}
        if unknown:
            raise TTMInputError("paths", f"{what} has unknown fields {sorted(unknown)}",
                                "use frame/t, x, y, scale, rotation, easing")
        time = _time(item, "frame", "t", num_frames, what)
        x, y = current.x, current.y
        if "x" in item or "y" in item:
            if "x" not in item or "y" not in item:
                raise TTMInputError("paths", f"{what} gives only one of x and y", "give both x and y")
            x, y = space.point(_number(item["x"], f"{what} x"), _number(item["y"], f"{what} y"), what)
        scale = _number(item["scale"], f"{what} scale") if "scale" in item else current.scale
        rotation = _number(item["rotation"], f"{what} rotation") if "rotation" in item else current.rotation
        easing = item.get("easing", "linear")
        if not isinstance(easing, str):
            raise TTMInputError("paths", f"{what} easing {easing!r}", f"use one of {', '.join(EASINGS)}")
        current = Keyframe(time, x, y, scale, rotation, easing)
        keys.append(current)
    if keys[0].time > 0:
        keys.insert(0, Keyframe(0.0, rest[0], rest[1]))
    return keys


def parse_paths(spec: str | Mapping[str, object], prompts: Prompts, size: tuple[int, int], num_frames: int,
                rest_positions: torch.Tensor) -> tuple[ObjectPath | None, ...]:
    """Parse the paths JSON into one ObjectPath per object (``None`` = the object stays still).

    Args:
        spec: the paths JSON (text or parsed); empty text means every object stays still.
        prompts: the objects, addressed in the JSON by name or 1-based id.
        size: (H, W) of the image.
        num_frames: T, the length of the clip.
        rest_positions: float ``[L, 2]`` first-frame centroids (x, y) in pixels.
    """
    if num_frames < 1:
        raise TTMInputError("num_frames", f"{num_frames} frames", "use at least 1 frame")
    if isinstance(spec, str):
        if not spec.strip():
            return (None,) * len(prompts.objects)
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise TTMInputError("paths", f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
                                "fix the JSON, or clear the field to keep every object still") from None
    if not isinstance(spec, Mapping):
        raise TTMInputError("paths", "the paths JSON is not an object", "write {\"version\": 1, \"objects\": {...}}")
    version = spec.get("version", PATHS_VERSION)
    if version != PATHS_VERSION:
        raise TTMInputError("paths", f"version {version!r} is not supported", f"use version {PATHS_VERSION}")
    unknown = set(spec) - {"version", "units", "objects"}
    if unknown:
        raise TTMInputError("paths", f"unknown top-level fields {sorted(unknown)}", "use version, units, objects")
    space = _Space(str(spec.get("units", "normalized")), size)
    entries = spec.get("objects", {})
    if not isinstance(entries, Mapping):
        raise TTMInputError("paths", "'objects' is not a mapping of object name to path",
                            "write \"objects\": {\"cat\": {\"keyframes\": [...]}}")
    result: list[ObjectPath | None] = [None] * len(prompts.objects)
    for key, entry in entries.items():
        index = prompts.index_of(str(key))
        name = prompts.objects[index].name
        if result[index] is not None:
            raise TTMInputError("paths", f"object {name!r} has two paths", "give each object one path")
        if not isinstance(entry, Mapping):
            raise TTMInputError("paths", f"the path of {name!r} is {entry!r}",
                                "give {\"keyframes\": [...]} or {\"spline\": ...}")
        rest = (float(rest_positions[index, 0]), float(rest_positions[index, 1]))
        if ("keyframes" in entry) == ("spline" in entry):
            raise TTMInputError("paths", f"the path of {name!r} needs exactly one of 'keyframes' and 'spline'",
                                "give keyframes or a spline")
        allowed = {"keyframes", "curve"} if "keyframes" in entry else {
            "spline", "size", "anchor", "start", "end", "start_t", "end_t", "curve"}
        unknown = set(entry) - allowed
        if unknown:
            raise TTMInputError("paths", f"the path of {name!r} has unknown fields {sorted(unknown)}",
                                f"use {', '.join(sorted(allowed))}")
        if "keyframes" in entry:
            keys = _keyframes_from_list(entry, rest, space, num_frames, name)
        else:
            keys = _keyframes_from_spline(entry, rest, space, num_frames, name)
        result[index] = ObjectPath(tuple(keys), str(entry.get("curve", "linear")))
    return tuple(result)


def attach_splines(spec: str | Mapping[str, object], coords: str, targets: str, prompts: Prompts,
                   canvas: tuple[int, int] | None) -> dict[str, object]:
    """Merge a SplineEditor ``coord_str`` socket into the paths spec.

    Args:
        spec: the paths JSON (may be empty).
        coords: KJNodes coord_str: one list of points, or a list of lists (several splines).
        targets: comma-separated object names/ids that receive the splines in order;
            empty = objects 1, 2, ... in order.
        prompts: the objects.
        canvas: the SplineEditor's (width, height), or None for the image size.
    """
    if isinstance(spec, str):
        try:
            data = json.loads(spec) if spec.strip() else {}
        except json.JSONDecodeError as err:
            raise TTMInputError("paths", f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
                                "fix the JSON, or clear the field") from None
    else:
        data = dict(spec)
    if not isinstance(data, dict):
        raise TTMInputError("paths", "the paths JSON is not an object", "write {\"version\": 1, \"objects\": {...}}")
    groups = parse_spline_points(coords, "spline_coords")
    names = [t.strip() for t in targets.split(",") if t.strip()] if targets.strip() else \
        [str(i + 1) for i in range(len(groups))]
    if len(names) != len(groups):
        raise TTMInputError("spline_objects", f"{len(groups)} splines for {len(names)} objects ({', '.join(names)})",
                            "name one object per spline, comma-separated, in the spline order")
    objects = dict(data.get("objects", {}))
    for name, points in zip(names, groups):
        index = prompts.index_of(name)
        label = prompts.objects[index].name
        if any(prompts.index_of(str(k)) == index for k in objects):
            raise TTMInputError("spline_objects", f"object {label!r} already has a path in 'paths'",
                                "remove it from paths or from spline_objects")
        entry: dict[str, object] = {"spline": [[x, y] for x, y in points]}
        if canvas is not None:
            entry["size"] = list(canvas)
        objects[label] = entry
    data["objects"] = objects
    return data


def normalized_paths(spec: str | Mapping[str, object], prompts: Prompts) -> dict[str, object]:
    """The paths JSON in its canonical form: ``version`` and ``units`` written out, objects keyed by
    their names (ids resolved) in the objects' order, entries unchanged. Call after ``parse_paths``
    accepted ``spec`` (empty text = no objects move)."""
    data = json.loads(spec) if isinstance(spec, str) and spec.strip() else {} if isinstance(spec, str) else spec
    if not isinstance(data, Mapping):
        raise TTMInputError("paths", "the paths JSON is not an object", "write {\"version\": 1, \"objects\": {...}}")
    raw = data.get("objects", {})
    entries = dict(raw) if isinstance(raw, Mapping) else {}
    by_index = {prompts.index_of(str(key)): entry for key, entry in entries.items()}
    return {"version": data.get("version", PATHS_VERSION), "units": data.get("units", "normalized"),
            "objects": {prompts.objects[i].name: by_index[i] for i in sorted(by_index)}}


def format_paths(paths: Mapping[str, object]) -> str:
    """The paths JSON as text for an editor: one object a line, one keyframe a line (``json.loads``
    gives ``paths`` back)."""
    head = f'{{"version": {json.dumps(paths["version"])}, "units": {json.dumps(paths["units"])}, "objects": {{'
    objects = paths["objects"]
    assert isinstance(objects, Mapping)
    entries = []
    for name, entry in objects.items():
        key = json.dumps(name, ensure_ascii=False)
        keyframes = entry.get("keyframes") if isinstance(entry, Mapping) else None
        if not isinstance(keyframes, list) or not keyframes:
            entries.append(f"  {key}: {json.dumps(entry, ensure_ascii=False)}")
            continue
        rest = "".join(f", {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
                       for k, v in entry.items() if k != "keyframes")
        lines = ",\n".join("    " + json.dumps(k, ensure_ascii=False) for k in keyframes)
        entries.append(f'  {key}: {{"keyframes": [\n{lines}]{rest}}}')
    return head + "}}" if not entries else head + "\n" + ",\n".join(entries) + "}}"
