"""Training-free Stage 2 on a diffusers pipeline: masked attention plus dual-clock guidance.

``generate(model, image, trajectory, prompts, settings, sampling)`` runs the model's own (stock) diffusers
pipeline and changes only what Through-The-Mask changes, each for exactly the duration of the
call and undone in ``finally`` (normal end, error, ComfyUI cancel):

* masked self- and cross-attention in the first K blocks (``attention.install.masked_attention``),
  with the local prompts limited to the conditional rows of classifier-free guidance (each family
  adapter knows how its pipeline batches them: ``Family.conditional_rows``);
* dual-clock trajectory guidance (``stage2.guidance``): the cut-and-drag reference video
  (``motion.cut_and_drag``) is VAE-encoded once (``Family.encode_reference``); before denoising step i the latent is
  replaced by the reference noised to step i's level inside the objects while the object clock runs, and
  outside them while the background clock runs. Step 0 is pinned where the pipeline prepares its
  latents, every later step right after the scheduler's previous step (both hooks are scoped
  attribute overrides of this pipeline object, removed on exit);
* progress after every denoising step (the callback may raise to cancel);
* with a trained checkpoint (``stage2.trained``): the checkpoint's masked layers run in "new_layers" mode
  in its K blocks, and the colour-coded label video (``trained.condition_video``), VAE-encoded once, is
  concatenated to the denoiser's input channels through the checkpoint's widened patch embedding
  (``trained.trained_denoiser``), also undone in ``finally``.

With no objects, or with guidance and masking off, every hook is a pass-through and the output is
the stock pipeline's output for the same seed, bit for bit (the tests check it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from PIL import Image

from ...errors import TTMInputError
from ...motion.cut_and_drag import check_first_frame, cut_and_drag
from ...motion.fit import resample_labels
from ...types import PretrainedModel, ProgressFn, Prompts, Trajectory
from ..attention.grids import token_grid_from_labels
from ..attention.install import masked_attention
from ..attention.state import MaskedAttentionPlan, MaskedAttentionState
from ..families import geometry_for
from ..families.base import CAUSAL_4K1, Family
from ..guidance import DualClock, labels_foreground, noise_to, pin
from ..settings import MaskedAttention, Sampling, Stage2Settings
from ..trained import (
    TRAINED_VARIANTS,
    TrainedWeights,
    check_compatible,
    condition_video,
    trained_denoiser,
    trained_masking,
)
from .loader import VideoModel
from .sizes import FramePlan, SizeRules, fit_frames, fit_labels, plan_frames
from .text import PromptText, check_lengths, encode_prompts

logger = logging.getLogger(__name__)

PrepareFn = Callable[[str, list[str]], None]
"""prepare(phase, component names): called before a phase uses those components ("text": the
prompt encoder; "generate": everything the pipeline call and the reference encoding use), so a
host (ComfyUI) can load them onto the device first."""

@dataclass(frozen=True, eq=False)
class GuidanceRecord:
    """What the dual clock did (for inspection and tests); latents in [B, C, F, H, W] layout.

    Attributes:
        kind: the schedule's noising (``"flow"`` or ``"vp"``, see ``guidance.noise_to``).
        reference: the VAE-encoded reference, padded like the pipeline's latents (CogVideoX 1.5).
        noise: the pipeline's initial noise (unscaled).
        foreground: ``[F, H, W]`` object share per latent cell.
        steps: per denoising step (noise level, objects pinned, background pinned).
    """

    kind: str
    reference: torch.Tensor
    noise: torch.Tensor
    foreground: torch.Tensor
    steps: tuple[tuple[float, bool, bool], ...]


@dataclass(frozen=True, eq=False)
class Stage2Result:
    """The generated video.

    Attributes:
        frames: float32 ``[F, H, W, 3]`` in 0..1 on the CPU (ComfyUI's IMAGE layout).
        fps: frames per second (the trajectory's, scaled when frames were resampled).
        plan: the frame plan that was generated.
        notes: everything that was changed or skipped, in plain words.
        masked_calls: masked (non-stock) attention calls per attention module.
        guidance: what the dual clock did, or None when it never pinned anything.
    """

    frames: torch.Tensor
    fps: float
    plan: FramePlan
    notes: tuple[str, ...]
    masked_calls: dict[str, int]
    guidance: GuidanceRecord | None


def size_rules(model: VideoModel) -> SizeRules:
    """The legal sizes and frame counts of a loaded model (from its configs)."""
    variant = model.variant
    geometry = geometry_for(model.denoisers[0], model.pipeline.vae)
    fixed = model.family.fixed_size(variant, model.pipeline, geometry)
    fixed_size, fixed_frames = fixed if fixed is not None else (None, None)
    return SizeRules(variant.label, geometry.pixels_per_token, fixed_size, fixed_frames, geometry.temporal_ratio,
                     variant.frames_rule == CAUSAL_4K1, variant.min_frames)


# ------------------------------------------------------------------------------------ noise levels
def _is_flow(scheduler: object) -> bool:
    config = getattr(scheduler, "config", None)
    return (type(scheduler).__name__.startswith("FlowMatch") or bool(getattr(config, "use_flow_sigmas", False))
            or getattr(config, "prediction_type", None) == "flow_prediction")


def noise_kind(scheduler: object) -> str:
    """``"flow"`` for flow-matching schedules, ``"vp"`` for DDPM-style ones (``guidance.noise_to``)."""
    if _is_flow(scheduler):
        return "flow"
    if hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    raise TTMInputError("video_model", f"the scheduler {type(scheduler).__name__} is neither flow-matching nor "
                        "DDPM-style, so trajectory guidance cannot noise the reference for it",
                        "keep the model's own scheduler (scheduler/ in its folder)")


def noise_level(scheduler: PretrainedModel, step: int) -> float:
    """The noise level of the latent entering denoising step ``step``: the flow sigma, or the VP
    noise standard deviation sqrt(1 - alpha_bar(t_step))."""
    if _is_flow(scheduler):
        return float(scheduler.sigmas[step])
    t = int(scheduler.timesteps[step])
    alpha_bar = float(scheduler.alphas_cumprod[t])
    return math.sqrt(min(1.0, max(0.0, 1.0 - alpha_bar)))


class _DualClockRun:
    """The dual clock of one generation, hooked into a pipeline (see the module docstring)."""

    def __init__(self, pipe: PretrainedModel, family: Family, clock: DualClock | None, reference: torch.Tensor | None,
                 foreground: torch.Tensor | None, progress: ProgressFn | None,
                 on_step: Callable[[int, int], None] | None = None) -> None:
        self.pipe = pipe
        self.scheduler = pipe.scheduler
        self.layout = family  # the family adapter converts its latents to and from [B, C, F, H, W]
        self.clock = clock
        self.reference = reference  # [1, C, F, H, W] float32 or None (guidance off)
        self.foreground = foreground  # [F, H, W] or None
        self.progress = progress
        self.on_step = on_step  # on_step(step, steps) before each denoising step (e.g. the attention window)
        self.kind = noise_kind(self.scheduler) if reference is not None else ""
        self.noise: torch.Tensor | None = None
        self.count = 0
        self.total = 0
        self.levels: list[tuple[float, bool, bool]] = []

    # the two hooks --------------------------------------------------------------------------
    def prepare_latents(self, original: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            latents = out[0] if isinstance(out, tuple) else out
            self.total = len(self.scheduler.timesteps)
            self.count = 0
            if self.on_step is not None:
                self.on_step(0, self.total)
            if self.reference is None:
                return out
            sigma0 = float(getattr(self.scheduler, "init_noise_sigma", 1.0))
            self.noise = (self.layout.latents_to_bcfhw(latents).to(torch.float32) / sigma0).clone()
            self._match_frames(self.noise.shape[2])
            pinned = self._pin(self.layout.latents_to_bcfhw(latents), 0)
            if pinned is None:
                return out
            latents = self.layout.latents_from_bcfhw(pinned).contiguous()
            return (latents, *out[1:]) if isinstance(out, tuple) else latents
        return wrapped

    def step(self, original: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            self.count += 1
            done, total = self.count, self.total or len(self.scheduler.timesteps)
            if self.reference is not None and done < total:
                prev = out[0] if isinstance(out, tuple) else out.prev_sample
                frames = self._noise().shape[2]
                pinned = self._pin(self.layout.step_to_bcfhw(prev, frames), done)
                if pinned is not None:
                    pinned = self.layout.step_from_bcfhw(pinned)
                    if isinstance(out, tuple):
                        out = (pinned, *out[1:])
                    else:
                        out.prev_sample = pinned
            if self.progress is not None:
                self.progress(done, total)
            if self.on_step is not None and done < total:
                self.on_step(done, total)
            return out
        return wrapped

    # helpers ----------------------------------------------------------------------------------
    def _guide(self) -> tuple[DualClock, torch.Tensor, torch.Tensor]:
        """The clock, the reference and the foreground, which ``generate`` gives together when the
        reference is pinned (the only time the hooks pin)."""
        if self.clock is None or self.reference is None or self.foreground is None:
            raise RuntimeError("trajectory guidance without its clock, reference latents or foreground")
        return self.clock, self.reference, self.foreground

    def _noise(self) -> torch.Tensor:
        """The initial noise, kept by the ``prepare_latents`` hook before any step is pinned."""
        if self.noise is None:
            raise RuntimeError("the pipeline stepped before preparing its latents")
        return self.noise

    def _match_frames(self, frames: int) -> None:
        """CogVideoX 1.5 pads latent frames at the front (they show frame 0): pad the reference too."""
        _, reference, foreground = self._guide()
        have = reference.shape[2]
        if frames == have:
            return
        if frames < have:
            raise RuntimeError(f"the pipeline's latents have {frames} frames, the reference {have}")
        pad = frames - have
        self.reference = torch.cat([reference[:, :, :1]] * pad + [reference], dim=2)
        self.foreground = torch.cat([foreground[:1]] * pad + [foreground], dim=0)

    def _pin(self, x: torch.Tensor, step: int) -> torch.Tensor | None:
        """x pinned for denoising step ``step`` ([B, C, F, H, W]), or None when nothing is pinned."""
        clock, reference, foreground = self._guide()
        sigma = noise_level(self.scheduler, step)
        objects, background = clock.pins(step, self.total, sigma)
        self.levels.append((sigma, objects, background))
        if not (objects or background):
            return None
        reference = reference.to(device=x.device)
        noise = self._noise().to(device=x.device)
        noised = noise_to(reference, noise, sigma, self.kind).to(x.dtype)
        return pin(x, noised, foreground, objects, background)

    def record(self) -> GuidanceRecord | None:
        if self.reference is None or self.noise is None:
            return None
        _, reference, foreground = self._guide()
        return GuidanceRecord(self.kind, reference.cpu(), self.noise.cpu(), foreground.cpu(), tuple(self.levels))


@contextmanager
def _override(target: object, name: str, make: Callable[[Callable], Callable]) -> Iterator[None]:
    """Shadow ``target.name`` by an instance attribute wrapping the original; removed on exit."""
    had_own = name in vars(target)
    original = getattr(target, name)
    setattr(target, name, make(original))
    try:
        yield
    finally:
        if had_own:
            setattr(target, name, original)
        else:
            delattr(target, name)


def _execution_device(model: VideoModel) -> torch.device:
    return torch.device(model.pipeline._execution_device)


def encode_reference(model: VideoModel, video: torch.Tensor) -> torch.Tensor:
    """The VAE latents of a video, in the pipeline's latent space (scaled / normalised as it decodes).

    Args:
        video: float ``[F, H, W, 3]`` in 0..1 at the generated size.
    Returns:
        float32 ``[1, C, F_lat, H_lat, W_lat]`` on the execution device.
    """
    from diffusers.utils.torch_utils import get_module_execution_device

    device = get_module_execution_device(model.pipeline.vae)
    with torch.no_grad():
        latents = model.family.encode_reference(model.pipeline, video, device)
    return latents.to(_execution_device(model))


def guidance_inputs(model: VideoModel, image: torch.Tensor, trajectory: Trajectory, plan: FramePlan,
                    feather: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The dual clock's reference latents and foreground for one generation (done once, before the loop).

    The cut-and-drag video is rendered at the trajectory's size, resampled to the plan (frames, crop,
    size) and VAE-encoded; the foreground is the trajectory's object share per latent cell.

    Returns:
        reference float32 ``[1, C, F_lat, H_lat, W_lat]`` (execution device), foreground ``[F_lat, H_lat, W_lat]``.
    """
    source = cut_and_drag(image, trajectory, feather)  # [T, H, W, 3] on the CPU
    video = fit_frames(source[plan.frame_sources()], plan)
    del source
    reference = encode_reference(model, video)
    del video
    geometry = geometry_for(model.denoisers[0], model.pipeline.vae)
    foreground = labels_foreground(fit_labels(trajectory.labels, plan), trajectory.objects.ids, geometry,
                                   plan.num_frames, plan.height, plan.width, trajectory.depth_order)
    return reference, foreground


def attention_plan(model: VideoModel, trajectory: Trajectory, plan: FramePlan, local: tuple[torch.Tensor, ...],
                   masking: MaskedAttention) -> MaskedAttentionPlan:
    """The masked-attention plan of one generation: the trajectory on the model's token grid, the local prompts."""
    geometry = geometry_for(model.denoisers[0], model.pipeline.vae)
    grid = token_grid_from_labels(fit_labels(trajectory.labels, plan), trajectory.objects.ids, geometry,
                                  plan.num_frames, plan.height, plan.width, trajectory.depth_order)
    return MaskedAttentionPlan(grid, local, masking)


def _pil(image: torch.Tensor) -> Image.Image:
    """float [H, W, 3] in 0..1 -> an 8-bit RGB PIL image (what the pipelines take)."""
    array = image.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array)


def _trained_masking(model: VideoModel, weights: TrainedWeights, masking: MaskedAttention, plan: FramePlan,
                     input_name: str = "trained") -> MaskedAttention:
    """``trained.trained_masking`` after refusing (naming the input and the fix) variants the trained
    path does not support, checkpoints of another base model or stage, weights held off the model
    (sequential CPU offload) and CogVideoX 1.5 lengths its pipeline would pad (before any model runs)."""
    if not isinstance(weights, TrainedWeights):
        raise TTMInputError(input_name, f"got a {type(weights).__name__}, not a trained checkpoint",
                            "connect Trained Checkpoint Loader (Through-The-Mask)")
    variant = model.variant
    if variant.key not in TRAINED_VARIANTS:
        raise TTMInputError(input_name, f"trained checkpoints run on {', '.join(TRAINED_VARIANTS)}, the model is "
                            f"{variant.label}", "load the base model the checkpoint was trained on")
    denoiser = model.denoisers[0]
    if any(p.device.type == "meta" for p in denoiser.parameters()):
        raise TTMInputError("offload", "sequential CPU offload keeps the denoiser's weights off the model, where a "
                            "trained checkpoint cannot be loaded into it", "use offload 'model' (or none) with a "
                            "trained checkpoint")
    check_compatible(weights, denoiser, 2, variant.key, input_name)
    patch_t = getattr(denoiser.config, "patch_size_t", None)
    latent_frames = (plan.num_frames - 1) // 4 + 1
    if patch_t and latent_frames % patch_t:
        # The pipeline would pad the latent frames to a multiple of patch_size_t, the condition would not.
        good = [f for f in (plan.num_frames - 4, plan.num_frames + 4) if ((f - 1) // 4 + 1) % patch_t == 0]
        raise TTMInputError("num_frames", f"{variant.label} with a trained checkpoint needs a frame count whose "
                            f"{latent_frames} latent frames are a multiple of {patch_t}",
                            f"use {' or '.join(map(str, good))} frames")
    return trained_masking(weights, masking)


def trained_condition(model: VideoModel, trajectory: Trajectory, plan: FramePlan) -> torch.Tensor:
    """The trained Stage 2 condition: the colour-coded label video fitted to the plan, VAE-encoded.

    Returns:
        float32 ``[1, C, F_lat, H_lat, W_lat]`` on the execution device.
    """
    # Ids are resized (nearest), then coloured: a resized colour video would blend colours at the edges
    # that training never showed (the reader resizes the label ids the same way).
    labels = resample_labels(fit_labels(trajectory.labels[plan.frame_sources()], plan), plan.height, plan.width)
    return encode_reference(model, condition_video(labels, trajectory.objects.ids))


def _will_pin(clock: DualClock | None, steps: int) -> bool:
    if clock is None:
        return False
    if clock.units == "steps":
        return round(clock.object_end * steps) > 0 or round(clock.background_end * steps) > 0
    return True  # decided per step from the sigmas


def generate(model: VideoModel, image: torch.Tensor, trajectory: Trajectory, prompts: Prompts,
             settings: Stage2Settings, sampling: Sampling, progress: ProgressFn | None = None,
             prepare: PrepareFn | None = None, trained: TrainedWeights | None = None) -> Stage2Result:
    """Stage 2 (motion-to-video) on a diffusers model, training-free or with a trained checkpoint.

    Args:
        model: the loaded model.
        image: float ``[H, W, 3]`` in 0..1, the first frame, at the trajectory's size.
        trajectory: the mask trajectory (its objects' order is the local prompts' order).
        prompts: global prompt and one local prompt per object of the trajectory; with NO objects
            the model samples plainly from the image and the global prompt (no masked attention,
            no trajectory guidance; said so in the notes).
        settings: masked attention, dual clock, reference feather.
        sampling: seed, steps, cfg, negative prompt, size, frames (0 = automatic / the model's default).
        progress: called with (step, steps) after every denoising step; may raise to cancel.
        prepare: see ``PrepareFn``.
        trained: a Stage 2 checkpoint of this base model (``trained.load_trained``): its layers run
            in its K blocks (``settings.masking``'s strengths and window apply; its K must be
            unset or the checkpoint's) and the label video conditions the input channels.
    Returns:
        the frames, fps, the frame plan and the notes.
    Raises:
        TTMInputError: bad input, before any model runs.
    """
    variant, family = model.variant, model.family
    check_first_frame(image, trajectory)
    plain = not prompts.objects
    if not plain and len(prompts.objects) != trajectory.objects.count:
        raise TTMInputError("prompts", f"{len(prompts.objects)} object prompts for the trajectory's "
                            f"{trajectory.objects.count} objects ({', '.join(trajectory.objects.prompts.names)})",
                            "give one local prompt per object of the trajectory, in its order (or none for plain "
                            "sampling)")
    plan = plan_frames(size_rules(model), trajectory.size, trajectory.num_frames, trajectory.fps,
                       sampling.width, sampling.height, sampling.num_frames)
    notes = list(plan.notes)
    steps = sampling.steps or variant.default_steps
    cfg = sampling.cfg or variant.default_cfg
    do_cfg = cfg > 1.0
    texts = [PromptText(prompts.global_prompt, "prompts", "the global prompt")]
    if do_cfg:
        texts.append(PromptText(sampling.negative_prompt, "negative_prompt", "the negative prompt"))
    if not plain:
        texts += [PromptText(o.local_prompt, "prompts", f"the local prompt of {o.name!r}") for o in prompts.objects]
    check_lengths(model, texts)
    masking = settings.masking
    if trained is not None:
        masking = _trained_masking(model, trained, masking, plan)
    window = masking.steps(steps)
    masked = not plain and masking.active and len(window) > 0
    guiding = not plain and _will_pin(settings.guidance, steps)
    if plain:
        notes.insert(0, "no objects: plain image-to-video sampling with the global prompt (no masked attention, no "
                        "trajectory guidance)")
    else:
        if not masked:
            notes.append("masked attention is off (strengths 0, K = 0 or an empty step window)")
        elif len(window) < steps:
            notes.append(f"masked attention runs in steps {window.start + 1}..{window.stop} of {steps}")
        if not guiding:
            notes.append("trajectory guidance is off" + (" (both clocks end at step 0)" if settings.guidance else ""))
    groups = model.component_groups()

    if prepare is not None:
        prepare("text", groups["text"])
    device = _execution_device(model)
    encoded = encode_prompts(model, prompts.global_prompt, sampling.negative_prompt if do_cfg else None,
                             [o.local_prompt for o in prompts.objects] if masked else [], device)
    if prepare is not None:
        prepare("generate", groups["image"] + groups["denoise"] + groups["vae"])
    device = _execution_device(model)

    reference = foreground = None
    condition = trained_condition(model, trajectory, plan) if trained is not None else None
    if guiding:
        reference, foreground = guidance_inputs(model, image, trajectory, plan, settings.feather)
    switches: list[MaskedAttentionState] = []  # the masked-attention state, once installed

    def attention_window(step: int, total: int) -> None:
        for state in switches:
            state.enabled = step in masking.steps(total)

    clock = _DualClockRun(model.pipeline, family, settings.guidance, reference, foreground, progress,
                          attention_window)

    first = fit_frames(image[None], plan)[0]
    kwargs: dict[str, object] = dict(
        image=_pil(first), prompt_embeds=encoded.prompt_embeds,
        negative_prompt_embeds=encoded.negative_embeds, height=plan.height, width=plan.width,
        num_frames=plan.num_frames, num_inference_steps=steps, guidance_scale=cfg,
        generator=torch.Generator("cpu").manual_seed(sampling.seed), output_type="pt",
        **family.pipeline_kwargs(model.pipeline, plan.fps))

    calls: dict[str, int] = {}
    with ExitStack() as stack:
        layers = None
        if trained is not None and condition is not None:
            layers = stack.enter_context(trained_denoiser(model.denoisers[0], trained, condition, "trained"))
            notes.append(f"trained checkpoint {Path(trained.source).name} (step {trained.config.step}, "
                         f"K = {trained.config.num_blocks})")
        if masked:
            masked_plan = attention_plan(model, trajectory, plan, encoded.local, masking)
            state = stack.enter_context(masked_attention(model.pipeline, masked_plan, layers))
            switches.append(state)
            stack.enter_context(family.conditional_rows(model.denoisers, state, encoded.negative_embeds, do_cfg))
        stack.enter_context(_override(model.pipeline, "prepare_latents", clock.prepare_latents))
        stack.enter_context(_override(clock.scheduler, "step", clock.step))
        devices = [device] if device.type == "cuda" else []
        stack.enter_context(torch.random.fork_rng(devices=devices))
        torch.manual_seed(sampling.seed)
        logger.info("Stage 2 (%s): %dx%d, %d frames, %d steps, cfg %g, seed %d, %d objects", variant.label,
                    plan.width, plan.height, plan.num_frames, steps, cfg, sampling.seed, len(prompts.objects))
        output = model.pipeline(**kwargs)
        if masked:
            calls = dict(state.calls)
    frames = rearrange(output.frames[0].to(torch.float32), "f c h w -> f h w c").cpu().clamp(0.0, 1.0).contiguous()
    for note in notes:
        logger.info("Stage 2: %s", note)
    return Stage2Result(frames, plan.fps, plan, tuple(notes), calls, clock.record())
