"""Track first-frame objects through a clip into a mask trajectory.

Stage 1 of Through-The-Mask needs the mask trajectory s^ (Sec. 3.1). Without trained Stage-1
weights it comes from a video: a draft that an I2V model made from c_motion (generate-and-track),
or any reference video (motion transfer). Three trackers follow each object from its first-frame
mask through the clip:

* SAM 2's video predictor (``Sam2Model`` that can track: a Meta checkpoint or a Hugging Face
  ``sam2_video`` folder),
* SAM 3's tracker (``Sam3Tracker``, transformers' ``Sam3TrackerVideoModel``),
* a weights-free optical-flow tracker (``FlowTrackSettings``, OpenCV; see ``flow_track.py``).

Memory stays bounded whatever the clip length: frames are read one at a time from a
``FrameSource`` (never all decoded or resized at once), and the SAM trackers' per-frame memory
(encoded masks, object pointers) is dropped as soon as it falls out of the window their memory
attention can still see (``num_maskmem`` frames, ``max_obj_ptrs_in_encoder`` pointers). What
grows with length is the uint8 label video itself.

Overlaps: a pixel two objects claim goes to the higher mask logit; across the clip, the object
that wins more contested pixels of a pair is in front (a pairwise vote that gives the
trajectory's depth order). An object that leaves the frame or is hidden is 0 there, and the
log says in which frames, per object.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..types import Objects, ProgressFn, Trajectory
from .first_frame import autocast
from .frames import Clip, FrameSource, TensorFrames, select, to_uint8
from .sam2 import Sam2Model
from .sam3 import Sam3Tracker

LOG = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class Tracked:
    """What a tracker found.

    Attributes:
        labels: uint8 ``[T, H, W]``; 0 = background (or an object that is hidden / gone),
            ``objects.ids[i]`` = object i.
        depth_order: object ids front to back, from who won the overlaps.
        clip: the source frames that were tracked and the clip's fps.
    """

    labels: torch.Tensor
    objects: Objects
    depth_order: tuple[int, ...]
    clip: Clip

    def trajectory(self) -> Trajectory:
        return Trajectory(self.labels, self.objects, self.clip.fps, self.depth_order)

    def visible(self) -> torch.Tensor:
        """bool ``[T, L]``: whether object i has any pixel in frame t."""
        ids = torch.tensor(self.objects.ids, dtype=torch.uint8)
        return (self.labels.unsqueeze(1) == ids[None, :, None, None]).flatten(2).any(dim=2)

    def report(self) -> list[str]:
        """One line per object: the frames where it is hidden or gone (for the log)."""
        lines = []
        visible = self.visible()
        for i, name in enumerate(self.objects.prompts.names):
            gone = (~visible[:, i]).nonzero().flatten().tolist()
            where = _runs(gone)
            lines.append(f"object {self.objects.ids[i]} ({name!r}): "
                         + (f"hidden or gone in {len(gone)} of {self.labels.shape[0]} frames ({where})"
                            if gone else "visible in every frame"))
        return lines


def _runs(frames: list[int]) -> str:
    """'3-7, 12' from [3, 4, 5, 6, 7, 12]."""
    parts: list[tuple[int, int]] = []
    for t in frames:
        if parts and t == parts[-1][1] + 1:
            parts[-1] = (parts[-1][0], t)
        else:
            parts.append((t, t))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def check_inputs(source: FrameSource, objects: Objects) -> None:
    """Refuse frames that do not match the objects, before any model runs."""
    if source.size != objects.size:
        raise TTMInputError(source.name, f"the frames are {source.size[1]}x{source.size[0]} but the objects' masks "
                            f"are {objects.size[1]}x{objects.size[0]}",
                            "find the objects in the first frame of this clip (or scale the clip to the masks' "
                            "size) so masks and frames line up")


def check_tracker(tracker: Any) -> None:
    """Refuse what cannot track (before any model is moved or any frame decoded)."""
    from .flow_track import FlowTrackSettings

    if isinstance(tracker, Sam2Model):
        if tracker.video_model is None:
            raise TTMInputError("tracker", f"{tracker.name} was loaded without its video model",
                                "turn video_tracking on in the SAM2 Loader (a Hugging Face sam2_video folder), or "
                                "load a Meta checkpoint")
    elif not isinstance(tracker, (Sam3Tracker, FlowTrackSettings)):
        raise TTMInputError("tracker", f"{type(tracker).__name__} is not a tracker",
                            "connect a SAM2 Loader (video tracking on), a SAM3 Tracker Loader or a Flow Tracker")


def track_objects(tracker: Any, frames: FrameSource | torch.Tensor, objects: Objects, clip: Clip | None = None, *,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  progress: ProgressFn | None = None) -> Tracked:
    """Follow every object from its first-frame mask through the clip.

    Args:
        tracker: a ``Sam2Model`` that can track, a ``Sam3Tracker`` or ``FlowTrackSettings``.
        frames: a ``FrameSource`` (or an IMAGE batch float ``[T, H, W, 3]`` in 0..1); the clip's
            first frame is the one ``objects`` were found in.
        objects: the objects; their masks ``[L, H, W]`` start the tracks.
        clip: which frames to track (``frames.select``); default every frame.
        device, dtype: where and in which precision the model runs (autocast on GPUs).
        progress: called with (frames done, clip length) after every frame; raising from it (a
            cancel) stops tracking at once, and nothing of the run is kept.
    Returns:
        ``Tracked``: the label video ``[T, H, W]`` uint8, the depth order, the clip.
    """
    from .flow_track import FlowTrackSettings

    source = frames if isinstance(frames, FrameSource) else TensorFrames(frames)
    check_inputs(source, objects)
    clip = clip or select(source)
    device = torch.device(device)
    check_tracker(tracker)
    if isinstance(tracker, FlowTrackSettings):
        return _flow(tracker, source, objects, clip, progress)
    labels = torch.zeros(clip.count, *objects.size, dtype=torch.uint8)
    votes = _DepthVotes(objects.count)
    stream = source.frames(clip.indices)
    with torch.inference_mode(), autocast(device, dtype):
        if isinstance(tracker, Sam2Model) and tracker.backend == "meta":
            steps = _meta_stream(tracker.video_model, stream, clip.count, objects, device)
        else:
            model = tracker.video_model
            processor = tracker.video_processor
            steps = _hf_stream(processor, model, stream, objects, device)
        for done, (t, ids, logits) in enumerate(steps, 1):
            rows = [list(ids).index(object_id) for object_id in objects.ids]
            logits = logits[rows].float().cpu()
            labels[t] = _labels_from_logits(logits, objects.ids)
            votes.add(logits)
            if progress:
                progress(done, clip.count)
    order = votes.order(objects.ids)
    labels[0] = first_frame_labels(objects, order)
    tracked = Tracked(labels, objects, order, clip)
    _log(tracked)
    return tracked


def first_frame_labels(objects: Objects, depth_order: tuple[int, ...]) -> torch.Tensor:
    """uint8 ``[H, W]``: the objects' own masks as frame 0 of the trajectory, front objects on top.

    The trackers are prompted with these masks at frame 0; their own frame-0 prediction is a
    re-estimate of them (slightly different, or from an untrained model anything), while s^(0)
    of the paper is the first-frame segmentation itself, so that is what frame 0 holds.
    """
    labels = torch.zeros(objects.size, dtype=torch.uint8)
    binary = objects.binary()
    for object_id in reversed(depth_order):
        labels[binary[objects.ids.index(object_id)]] = object_id
    return labels


def _log(tracked: Tracked) -> None:
    LOG.info("%s", tracked.clip.note)
    for line in tracked.report():
        LOG.info("%s", line)


def _flow(settings: Any, source: FrameSource, objects: Objects, clip: Clip, progress: ProgressFn | None) -> Tracked:
    from .flow_track import track_objects_by_flow

    labels, report = track_objects_by_flow(source.frames(clip.indices), objects, settings=settings,
                                           count=clip.count, progress=progress)
    labels[0] = first_frame_labels(objects, report.depth_order)
    tracked = Tracked(labels, objects, report.depth_order, clip)
    _log(tracked)
    return tracked


def _labels_from_logits(logits: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """uint8 ``[H, W]``: each pixel the id of the object with the highest positive logit, else 0."""
    best = logits.argmax(dim=0)
    inside = logits.amax(dim=0) > 0
    lut = torch.tensor((0, *ids), dtype=torch.uint8)
    return lut[torch.where(inside, best + 1, torch.zeros_like(best))]


class _DepthVotes:
    """Pairwise overlap votes: wins[i, j] = pixels both i and j claim where i's logit is higher."""

    def __init__(self, count: int) -> None:
        self.wins = torch.zeros(count, count, dtype=torch.int64)

    def add(self, logits: torch.Tensor) -> None:
        """logits ``[L, H, W]`` of one frame."""
        claims = logits > 0
        for i in range(logits.shape[0]):
            for j in range(i + 1, logits.shape[0]):
                both = claims[i] & claims[j]
                if bool(both.any()):
                    i_wins = int((logits[i][both] > logits[j][both]).sum())
                    self.wins[i, j] += i_wins
                    self.wins[j, i] += int(both.sum()) - i_wins

    def order(self, ids: tuple[int, ...]) -> tuple[int, ...]:
        """Ids front to back: by pairs won (a Copeland count), ties keep the objects' order."""
        won = [(sum(int(self.wins[i, j] > self.wins[j, i]) for j in range(len(ids)) if j != i), -i)
               for i in range(len(ids))]
        ranked = sorted(range(len(ids)), key=lambda i: won[i], reverse=True)
        return tuple(ids[i] for i in ranked)


def _memory_window(num_maskmem: int, stride: int, max_pointers: int) -> int:
    """How many past frames the memory attention can still read (memories and object pointers)."""
    return max(num_maskmem * max(stride, 1), max_pointers) + 1


def _prune(output_dicts: dict[int, dict[str, dict[int, Any]]], frame: int, window: int) -> None:
    """Drop per-frame outputs that fell out of the memory window (conditioning frames stay)."""
    for per_object in output_dicts.values():
        outputs = per_object["non_cond_frame_outputs"]
        for old in [t for t in outputs if t < frame - window]:
            del outputs[old]


# --------------------------------------------------------------------------- Meta's predictor

class _SequentialImages:
    """SAM2's ``inference_state["images"]`` made lazy: frame t resized and normalised on first use.

    Meta's predictor reads ``images[t]`` once per frame in order (and frame 0 again while it adds
    the masks), so a forward-only reader with a two-frame cache plus frame 0 serves it; the
    JPEG-folder loader would hold every frame at model size (12 MB per frame at 1024 px).
    """

    def __init__(self, frames: Iterator[torch.Tensor], count: int, size: int) -> None:
        self._frames, self._count, self._size = frames, count, size
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._next = 0
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, t: int) -> torch.Tensor:
        while self._next <= t:
            frame = next(self._frames)
            chw = rearrange(frame, "h w c -> 1 c h w")
            image = F.interpolate(chw, size=(self._size, self._size), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
            self._cache[self._next] = (image - self._mean) / self._std
            self._next += 1
            for old in [k for k in self._cache if k not in (0, self._next - 1, self._next - 2)]:
                del self._cache[old]
        if t not in self._cache:
            raise IndexError(f"frame {t} was already passed (frames are read once, in order)")
        return self._cache[t]


def frames_state(predictor: Any, frames: Iterator[torch.Tensor], count: int, size: tuple[int, int],
                 device: torch.device) -> dict[str, Any]:
    """A Meta ``SAM2VideoPredictor`` inference state that reads frames as it goes.

    Args:
        predictor: the ``SAM2VideoPredictor``.
        frames: the clip's frames, float ``[H, W, 3]`` in 0..1, in order.
        count: how many frames ``frames`` yields.
        size: (height, width) of the frames.
    Returns the dict ``init_state`` would build from a JPEG folder of the same frames (its
    ``images`` lazy: see ``_SequentialImages``).
    """
    state: dict[str, Any] = {
        "images": _SequentialImages(frames, count, int(predictor.image_size)),
        "num_frames": int(count),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": int(size[0]),
        "video_width": int(size[1]),
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    predictor._get_image_feature(state, frame_idx=0, batch_size=1)
    return state


def _meta_stream(predictor: Any, frames: Iterator[torch.Tensor], count: int, objects: Objects,
                 device: torch.device) -> Iterator[tuple[int, list[int], torch.Tensor]]:
    """(frame index, object ids, logits [L, H, W]) per frame from Meta's SAM2VideoPredictor."""
    state = frames_state(predictor, frames, count, objects.size, device)
    for i, object_id in enumerate(objects.ids):
        predictor.add_new_mask(state, frame_idx=0, obj_id=int(object_id), mask=objects.binary()[i].to(device))
    window = _memory_window(predictor.num_maskmem, getattr(predictor, "memory_temporal_stride_for_eval", 1),
                            predictor.max_obj_ptrs_in_encoder)
    for t, ids, logits in predictor.propagate_in_video(state):
        _prune(state["output_dict_per_obj"], t, window)
        yield t, list(ids), logits[:, 0]


# --------------------------------------------------------------------------- transformers' video models

_DROPPED = torch.empty(0)
"""Stands in for a tracked frame's pixels in a streaming session: the session counts its frames
with ``len(processed_frames)`` (which bounds how many object pointers are read), so entries stay
while the pixels go."""


def _hf_stream(processor: Any, video_model: Any, frames: Iterator[torch.Tensor], objects: Objects,
               device: torch.device) -> Iterator[tuple[int, list[int], torch.Tensor]]:
    """(frame index, object ids, logits [L, H, W]) per frame from transformers' Sam2VideoModel or
    Sam3TrackerVideoModel, in streaming mode (one frame processed at a time)."""
    session = processor.init_video_session(inference_device=device, dtype=torch.float32)
    config = video_model.config
    window = _memory_window(config.num_maskmem, 1, config.max_object_pointers_in_encoder)
    for t, frame in enumerate(frames):
        inputs = processor(images=to_uint8(frame), device=device, return_tensors="pt")
        if t == 0:
            processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=[int(i) for i in objects.ids],
                                                      input_masks=list(objects.binary().float()),
                                                      original_size=inputs.original_sizes[0])
        output = video_model(inference_session=session, frame=inputs.pixel_values[0])
        session.processed_frames[int(output.frame_idx)] = _DROPPED
        _prune(session.output_dict_per_obj, t, window)
        logits = processor.post_process_masks([output.pred_masks.float().cpu()], original_sizes=inputs.original_sizes,
                                              binarize=False)[0]
        yield int(output.frame_idx), [int(i) for i in output.object_ids], logits[:, 0]

