"""Through-The-Mask Stage 2 on ComfyUI's own Wan models, as a model patch.

ComfyUI's Wan (comfy/ldm/wan/model.py) honours, per forward: DIFFUSION_MODEL wrappers, block
replacement patches (``patches_replace["dit"][("double_block", i)]``) and an attention override
(``transformer_options["optimized_attention_override"]``) that every attention call goes
through. The patch, on a clone of the user's MODEL:

* DIFFUSION_MODEL wrapper, every forward: maps the trajectory onto this forward's token grid
  (cached per latent shape) and installs this forward's attention override on the forward's OWN
  copy of the options, wrapping whatever override is current at that moment (another pack's, or
  core's Model Attention Backend / Model Sparse Attention, whichever node order the user has):
  ours is then the outermost for this forward and sees every attention call. Nothing is added to
  the model's inputs: the text context stays exactly the user's.
* block patches on every block: tell the override which block a call belongs to (core 0.8+ also
  writes ``block_index``, used when another node replaced our block patch).
* the override routes by what a call IS, never by how many calls came before:
  - self-attention (q, k, v of one length, the video's token count) of a masked block runs once
    per object group through the previous override / the attention function ComfyUI chose
    (exact, and it keeps flash/sage speed);
  - the text cross-attention (keys of the text context's length) of a masked block becomes the
    joint masked cross-attention on the conditional rows: the stock text keys plus the block's
    own projection of the local prompts (``cross_attn.k/v`` of ``text_embedding(local)``), a
    small explicit mask (Through-The-Mask Sec. 3.2, M_cross from per-frame boxes);
  - everything else passes through unchanged.
  Where masked attention cannot run as planned (another input lengthens the token sequence,
  another override consumed a block's self-attention, text and image contexts of equal length)
  the call passes through unchanged and the log says why, once.
* dual-clock guidance (``native.guidance``): SAMPLER_SAMPLE + APPLY_MODEL wrappers.
* a trained checkpoint (``native.trained``): the widened patch embedding as an object patch of the
  clone, the label latents appended to ``x`` and the checkpoint's new masked layers hooked into
  the first K blocks for each forward (instead of the training-free override).

Strength 0, no object in view, or a sigma outside the window give exactly the unpatched output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import comfy.patcher_extension
import torch
from einops import rearrange

from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.fit import fit_trajectory
from ..ttm_core.stage2.attention.grids import VideoGeometry, token_grid
from ..ttm_core.stage2.attention.kernels import grouped_self_attention, masked_cross_attention_explicit
from ..ttm_core.stage2.attention.plan import Partition, self_groups
from ..ttm_core.stage2.attention.routing import blend, cond_rows, cross_visibility
from ..ttm_core.stage2.settings import Stage2Settings
from ..ttm_core.stage2.trained import TrainedWeights, trained_masking
from ..ttm_core.types import ProgressFn, Trajectory
from .guidance import DualClockGuide, build_reference
from .trained import TrainedWan, build_condition, check_native
from .wan import WanInfo, check_wan, encode_local_prompts

LOG = logging.getLogger(__name__)
KEY = "through_the_mask"
_BLOCK = KEY + ".block"


@dataclass(frozen=True)
class _Grid:
    """The trajectory on one latent shape's token grid (cached per shape)."""

    num_tokens: int
    ids: torch.Tensor  # int64 [N] object id per token, 0 = background
    self_plan: Partition
    in_box: torch.Tensor  # bool [N, L]
    box_rows: torch.Tensor  # int64 rows inside at least one box


def _tensor(value: Any) -> torch.Tensor:
    """A plain tensor from an attention argument (newer ComfyUI may hand in an AttentionTensorContainer,
    a single-owner wrapper whose ``take()`` returns the tensor)."""
    if isinstance(value, torch.Tensor):
        return value
    take = getattr(value, "take", None)
    if callable(take):
        return take()
    raise TypeError(f"attention argument of type {type(value).__name__}")


@dataclass(eq=False)
class _Forward:
    """One forward of the model: the routing data and this forward's attention override.

    Made by the DIFFUSION_MODEL wrapper and dropped with the forward's options: nothing here
    outlives the forward.
    """

    patch: WanPatch
    grid: _Grid
    model: Any  # the WanModel (diffusion_model) of this forward: its blocks project the local prompts
    text_len: int
    image_len: int | None
    cond_index: torch.Tensor  # long [n_cond]: the conditional rows of the batch, on the model's device
    has_cond: bool
    previous: Callable | None
    self_done: set[int] = field(default_factory=set)  # masked blocks whose masked self-attention ran
    _local: torch.Tensor | None = None

    def passthrough(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def local_context(self, like: torch.Tensor) -> torch.Tensor:
        """``[1, M, dim]``: the local prompts through the model's own ``text_embedding`` (as the global
        prompt goes through it), once per forward."""
        if self._local is None:
            states = self.patch.local_states.to(device=like.device, dtype=like.dtype)
            with torch.no_grad():
                self._local = self.model.text_embedding(states[None])
        return self._local

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The attention override: ``override(func, q, k, v, [heads,] ..., **kwargs)``."""
        if len(args) < 3:
            return self.passthrough(func, *args, **kwargs)
        q, k, v = (_tensor(a) for a in args[:3])
        rest = args[3:]
        options = kwargs.get("transformer_options") or {}
        block = options.get(_BLOCK, options.get("block_index"))
        patch = self.patch
        if not isinstance(block, int) or block >= patch.num_blocks:
            return self.passthrough(func, q, k, v, *rest, **kwargs)
        if k.shape[1] == q.shape[1] and v.shape[1] == q.shape[1]:  # self-attention: one sequence
            if patch.settings.masking.self_strength == 0:
                return self.passthrough(func, q, k, v, *rest, **kwargs)
            if q.shape[1] != self.grid.num_tokens:
                patch.note(f"the self-attention sequence has {q.shape[1]} tokens but the trajectory's token grid "
                           f"{self.grid.num_tokens} (another input adds tokens, e.g. reference or context latents)")
                return self.passthrough(func, q, k, v, *rest, **kwargs)
            self.self_done.add(block)
            return self._masked_self(func, q, k, v, rest, kwargs)
        if k.shape[1] != self.text_len:  # image cross-attention (I2V), or a call we do not know
            return self.passthrough(func, q, k, v, *rest, **kwargs)
        stock = self.passthrough(func, q, k, v, *rest, **kwargs)
        if patch.settings.masking.cross_strength == 0 or not self.has_cond:
            return stock
        if self.image_len == self.text_len:
            patch.note(f"the text and the image contexts both have {self.text_len} tokens, so the text "
                       "cross-attention cannot be told apart: masked cross-attention is off")
            return stock
        if q.shape[1] != self.grid.num_tokens:
            patch.note(f"the cross-attention queries are {q.shape[1]} tokens but the trajectory's token grid "
                       f"{self.grid.num_tokens}")
            return stock
        if patch.settings.masking.self_strength > 0 and block not in self.self_done:
            patch.note(f"the self-attention of masked block {block} did not reach the patch (another attention "
                       "override computed it): masked cross-attention is skipped in such blocks")
            return stock
        heads = kwargs["heads"] if "heads" in kwargs else rest[0]
        return self._masked_cross(block, q, k, v, stock, heads)

    def _masked_self(self, func: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rest: tuple,
                     kwargs: dict) -> torch.Tensor:
        heads = kwargs["heads"] if "heads" in kwargs else rest[0]
        group_kwargs = dict(kwargs, skip_reshape=True, skip_output_reshape=True)

        def per_group(qg: torch.Tensor, kg: torch.Tensor, vg: torch.Tensor) -> torch.Tensor:
            return self.passthrough(func, qg, kg, vg, *rest, **group_kwargs)

        split = "b n (h d) -> b h n d"
        grouped = grouped_self_attention(rearrange(q, split, h=heads), rearrange(k, split, h=heads),
                                         rearrange(v, split, h=heads), self.grid.self_plan, attention_fn=per_group)
        grouped = rearrange(grouped, "b h n d -> b n (h d)")
        strength = self.patch.settings.masking.self_strength
        if strength >= 1.0:
            return grouped
        return blend(self.passthrough(func, q, k, v, *rest, **kwargs), grouped, strength)

    def _masked_cross(self, block: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stock: torch.Tensor,
                      heads: int) -> torch.Tensor:
        rows, visible = self.patch.cross_rows(self.grid, self.text_len, q.device)
        if rows.numel() == 0:
            return stock
        cross = self.model.blocks[block].cross_attn
        local = self.local_context(q)
        with torch.no_grad():
            k_local = cross.norm_k(cross.k(local)).to(k.dtype)
            v_local = cross.v(local).to(v.dtype)
        cond = self.cond_index
        split = "b n (h d) -> b h n d"
        keys = torch.cat([k.index_select(0, cond), k_local.expand(cond.numel(), -1, -1)], dim=1)
        values = torch.cat([v.index_select(0, cond), v_local.expand(cond.numel(), -1, -1)], dim=1)
        q_rows = rearrange(q.index_select(0, cond).index_select(1, rows), split, h=heads)
        masked = masked_cross_attention_explicit(q_rows, rearrange(keys, split, h=heads),
                                                 rearrange(values, split, h=heads), visible)
        masked = rearrange(masked, "b h n d -> b n (h d)").to(stock.dtype)
        out = stock.clone()
        part = out.index_select(0, cond)
        part[:, rows] = blend(part[:, rows], masked, self.patch.settings.masking.cross_strength)
        out.index_copy_(0, cond, part)
        return out


class WanPatch:
    """What one Patch Model (or the one-node path) patches into a Wan model (one or two experts).

    Holds only what the patch was made from and caches derived from it (token grids per latent
    shape, visibility masks per device); every forward builds its own routing (``_Forward``).
    ComfyUI 0.3.75 deep-copies model options on every clone; the patch is shared, not copied.
    """

    def __init__(self, trajectory: Trajectory, local_states: torch.Tensor, key_owner: torch.Tensor,
                 settings: Stage2Settings, info: WanInfo, sigma_range: tuple[float, float],
                 guide: DualClockGuide | None = None, trained: TrainedWan | None = None) -> None:
        self.trajectory = trajectory
        self.local_states = local_states
        self.key_owner = key_owner
        self.settings = settings
        self.geometry: VideoGeometry = info.geometry
        k = settings.masking.num_blocks
        self.num_blocks = info.default_num_blocks if k is None else k
        if self.num_blocks > info.num_blocks:
            raise TTMInputError("masked_blocks", f"{self.num_blocks} masked blocks but the model has "
                                f"{info.num_blocks}", f"use at most {info.num_blocks} (0 = a quarter of them)")
        self.sigma_start, self.sigma_end = sigma_range
        self.guide = guide
        self.trained = trained
        self._grids: dict[tuple[int, int, int], _Grid | None] = {}
        self._cross: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._noted: set[str] = set()

    def __deepcopy__(self, memo: dict) -> WanPatch:
        return self

    def note(self, why: str) -> None:
        """Log, once per patch, why masked attention passed a call through."""
        if why not in self._noted:
            self._noted.add(why)
            LOG.warning("Through-The-Mask: %s; those calls use stock attention", why)

    # ---------------------------------------------------------------- derived data (cached)
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

    def cross_rows(self, grid: _Grid, text_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The token rows inside some box and what each may see ([n] long, [n, text + local] bool), on
        ``device``; built once per grid, text length and device, not in every block and step."""
        key = (id(grid), text_len, device)
        if key not in self._cross:
            rows = grid.box_rows
            visible = cross_visibility(grid.in_box.index_select(0, rows), self.key_owner, text_len)
            self._cross[key] = rows.to(device), visible.to(device)
        return self._cross[key]

    def attention_on(self, sigma: float | None) -> bool:
        masking = self.settings.masking
        if not masking.active or self.num_blocks == 0:
            return False
        return sigma is None or self.sigma_end <= sigma <= self.sigma_start

    # ---------------------------------------------------------------- wrappers and patches
    def diffusion_model_wrapper(self, executor: Callable, x: torch.Tensor, timestep: torch.Tensor,
                                context: torch.Tensor, clip_fea: Any = None, time_dim_concat: Any = None,
                                transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        sigmas = options.get("sigmas")
        sigma = float(sigmas.max()) if isinstance(sigmas, torch.Tensor) else None
        if self.trained is not None:
            return self._trained_forward(executor, x, timestep, context, clip_fea, time_dim_concat, options, sigma,
                                         **kwargs)
        grid = self.grid_for(*x.shape[2:]) if self.attention_on(sigma) else None
        if grid is None:
            return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)
        options = dict(options)  # this forward's own options: the model's stored options stay untouched
        previous = options.get("optimized_attention_override")
        if isinstance(previous, _Forward):  # two Through-The-Mask patches on one model: the inner one runs
            self.note("two Through-The-Mask patches are applied to one model; only the one nearest the sampler runs")
            previous = previous.previous
        batch = context.shape[0]
        cond = cond_rows(options.get("cond_or_uncond", []), batch)  # on the CPU: no device sync per block
        image_len = int(clip_fea.shape[-2]) if clip_fea is not None else None
        forward = _Forward(self, grid, executor.class_obj, context.shape[1], image_len,
                           cond.nonzero().flatten().to(x.device), bool(cond.any()), previous)
        options["optimized_attention_override"] = forward
        return executor(x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)

    def _trained_forward(self, executor: Callable, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                         clip_fea: Any, time_dim_concat: Any, options: dict, sigma: float | None,
                         **kwargs: Any) -> torch.Tensor:
        """A forward of the trained model: label latents on the input channels, new layers in K blocks."""
        trained = self.trained
        assert trained is not None
        state = trained.state_for(*x.shape[2:]) if self.attention_on(sigma) else None
        widened = trained.widen(x)
        if state is None:
            return executor(widened, timestep, context, clip_fea, time_dim_concat, options, **kwargs)
        cond = cond_rows(options.get("cond_or_uncond", []), context.shape[0])
        with trained.layers_on(executor.class_obj, state, tuple(bool(c) for c in cond.tolist())):
            return executor(widened, timestep, context, clip_fea, time_dim_concat, options, **kwargs)

    def block_patch(self, index: int, previous: Callable | None) -> Callable:
        def patch(args: dict, extra: dict) -> dict:
            args = dict(args)
            args["transformer_options"] = {**args["transformer_options"], _BLOCK: index}
            if previous is not None:
                return previous(args, extra)
            return extra["original_block"](args)

        return patch

    def install(self, model: Any) -> Any:
        """A clone of ``model`` with the patch (the input MODEL is left untouched)."""
        patched = model.clone()
        replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for index in range(len(model.model.diffusion_model.blocks)):
            patched.set_model_patch_replace(self.block_patch(index, replaced.get(("double_block", index))), "dit",
                                            "double_block", index)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY,
                                     self.diffusion_model_wrapper)
        if self.guide is not None:
            patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY,
                                         self.guide.sampler_sample_wrapper)
            patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY,
                                         self.guide.apply_model_wrapper)
        if self.trained is not None:
            self.trained.install(patched)
        return patched


def patch_wan(model: Any, clip: Any, trajectory: Trajectory, settings: Stage2Settings, vae: Any = None,
              image: torch.Tensor | None = None, latent: torch.Tensor | None = None, model_2: Any = None,
              progress: ProgressFn | None = None, schedule: torch.Tensor | None = None,
              trained: TrainedWeights | None = None) -> tuple[Any, Any | None, WanPatch]:
    """Patch a Wan MODEL (and optionally its second expert) for Through-The-Mask Stage 2.

    Guidance needs ``vae``, ``image`` and ``latent`` (the sampler's latent, for sizes); without
    them only masked attention is patched in. ``schedule``: the full sigma schedule when the
    generation runs as several sampler calls (see ``guidance.DualClockGuide``). ``trained``: a Stage 2
    checkpoint of this base model (needs ``vae`` and ``latent`` for its label latents; no ``model_2``).
    """
    info = check_wan(model)
    if trained is not None:
        check_native(trained, model, info)
        if model_2 is not None:
            raise TTMInputError("model_2", "a trained checkpoint drives one Wan model, not two experts",
                                "disconnect model_2 (trained checkpoints are for Wan 2.1 I2V or Wan 2.2 TI2V-5B)")
        if vae is None or latent is None:
            raise TTMInputError("vae", "a trained checkpoint needs the VAE (and the latent size) to encode the "
                                "trajectory", "connect the Wan VAE")
        settings = replace(settings, masking=trained_masking(trained, settings.masking))
    if model_2 is not None:
        info_2 = check_wan(model_2, "model_2")
        if info_2.geometry is not info.geometry or info_2.num_blocks != info.num_blocks:
            raise TTMInputError("model_2", "the second model is not the other expert of the same Wan model",
                                "connect the high-noise expert to model and the low-noise one to model_2")
    clock = settings.guidance
    if clock is not None and (vae is None or image is None or latent is None):
        LOG.info("Through-The-Mask: no VAE / image / latent connected, so dual-clock guidance is off")
        clock = None
    guide = None
    if clock is not None:
        reference = build_reference(model, vae, image, trajectory, latent, info.geometry, settings.feather, progress)
        guide = DualClockGuide(reference, clock, schedule)
    states, owners = encode_local_prompts(clip, trajectory.objects.prompts)
    sampling = model.get_model_object("model_sampling")
    start, end = settings.masking.window
    sigma_range = (sampling.percent_to_sigma(start), sampling.percent_to_sigma(end))
    prepared = None
    if trained is not None and latent is not None:
        condition = build_condition(model, vae, trajectory, latent)
        prepared = TrainedWan(trained, model, info, condition, trajectory, states, owners, settings.masking)
    patch = WanPatch(trajectory, states, owners, replace(settings, guidance=clock), info, sigma_range, guide,
                     prepared)
    LOG.info("Through-The-Mask: %d objects, masked attention in blocks 0..%d of %d (self %.2f, cross %.2f)%s",
             trajectory.objects.count, patch.num_blocks - 1, info.num_blocks, settings.masking.self_strength,
             settings.masking.cross_strength, ", dual-clock guidance on" if guide is not None else "")
    return patch.install(model), (patch.install(model_2) if model_2 is not None else None), patch
