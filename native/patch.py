"""Through-The-Mask Stage 2 on ComfyUI's own Wan models, as a model patch.

ComfyUI's Wan (comfy/ldm/wan/model.py) honours, per forward: DIFFUSION_MODEL wrappers, block
replacement patches (``patches_replace["dit"][("double_block", i)]``) and an attention
override (``transformer_options["optimized_attention_override"]``) that every attention call
goes through. The patch, on a clone of the user's MODEL:

* DIFFUSION_MODEL wrapper: maps the trajectory onto this forward's token grid (cached per
  latent shape) and appends the encoded local prompts to the text context, so they pass
  through the model's own ``text_embedding`` (never through CONDCrossAttn, whose
  repeat-to-common-length would break index-based masks);
* block patches on every block: tell the override which block it is in and whether it is one
  of the first K (masked) blocks;
* attention override: self-attention of a masked block runs once per object group through
  the attention function ComfyUI chose (exact, and it keeps flash/sage speed); the text
  cross-attention of a masked block becomes the joint masked cross-attention (SDPA with a
  small explicit mask) on the conditional rows; every other call sees exactly the stock keys
  (the appended local prompts are cut off again). An override another pack installed first is
  chained: every call, ours included, goes through it.
* SAMPLER_SAMPLE + APPLY_MODEL wrappers: dual-clock guidance towards the VAE-encoded
  cut-and-drag reference (ttm_core.guidance), with any ComfyUI sampler.

Strength 0, no object in view, or a sigma outside the range give the stock computation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import comfy.model_base
import comfy.patcher_extension
import torch
from comfy.ldm.wan.model import WanI2VCrossAttention, WanModel
from einops import rearrange

from ..ttm_core.attention.grids import WAN21_I2V, WAN22_TI2V, VideoGeometry, token_grid
from ..ttm_core.attention.kernels import grouped_self_attention, masked_cross_attention_explicit
from ..ttm_core.attention.plan import Partition, self_groups
from ..ttm_core.attention.routing import blend, cond_rows, cross_visibility
from ..ttm_core.errors import TTMInputError
from ..ttm_core.guidance import DualClock, latent_foreground, noise_to, pin, step_index
from ..ttm_core.reference import crop_image, fit_trajectory, resample_video
from ..ttm_core.types import Prompts, Trajectory
from ..ttm_core.warp import check_first_frame, cut_and_drag

LOG = logging.getLogger(__name__)
KEY = "through_the_mask"
_BLOCK = KEY + ".block"
_FORWARD = KEY + ".forward"


@dataclass(frozen=True)
class PatchSettings:
    """What the patch does; validated on construction.

    Attributes:
        num_blocks: K, the first blocks that get masked attention; 0 = a quarter of the
            model's blocks (the paper's 10 of 40).
        self_strength, cross_strength: training-free blend (0 = stock, 1 = fully masked).
        start_percent, end_percent: the part of the schedule (0 = first step, 1 = last) in
            which masked attention is on, like ComfyUI's own start/end percent inputs.
        clock: dual-clock guidance, or None for none.
    """

    num_blocks: int = 0
    self_strength: float = 1.0
    cross_strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    clock: DualClock | None = field(default_factory=DualClock)

    def __post_init__(self) -> None:
        if self.num_blocks < 0:
            raise TTMInputError("masked_blocks", f"{self.num_blocks} blocks", "use 0 (auto) or a positive count")
        for name in ("self_strength", "cross_strength", "start_percent", "end_percent"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise TTMInputError(name, f"{value} is outside 0..1", f"give {name} in 0..1")
        if self.end_percent < self.start_percent:
            raise TTMInputError("end_percent", f"{self.end_percent} is before start_percent {self.start_percent}",
                                "make end_percent >= start_percent")


@dataclass(frozen=True)
class _Grid:
    """The trajectory on one latent shape's token grid (cached per shape)."""

    num_tokens: int
    ids: torch.Tensor  # int64 [N] object id per token, 0 = background
    self_plan: Partition
    in_box: torch.Tensor  # bool [N, L]
    box_rows: torch.Tensor  # int64 rows inside at least one box


@dataclass
class _Forward:
    """Per-forward routing data, put into that forward's transformer_options."""

    grid: _Grid
    text_len: int
    local_len: int
    cond_index: torch.Tensor  # long [n_cond]: the conditional rows of the batch, on the model's device
    has_cond: bool


@dataclass
class _Block:
    index: int
    masked: bool
    calls: int = 0


def check_wan(model: Any, input_name: str = "model") -> tuple[VideoGeometry, int, bool]:
    """(geometry, number of blocks, I2V cross-attention) of a supported native Wan MODEL."""
    base = getattr(model, "model", None)
    diffusion = getattr(base, "diffusion_model", None)
    supported = type(base) in (comfy.model_base.WAN21, comfy.model_base.WAN22) and type(diffusion) is WanModel
    if not supported:
        kind = type(base).__name__ if base is not None else type(model).__name__
        model_type = getattr(getattr(base, "model_type", None), "name", "unknown")
        raise TTMInputError(input_name, f"this MODEL is {kind} ({type(diffusion).__name__}, {model_type}), not a "
                            "Wan 2.1 / 2.2 model the patch supports",
                            "load Wan 2.1 I2V, Wan 2.2 I2V-A14B (either expert) or Wan 2.2 TI2V-5B with Load "
                            "Diffusion Model")
    geometry = WAN22_TI2V if base.latent_format.latent_channels == 48 else WAN21_I2V
    i2v_cross = isinstance(diffusion.blocks[0].cross_attn, WanI2VCrossAttention)
    return geometry, len(diffusion.blocks), i2v_cross


def encode_local_prompts(clip: Any, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Each object's local prompt through the model's text encoder (the CLIP input).

    Returns:
        float32 ``[M, D]`` states of all local prompts concatenated in object order (trailing
        all-zero padding rows, as umT5 pads to 512, are dropped) and int64 ``[M]`` owners
        (1-based object index of every key).
    """
    states, owners = [], []
    for index, obj in enumerate(prompts.objects, start=1):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(obj.local_prompt))[0][0][0]  # [L, D]
        nonzero = (cond.abs().amax(dim=-1) > 0).nonzero().flatten()
        length = int(nonzero.max()) + 1 if nonzero.numel() else 1
        states.append(cond[:length].float().cpu())
        owners.append(torch.full((length,), index, dtype=torch.int64))
    return torch.cat(states), torch.cat(owners)


class WanPatch:
    """The state one TTM_PatchModel shares between its patched models (one or two experts).

    ComfyUI deep-copies model options on every clone; the patch is shared, not copied.
    """

    def __init__(self, trajectory: Trajectory, local_states: torch.Tensor, key_owner: torch.Tensor,
                 settings: PatchSettings, geometry: VideoGeometry, num_model_blocks: int, i2v_cross: bool,
                 sigma_range: tuple[float, float], reference: torch.Tensor | None = None,
                 foreground: torch.Tensor | None = None, frame_weight: torch.Tensor | None = None) -> None:
        self.trajectory = trajectory
        self.local_states = local_states
        self.key_owner = key_owner
        self.settings = settings
        self.geometry = geometry
        self.num_blocks = settings.num_blocks or max(1, round(num_model_blocks / 4))
        if self.num_blocks > num_model_blocks:
            raise TTMInputError("masked_blocks", f"{self.num_blocks} masked blocks but the model has {num_model_blocks}",
                                f"use at most {num_model_blocks} (0 = a quarter of them)")
        self.final_cross_call = 2 if i2v_cross else 1
        self.sigma_start, self.sigma_end = sigma_range
        self.reference = reference
        self.foreground = foreground
        self.frame_weight = frame_weight
        self.schedule: torch.Tensor | None = None  # a full schedule set by a caller that runs several passes
        self.previous_override: Callable | None = None
        self._grids: dict[tuple[int, int, int], _Grid | None] = {}
        self._cross: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._noise: torch.Tensor | None = None
        self._sigmas: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> WanPatch:
        return self

    # ---------------------------------------------------------------- token grid
    def grid_for(self, frames: int, height: int, width: int) -> _Grid | None:
        """The trajectory on the token grid of a [*, *, frames, height, width] latent."""
        key = (frames, height, width)
        if key not in self._grids:
            rows, cols = math.ceil(height / 2), math.ceil(width / 2)  # Wan pads odd latents to the 1x2x2 patch
            ratio = self.geometry.spatial_ratio
            num_frames = 4 * (frames - 1) + 1
            fitted = fit_trajectory(self.trajectory, rows * 2 * ratio, cols * 2 * ratio, num_frames)
            grid = token_grid(fitted, self.geometry, num_frames, rows * 2 * ratio, cols * 2 * ratio)
            if not bool((grid.ids > 0).any()):
                LOG.warning("Through-The-Mask: no object is in view on the %dx%dx%d token grid; sampling plainly",
                            frames, rows, cols)
                self._grids[key] = None
            else:
                in_box = grid.in_box()
                self._grids[key] = _Grid(grid.num_tokens, grid.ids, self_groups(grid.ids), in_box,
                                         in_box.any(dim=1).nonzero().flatten())
        return self._grids[key]

    def attention_on(self, sigma: float | None) -> bool:
        if self.settings.self_strength == 0 and self.settings.cross_strength == 0:
            return False
        return sigma is None or self.sigma_end <= sigma <= self.sigma_start

    # ---------------------------------------------------------------- wrappers and patches
    def diffusion_model_wrapper(self, executor: Callable, x: torch.Tensor, timestep: torch.Tensor,
                                context: torch.Tensor, clip_fea: Any = None, time_dim_concat: Any = None,
                                transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        sigmas = options.get("sigmas")
        sigma = float(sigmas.max()) if isinstance(sigmas, torch.Tensor) else None
        grid = self.grid_for(*x.shape[2:]) if self.attention_on(sigma) else None
        if grid is None:
            return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)
        batch, text_len = context.shape[0], context.shape[1]
        local = self.local_states.to(device=context.device, dtype=context.dtype)
        context = torch.cat([context, local[None].expand(batch, -1, -1)], dim=1)
        options = dict(options)  # per forward: the model's stored options stay untouched
        cond = cond_rows(options.get("cond_or_uncond", []), batch)  # on the CPU: no device sync per block
        options[_FORWARD] = _Forward(grid, text_len, local.shape[0], cond.nonzero().flatten().to(x.device),
                                     bool(cond.any()))
        return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)

    def block_patch(self, index: int, previous: Callable | None) -> Callable:
        masked = index < self.num_blocks

        def patch(args: dict, extra: dict) -> dict:
            options = args["transformer_options"]
            if _FORWARD in options:
                args = dict(args)
                args["transformer_options"] = {**options, _BLOCK: _Block(index, masked)}
            if previous is not None:
                return previous(args, extra)
            return extra["original_block"](args)

        return patch

    def _call(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.previous_override is not None:
            return self.previous_override(func, *args, **kwargs)
        return func(*args, **kwargs)

    def attention_override(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        options = kwargs.get("transformer_options") or {}
        block: _Block | None = options.get(_BLOCK)
        forward: _Forward | None = options.get(_FORWARD)
        if block is None or forward is None or len(args) < 3:
            return self._call(func, *args, **kwargs)
        call, block.calls = block.calls, block.calls + 1
        q, k, v, rest = args[0], args[1], args[2], args[3:]
        if call == 0:  # self-attention: q, k, v over the video tokens
            if not block.masked or self.settings.self_strength == 0 or q.shape[1] != forward.grid.num_tokens:
                return self._call(func, q, k, v, *rest, **kwargs)
            return self._masked_self(func, q, k, v, rest, kwargs, forward)
        if k.shape[1] != forward.text_len + forward.local_len:  # I2V image cross-attention
            return self._call(func, q, k, v, *rest, **kwargs)
        text_k, text_v = k[:, :forward.text_len].contiguous(), v[:, :forward.text_len].contiguous()
        stock = self._call(func, q, text_k, text_v, *rest, **kwargs)
        if (not block.masked or call != self.final_cross_call or self.settings.cross_strength == 0
                or q.shape[1] != forward.grid.num_tokens or not forward.has_cond):
            return stock
        return self._masked_cross(q, k, v, stock, kwargs["heads"], forward)

    def _masked_self(self, func: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rest: tuple,
                     kwargs: dict, forward: _Forward) -> torch.Tensor:
        heads = kwargs["heads"]
        group_kwargs = dict(kwargs, skip_reshape=True, skip_output_reshape=True)

        def per_group(qg: torch.Tensor, kg: torch.Tensor, vg: torch.Tensor) -> torch.Tensor:
            return self._call(func, qg, kg, vg, *rest, **group_kwargs)

        split = "b n (h d) -> b h n d"
        grouped = grouped_self_attention(rearrange(q, split, h=heads), rearrange(k, split, h=heads),
                                         rearrange(v, split, h=heads), forward.grid.self_plan, attention_fn=per_group)
        grouped = rearrange(grouped, "b h n d -> b n (h d)")
        if self.settings.self_strength >= 1.0:
            return grouped
        return blend(self._call(func, q, k, v, *rest, **kwargs), grouped, self.settings.self_strength)

    def _cross_rows(self, forward: _Forward, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The token rows inside some box and what each may see ([n] long, [n, text + local] bool), on
        ``device``; built once per grid, text length and device, not in every block and step."""
        key = (id(forward.grid), forward.text_len, device)
        if key not in self._cross:
            rows = forward.grid.box_rows
            visible = cross_visibility(forward.grid.in_box.index_select(0, rows), self.key_owner, forward.text_len)
            self._cross[key] = rows.to(device), visible.to(device)
        return self._cross[key]

    def _masked_cross(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stock: torch.Tensor, heads: int,
                      forward: _Forward) -> torch.Tensor:
        rows, visible = self._cross_rows(forward, q.device)
        if rows.numel() == 0:
            return stock
        cond = forward.cond_index
        split = "b n (h d) -> b h n d"
        q_rows = rearrange(q.index_select(0, cond).index_select(1, rows), split, h=heads)
        k_cond = rearrange(k.index_select(0, cond), split, h=heads)
        v_cond = rearrange(v.index_select(0, cond), split, h=heads)
        masked = masked_cross_attention_explicit(q_rows, k_cond, v_cond, visible)
        masked = rearrange(masked, "b h n d -> b n (h d)").to(stock.dtype)
        out = stock.clone()
        part = out.index_select(0, cond)
        part[:, rows] = blend(part[:, rows], masked, self.settings.cross_strength)
        out.index_copy_(0, cond, part)
        return out

    # ---------------------------------------------------------------- dual-clock guidance
    def sampler_sample_wrapper(self, executor: Callable, guider: Any, sigmas: torch.Tensor, extra_args: dict,
                               callback: Any, noise: torch.Tensor, latent_image: Any = None, denoise_mask: Any = None,
                               disable_pbar: bool = False) -> torch.Tensor:
        if self.reference is not None:
            # A second expert pass runs without noise (KSamplerAdvanced add_noise off): keep the
            # first pass's noise, which is what its latent was noised with.
            if self._noise is None or bool(noise.abs().amax() > 0):
                self._noise = noise.detach()
            self._sigmas = sigmas.detach().to("cpu", torch.float64)
        return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)

    def clocks_at(self, sigma: float) -> tuple[bool, bool]:
        """(pin objects, pin background) for a model call at ``sigma``."""
        schedule = self.schedule if self.schedule is not None else self._sigmas
        if self.settings.clock is None or schedule is None:
            return False, False
        schedule = schedule.to("cpu", torch.float64)
        return self.settings.clock.pins(step_index(schedule, sigma), schedule.numel() - 1, sigma)

    def apply_model_wrapper(self, executor: Callable, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None,
                            c_crossattn: Any = None, control: Any = None, transformer_options: dict | None = None,
                            **kwargs: Any) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        if self.reference is None or self._noise is None:
            return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        sigma = float(t.max())
        pin_objects, pin_background = self.clocks_at(sigma)
        if not (pin_objects or pin_background):
            return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        if tuple(self.reference.shape[1:]) != tuple(x.shape[1:]):
            raise TTMInputError("latent", f"the patch was made for a {tuple(self.reference.shape[1:])} latent but the "
                                f"sampler runs a {tuple(x.shape[1:])} one",
                                "connect the same latent to Patch Model as to the sampler")
        chunks = max(1, x.shape[0] // self._noise.shape[0])
        noise = self._noise.to(device=x.device, dtype=x.dtype).repeat(chunks, 1, 1, 1, 1)[:x.shape[0]]
        reference = self.reference.to(device=x.device, dtype=x.dtype)
        x = pin(x, noise_to(reference, noise, sigma), self.foreground, pin_objects, pin_background, self.frame_weight)
        denoised = executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        # As KSamplerX0Inpaint does: the pinned part of the prediction is the reference itself.
        return pin(denoised, reference.expand_as(denoised), self.foreground, pin_objects, pin_background,
                   self.frame_weight)

    # ---------------------------------------------------------------- install
    def install(self, model: Any) -> Any:
        """A clone of ``model`` with the patch (the input MODEL is left untouched)."""
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        previous = options.get("optimized_attention_override")
        if previous is not None and previous is not self.attention_override:
            self.previous_override = previous
        options["optimized_attention_override"] = self.attention_override
        replaced = options.get("patches_replace", {}).get("dit", {})
        for index in range(len(model.model.diffusion_model.blocks)):
            patched.set_model_patch_replace(self.block_patch(index, replaced.get(("double_block", index))), "dit",
                                            "double_block", index)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY,
                                     self.diffusion_model_wrapper)
        if self.reference is not None:
            patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY,
                                         self.sampler_sample_wrapper)
            patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, self.apply_model_wrapper)
        return patched


def build_reference(model: Any, vae: Any, image: torch.Tensor, trajectory: Trajectory, latent: torch.Tensor,
                    geometry: VideoGeometry, progress: Callable[[int, int], None] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cut-and-drag reference for the sampler's latent: (reference latent in the model's
    space [1, C, T, h, w], foreground [T, h, w], frame weights [T])."""
    frames, lat_h, lat_w = latent.shape[2], latent.shape[3], latent.shape[4]
    ratio = geometry.spatial_ratio
    height, width, num_frames = lat_h * ratio, lat_w * ratio, 4 * (frames - 1) + 1
    check_first_frame(image, trajectory)
    fitted = fit_trajectory(trajectory, height, width, num_frames)
    video = cut_and_drag(crop_image(image, height, width), fitted, progress=progress)
    video = resample_video(video, height, width, num_frames)
    encoded = vae.encode(video[..., :3])
    reference = model.model.process_latent_in(encoded.float()).cpu()
    if tuple(reference.shape[1:]) != tuple(latent.shape[1:]):
        raise TTMInputError("vae", f"the VAE makes a {tuple(reference.shape[1:])} latent but the sampler's is "
                            f"{tuple(latent.shape[1:])}", "use the VAE that belongs to this Wan model")
    foreground = latent_foreground(fitted, geometry, num_frames, height, width)
    weight = torch.ones(frames)
    if geometry is WAN22_TI2V:
        weight[0] = 0.0  # TI2V's first latent frame is the start image, pinned by ComfyUI itself
    return reference, foreground, weight


def patch_wan(model: Any, clip: Any, trajectory: Trajectory, settings: PatchSettings, vae: Any = None,
              image: torch.Tensor | None = None, latent: torch.Tensor | None = None, model_2: Any = None,
              progress: Callable[[int, int], None] | None = None) -> tuple[Any, Any | None, WanPatch]:
    """Patch a Wan MODEL (and optionally its second expert) for Through-The-Mask Stage 2.

    Guidance needs ``vae``, ``image`` and ``latent`` (the sampler's latent, for sizes); without
    them only masked attention is patched in.
    """
    geometry, num_blocks, i2v_cross = check_wan(model)
    if model_2 is not None:
        geometry_2, blocks_2, _ = check_wan(model_2, "model_2")
        if geometry_2 is not geometry or blocks_2 != num_blocks:
            raise TTMInputError("model_2", "the second model is not the other expert of the same Wan model",
                                "connect the high-noise expert to model and the low-noise one to model_2")
    reference = foreground = weight = None
    clock = settings.clock
    if clock is not None and (vae is None or image is None or latent is None):
        LOG.info("Through-The-Mask: no VAE / image / latent connected, so dual-clock guidance is off")
        clock = None
    if clock is not None:
        reference, foreground, weight = build_reference(model, vae, image, trajectory, latent, geometry, progress)
    states, owners = encode_local_prompts(clip, trajectory.objects.prompts)
    sampling = model.get_model_object("model_sampling")
    sigma_range = (sampling.percent_to_sigma(settings.start_percent), sampling.percent_to_sigma(settings.end_percent))
    patch = WanPatch(trajectory, states, owners, dataclasses.replace(settings, clock=clock), geometry, num_blocks,
                     i2v_cross, sigma_range, reference, foreground, weight)
    LOG.info("Through-The-Mask: %d objects, masked attention in blocks 0..%d of %d (self %.2f, cross %.2f)%s",
             trajectory.objects.count, patch.num_blocks - 1, num_blocks, settings.self_strength,
             settings.cross_strength, ", dual-clock guidance on" if reference is not None else "")
    return patch.install(model), (patch.install(model_2) if model_2 is not None else None), patch
