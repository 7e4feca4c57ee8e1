"""Open-vocabulary detection for text-grounded segmentation (the paper's Grounding DINO -> SAM2).

A detector is a Hugging Face folder (``models/grounding-dino/<folder>``) that transformers
loads with ``AutoModelForZeroShotObjectDetection``: Grounding DINO (the paper's choice;
``IDEA-Research/grounding-dino-tiny`` / ``-base``) or OWLv2 / OWL-ViT. Each distinct object noun
is queried once; names that differ only by a position word ("left dog", "right dog",
"middle dog", "top bird", "bottom bird") share the noun's detections and are assigned by where
the boxes are, which is how the paper's prompts disambiguate objects of the same kind.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from ..errors import TTMInputError
from ..model_files import model_type

LOG = logging.getLogger(__name__)

SUPPORTED_TYPES = ("grounding-dino", "mm-grounding-dino", "owlv2", "owlvit")
_POSITION_WORDS = {
    "left": "left", "leftmost": "left", "right": "right", "rightmost": "right",
    "middle": "middle", "center": "middle", "centre": "middle", "central": "middle",
    "top": "top", "upper": "top", "topmost": "top", "bottom": "bottom", "lower": "bottom", "bottommost": "bottom",
}
_FILLERS = {"the", "a", "an", "on", "at", "in", "to", "of", "one"}
Box = tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)
class Detector:
    """A loaded open-vocabulary detector.

    Attributes:
        name: the folder name (for messages).
        model_type: the transformers ``model_type`` (``grounding-dino``, ``owlv2``, ...).
        model: the ``...ForObjectDetection`` module.
        processor: its processor (image resizing, tokenizer, post-processing).
    """

    name: str
    model_type: str
    model: torch.nn.Module
    processor: Any

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_TYPES:
            raise TTMInputError("detector", f"{self.name} is a {self.model_type!r} model",
                                f"use an open-vocabulary detector folder ({', '.join(SUPPORTED_TYPES)})")
        if not isinstance(self.model, torch.nn.Module):
            raise TTMInputError("detector", "the detector is not a torch module", "load it with the Detector Loader")


def load_detector(folder: Path, device: torch.device | str = "cpu") -> Detector:
    """Load a detector folder with transformers, from disk only."""
    folder = Path(folder)
    kind = model_type(folder)
    if kind is None:
        raise TTMInputError("detector", f"{folder} is not a Hugging Face model folder (no config.json)",
                            "download e.g. IDEA-Research/grounding-dino-tiny into models/grounding-dino/")
    if kind not in SUPPORTED_TYPES:
        raise TTMInputError("detector", f"{folder.name} is a {kind!r} model, not an open-vocabulary detector",
                            f"use a folder of one of: {', '.join(SUPPORTED_TYPES)}")
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    try:
        model = AutoModelForZeroShotObjectDetection.from_pretrained(str(folder), local_files_only=True,
                                                                    dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise TTMInputError("detector", f"{folder.name} could not be loaded ({err})",
                            "the folder needs config.json, the weights and the processor/tokenizer files") from None
    return Detector(folder.name, kind, model.to(device).eval(), processor)


def split_position(name: str) -> tuple[str, str | None]:
    """``"left dog"`` -> (``"dog"``, ``"left"``); names without a position word keep their text.

    Only the first position word counts; the query is the name without it and without the
    articles and prepositions around it ("the dog on the right" -> "dog").
    """
    words = name.split()
    for i, word in enumerate(words):
        key = re.sub(r"[^a-z]", "", word.casefold())
        if key in _POSITION_WORDS and len(words) > 1:
            rest = words[:i] + words[i + 1:]
            while len(rest) > 1 and rest[-1].casefold() in _FILLERS:
                rest = rest[:-1]
            while len(rest) > 1 and rest[0].casefold() in _FILLERS:
                rest = rest[1:]
            return " ".join(rest), _POSITION_WORDS[key]
    return name, None


def plan_queries(names: list[str]) -> list[tuple[str, list[tuple[int, str | None]]]]:
    """Group objects by the noun phrase the detector is asked for: [(query, [(index, position)])]."""
    groups: dict[str, tuple[str, list[tuple[int, str | None]]]] = {}
    for index, name in enumerate(names):
        query, position = split_position(name)
        key = query.casefold()
        groups.setdefault(key, (query, []))[1].append((index, position))
    return list(groups.values())


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def non_max_suppression(detections: list[tuple[Box, float]], iou: float = 0.5) -> list[tuple[Box, float]]:
    """Highest score first; drop boxes overlapping a kept one by more than ``iou``."""
    kept: list[tuple[Box, float]] = []
    for box, score in sorted(detections, key=lambda d: d[1], reverse=True):
        if all(_iou(box, other) <= iou for other, _ in kept):
            kept.append((box, score))
    return kept


def assign_by_position(members: list[tuple[int, str | None]], detections: list[tuple[Box, float]]
                       ) -> dict[int, tuple[Box, float]]:
    """Give each object of a noun group one of the (score-sorted, distinct) detections.

    The best ``len(members)`` detections are used. ``left``/``right`` take the smallest/largest
    box centre x, ``top``/``bottom`` the smallest/largest centre y, ``middle`` the remaining box
    nearest the mean centre x; objects without a position word take the rest by score.
    """
    pool = list(detections[:len(members)])

    def cx(d: tuple[Box, float]) -> float:
        return (d[0][0] + d[0][2]) / 2

    def cy(d: tuple[Box, float]) -> float:
        return (d[0][1] + d[0][3]) / 2

    mean_x = sum(cx(d) for d in pool) / len(pool) if pool else 0.0
    pickers = {"left": lambda p: min(p, key=cx), "right": lambda p: max(p, key=cx),
               "top": lambda p: min(p, key=cy), "bottom": lambda p: max(p, key=cy)}
    out: dict[int, tuple[Box, float]] = {}
    ordered = ([m for m in members if m[1] in pickers] + [m for m in members if m[1] == "middle"]
               + [m for m in members if m[1] is None])
    for index, position in ordered:
        if not pool:
            break
        if position in pickers:
            choice = pickers[position](pool)
        elif position == "middle":
            choice = min(pool, key=lambda d: abs(cx(d) - mean_x))
        else:
            choice = max(pool, key=lambda d: d[1])
        pool.remove(choice)
        out[index] = choice
    return out


def detect_phrase(detector: Detector, image: torch.Tensor, phrase: str, box_threshold: float,
                  text_threshold: float, device: torch.device | str = "cpu") -> list[tuple[Box, float]]:
    """Boxes (pixels x0, y0, x1, y1) and scores for ``phrase`` in ``image`` (float ``[H, W, 3]`` 0..1).

    Grounding DINO keeps a box when its best text-token score exceeds ``box_threshold`` and some
    token of the phrase scores above ``text_threshold`` (the model's own two thresholds); OWL
    models use ``box_threshold`` only.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    chw = rearrange(image.detach().to("cpu", torch.float32), "h w c -> c h w")
    query = phrase.strip().lower()
    grounding = detector.model_type in ("grounding-dino", "mm-grounding-dino")
    text: Any = (query.rstrip(".") + ".") if grounding else [[query]]
    inputs = detector.processor(images=chw, text=text, do_rescale=False, return_tensors="pt")
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(next(detector.model.parameters()).dtype)
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    if grounding:
        results = detector.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
            target_sizes=[(height, width)])[0]
        labels = results["text_labels"] if "text_labels" in results else results["labels"]
        keep = [i for i, label in enumerate(labels) if str(label).strip()]
    else:
        side = max(height, width)  # OWLv2 pads to a square at the bottom/right
        results = detector.processor.post_process_grounded_object_detection(
            outputs, threshold=box_threshold, target_sizes=[(side, side)])[0]
        keep = list(range(len(results["scores"])))
    found = []
    for i in keep:
        x0, y0, x1, y1 = (float(v) for v in results["boxes"][i].tolist())
        box = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
        if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            found.append((box, float(results["scores"][i])))
    return non_max_suppression(found)


def detect_objects(detector: Detector, image: torch.Tensor, names: list[str], wanted: list[int],
                   box_threshold: float, text_threshold: float, device: torch.device | str = "cpu",
                   progress: Any = None) -> dict[int, tuple[Box, float]]:
    """One box per wanted object (by index into ``names``) from the names alone.

    Raises TTMInputError naming the objects the detector did not find above the thresholds.
    """
    plan = [(query, [m for m in members if m[0] in wanted]) for query, members in plan_queries(names)]
    plan = [(query, members) for query, members in plan if members]
    out: dict[int, tuple[Box, float]] = {}
    for done, (query, members) in enumerate(plan, start=1):
        detections = detect_phrase(detector, image, query, box_threshold, text_threshold, device)
        LOG.info("detector %s: %d box(es) for %r", detector.name, len(detections), query)
        out.update(assign_by_position(members, detections))
        if progress:
            progress(done, len(plan))
    missing = [names[i] for i in wanted if i not in out]
    if missing:
        raise TTMInputError("box_threshold", f"the detector found no box for {', '.join(map(repr, missing))} "
                            f"(box_threshold {box_threshold}, text_threshold {text_threshold})",
                            "lower the thresholds, rename the object to what is visible (e.g. 'dog'), "
                            "or give it a point or box")
    return out
