"""First-frame objects with SAM2: from clicks and boxes, from object names, or automatically.

Every mode ends the same way: one SAM2 mask (logits) per object of the prompts, in the
prompts' order, then overlaps are resolved (a pixel claimed by several objects goes to the one
whose mask logit is highest there), so object ``k`` of the prompts is mask ``k`` and id ``k``
with the palette colour of ``k``.

Modes:
    * ``points_boxes``: per object, positive/negative points and/or a box, given as JSON
      (per object name or 1-based id) or as KJNodes coordinate strings and BBOX lists (the k-th
      positive point / box belongs to object k; negative points apply to every object).
    * ``text``: the paper's pipeline: an open-vocabulary detector finds each object from its
      name (boxes above the thresholds), SAM2 turns the boxes into masks. Spatial words in the
      names ("left dog", "right dog", "middle dog", "top", "bottom") pick among detections of
      the same noun by position. Objects that also have points/boxes use those instead.
    * ``automatic``: a grid of single-point prompts; the largest distinct confident masks,
      ordered left to right, become objects 1..L.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..kjnodes import parse_spline_points
from ..types import Objects, Prompts
from .sam2 import Sam2Model

LOG = logging.getLogger(__name__)

MODES = ("points_boxes", "text", "automatic")
Progress = Callable[[int, int], None]
Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class ObjectClicks:
    """SAM2 prompts for one object, in image pixels: points with labels (1 = on, 0 = off), a box."""

    points: tuple[Point, ...] = ()
    labels: tuple[int, ...] = ()
    box: Box | None = None

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise TTMInputError("points", "points and labels differ in number", "give one label per point")
        if any(label not in (0, 1) for label in self.labels):
            raise TTMInputError("points", f"labels {self.labels} are not 0/1", "use positive and negative points")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x1 > x0 and y1 > y0):
                raise TTMInputError("boxes", f"box {list(self.box)} has no area", "give boxes as [x0, y0, x1, y1]")

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    @property
    def positive(self) -> bool:
        """Whether there is something to segment (a positive point or a box)."""
        return self.box is not None or 1 in self.labels

    def merged(self, other: ObjectClicks, name: str) -> ObjectClicks:
        if self.box is not None and other.box is not None and self.box != other.box:
            raise TTMInputError("boxes", f"object {name!r} got two different boxes", "give one box per object")
        return ObjectClicks(self.points + other.points, self.labels + other.labels, self.box or other.box)


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The result of SAM2Segment.

    Attributes:
        objects: the objects (masks float32 ``[L, H, W]`` in {0, 1}, no overlaps, ids 1..L).
        boxes: the bounding box of every final mask (pixels, x0, y0, x1 exclusive, y1 exclusive).
        scores: SAM2's predicted quality (IoU) of each object's mask.
    """

    objects: Objects
    boxes: tuple[Box, ...]
    scores: tuple[float, ...]

    def boxes_json(self) -> str:
        """The boxes in the ``boxes`` input format, so a result can be pinned and edited."""
        return json.dumps({"units": "pixels", "objects": {
            name: [round(v, 1) for v in box] for name, box in zip(self.objects.prompts.names, self.boxes)}})


# --------------------------------------------------------------------------- prompt parsing

def _coord(value: object, what: str, input_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TTMInputError(input_name, f"{what} has a coordinate {value!r}", "use numbers")
    return float(value)


class _Units:
    def __init__(self, units: object, size: tuple[int, int], input_name: str) -> None:
        if units not in ("pixels", "normalized"):
            raise TTMInputError(input_name, f"unknown units {units!r}", "use 'pixels' (default) or 'normalized' (0..1)")
        self.normalized = units == "normalized"
        self.height, self.width = size
        self.input_name = input_name

    def point(self, x: float, y: float, what: str) -> Point:
        if self.normalized:
            x, y = x * self.width, y * self.height
        if not (-0.5 <= x <= self.width + 0.5 and -0.5 <= y <= self.height + 0.5):
            raise TTMInputError(self.input_name, f"{what} ({x:.1f}, {y:.1f}) px lies outside the "
                                f"{self.width}x{self.height} image",
                                "give pixel coordinates of this image, or set \"units\": \"normalized\"")
        return x, y


def _load_json(text: str, input_name: str, example: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TTMInputError(input_name, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
                            f"write it like {example}") from None


def _object_index(key: str, prompts: Prompts, input_name: str) -> int:
    try:
        return prompts.index_of(key)
    except TTMInputError as err:
        raise TTMInputError(input_name, err.problem, err.fix) from None


def _entries(data: object, prompts: Prompts, input_name: str, example: str) -> tuple[str, list[tuple[int, object]]]:
    """(units, [(object index, spec)]) from {"units", "objects": {...}}, {name: spec} or [spec, ...]."""
    units = "pixels"
    if isinstance(data, Mapping) and "objects" in data:
        units = data.get("units", "pixels")
        unknown = set(data) - {"units", "objects", "version"}
        if unknown:
            raise TTMInputError(input_name, f"unknown keys {sorted(unknown)}", f"write it like {example}")
        data = data["objects"]
    if isinstance(data, Mapping):
        return units, [(_object_index(str(k), prompts, input_name), v) for k, v in data.items()]
    if isinstance(data, list):
        if len(data) > len(prompts.objects):
            raise TTMInputError(input_name, f"{len(data)} entries for {len(prompts.objects)} objects",
                                "give at most one entry per object, in object order")
        return units, list(enumerate(data))
    raise TTMInputError(input_name, f"expected an object or a list, got {type(data).__name__}",
                        f"write it like {example}")


def _point_list(value: object, what: str, units: _Units) -> list[Point]:
    if isinstance(value, Mapping) or (isinstance(value, list) and len(value) == 2
                                       and all(isinstance(v, (int, float)) for v in value)):
        value = [value]
    if not isinstance(value, list):
        raise TTMInputError(units.input_name, f"{what} is {value!r}",
                            "give points as [[x, y], ...] or [{\"x\": .., \"y\": ..}]")
    points = []
    for i, item in enumerate(value, start=1):
        if isinstance(item, Mapping) and "x" in item and "y" in item:
            x, y = _coord(item["x"], what, units.input_name), _coord(item["y"], what, units.input_name)
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            x, y = _coord(item[0], what, units.input_name), _coord(item[1], what, units.input_name)
        else:
            raise TTMInputError(units.input_name, f"{what} point {i} is {item!r}", "give points as [x, y]")
        points.append(units.point(x, y, f"{what} point {i}"))
    return points


POINTS_EXAMPLE = '{"left dog": {"positive": [[120, 200]], "negative": [[300, 210]]}, "cat": [[400, 180]]}'
BOXES_EXAMPLE = '{"left dog": [60, 120, 220, 330], "cat": [350, 100, 470, 260]}'


def parse_points(text: str, prompts: Prompts, size: tuple[int, int]) -> dict[int, ObjectClicks]:
    """The ``points`` JSON: per object (name or 1-based id, or a list in object order) either a
    list of positive points or ``{"positive": [...], "negative": [...]}``; points are ``[x, y]``
    or ``{"x", "y"}`` in pixels (or 0..1 with ``{"units": "normalized", "objects": {...}}``)."""
    if not text.strip():
        return {}
    units_name, entries = _entries(_load_json(text, "points", POINTS_EXAMPLE), prompts, "points", POINTS_EXAMPLE)
    units = _Units(units_name, size, "points")
    out: dict[int, ObjectClicks] = {}
    for index, spec in entries:
        name = prompts.objects[index].name
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"positive", "negative"}
            if unknown:
                raise TTMInputError("points", f"object {name!r} has unknown keys {sorted(unknown)}",
                                    "use 'positive' and 'negative' point lists")
            positive = _point_list(spec.get("positive", []), f"{name!r} positive", units)
            negative = _point_list(spec.get("negative", []), f"{name!r} negative", units)
        else:
            positive, negative = _point_list(spec, repr(name), units), []
        clicks = ObjectClicks(tuple(positive + negative), (1,) * len(positive) + (0,) * len(negative))
        out[index] = out[index].merged(clicks, name) if index in out else clicks
    return out


def _box(value: object, what: str, units: _Units) -> Box:
    if isinstance(value, Mapping):
        keys = next((k for k in (("x0", "y0", "x1", "y1"), ("startX", "startY", "endX", "endY"),
                                 ("x_min", "y_min", "x_max", "y_max")) if all(c in value for c in k)), None)
        if keys is None:
            raise TTMInputError(units.input_name, f"{what} is {value!r}", "give boxes as [x0, y0, x1, y1]")
        value = [value[k] for k in keys]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise TTMInputError(units.input_name, f"{what} is {value!r}", "give boxes as [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (_coord(v, what, units.input_name) for v in value)
    x0, y0 = units.point(x0, y0, what)
    x1, y1 = units.point(x1, y1, what)
    box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise TTMInputError(units.input_name, f"{what} {[round(v, 1) for v in box]} is less than a pixel wide",
                            "draw a box around the object")
    return box


def parse_boxes(text: str, prompts: Prompts, size: tuple[int, int]) -> dict[int, ObjectClicks]:
    """The ``boxes`` JSON: per object (name, id, or a list in object order) ``[x0, y0, x1, y1]``
    (or KJNodes' ``{"startX", "startY", "endX", "endY"}``) in pixels, or 0..1 with
    ``{"units": "normalized", "objects": {...}}``."""
    if not text.strip():
        return {}
    data = _load_json(text, "boxes", BOXES_EXAMPLE)
    units_name, entries = _entries(data, prompts, "boxes", BOXES_EXAMPLE)
    units = _Units(units_name, size, "boxes")
    return {index: ObjectClicks(box=_box(spec, f"box of {prompts.objects[index].name!r}", units))
            for index, spec in entries}


def _looks_normalized(points: Sequence[Point], size: tuple[int, int]) -> bool:
    return max(size) > 2 and all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in points)


def kjnodes_points(positive: str | None, negative: str | None, prompts: Prompts,
                   size: tuple[int, int]) -> dict[int, ObjectClicks]:
    """KJNodes Points Editor strings: the k-th positive point is object k; every negative point
    is a negative click for every object. Coordinates are image pixels; strings whose values all
    lie in 0..1 (the editor's ``normalize`` option) are read as fractions of the image."""
    out: dict[int, ObjectClicks] = {}
    pos: list[Point] = []
    neg: list[Point] = []
    for name, text, target in (("positive_coords", positive, pos), ("negative_coords", negative, neg)):
        if text is None or not text.strip() or text.strip() in ("[]", "null"):
            continue
        groups = parse_spline_points(text, name)
        flat = [p for group in groups for p in group]
        units = _Units("normalized" if _looks_normalized(flat, size) else "pixels", size, name)
        target.extend(units.point(x, y, f"point {i + 1}") for i, (x, y) in enumerate(flat))
    if len(pos) > len(prompts.objects):
        raise TTMInputError("positive_coords", f"{len(pos)} positive points for {len(prompts.objects)} objects",
                            "place one positive point per object (the k-th point is object k), or add objects")
    if neg and not pos:
        raise TTMInputError("negative_coords", "negative points were given without positive points",
                            "add one positive point per object in the Points Editor")
    for index, point in enumerate(pos):
        out[index] = ObjectClicks((point, *neg), (1,) + (0,) * len(neg))
    return out


def kjnodes_boxes(bboxes: object, prompts: Prompts, size: tuple[int, int]) -> dict[int, ObjectClicks]:
    """A BBOX list (KJNodes Points Editor / Florence2 coordinates): box k is object k, each
    ``(x0, y0, x1, y1)`` in pixels. A list with one list per image uses the first image's."""
    if bboxes is None:
        return {}
    if isinstance(bboxes, str):
        bboxes = _load_json(bboxes, "bboxes", "[[x0, y0, x1, y1], ...]") if bboxes.strip() else []
    if not isinstance(bboxes, (list, tuple)):
        raise TTMInputError("bboxes", f"expected a list of boxes, got {type(bboxes).__name__}",
                            "connect a BBOX output (e.g. KJNodes Points Editor's bbox)")
    boxes = list(bboxes)
    if boxes and isinstance(boxes[0], (list, tuple)) and boxes[0] and isinstance(boxes[0][0], (list, tuple)):
        boxes = list(boxes[0])  # per-image lists: the first frame's boxes
    if len(boxes) > len(prompts.objects):
        raise TTMInputError("bboxes", f"{len(boxes)} boxes for {len(prompts.objects)} objects",
                            "draw one box per object (box k is object k), or add objects")
    units = _Units("pixels", size, "bboxes")
    return {i: ObjectClicks(box=_box(b, f"box {i + 1}", units)) for i, b in enumerate(boxes)}


def gather_clicks(prompts: Prompts, size: tuple[int, int], points: str = "", boxes: str = "",
                  positive_coords: str | None = None, negative_coords: str | None = None,
                  bboxes: object = None) -> dict[int, ObjectClicks]:
    """Every point and box given for each object (by object index), from all sources."""
    merged: dict[int, ObjectClicks] = {}
    for source in (parse_points(points, prompts, size), parse_boxes(boxes, prompts, size),
                   kjnodes_points(positive_coords, negative_coords, prompts, size),
                   kjnodes_boxes(bboxes, prompts, size)):
        for index, clicks in source.items():
            name = prompts.objects[index].name
            merged[index] = merged[index].merged(clicks, name) if index in merged else clicks
    for index, clicks in merged.items():
        if not clicks.positive:
            raise TTMInputError("points", f"object {prompts.objects[index].name!r} has only negative points",
                                "add a positive point or a box on it")
    return merged


# --------------------------------------------------------------------------- SAM2 image wrappers

def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision on GPUs when asked for; weights stay float32 (SAM2 is small)."""
    if torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class _MetaImage:
    """Meta's SAM2ImagePredictor around the loaded SAM2 (the image is encoded once)."""

    def __init__(self, model: Sam2Model, image: torch.Tensor) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model.model)
        # The predictor hard-codes the feature sizes of 1024 px models; follow the model's size.
        size = model.image_size
        self.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        # float32 HWC in 0..1: SAM2's ToTensor keeps float values as they are.
        self.predictor.set_image(np.ascontiguousarray(image.detach().to("cpu", torch.float32).numpy()))

    def predict(self, clicks: ObjectClicks, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[C, H, W]`` at image size and predicted IoU ``[C]``."""
        coords = np.asarray(clicks.points, dtype=np.float32) if clicks.points else None
        labels = np.asarray(clicks.labels, dtype=np.int32) if clicks.points else None
        box = np.asarray(clicks.box, dtype=np.float32) if clicks.box is not None else None
        _, coords_t, labels_t, box_t = self.predictor._prep_prompts(coords, labels, box, None, True)
        masks, scores, _ = self.predictor._predict(coords_t, labels_t, box_t, None, multimask, return_logits=True)
        return masks[0].float(), scores[0].float()

    def predict_grid(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One positive point each: ``[B, 2]`` pixels -> logits ``[B, C, H, W]``, IoU ``[B, C]``."""
        coords = rearrange(points.numpy().astype(np.float32), "b xy -> b 1 xy")
        labels = np.ones((points.shape[0], 1), dtype=np.int32)
        _, coords_t, labels_t, _ = self.predictor._prep_prompts(coords, labels, None, None, True)
        masks, scores, _ = self.predictor._predict(coords_t, labels_t, None, None, True, return_logits=True)
        return masks.float(), scores.float()


class _HFImage:
    """transformers' Sam2Model + Sam2Processor (image embeddings computed once)."""

    def __init__(self, model: Sam2Model, image: torch.Tensor, device: torch.device) -> None:
        self.model, self.processor, self.device = model.model, model.processor, device
        chw = rearrange(image.detach().to("cpu", torch.float32), "h w c -> c h w")
        inputs = self.processor(images=chw, do_rescale=False, return_tensors="pt")
        self.original_sizes = inputs["original_sizes"]
        with torch.inference_mode():
            pixels = inputs["pixel_values"].to(device=device, dtype=next(self.model.parameters()).dtype)
            self.embeddings = self.model.get_image_embeddings(pixels)

    def _run(self, inputs: Mapping[str, torch.Tensor], multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        keys = ("input_points", "input_labels", "input_boxes")
        prompt = {k: v.to(self.device) for k, v in inputs.items() if k in keys}
        with torch.inference_mode():
            out = self.model(image_embeddings=self.embeddings, multimask_output=multimask, **prompt)
        logits = self.processor.post_process_masks(out.pred_masks.float().cpu(), self.original_sizes,
                                                   binarize=False)[0]
        return logits.float(), out.iou_scores[0].float().cpu()

    def predict(self, clicks: ObjectClicks, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs: dict[str, object] = {}
        if clicks.points:
            kwargs["input_points"] = [[[list(p) for p in clicks.points]]]
            kwargs["input_labels"] = [[list(clicks.labels)]]
        if clicks.box is not None:
            kwargs["input_boxes"] = [[list(clicks.box)]]
        inputs = self.processor(original_sizes=self.original_sizes, return_tensors="pt", **kwargs)
        logits, scores = self._run(inputs, multimask)
        return logits[0], scores[0]

    def predict_grid(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.processor(original_sizes=self.original_sizes, return_tensors="pt",
                                input_points=[[[[float(x), float(y)]] for x, y in points.tolist()]],
                                input_labels=[[[1] for _ in range(points.shape[0])]])
        return self._run(inputs, True)


def image_predictor(model: Sam2Model, image: torch.Tensor, device: torch.device) -> _MetaImage | _HFImage:
    """Encode ``image`` (float32 ``[H, W, 3]`` in 0..1) once for prompting."""
    return _MetaImage(model, image) if model.backend == "meta" else _HFImage(model, image, device)


# --------------------------------------------------------------------------- masks

def resolve_overlaps(logits: torch.Tensor) -> torch.Tensor:
    """float32 ``[L, H, W]`` in {0, 1}: each pixel to the object with the highest positive logit.

    Args:
        logits: float ``[L, H, W]`` SAM2 mask logits (> 0 = inside); ties go to the lower index.
    """
    best = logits.argmax(dim=0)
    inside = logits.amax(dim=0) > 0
    labels = torch.where(inside, best + 1, torch.zeros_like(best))
    return (labels[None] == torch.arange(1, logits.shape[0] + 1)[:, None, None]).to(torch.float32)


def mask_box(mask: torch.Tensor) -> Box:
    """(x0, y0, x1, y1) pixel bounds of a mask ``[H, W]`` (x1, y1 exclusive)."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _finish(prompts: Prompts, logits: list[torch.Tensor], scores: list[float]) -> Segmentation:
    masks = resolve_overlaps(torch.stack(logits))
    for i, mask in enumerate(masks):
        if not bool(mask.any()):
            covered = bool((logits[i] > 0).any())
            reason = "is covered by other objects" if covered else "came out empty"
            raise TTMInputError("prompts", f"the mask of object {i + 1} ({prompts.objects[i].name!r}) {reason}",
                                "move its points or box onto the object, or give it a positive point")
    objects = Objects(prompts, masks)
    return Segmentation(objects, tuple(mask_box(m) for m in masks), tuple(scores))


def _best(logits: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, float]:
    index = int(scores.argmax())
    return logits[index], float(scores[index])


def segment_with_clicks(model: Sam2Model, image: torch.Tensor, prompts: Prompts,
                        clicks: Mapping[int, ObjectClicks], device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, progress: Progress | None = None,
                        predictor: _MetaImage | _HFImage | None = None) -> Segmentation:
    """One mask per object from its points/box (``clicks`` must cover every object).

    A single positive point is ambiguous (part, object, group): SAM2 then returns three
    masks and the one with the highest predicted IoU is used; several points or a box give one.
    """
    _require_objects(prompts)
    missing = [o.name for i, o in enumerate(prompts.objects) if i not in clicks or clicks[i].empty]
    if missing:
        raise TTMInputError("points", f"no point or box for {', '.join(map(repr, missing))}",
                            "give every object a positive point or a box (JSON by name, or the k-th KJNodes "
                            "point/box), or use the text or automatic mode")
    device = torch.device(device)
    logits, scores = [], []
    with torch.inference_mode(), autocast(device, dtype):
        predictor = predictor or image_predictor(model, image, device)
        for i in range(len(prompts.objects)):
            c = clicks[i]
            multimask = c.box is None and len(c.points) == 1
            out, quality = predictor.predict(c, multimask)
            best, score = _best(out, quality)
            logits.append(best.cpu())
            scores.append(score)
            if progress:
                progress(i + 1, len(prompts.objects))
    return _finish(prompts, logits, scores)


def _require_objects(prompts: Prompts) -> None:
    if not prompts.objects:
        raise TTMInputError("prompts", "the prompts name no objects (zero objects)",
                            "add one 'name: local prompt' line per movable object in Prompt Decompose")


def choose_distinct(candidates: list[tuple[float, torch.Tensor, torch.Tensor]], count: int,
                    overlap: float = 0.3) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """The ``count`` largest distinct candidates, ordered left to right by mask centre.

    Args:
        candidates: (score, logits ``[h, w]``, bool mask ``[h, w]``) per candidate mask.
        overlap: a candidate is distinct when it shares at most this fraction of its own area
            with every bigger chosen mask.
    Returns fewer than ``count`` when there are not enough distinct masks.
    """
    chosen: list[tuple[float, torch.Tensor, torch.Tensor]] = []
    for candidate in sorted(candidates, key=lambda c: int(c[2].sum()), reverse=True):
        area = int(candidate[2].sum())
        if area and all(int((candidate[2] & other[2]).sum()) <= overlap * area for other in chosen):
            chosen.append(candidate)
        if len(chosen) == count:
            break
    return sorted(chosen, key=lambda c: float(torch.nonzero(c[2], as_tuple=True)[1].float().mean()))


def segment_automatic(model: Sam2Model, image: torch.Tensor, prompts: Prompts, points_per_side: int = 16,
                      score_threshold: float = 0.7, max_area: float = 0.5, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32, progress: Progress | None = None) -> Segmentation:
    """The L largest distinct confident masks from a grid of clicks, ordered left to right.

    Args:
        points_per_side: the grid has this many points per side (n x n clicks).
        score_threshold: masks whose predicted IoU is below this are ignored.
        max_area: masks covering more than this fraction of the image are taken for background.
    Candidates are compared at most 512 px wide (masks are upsampled from SAM2's 256 px logits
    anyway); a candidate is distinct when it overlaps every bigger chosen mask by at most 30 %
    of its own area.
    """
    _require_objects(prompts)
    if points_per_side < 1:
        raise TTMInputError("auto_points_per_side", f"{points_per_side} points per side", "use at least 1")
    device = torch.device(device)
    height, width = image.shape[:2]
    scale = min(1.0, 512 / max(height, width))
    small = image
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = rearrange(F.interpolate(rearrange(image, "h w c -> 1 c h w"), size=size, mode="bilinear",
                                        antialias=True, align_corners=False), "1 c h w -> h w c")
    sh, sw = small.shape[:2]
    steps = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) / points_per_side
    grid = rearrange(torch.stack(torch.meshgrid(steps * sw, steps * sh, indexing="xy"), dim=-1), "h w xy -> (h w) xy")
    candidates: list[tuple[float, torch.Tensor, torch.Tensor]] = []
    chunk = 16
    with torch.inference_mode(), autocast(device, dtype):
        predictor = image_predictor(model, small, device)
        chunks = list(grid.split(chunk))
        for done, points in enumerate(chunks, start=1):
            logits, scores = predictor.predict_grid(points)
            for option_logits, option_scores in zip(logits.cpu(), scores.cpu()):
                best, score = _best(option_logits, option_scores)
                if score >= score_threshold:
                    binary = best > 0
                    area = int(binary.sum())
                    if 0 < area <= max_area * sh * sw:
                        candidates.append((score, best, binary))
            if progress:
                progress(done, len(chunks))
    chosen = choose_distinct(candidates, len(prompts.objects))
    if len(chosen) < len(prompts.objects):
        raise TTMInputError("auto_score_threshold", f"found {len(chosen)} distinct masks for "
                            f"{len(prompts.objects)} objects ({', '.join(prompts.names)})",
                            "lower auto_score_threshold, raise auto_points_per_side, or use points, boxes or text")
    chosen_logits = [c[1] for c in chosen]
    if scale < 1.0:
        upsampled = F.interpolate(rearrange(torch.stack(chosen_logits), "l h w -> 1 l h w"), size=(height, width),
                                  mode="bilinear", align_corners=False)
        chosen_logits = list(rearrange(upsampled, "1 l h w -> l h w"))
    return _finish(prompts, chosen_logits, [c[0] for c in chosen])


def segment_objects(model: Sam2Model, image: torch.Tensor, prompts: Prompts, mode: str, *,
                    clicks: Mapping[int, ObjectClicks] | None = None, detector: object = None,
                    detector_device: torch.device | str | None = None,
                    box_threshold: float = 0.3, text_threshold: float = 0.25, auto_points_per_side: int = 16,
                    auto_score_threshold: float = 0.7, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, progress: Progress | None = None) -> Segmentation:
    """SAM2Segment's work: first-frame objects from ``image`` (float32 ``[H, W, 3]`` in 0..1).

    Args:
        mode: ``points_boxes``, ``text`` or ``automatic`` (see the module docstring).
        clicks: per object index, the points/box given (``gather_clicks``); in text mode they
            take precedence over the detector for their objects.
        detector: a ``detect.Detector`` (text mode), on ``detector_device`` (default: ``device``).
    Returns the Segmentation (objects with ids 1..L in prompt order, their boxes and scores).
    """
    if mode not in MODES:
        raise TTMInputError("mode", f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    if image.ndim != 3 or image.shape[-1] < 3:
        raise TTMInputError("image", f"expected one image [H, W, 3], got {tuple(image.shape)}", "connect an IMAGE")
    image = image[..., :3].detach().to("cpu", torch.float32)
    _require_objects(prompts)
    clicks = dict(clicks or {})
    if mode == "automatic":
        return segment_automatic(model, image, prompts, auto_points_per_side, auto_score_threshold,
                                 device=device, dtype=dtype, progress=progress)
    if mode == "text":
        from .detect import Detector, detect_objects

        wanted = [i for i in range(len(prompts.objects)) if i not in clicks]
        if wanted:
            if not isinstance(detector, Detector):
                raise TTMInputError("detector", "text mode needs an open-vocabulary detector",
                                    "connect a Detector Loader (Grounding DINO or OWLv2) to SAM2 Segment")
            found = detect_objects(detector, image, list(prompts.names), wanted, box_threshold, text_threshold,
                                   detector_device if detector_device is not None else device)
            for index, (box, _score) in found.items():
                clicks[index] = ObjectClicks(box=box)
    return segment_with_clicks(model, image, prompts, clicks, device, dtype, progress)
