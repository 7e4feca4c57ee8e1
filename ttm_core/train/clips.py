"""One training clip from one video: decode, sample, find the objects, track them, filter.

The paper's data pipeline (Through-The-Mask, Sec. 4 "Training data"; ``docs/TRAINING_DATA.md``), per clip:

1. **Frames.** The video is decoded with PyAV and sampled at ``settings.fps`` (source frame
   ``round(k * source_fps / fps)`` for clip frame k; a source slower than the target is refused, frames
   are never repeated), each frame resized to cover ``(height, width)`` and centre-cropped to it.
2. **Objects on frame 0.** Either from GIVEN first masks (``objects_from="masks"``: one label-id PNG per
   video, pixel value = object id, 0 = background, at any resolution; it is resized nearest and cropped
   like the frames) or from the caption as the paper does (``objects_from="caption"``: Prompt
   Decompose's LLM splits the caption into c, c_motion and the c_local(l), the open-vocabulary detector
   finds each object's box on frame 0 and SAM 2 turns the boxes into masks: ``ttm_core.prompts.llm``,
   ``ttm_core.segment.first_frame.segment_objects`` in ``text`` mode).
3. **Tracking.** Issue 9's trackers (``ttm_core.segment.track.track_objects``): the weights-free flow
   tracker (no model at all), SAM 2's or SAM 3's video predictor.
4. **Filters.** Per object: its frame-0 area share must lie in ``[min_area, max_area]`` and it must be
   present (at least ``min_area`` of the frame visible) in at least ``min_persistence`` of the frames;
   failing objects are dropped and the others renumbered 1..L. Per clip: at least ``min_objects``
   objects must remain, and at least one of them must travel: its centroid's largest distance from
   where it started, over the frames it is present in, divided by the frame diagonal, must reach
   ``min_motion``.

The result is a ``ClipRecord`` or a ``ClipSkipped`` with a typed reason and a message naming the file
and the fix; bad data never raises out of ``process_clip`` (a dataset of thousands of videos has a few
broken ones), bad settings do (``DataSettings`` validates itself before any work).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import TTMInputError
from ..types import MAX_OBJECTS, ObjectPrompt, Objects, Prompts
from .palette import TRAIN_PALETTE

LOG = logging.getLogger(__name__)

ObjectsFrom = Literal["masks", "caption"]
TrackerName = Literal["flow", "sam2", "sam3"]
SkipReason = Literal["undecodable", "too-short", "fps-too-low", "no-objects", "decompose-failed",
                     "filtered", "static"]
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
MAX_CLIP_OBJECTS = min(MAX_OBJECTS, len(TRAIN_PALETTE))


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _share(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


@dataclass(frozen=True)
class DataSettings:
    """Every setting of ``ttm-data build`` (one typed object; validated on construction).

    Attributes:
        fps: clip frame rate; source frames are picked at this rate (the source must be at least as fast).
        height, width: clip size in pixels (even: the frames are stored as H.264 4:2:0); frames are resized
            to cover it and centre-cropped.
        frames: most frames per clip (the first ``frames`` sampled ones; 0 = the whole video).
        min_frames: fewer sampled frames than this and the clip is skipped ("too-short").
        objects_from: ``"masks"`` (given first-frame masks) or ``"caption"`` (LLM -> detector -> SAM 2).
        tracker: ``"flow"`` (weights-free), ``"sam2"`` (needs ``sam2``, a video-capable SAM 2) or ``"sam3"``
            (needs ``sam3``, a SAM 3 tracker folder).
        min_area, max_area: share 0..1 of the frame an object's frame-0 mask must cover.
        min_persistence: share 0..1 of the frames an object must be present in.
        min_motion: share of the frame diagonal the most-moving object's centroid must travel (0 = off).
        min_objects: objects a clip must keep after the filters (1..8).
        seed: the LLM's sampling seed (per clip: seed + a hash of the clip key) and the reader's default.
        crf: H.264 CRF of the stored frames (0 = lossless, 18 = visually lossless).
        clips_per_shard: samples per WebDataset tar.
        workers: local worker processes (or Ray actors with ``ray_address``).
        ray_address: ``None`` = local processes; ``"local"`` = start a local Ray instance; else a Ray
            cluster address (``ray://host:10001`` or ``auto``).
        num_gpus: GPUs per Ray actor (the caption path's models and SAM trackers run there); 0 = CPU.
        device: torch device of the models inside a worker (``"cuda"`` on GPU actors).
        llm, detector, sam2, sam3: model folders / checkpoints (``""`` = not used); see docs/TRAINING_DATA.md.
        box_threshold, text_threshold: the detector's thresholds (the paper: 0.25 and 0.3).
    """

    fps: float = 8.0
    height: int = 256
    width: int = 256
    frames: int = 49
    min_frames: int = 17
    objects_from: ObjectsFrom = "masks"
    tracker: TrackerName = "flow"
    min_area: float = 0.002
    max_area: float = 0.6
    min_persistence: float = 0.8
    min_motion: float = 0.02
    min_objects: int = 1
    seed: int = 0
    crf: int = 18
    clips_per_shard: int = 64
    workers: int = 1
    ray_address: str | None = None
    num_gpus: float = 0.0
    device: str = "cpu"
    llm: str = ""
    detector: str = ""
    sam2: str = ""
    sam3: str = ""
    box_threshold: float = 0.25
    text_threshold: float = 0.3

    def __post_init__(self) -> None:
        whole = [("height", self.height, 16), ("width", self.width, 16), ("frames", self.frames, 0),
                 ("min_frames", self.min_frames, 1), ("min_objects", self.min_objects, 1),
                 ("clips_per_shard", self.clips_per_shard, 1), ("workers", self.workers, 1), ("crf", self.crf, 0)]
        for name, value, low in whole:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TTMInputError(name, f"{value!r} is not a whole number >= {low}",
                                    f"use e.g. {getattr(DataSettings, name)}")
        if self.height % 2 or self.width % 2:
            raise TTMInputError("size", f"{self.width}x{self.height} has an odd side",
                                "use even sides (H.264 4:2:0), e.g. 480x832")
        if self.frames and self.frames < self.min_frames:
            raise TTMInputError("frames", f"frames {self.frames} is below min_frames {self.min_frames}",
                                "raise frames or lower min_frames")
        if self.min_objects > MAX_CLIP_OBJECTS:
            raise TTMInputError("min_objects", f"{self.min_objects} objects", f"use 1..{MAX_CLIP_OBJECTS}")
        if self.crf > 51:
            raise TTMInputError("crf", f"{self.crf} is beyond x264's 0..51", "use 18 (0 = lossless)")
        if not _positive(self.fps) or self.fps > 240:
            raise TTMInputError("fps", f"{self.fps!r} is not a frame rate in (0, 240]", "use e.g. 8 or 16")
        for name in ("min_area", "max_area", "min_persistence", "min_motion", "box_threshold", "text_threshold"):
            if not _share(getattr(self, name)):
                raise TTMInputError(name, f"{getattr(self, name)!r} is not a share in 0..1",
                                    f"use e.g. {getattr(DataSettings, name)}")
        if self.min_area >= self.max_area:
            raise TTMInputError("min_area", f"min_area {self.min_area} is not below max_area {self.max_area}",
                                "use e.g. 0.002 and 0.6")
        if self.objects_from not in ("masks", "caption"):
            raise TTMInputError("objects_from", f"unknown source {self.objects_from!r}", "use 'masks' or 'caption'")
        if self.tracker not in ("flow", "sam2", "sam3"):
            raise TTMInputError("tracker", f"unknown tracker {self.tracker!r}", "use 'flow', 'sam2' or 'sam3'")
        if self.objects_from == "caption" and not (self.llm and self.detector and self.sam2):
            missing = [n for n in ("llm", "detector", "sam2") if not getattr(self, n)]
            raise TTMInputError(missing[0], f"the caption path needs an LLM, a detector and SAM 2 "
                                f"({', '.join(missing)} not given)",
                                "pass --llm DIR --detector DIR --sam2 PATH, or use given first masks (--masks DIR)")
        if self.tracker == "sam2" and not self.sam2:
            raise TTMInputError("sam2", "tracker 'sam2' needs a SAM 2 model", "pass --sam2 PATH or use --tracker flow")
        if self.tracker == "sam3" and not self.sam3:
            raise TTMInputError("sam3", "tracker 'sam3' needs a SAM 3 tracker folder",
                                "pass --sam3 DIR or use --tracker flow")
        if self.ray_address is not None and not self.ray_address.strip():
            raise TTMInputError("ray_address", "the Ray address is empty", "use 'local', 'auto' or ray://host:10001")
        if not (isinstance(self.num_gpus, (int, float)) and math.isfinite(self.num_gpus) and self.num_gpus >= 0):
            raise TTMInputError("num_gpus", f"{self.num_gpus!r}", "use 0 (CPU) or a GPU share such as 1 or 0.5")
        for name in ("llm", "detector", "sam2", "sam3"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise TTMInputError(name, f"{path} does not exist", f"pass the {name} folder or file that exists")

    def content_key(self) -> dict[str, Any]:
        """The settings that decide what the shards hold (not how fast they are made): a resumed build
        must use the same ones."""
        skip = {"workers", "ray_address", "num_gpus", "device"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}


@dataclass(frozen=True)
class ClipInput:
    """One video to turn into a clip.

    Attributes:
        key: unique sample key (letters, digits, ``_`` and ``-``; no dots: WebDataset splits at them).
        video: path of the video file.
        caption: the global prompt c ("" = none).
        masks: path of the first-frame label PNG ("" = none).
        motion_prompt: c_motion given with the caption ("" = none; the LLM's or the caption itself).
        objects: (name, local prompt) per object id 1..L, given with the caption (empty = none).
    """

    key: str
    video: str
    caption: str = ""
    masks: str = ""
    motion_prompt: str = ""
    objects: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.key):
            raise TTMInputError("key", f"{self.key!r} has characters other than letters, digits, _ and -",
                                "build keys with clip_key()")
        object.__setattr__(self, "objects", tuple((str(n), str(p)) for n, p in self.objects))


def clip_key(relative: str) -> str:
    """A stable WebDataset key for a video's path relative to the input: its readable stem plus a hash
    of the whole path (two ``clip.mp4`` in different folders get different keys)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(relative).with_suffix("").as_posix()).strip("_")[-48:] or "clip"
    digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}"


@dataclass(frozen=True, eq=False)
class ClipRecord:
    """A finished clip, ready for a shard.

    Attributes:
        key, source: the sample key and the video it came from.
        frames: uint8 ``[T, H, W, 3]`` (uint8, not float: 4x less to pass between processes).
        labels: uint8 ``[T, H, W]``; 0 = background, 1..L = objects.
        global_prompt, motion_prompt: c and c_motion.
        local_prompts, names: c_local(l) and the short names, l = 1..L.
        boxes: frame-0 box per object, (x0, y0, x1, y1) in pixels of the clip (x1, y1 exclusive).
        fps: the clip's frame rate.
        source_frames: the source frame index of every clip frame.
        stats: per object, its area share, persistence and travel (what the filters saw).
    """

    key: str
    source: str
    frames: np.ndarray
    labels: np.ndarray
    global_prompt: str
    motion_prompt: str
    local_prompts: tuple[str, ...]
    names: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    fps: float
    source_frames: tuple[int, ...]
    stats: tuple[dict[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        f, lab = self.frames, self.labels
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise TTMInputError("frames", f"{self.key}: frames must be uint8 [T, H, W, 3], got {f.shape} {f.dtype}",
                                "pass decoded RGB frames")
        if lab.dtype != np.uint8 or lab.shape != f.shape[:3]:
            raise TTMInputError("labels", f"{self.key}: labels must be uint8 {f.shape[:3]}, got {lab.shape} "
                                f"{lab.dtype}", "pass the tracked label video")
        count = len(self.names)
        if not 1 <= count <= MAX_CLIP_OBJECTS or len(self.local_prompts) != count or len(self.boxes) != count:
            raise TTMInputError("objects", f"{self.key}: {count} names, {len(self.local_prompts)} local prompts, "
                                f"{len(self.boxes)} boxes", f"give 1..{MAX_CLIP_OBJECTS} objects, one of each")
        if int(lab.max()) > count:
            raise TTMInputError("labels", f"{self.key}: label {int(lab.max())} but {count} objects",
                                "renumber the objects 1..L")
        if len(self.source_frames) != f.shape[0] or not _positive(self.fps):
            raise TTMInputError("fps", f"{self.key}: fps {self.fps}, {len(self.source_frames)} source indices for "
                                f"{f.shape[0]} frames", "record one source index per frame and a positive fps")

    def metadata(self) -> dict[str, Any]:
        """The sample's JSON (shards.py writes it as ``<key>.json``)."""
        return {"key": self.key, "source": self.source, "global_prompt": self.global_prompt,
                "motion_prompt": self.motion_prompt, "local_prompts": list(self.local_prompts),
                "names": list(self.names), "boxes": [list(b) for b in self.boxes], "fps": self.fps,
                "frames": int(self.frames.shape[0]), "height": int(self.frames.shape[1]),
                "width": int(self.frames.shape[2]), "source_frames": list(self.source_frames),
                "stats": [dict(s) for s in self.stats]}


@dataclass(frozen=True)
class ClipSkipped:
    """A video that gave no clip: why (``reason``) and a sentence naming the file and the fix."""

    key: str
    source: str
    reason: SkipReason
    message: str


ClipOutcome = ClipRecord | ClipSkipped


# --------------------------------------------------------------------------- frames

def sample_indices(source_count: int, source_fps: float, fps: float, limit: int) -> list[int]:
    """Source frame indices of the clip frames: ``round(k * source_fps / fps)`` while inside the video.

    Args:
        source_count: frames in the video; source_fps: its rate; fps: the clip's rate (<= source_fps).
        limit: most clip frames (0 = all).
    """
    step = source_fps / fps
    out: list[int] = []
    k = 0
    while True:
        index = math.floor(k * step + 0.5)
        if index >= source_count or (limit and len(out) >= limit):
            return out
        out.append(index)
        k += 1


def cover_crop(image: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Resize ``image`` ``[h, w(, C)]`` to cover ``(height, width)`` and centre-crop it there.

    Area interpolation for pictures (no aliasing when shrinking), nearest for label maps.
    """
    import cv2

    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    if (rh, rw) != (h, w):
        shrinking = rh < h
        method = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        image = cv2.resize(image, (rw, rh), interpolation=method)
    top, left = (rh - height) // 2, (rw - width) // 2
    return np.ascontiguousarray(image[top:top + height, left:left + width])


def read_frames(path: str, settings: DataSettings) -> tuple[np.ndarray, list[int], float, tuple[int, int]]:
    """Decode and sample ``path``.

    Returns:
        (frames uint8 ``[T, H, W, 3]`` at the settings' size, source indices, source fps, source (h, w)).
    Raises:
        av.error.FFmpegError / TTMInputError: an undecodable file (the caller turns it into a skip).
    """
    import av

    with av.open(path, mode="r") as container:
        if not container.streams.video:
            raise TTMInputError("video", f"{path} has no video stream", "pass video files")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        source_fps = float(rate) if rate else 0.0
        if not source_fps > 0:
            raise TTMInputError("video", f"{path} does not say its frame rate",
                                "re-encode it with a constant frame rate")
        if source_fps + 1e-6 < settings.fps:
            return np.zeros((0, settings.height, settings.width, 3), np.uint8), [], source_fps, (0, 0)
        step = source_fps / settings.fps
        wanted_next, k = 0, 0
        frames: list[np.ndarray] = []
        indices: list[int] = []
        size = (0, 0)
        for index, frame in enumerate(container.decode(stream)):
            if index < wanted_next:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            size = (int(rgb.shape[0]), int(rgb.shape[1]))
            frames.append(cover_crop(rgb, settings.height, settings.width))
            indices.append(index)
            k += 1
            if settings.frames and k >= settings.frames:
                break
            wanted_next = math.floor(k * step + 0.5)
    if not frames:
        return np.zeros((0, settings.height, settings.width, 3), np.uint8), [], source_fps, size
    return np.stack(frames), indices, source_fps, size


def read_label_png(path: str, source_size: tuple[int, int], settings: DataSettings) -> np.ndarray:
    """The first-frame label PNG (pixel value = object id; greyscale or palette mode), resized to the
    video's size (nearest) when needed, then cropped like the frames: uint8 ``[H, W]``."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16", "1"):
            raise TTMInputError("masks", f"{path} is a {image.mode} image, not a label map",
                                "save one greyscale (or palette) PNG per video whose pixel values are object ids "
                                "(0 = background, 1..8 = objects)")
        values = np.asarray(image.convert("I") if image.mode.startswith("I") else image).astype(np.int64)
    if values.max() > 255:
        raise TTMInputError("masks", f"{path} has label {values.max()}", "use ids 0..8")
    labels: np.ndarray = values.astype(np.uint8)
    h, w = source_size
    if labels.shape != (h, w):
        import cv2

        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    return cover_crop(labels, settings.height, settings.width, nearest=True)


# --------------------------------------------------------------------------- objects

@dataclass
class Models:
    """Models a worker loads once and reuses for every clip (the caption path and the SAM trackers)."""

    llm: Any = None
    detector: Any = None
    sam2: Any = None
    sam3: Any = None


def load_models(settings: DataSettings) -> Models:
    """Load what ``settings`` names (nothing for given masks + the flow tracker), on ``settings.device``."""
    models = Models()
    device = settings.device
    if settings.objects_from == "caption":
        from ..prompts.llm import load_local_llm
        from ..segment.detect import load_detector

        models.llm = load_local_llm(Path(settings.llm), device=device)
        models.detector = load_detector(Path(settings.detector), device=device)
    if settings.sam2 and (settings.objects_from == "caption" or settings.tracker == "sam2"):
        from ..segment.sam2 import load_sam2

        models.sam2 = load_sam2(Path(settings.sam2), video=settings.tracker == "sam2", device=device)
    if settings.tracker == "sam3":
        from ..segment.sam3 import load_sam3_tracker

        models.sam3 = load_sam3_tracker(Path(settings.sam3), device=device)
    return models


def _key_seed(seed: int, key: str) -> int:
    return (seed + int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16)) % (2 ** 31)


def _given_prompts(clip: ClipInput, count: int) -> Prompts:
    """Prompts for given masks: the objects named with the caption, else ``object 1``.. with the caption
    as every local prompt (documented: better names make better local prompts)."""
    if clip.objects:
        if len(clip.objects) != count:
            raise TTMInputError("objects", f"{clip.video}: {len(clip.objects)} objects named for {count} mask ids",
                                "name one object per id of the first-mask PNG, in id order")
        objects = tuple(ObjectPrompt(n, p) for n, p in clip.objects)
    else:
        objects = tuple(ObjectPrompt(f"object {i + 1}", clip.caption or f"object {i + 1}") for i in range(count))
    return Prompts(clip.caption, clip.motion_prompt or clip.caption, objects)


def objects_from_masks(clip: ClipInput, labels0: np.ndarray) -> Objects | ClipSkipped:
    """Objects from a first-frame label map (ids present, in increasing order, renumbered 1..L)."""
    ids = [int(i) for i in np.unique(labels0) if i != 0]
    if not ids:
        return ClipSkipped(clip.key, clip.video, "no-objects", f"{clip.masks}: the first-frame mask has no object "
                           "inside the cropped frame; paint the objects (ids 1..8) or check the crop")
    if len(ids) > MAX_CLIP_OBJECTS:
        raise TTMInputError("masks", f"{clip.masks} has {len(ids)} object ids", f"use at most {MAX_CLIP_OBJECTS}")
    masks = torch.from_numpy(np.stack([labels0 == i for i in ids]).astype(np.float32))
    return Objects(_given_prompts(clip, len(ids)), masks)


def objects_from_caption(clip: ClipInput, frame0: np.ndarray, settings: DataSettings,
                         models: Models) -> Objects | ClipSkipped:
    """The paper's path: LLM decomposition of the caption -> detector boxes -> SAM 2 masks on frame 0."""
    from ..prompts.llm import decompose
    from ..segment.first_frame import segment_objects

    if clip.objects:
        prompts = Prompts(clip.caption, clip.motion_prompt or clip.caption,
                          tuple(ObjectPrompt(n, p) for n, p in clip.objects))
    else:
        try:
            prompts = decompose(models.llm, clip.caption, seed=_key_seed(settings.seed, clip.key),
                                device=settings.device).prompts
        except TTMInputError as err:
            return ClipSkipped(clip.key, clip.video, "decompose-failed",
                               f"{clip.video}: the LLM could not decompose its caption ({err.problem}); use a larger "
                               "instruction-tuned LLM, or give motion_prompt and objects in the captions JSONL")
    if not prompts.objects:
        return ClipSkipped(clip.key, clip.video, "no-objects", f"{clip.video}: the caption names no movable object; "
                           "describe what moves, or give first masks")
    image = torch.from_numpy(frame0).to(torch.float32).div_(255.0)
    try:
        seg = segment_objects(models.sam2, image, prompts, "text", detector=models.detector,
                              box_threshold=settings.box_threshold, text_threshold=settings.text_threshold,
                              device=settings.device)
    except TTMInputError as err:
        return ClipSkipped(clip.key, clip.video, "no-objects", f"{clip.video}: no object found on frame 0 "
                           f"({err.problem}); lower --box-threshold / --text-threshold, or give first masks")
    return seg.objects


# --------------------------------------------------------------------------- filters

def object_stats(labels: np.ndarray, count: int, min_area: float) -> list[dict[str, float]]:
    """Per object id 1..count: frame-0 area share, persistence (share of frames with at least ``min_area``
    of the frame visible) and travel (largest centroid distance from its frame-0 centroid over those
    frames, as a share of the frame diagonal)."""
    t, h, w = labels.shape
    diagonal = math.hypot(h, w)
    ys, xs = np.mgrid[0:h, 0:w]
    out = []
    for object_id in range(1, count + 1):
        masks = labels == object_id
        area = masks.reshape(t, -1).sum(1)
        present = area >= max(1.0, min_area * h * w)
        travel = 0.0
        if area[0] > 0:
            cy0, cx0 = ys[masks[0]].mean(), xs[masks[0]].mean()
            for i in np.nonzero(present)[0]:
                cy, cx = ys[masks[i]].mean(), xs[masks[i]].mean()
                travel = max(travel, math.hypot(cy - cy0, cx - cx0) / diagonal)
        out.append({"area": float(area[0]) / (h * w), "persistence": float(present.mean()), "travel": travel})
    return out


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a bool mask, x1 / y1 exclusive; (0, 0, 0, 0) when empty (an object hidden
    at frame 0 behind another)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0, 0, 0, 0
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --------------------------------------------------------------------------- one clip

def _skip(clip: ClipInput, reason: SkipReason, message: str) -> ClipSkipped:
    LOG.warning("skipped: %s", message)
    return ClipSkipped(clip.key, clip.video, reason, message)


def _tracker(settings: DataSettings, models: Models) -> Any:
    if settings.tracker == "sam2":
        return models.sam2
    if settings.tracker == "sam3":
        return models.sam3
    from ..segment.flow_track import FlowTrackSettings

    return FlowTrackSettings()


def process_clip(clip: ClipInput, settings: DataSettings, models: Models | None = None) -> ClipOutcome:
    """Turn one video into a ``ClipRecord`` (or a ``ClipSkipped`` saying why and what to do).

    Args:
        clip: the video, its caption and (``objects_from="masks"``) its first-frame label PNG.
        settings: see ``DataSettings``.
        models: loaded models (``load_models``); None loads them (fine for given masks + flow: nothing).
    """
    import av

    models = models if models is not None else load_models(settings)
    try:
        frames, indices, source_fps, source_size = read_frames(clip.video, settings)
    except (av.error.FFmpegError, TTMInputError, OSError) as err:
        return _skip(clip, "undecodable", f"{clip.video} could not be decoded ({err}); re-encode it (e.g. ffmpeg -i "
                     "IN -c:v libx264 OUT.mp4) or remove it from the input")
    if source_fps + 1e-6 < settings.fps:
        return _skip(clip, "fps-too-low", f"{clip.video} runs at {source_fps:g} fps, below the clip rate "
                     f"{settings.fps:g}; lower --fps or remove the video")
    if len(indices) < settings.min_frames:
        return _skip(clip, "too-short", f"{clip.video} gives {len(indices)} frames at {settings.fps:g} fps, fewer than "
                     f"min_frames {settings.min_frames}; lower --min-frames or --fps, or use a longer video")
    if settings.objects_from == "masks":
        labels0 = read_label_png(clip.masks, source_size, settings)
        found = objects_from_masks(clip, labels0)
    else:
        found = objects_from_caption(clip, frames[0], settings, models)
    if isinstance(found, ClipSkipped):
        LOG.warning("skipped: %s", found.message)
        return found
    objects = found
    from ..segment.track import track_objects

    video = torch.from_numpy(frames).to(torch.float32).div_(255.0)
    tracked = track_objects(_tracker(settings, models), video, objects, device=settings.device)
    labels = tracked.labels.numpy()
    del video
    # ids are 1..L in prompt order (objects built here always number them so)
    stats = object_stats(labels, objects.count, settings.min_area)
    keep = [i for i, s in enumerate(stats)
            if settings.min_area <= s["area"] <= settings.max_area and s["persistence"] >= settings.min_persistence]
    if len(keep) < settings.min_objects:
        detail = "; ".join(f"{objects.prompts.names[i]!r}: area {s['area']:.4f}, present in {s['persistence']:.0%} "
                           f"of the frames" for i, s in enumerate(stats))
        return _skip(clip, "filtered", f"{clip.video}: {len(keep)} object(s) pass the area "
                     f"[{settings.min_area}, {settings.max_area}] and persistence {settings.min_persistence} filters, "
                     f"fewer than min_objects {settings.min_objects} ({detail}); relax the filters or drop the video")
    travel = max(stats[i]["travel"] for i in keep)
    if travel < settings.min_motion:
        return _skip(clip, "static", f"{clip.video}: the objects' centroids travel at most {travel:.4f} of the frame "
                     f"diagonal, below min_motion {settings.min_motion}; lower --min-motion or drop the video")
    relabel = np.zeros(256, dtype=np.uint8)
    for new, old in enumerate(keep, start=1):
        relabel[old + 1] = new
    labels = relabel[labels]
    prompts = objects.prompts
    return ClipRecord(
        key=clip.key, source=clip.video, frames=frames, labels=labels, global_prompt=prompts.global_prompt,
        motion_prompt=prompts.motion_prompt, local_prompts=tuple(prompts.objects[i].local_prompt for i in keep),
        names=tuple(prompts.objects[i].name for i in keep),
        boxes=tuple(mask_box(labels[0] == n) for n in range(1, len(keep) + 1)), fps=float(settings.fps),
        source_frames=tuple(indices), stats=tuple(stats[i] for i in keep))


def settings_json(settings: DataSettings) -> str:
    """The settings as JSON (to pass to worker processes and Ray actors, and to record in the output)."""
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def settings_from_json(text: str) -> DataSettings:
    return DataSettings(**json.loads(text))
