"""SAM2's video predictor on frames held in memory: first-frame object masks -> a label video.

Used by Stage 1's generate-and-track backend (a video model drafts the motion, SAM2 tracks
every object through it into the mask trajectory) and for building training data.

Meta's ``SAM2VideoPredictor.init_state`` only reads JPEG folders or mp4 files; ``frames_state``
builds the same inference state from a tensor (resized and normalised exactly as SAM2's frame
loader does, minus the JPEG round trip). transformers' ``Sam2VideoProcessor`` takes frames
directly.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..types import Objects, PretrainedModel
from .first_frame import autocast
from .sam2 import Sam2Model

LOG = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_frames(frames: torch.Tensor, objects: Objects) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] < 3 or frames.shape[0] < 1:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise TTMInputError("frames", f"expected frames [T, H, W, 3], got {shape}", "connect an IMAGE batch")
    if tuple(frames.shape[1:3]) != objects.size:
        raise TTMInputError("frames", f"frames are {frames.shape[2]}x{frames.shape[1]} but the objects' masks are "
                            f"{objects.size[1]}x{objects.size[0]}", "track on the video the objects were found in")
    return frames[..., :3]


def frames_state(predictor: Any, frames: torch.Tensor, device: torch.device,
                 offload_video_to_cpu: bool = False) -> dict[str, Any]:
    """A Meta SAM2VideoPredictor inference state for in-memory frames.

    Args:
        predictor: the ``SAM2VideoPredictor``.
        frames: float ``[T, H, W, 3]`` in 0..1.
    Returns the dict ``init_state`` would build from a JPEG folder of the same frames.
    """
    size = int(predictor.image_size)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    images = torch.empty(frames.shape[0], 3, size, size, dtype=torch.float32)
    for t in range(frames.shape[0]):  # one frame at a time: bounded extra memory
        chw = rearrange(frames[t].detach().to("cpu", torch.float32), "h w c -> 1 c h w")
        images[t] = F.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    images = (images - mean) / std
    storage = torch.device("cpu") if offload_video_to_cpu else device
    state: dict[str, Any] = {
        "images": images.to(storage),
        "num_frames": int(frames.shape[0]),
        "offload_video_to_cpu": offload_video_to_cpu,
        "offload_state_to_cpu": False,
        "video_height": int(frames.shape[1]),
        "video_width": int(frames.shape[2]),
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


def _labels_from_logits(logits: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """uint8 ``[H, W]``: each pixel the id of the object with the highest positive logit, else 0."""
    best = logits.argmax(dim=0)
    inside = logits.amax(dim=0) > 0
    lut = torch.tensor((0, *ids), dtype=torch.uint8)
    return lut[torch.where(inside, best + 1, torch.zeros_like(best))]


def track_objects(model: Sam2Model, frames: torch.Tensor, objects: Objects, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Track every object from its first-frame mask through ``frames``.

    Args:
        model: a SAM2 that can track (Meta checkpoint, or an HF ``sam2_video`` folder loaded
            with video).
        frames: float32 ``[T, H, W, 3]`` in 0..1; frame 0 is the frame ``objects`` were found in.
        objects: the objects; their masks ``[L, H, W]`` start the tracks.
        progress: called with (frames done, T) after every tracked frame; raising from it (a
            cancel) stops tracking at once.
    Returns:
        uint8 label video ``[T, H, W]``: 0 = background, ``objects.ids[i]`` = object i (a pixel
        claimed by several objects goes to the highest mask logit), ready for a Trajectory.
    """
    video_model = model.video_model  # None unless model.can_track
    if video_model is None:
        raise TTMInputError("model", f"{model.name} was loaded without its video model",
                            "load a Meta checkpoint, or a Hugging Face sam2_video folder with video tracking on")
    frames = _check_frames(frames, objects)
    device = torch.device(device)
    count, height, width = frames.shape[0], objects.size[0], objects.size[1]
    labels = torch.zeros(count, height, width, dtype=torch.uint8)
    masks = objects.binary()
    with torch.inference_mode(), autocast(device, dtype):
        if model.backend == "meta":
            predictor = video_model
            state = frames_state(predictor, frames, device)
            for i, object_id in enumerate(objects.ids):
                predictor.add_new_mask(state, frame_idx=0, obj_id=int(object_id), mask=masks[i].to(device))
            stream = ((t, list(ids), logits[:, 0]) for t, ids, logits in predictor.propagate_in_video(state))
        else:
            stream = _hf_stream(model.video_processor, video_model, frames, masks, objects.ids, device, dtype)
        for done, (t, ids, logits) in enumerate(stream, 1):
            order = [list(ids).index(object_id) for object_id in objects.ids]
            labels[t] = _labels_from_logits(logits[order].float().cpu(), objects.ids)
            if progress:
                progress(done, count)
    return labels


def _hf_stream(processor: Any, video_model: PretrainedModel, frames: torch.Tensor, masks: torch.Tensor,
               ids: tuple[int, ...], device: torch.device, dtype: torch.dtype):
    """(frame index, object ids, logits [L, H, W]) per frame from transformers' Sam2VideoModel and its
    Sam2VideoProcessor."""
    video = (frames.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    session = processor.init_video_session(video=list(video.numpy()), inference_device=device,
                                           dtype=torch.float32)
    processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=[int(i) for i in ids],
                                              input_masks=[m for m in masks])
    video_model(inference_session=session, frame_idx=0)  # the conditioning frame, before propagating
    original = [[int(frames.shape[1]), int(frames.shape[2])]]
    for output in video_model.propagate_in_video_iterator(session):
        logits = processor.post_process_masks([output.pred_masks.float().cpu()], original_sizes=original,
                                              binarize=False)[0]
        yield int(output.frame_idx), [int(i) for i in output.object_ids], logits[:, 0]
