"""Stage 1, trained: what the Stage-1 model reads and generates (shared by ``ttm-train stage1`` and the
``trained`` backend of Image To Motion).

Through-The-Mask's Stage 1 (Sec. 3.1) is a video model fine-tuned to generate the mask trajectory as
a colour-coded video (object l in ``train.palette.TRAIN_PALETTE[l - 1]``, background black) from
the first frame x(0), the first-frame masks s(0) and the motion prompt c_motion. On an
image-to-video base the two first-frame conditions enter as follows:

* s(0), colour-coded, is the base model's OWN image input: the generated video starts with it, as
  the target mask video does (Wan 2.2 TI2V pins the first latent frame to its image; Wan 2.1 I2V
  and CogVideoX I2V concatenate the image latents);
* x(0) enters by channel concatenation (``stage2.trained.trained_denoiser``, zero-initialised
  widening): the VAE latents of a video whose frame 0 is x(0) and whose other frames are mid grey
  (0 in the VAE's [-1, 1] range), the layout Wan's own image conditioning uses;
* the text is c_motion.

Object ``i`` of a trajectory (0-based, in the objects' order) is drawn in palette colour ``i + 1``.

``sample_trajectory_video`` runs a Stage-1 checkpoint on its stock diffusers base with exactly these
inputs (the ``trained`` backend of Image To Motion builds on it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..stage2.settings import MAX_SEED
from ..stage2.trained import TRAINED_VARIANTS, TrainedWeights, check_compatible
from ..train.palette import PALETTE_NAME, TRAIN_PALETTE, DecodedLabels, colorize, palette_labels
from ..types import Objects, ProgressFn, Trajectory

if TYPE_CHECKING:
    from ..stage2.diffusers.loader import VideoModel
    from ..stage2.diffusers.run import PrepareFn

logger = logging.getLogger(__name__)

GREY = 0.5
"""Pixel value (0..1) of the condition video's frames after the first: 0 in the VAE's [-1, 1] range."""


def stage1_image(first_labels: torch.Tensor) -> torch.Tensor:
    """The base model's image input: s(0) colour-coded.

    Args:
        first_labels: integer ``[H, W]``, 0 = background, 1..L = objects in palette order.
    Returns:
        float32 ``[H, W, 3]`` in 0..1.
    """
    if first_labels.ndim != 2:
        raise TTMInputError("masks", f"first-frame labels must be [H, W], got {tuple(first_labels.shape)}",
                            "pass one label map")
    return colorize(first_labels[None].to(torch.uint8))[0]


def stage1_condition(image: torch.Tensor, frames: int) -> torch.Tensor:
    """The appended condition video: x(0) then mid grey.

    Args:
        image: float ``[H, W, 3]`` in 0..1, the first frame x(0).
        frames: frames of the generated video (>= 1).
    Returns:
        float32 ``[frames, H, W, 3]`` in 0..1.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TTMInputError("image", f"x(0) must be [H, W, 3], got {tuple(image.shape)}", "pass one RGB frame")
    if frames < 1:
        raise TTMInputError("num_frames", f"{frames} frames", "generate at least one frame")
    video = torch.full((frames, *image.shape), GREY, dtype=torch.float32, device=image.device)
    video[0] = image.to(torch.float32).clamp(0.0, 1.0)
    return video


# ---------------------------------------------------------------------------- the trained backend
@dataclass(frozen=True)
class Stage1Sampling:
    """The settings of one trained Stage-1 generation (the ``trained`` backend of Image To Motion).

    Attributes:
        frames: frames of the trajectory, the first included (a length the model generates: 1 + 4k for
            Wan and CogVideoX; refused otherwise, never resampled).
        steps: denoising steps; 0 = the base model's recommended count.
        seed: the sampler's noise seed.
        cfg: classifier-free guidance scale on c_motion; 0 = the base model's recommended scale; 1 = off.
        fps: frames per second the trajectory is played at (> 0).
    """

    frames: int = 49
    steps: int = 0
    seed: int = 0
    cfg: float = 0.0
    fps: float = 16.0

    def __post_init__(self) -> None:
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or not 1 <= self.frames <= 4096:
            raise TTMInputError("num_frames", f"{self.frames!r} frames", "use 1..4096 frames")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 0 <= self.steps <= 1000:
            raise TTMInputError("steps", f"{self.steps!r} steps", "use 1..1000 steps, or 0 for the model's default")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise TTMInputError("seed", f"{self.seed!r} is not a seed", f"use a whole number 0..{MAX_SEED}")
        if not math.isfinite(self.cfg) or self.cfg < 0 or 0 < self.cfg < 1 or self.cfg > 100:
            raise TTMInputError("cfg", f"guidance scale {self.cfg!r}", "use 1 (off) to 100, or 0 for the model's "
                                "default")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise TTMInputError("fps", f"fps {self.fps!r} is not a positive number", "use e.g. 16")


MAX_ASPECT_CHANGE = 0.1
"""Largest relative change of the aspect ratio accepted when the model's size differs from the image's
(rounding to the model's grid); beyond it the trajectory would be generated on a visibly squeezed scene."""


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[..., h, w]`` -> ``[..., H, W]`` by nearest neighbour (labels are never blended)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    flat = labels.reshape(-1, 1, *labels.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="nearest-exact")
    return out.round().to(torch.uint8).reshape(*labels.shape[:-2], *size)


def _check_trained(model: VideoModel, weights: object) -> TrainedWeights:
    """Refuse (naming ``trained`` / ``video_model``) what a Stage-1 generation cannot run, before any work."""
    if not isinstance(weights, TrainedWeights):
        raise TTMInputError("trained", f"got a {type(weights).__name__}, not a trained checkpoint",
                            "connect Trained Checkpoint Loader (Through-The-Mask) with a Stage 1 checkpoint")
    variant = model.variant
    if variant.key not in TRAINED_VARIANTS:
        raise TTMInputError("video_model", f"trained Stage 1 runs on {', '.join(TRAINED_VARIANTS)}, the model is "
                            f"{variant.label}", f"load the base model the checkpoint was trained on "
                            f"({weights.config.variant})")
    check_compatible(weights, model.denoisers[0], 1, variant.key, "trained")
    if weights.config.palette != PALETTE_NAME:
        name = Path(weights.source).name or "the checkpoint"
        raise TTMInputError("trained", f"{name} was trained with the label palette {weights.config.palette!r}; this "
                            f"version of the pack reads {PALETTE_NAME!r}",
                            "use a checkpoint written by this version of ttm-train")
    return weights


def _model_size(model: VideoModel, objects_size: tuple[int, int], settings: Stage1Sampling
                ) -> tuple[tuple[int, int], list[str]]:
    """(height, width) the model generates for the objects' size, and notes; refuses illegal lengths."""
    from ..stage2.diffusers.run import size_rules
    from ..stage2.diffusers.sizes import plan_frames

    rules = size_rules(model)
    legal = rules.legal_frames(settings.frames)
    if legal != settings.frames:
        if rules.fixed_frames is not None:
            fix = f"set num_frames to {rules.fixed_frames}"
        else:
            r = rules.temporal_ratio
            lower = max(legal, rules.min_frames)
            fix = f"set num_frames to {lower} or {lower + r}" if rules.causal else f"set num_frames to {legal}"
        rule = f"1 + {rules.temporal_ratio}k" if rules.causal else f"at least {rules.min_frames}"
        raise TTMInputError("num_frames", f"{settings.frames} frames is not a length {rules.label} generates ({rule})",
                            fix)
    plan = plan_frames(rules, objects_size, settings.frames, settings.fps)
    height, width = objects_size
    aspect, generated = width / height, plan.width / plan.height
    if abs(generated / aspect - 1.0) > MAX_ASPECT_CHANGE:
        raise TTMInputError("image", f"{rules.label} generates {plan.width}x{plan.height}, the image is "
                            f"{width}x{height}: the aspect ratio would change by "
                            f"{abs(generated / aspect - 1.0):.0%}",
                            f"crop the image to {plan.width}:{plan.height} before segmenting it")
    notes = []
    if (plan.height, plan.width) != (height, width):
        notes.append(f"the {width}x{height} image was generated at {plan.width}x{plan.height} (multiples of "
                     f"{rules.multiple[1]}x{rules.multiple[0]} px for {rules.label}); the labels were resized back "
                     "(nearest neighbour)")
    return (plan.height, plan.width), notes


@dataclass(frozen=True, eq=False)
class Stage1Request:
    """One Stage-1 generation's inputs, checked, at the size the model generates (any backend).

    Attributes:
        x0: float32 ``[h, w, 3]`` in 0..1, the first frame at the model's size.
        palette_first: uint8 ``[h, w]``, s(0) in palette order (object i of the objects -> colour i + 1).
        first: uint8 ``[H, W]``, s(0) with the objects' ids at the objects' size (frame 0 of the trajectory).
        objects: the objects; order: their ids front to back; settings: the sampling settings.
        notes: what the reading should say (e.g. the size change).
    """

    x0: torch.Tensor
    palette_first: torch.Tensor
    first: torch.Tensor
    objects: Objects
    order: tuple[int, ...]
    settings: Stage1Sampling
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) the model generates."""
        return int(self.x0.shape[0]), int(self.x0.shape[1])


def stage1_request(image: torch.Tensor, objects: Objects, settings: Stage1Sampling, size: tuple[int, int],
                   notes: tuple[str, ...] = (), depth_order: tuple[int, ...] = ()) -> Stage1Request:
    """Check one Stage-1 generation's inputs (before any model work) and bring them to the model's size.

    Args:
        image: float ``[H, W, 3]`` in 0..1, x(0), at the objects' size.
        objects: the objects (object i is drawn in palette colour i + 1, whatever its id; at most
            ``len(TRAIN_PALETTE)``).
        settings: frames, steps, seed, cfg, fps.
        size: (height, width) the model generates (the backend's grid; the image is resized to it, the
            labels by nearest neighbour).
        notes: carried into the reading's notes.
        depth_order: object ids front to back (empty: the objects' order); decides frame 0's overlaps.
    """
    from ..segment.track import first_frame_labels

    if not isinstance(objects, Objects):
        raise TTMInputError("objects", f"got a {type(objects).__name__}", "connect SAM2 Segment's objects")
    if not isinstance(settings, Stage1Sampling):
        raise TTMInputError("settings", f"expected Stage1Sampling, got {type(settings).__name__}",
                            "pass Stage1Sampling(...)")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TTMInputError("image", f"x(0) must be [H, W, 3], got {tuple(image.shape)}", "pass one RGB frame")
    if tuple(image.shape[:2]) != objects.size:
        raise TTMInputError("image", f"the image is {image.shape[1]}x{image.shape[0]} but the objects' masks are "
                            f"{objects.size[1]}x{objects.size[0]}", "use the image the objects were made on")
    order = tuple(depth_order) or objects.ids
    if sorted(order) != sorted(objects.ids):
        raise TTMInputError("depth_order", f"{order} is not an ordering of the object ids {objects.ids}",
                            "list every object id once, front to back")
    first = first_frame_labels(objects, order)
    palette_first = palette_labels(first, objects.ids)  # refuses more objects than palette colours
    x0 = image.detach().to(torch.float32).clamp(0.0, 1.0)
    height, width = size
    if (height, width) != objects.size:
        x0 = rearrange(F.interpolate(rearrange(x0, "h w c -> 1 c h w"), size=(height, width), mode="bilinear",
                                     align_corners=False, antialias=True), "1 c h w -> h w c").clamp(0.0, 1.0)
        palette_first = _resize_labels(palette_first, (height, width))
    return Stage1Request(x0, palette_first, first, objects, order, settings, tuple(notes))


def read_generated(video: torch.Tensor, request: Stage1Request) -> tuple[Trajectory, DecodedLabels]:
    """A generated colour video read back into the trajectory (any backend).

    ``train.palette.decode_trajectory`` (nearest palette colour among the objects' own, small-component
    cleanup, per-object confidence; an unreadable object is absent in that frame, said in the notes),
    labels resized back to the objects' size by nearest neighbour; frame 0 holds s(0) itself, the
    objects' own masks (the model's image input, which its VAE round trip only blurs), as the trackers do.

    Args:
        video: float ``[F, h, w, 3]`` in 0..1 at the model's size.
    Returns:
        the trajectory (labels uint8 ``[F, H, W]`` with the objects' ids) and the decoder's reading at the
        objects' size (frame 0 as decoded; notes: the request's, then one line per object and run of absent
        frames).
    """
    from ..train.palette import decode_trajectory

    objects = request.objects
    palette_ids = tuple(range(1, objects.count + 1))
    decoded = decode_trajectory(video, palette_ids, names=objects.prompts.names)
    lookup = torch.zeros(256, dtype=torch.uint8)
    lookup[torch.tensor(palette_ids)] = torch.tensor(objects.ids, dtype=torch.uint8)
    labels = _resize_labels(lookup[decoded.labels.cpu().long()], objects.size)
    reading = DecodedLabels(labels=labels.clone(), confidence=decoded.confidence.cpu(), absent=decoded.absent.cpu(),
                            notes=(*request.notes, *decoded.notes), ids=objects.ids)
    labels[0] = request.first
    trajectory = Trajectory(labels, objects, request.settings.fps, request.order)
    for note in reading.notes:
        logger.info("Stage 1: %s", note)
    return trajectory, reading


def grid_size(objects_size: tuple[int, int], multiple: int, label: str) -> tuple[tuple[int, int], tuple[str, ...]]:
    """(height, width) on a model's ``multiple``-pixel grid nearest the objects' size (rounded down, at least one
    cell), and notes; refuses an aspect-ratio change beyond ``MAX_ASPECT_CHANGE`` (naming the crop to make)."""
    height, width = objects_size
    out_h, out_w = max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)
    aspect, generated = width / height, out_w / out_h
    if abs(generated / aspect - 1.0) > MAX_ASPECT_CHANGE:
        raise TTMInputError("image", f"{label} generates {out_w}x{out_h}, the image is {width}x{height}: the aspect "
                            f"ratio would change by {abs(generated / aspect - 1.0):.0%}",
                            f"crop the image to {out_w}:{out_h} before segmenting it")
    notes: tuple[str, ...] = ()
    if (out_h, out_w) != (height, width):
        notes = (f"the {width}x{height} image was generated at {out_w}x{out_h} (multiples of {multiple} px for "
                 f"{label}); the labels were resized back (nearest neighbour)",)
    return (out_h, out_w), notes


def generate_trajectory(model: VideoModel, weights: TrainedWeights, image: torch.Tensor, objects: Objects,
                        motion_prompt: str, settings: Stage1Sampling, progress: ProgressFn | None = None, *,
                        depth_order: tuple[int, ...] = (), prepare: PrepareFn | None = None
                        ) -> tuple[Trajectory, DecodedLabels]:
    """Stage 1, trained: the mask trajectory generated by a Stage-1 checkpoint on its diffusers base model.

    Checks everything first (the checkpoint's stage, base model and palette; the objects against the
    palette; the image against the objects; the frame count against the model's rule; the size),
    then samples the colour-coded video (``sample_trajectory_video``) at the model's size and reads it
    back (``read_generated``).

    Args:
        model: the loaded diffusers base model (``VideoModel``).
        weights: a Stage-1 checkpoint of that base (``stage2.trained.load_trained``).
        image: float ``[H, W, 3]`` in 0..1, x(0), at the objects' size.
        objects: the objects (object i is drawn in palette colour i + 1, whatever its id).
        motion_prompt: c_motion (the text the model reads).
        settings: frames, steps, seed, cfg, fps.
        progress: called with (step, steps) after every denoising step; may raise to cancel.
        depth_order: object ids front to back (empty: the objects' order); decides frame 0's overlaps.
        prepare: called as ``prepare("generate", component names)`` after the checks, before sampling.
    Returns:
        the trajectory and the decoder's reading (``read_generated``).
    Raises:
        TTMInputError: bad input, before the model runs.
    """
    from ..stage2.diffusers.text import PromptText, check_lengths

    weights = _check_trained(model, weights)
    if not isinstance(settings, Stage1Sampling):
        raise TTMInputError("settings", f"expected Stage1Sampling, got {type(settings).__name__}",
                            "pass Stage1Sampling(...)")
    if not isinstance(objects, Objects):
        raise TTMInputError("objects", f"got a {type(objects).__name__}", "connect SAM2 Segment's objects")
    size, notes = _model_size(model, objects.size, settings)
    request = stage1_request(image, objects, settings, size, tuple(notes), depth_order)
    check_lengths(model, [PromptText(motion_prompt, "motion_prompt", "the motion prompt")])
    variant = model.variant
    steps = settings.steps or variant.default_steps
    cfg = settings.cfg or variant.default_cfg
    if prepare is not None:
        prepare("generate", list(model.components()))
    height, width = size
    logger.info("Stage 1 (%s, %s): %dx%d, %d frames, %d steps, cfg %g, seed %d, %d objects", variant.label,
                Path(weights.source).name, width, height, settings.frames, steps, cfg, settings.seed, objects.count)
    video = sample_trajectory_video(model.pipeline, model.family, weights, request.x0, request.palette_first,
                                    motion_prompt, settings.frames, steps, settings.seed, cfg, progress)
    return read_generated(video, request)


def check_stage1_checkpoint(weights: TrainedWeights, input_name: str = "checkpoint") -> None:
    """Refuse a checkpoint that is not a Stage-1 one of this pack's palette (naming the file and the fix)."""
    from pathlib import Path

    from ..train.palette import PALETTE_NAME

    config, name = weights.config, Path(weights.source).name or "the checkpoint"
    if config.stage != 1:
        raise TTMInputError(input_name, f"{name} is a Stage {config.stage} checkpoint (motion-to-video); Image To "
                            "Motion runs a Stage 1 one (image-to-motion)",
                            "load a ttm-train stage1 checkpoint (ttm_stage1_<variant>.safetensors); Stage 2 "
                            "checkpoints go to Masked Motion To Video")
    if config.palette != PALETTE_NAME:
        raise TTMInputError(input_name, f"{name} was trained with the label palette {config.palette!r}, this pack "
                            f"reads {PALETTE_NAME!r} ({len(TRAIN_PALETTE)} colours)",
                            "use a checkpoint trained with this version of ttm-train, or retrain it")


def sample_trajectory_video(pipeline: Any, family: Any, weights: TrainedWeights, image: torch.Tensor,
                            first_labels: torch.Tensor, motion_prompt: str, frames: int, steps: int, seed: int,
                            cfg: float, progress: ProgressFn | None = None) -> torch.Tensor:
    """Sample the colour-coded mask-trajectory video with a Stage-1 checkpoint on its stock diffusers base.

    The stock image-to-video pipeline runs with ``stage2.trained.trained_denoiser`` installed (the widened
    patch embedding and the fine-tuned tensors, restored afterwards also on error / cancel): its image is
    s(0) colour-coded (``stage1_image``), the appended condition is ``Family.encode_reference`` of
    ``stage1_condition(x(0), frames)``, the prompt is c_motion (encoded as the trainer encodes it). Read
    the result back into labels with ``train.palette.decode_trajectory(video, ids)``.

    Args:
        pipeline: the loaded diffusers pipeline of the checkpoint's base model.
        family: its ``stage2.families`` adapter (``VideoModel.family``).
        weights: a Stage-1 checkpoint (``stage2.trained.load_trained``).
        image: float ``[H, W, 3]`` in 0..1, the first frame x(0), at the generated size.
        first_labels: integer ``[H, W]``: 0 background, 1..L the objects in palette order (``palette_labels``).
        motion_prompt: c_motion.
        frames: frames to generate (1 + 4k for the causal video VAEs).
        steps: denoising steps; seed: the noise seed; cfg: guidance scale (<= 1: no guidance; the negative
            is the empty prompt, as the trainer's text dropout).
        progress: called with (step, steps) after every denoising step; may raise to cancel.
    Returns:
        float32 ``[frames, H, W, 3]`` in 0..1 on the CPU.
    Raises:
        TTMInputError: a checkpoint of another stage / palette / base, sizes that do not match, more objects
            than the palette, before the model runs.
    """
    output = _sample(pipeline, family, weights, image, first_labels, motion_prompt, frames, steps, seed, cfg,
                     progress, "pt")
    return rearrange(output.float(), "f c h w -> f h w c").cpu().clamp(0.0, 1.0).contiguous()


def sample_trajectory_latents(pipeline: Any, family: Any, weights: TrainedWeights, image: torch.Tensor,
                              first_labels: torch.Tensor, motion_prompt: str, frames: int, steps: int, seed: int,
                              cfg: float, progress: ProgressFn | None = None) -> torch.Tensor:
    """``sample_trajectory_video`` stopped before the VAE decoder: the sampled latents.

    The same run (same inputs, checks and noise; the pipeline's ``output_type="latent"``), for reading a
    sample without decoding it, e.g. with ``train.palette.classify_latents`` when the VAE cannot carry
    palette colours (random-weight test models).

    Returns:
        float32 ``[C, F_lat, h, w]`` on the CPU, in the space the denoiser works in (the trainer's
        targets, ``Family.encode_reference``'s latents).
    """
    output = _sample(pipeline, family, weights, image, first_labels, motion_prompt, frames, steps, seed, cfg,
                     progress, "latent")
    return family.latents_to_bcfhw(output[None])[0].float().cpu().contiguous()


@torch.no_grad()
def _sample(pipeline: Any, family: Any, weights: TrainedWeights, image: torch.Tensor, first_labels: torch.Tensor,
            motion_prompt: str, frames: int, steps: int, seed: int, cfg: float, progress: ProgressFn | None,
            output_type: Literal["pt", "latent"]) -> torch.Tensor:
    """The one sampling run behind ``sample_trajectory_video`` / ``_latents``: the pipeline's first output
    (``[F, 3, H, W]`` in 0..1 for ``pt``; the family's latent layout without the batch for ``latent``)."""
    from PIL import Image

    from ..stage2.trained import trained_denoiser

    check_stage1_checkpoint(weights)
    if first_labels.ndim != 2 or first_labels.dtype.is_floating_point:
        raise TTMInputError("masks", f"first-frame labels must be an integer [H, W] map, got "
                            f"{tuple(first_labels.shape)} {first_labels.dtype}", "pass one label map")
    if image.ndim != 3 or tuple(image.shape[:2]) != tuple(first_labels.shape):
        raise TTMInputError("image", f"x(0) is {tuple(image.shape)} but the first-frame masks are "
                            f"{tuple(first_labels.shape)}", "give the image and its masks at the same size")
    objects = int(first_labels.max()) if first_labels.numel() else 0
    if objects > len(TRAIN_PALETTE):
        raise TTMInputError("masks", f"{objects} objects but the training palette has {len(TRAIN_PALETTE)} colours",
                            f"use at most {len(TRAIN_PALETTE)} objects")
    if steps < 1:
        raise TTMInputError("steps", f"{steps}", "use 1 or more denoising steps")
    from diffusers.utils.torch_utils import get_module_execution_device

    height, width = first_labels.shape
    device = torch.device(pipeline._execution_device)
    s0 = stage1_image(first_labels.cpu())
    condition = family.encode_reference(pipeline, stage1_condition(image.cpu(), frames),
                                        get_module_execution_device(pipeline.vae)).to(device)
    transformer = pipeline.transformer
    dtype = next(transformer.parameters()).dtype
    tokens = family.text_tokens(pipeline)
    prompt = family.encode_prompt(pipeline, motion_prompt, device, tokens).to(dtype)
    negative = family.encode_prompt(pipeline, "", device, tokens).to(dtype) if cfg > 1.0 else None

    def on_step(pipe: Any, index: int, timestep: Any, values: dict[str, Any]) -> dict[str, Any]:
        if progress is not None:
            progress(index + 1, steps)
        return values

    pil = Image.fromarray(s0.mul(255.0).round().to(torch.uint8).numpy())
    with trained_denoiser(transformer, weights, condition), torch.random.fork_rng(
            devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        output = pipeline(image=pil, prompt_embeds=prompt, negative_prompt_embeds=negative, height=height,
                          width=width, num_frames=frames, num_inference_steps=steps, guidance_scale=cfg,
                          generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type,
                          callback_on_step_end=on_step, **family.pipeline_kwargs(pipeline, 8.0))
    return output.frames[0]
