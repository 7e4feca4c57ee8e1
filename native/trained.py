"""A trained Stage 2 checkpoint (``ttm_core.stage2.trained``) on ComfyUI's own Wan model.

The same file the diffusers backend loads runs here, on the user's MODEL (a clone, nothing of the
input changes):

* the widened patch embedding: ComfyUI builds the Wan from the stock file, so its
  ``patch_embedding`` takes the stock channels; the clone gets the checkpoint's widened one as an
  object patch (``diffusion_model.patch_embedding``, applied and undone by ComfyUI's ModelPatcher
  when it loads / unloads the clone), computed as stock channels + extra channels
  (``trained.SplitPatchEmbedding``: an untrained checkpoint gives the stock numbers exactly);
* the condition: the colour-coded label video (``trained.condition_video``) encoded once by the
  user's VAE into the model's latent space, appended to ``x`` in the DIFFUSION_MODEL wrapper of
  every forward whose input has the stock channel count (routing by shapes, as the diffusers hook);
* the new masked layers of the first K blocks: forward hooks on ``blocks[i].self_attn`` and
  ``blocks[i].cross_attn`` registered for one forward and removed in ``finally``. They take the
  module's input (the block's normalised, modulated hidden states, what diffusers' processors
  give ``attn1`` / ``attn2``) and add ``strength * layer(x)`` to its output, exactly as
  ``families.wan.WanSelfProcessor`` / ``WanCrossProcessor`` do in new-layers mode: masked self
  with Wan's RoPE of this forward, masked cross over the local prompts through the model's own
  ``text_embedding``, on the conditional rows only;
* any other trained tensor (full fine-tune), renamed from diffusers' names to ComfyUI's with
  diffusers' own converter, as "set" weight patches of the clone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from comfy.ldm.flux.math import apply_rope1
from einops import rearrange
from torch import nn

from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.fit import fit_trajectory, resample_labels
from ..ttm_core.stage2.attention.grids import token_grid
from ..ttm_core.stage2.attention.layers import (
    MaskedBlockLayers,
    MaskedCrossAttentionLayer,
    MaskedLayers,
    MaskedSelfAttentionLayer,
)
from ..ttm_core.stage2.attention.processors import rows_only
from ..ttm_core.stage2.attention.state import MaskedAttentionPlan, MaskedAttentionState
from ..ttm_core.stage2.settings import MaskedAttention
from ..ttm_core.stage2.trained import (
    TRAINED_VARIANTS,
    BaseShape,
    SplitPatchEmbedding,
    Stage,
    TrainedWeights,
    check_base,
    condition_video,
    widen_patch_embedding,
)
from ..ttm_core.types import Trajectory
from .wan import WanInfo

LOG = logging.getLogger(__name__)
PATCH_EMBEDDING = "diffusion_model.patch_embedding"


class NativePatchEmbedding(SplitPatchEmbedding):
    """The widened embedding as ComfyUI's Wan carries it: ``weight`` shows the STOCK input channels.

    ComfyUI reads a Wan's input channel count from ``patch_embedding.weight.shape[1]``
    (``model_base.WAN21.concat_cond``) and would otherwise fill the extra channels with its own
    image concat (zeros for TI2V) before the forward; the label latents are appended by the
    DIFFUSION_MODEL wrapper instead. The computation uses the full widened weight.
    """

    @property
    def weight(self) -> torch.Tensor:
        return self.wide.weight[:, : self.stock_channels]


def _stock_embedding(model: Any) -> nn.Conv3d:
    """The stock patch embedding as a float32 CPU ``nn.Conv3d`` (also when a trained clone's patch is applied)."""
    module = model.get_model_object(PATCH_EMBEDDING)
    if isinstance(module, SplitPatchEmbedding):
        channels, weight = module.stock_channels, module.wide.weight[:, : module.stock_channels]
        source = module.wide
    else:
        channels, weight, source = int(module.in_channels), module.weight, module
    plain = nn.Conv3d(channels, int(source.out_channels), source.kernel_size, stride=source.stride,
                      padding=source.padding, bias=source.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(weight.detach().to("cpu", torch.float32))
        if source.bias is not None:
            plain.bias.copy_(source.bias.detach().to("cpu", torch.float32))
    return plain


def native_variant(info: WanInfo) -> str:
    """The ``families.VARIANTS`` key of a native Wan (Wan 2.2 A14B experts have no image cross-attention)."""
    if info.geometry.spatial_ratio == 16:
        return "wan2.2-ti2v-5b"
    return "wan2.1-i2v" if info.i2v_cross else "wan2.2-i2v-a14b"


def native_base_shape(model: Any) -> BaseShape:
    """The ``BaseShape`` of a native Wan MODEL, read from its modules (as ``trained.base_shape`` reads diffusers')."""
    diffusion = model.model.diffusion_model
    stock_channels = int(_stock_embedding(model).in_channels)
    patch = tuple(int(p) for p in diffusion.patch_size)
    return BaseShape("wan", stock_channels, int(diffusion.dim), len(diffusion.blocks), (patch[0], patch[1], patch[2]),
                     int(diffusion.text_embedding[0].in_features))


def check_native(weights: TrainedWeights, model: Any, info: WanInfo, input_name: str = "trained",
                 stage: Stage = 2) -> None:
    """Refuse a checkpoint of another stage, variant or base shape for this native Wan (naming both)."""
    if not isinstance(weights, TrainedWeights):
        raise TTMInputError(input_name, f"got a {type(weights).__name__}, not a trained checkpoint",
                            "connect Trained Checkpoint Loader (Through-The-Mask)")
    variant = native_variant(info)
    if variant not in TRAINED_VARIANTS:
        raise TTMInputError(input_name, f"trained checkpoints run on {', '.join(TRAINED_VARIANTS)}, the model is "
                            f"{variant} (one of two experts)", "load the base model the checkpoint was trained on")
    check_base(weights, native_base_shape(model), stage, variant, input_name)


def wan_layers(weights: TrainedWeights, diffusion: Any, input_name: str = "trained") -> MaskedLayers:
    """The checkpoint's masked layers for ComfyUI's WanModel (the shapes ``families.masked_layers`` gives
    diffusers' Wan: width ``dim``, its heads, local prompts at width ``dim`` after ``text_embedding``)."""
    dim, heads = int(diffusion.dim), int(diffusion.num_heads)
    blocks = [MaskedBlockLayers(MaskedSelfAttentionLayer(dim, heads), MaskedCrossAttentionLayer(dim, dim, heads))
              for _ in range(weights.config.num_blocks)]
    layers = MaskedLayers("wan", blocks)
    try:
        layers.load_state_dict(weights.section("layers"), strict=True)
    except RuntimeError as err:
        raise TTMInputError(input_name, f"{Path(weights.source).name}: its masked layers do not fit the model "
                            f"({str(err).splitlines()[0]})", "use a checkpoint trained on this base model") from err
    return layers.eval().requires_grad_(False)


def _comfy_names(diffusion: Any, names: list[str]) -> dict[str, str]:
    """diffusers parameter names -> ComfyUI's (``convert_wan_transformer_to_diffusers`` run on ComfyUI's names)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    comfy_keys = list(diffusion.state_dict().keys())
    converted = convert_wan_transformer_to_diffusers({key: key for key in comfy_keys})
    to_comfy = {diffusers_name: comfy_name for diffusers_name, comfy_name in converted.items()}
    return {name: to_comfy[name] for name in names if name in to_comfy}


def build_condition(model: Any, vae: Any, trajectory: Trajectory, latent: torch.Tensor) -> torch.Tensor:
    """The label video fitted to the sampler's latent (``[B, C, T, h, w]``), encoded by ``vae`` into the
    model's latent space: float32 ``[1, C, T, h, w]`` on the CPU."""
    from ..ttm_core.stage2.families.wan import WAN22_TI2V

    frames, lat_h, lat_w = latent.shape[2], latent.shape[3], latent.shape[4]
    ratio = WAN22_TI2V.spatial_ratio if latent.shape[1] == 48 else 8
    height, width, num_frames = lat_h * ratio, lat_w * ratio, 4 * (frames - 1) + 1
    fitted = fit_trajectory(trajectory, height, width, num_frames)
    # Ids resized (nearest), then coloured, as in training (a resized colour video blends edge colours).
    labels = resample_labels(fitted.labels, height, width, num_frames)
    video = condition_video(labels, fitted.objects.ids)
    encoded = vae.encode(video)
    condition = model.model.process_latent_in(encoded.float()).cpu()
    if tuple(condition.shape[2:]) != tuple(latent.shape[2:]):
        raise TTMInputError("vae", f"the VAE makes a {tuple(condition.shape[1:])} latent but the sampler's is "
                            f"{tuple(latent.shape[1:])}", "use the VAE that belongs to this Wan model")
    return condition


class TrainedInputs:
    """A trained checkpoint's input side on one native Wan MODEL, for one generation's condition.

    What both stages change at the model's input: the widened patch embedding (an object patch),
    any other trained tensor (weight patches), and the condition latents appended to ``x``.

    Args:
        weights: the checkpoint (``trained.load_trained``).
        model: the user's Wan MODEL (ModelPatcher), checked with ``check_native`` for ``stage``.
        info: ``wan.check_wan(model)``.
        condition: float ``[1, C, T, h, w]`` in the model's latent space (Stage 2: ``build_condition``;
            Stage 1: the VAE latents of ``motion.trained.stage1_condition``).
        stage: the checkpoint's stage.
    """

    def __init__(self, weights: TrainedWeights, model: Any, info: WanInfo, condition: torch.Tensor, stage: Stage,
                 input_name: str = "trained") -> None:
        check_native(weights, model, info, input_name, stage)
        config = weights.config
        if condition.ndim != 5 or condition.shape[:2] != (1, config.condition_channels):
            raise TTMInputError("vae", f"the condition latents are {tuple(condition.shape)}; the checkpoint expects "
                                f"{config.condition_channels} channels", "use the VAE of the checkpoint's base model")
        self.weights = weights
        self.condition = condition
        self.geometry = info.geometry
        self.stock_channels = config.base.in_channels
        plain = _stock_embedding(model)
        wide = widen_patch_embedding(plain, config.condition_channels)
        tensors = weights.section("model")
        with torch.no_grad():
            for name, param in wide.named_parameters():
                key = f"patch_embedding.{name}"
                if key in tensors:
                    if tensors[key].shape != param.shape:
                        raise TTMInputError(input_name, f"{key} is {tuple(tensors[key].shape)} in the checkpoint, "
                                            f"{tuple(param.shape)} in the widened model", "use a matching checkpoint")
                    param.copy_(tensors[key].to(torch.float32))
        self.embedding = NativePatchEmbedding(wide, self.stock_channels)
        diffusion = model.model.diffusion_model
        others = [name for name in tensors if not name.startswith("patch_embedding.")]
        names = _comfy_names(diffusion, others) if others else {}
        unknown = sorted(set(others) - set(names))
        if unknown:
            raise TTMInputError(input_name, f"{Path(weights.source).name} holds tensors this Wan does not have: "
                                f"{', '.join(unknown[:3])}", "use a checkpoint trained on this base model")
        self.weight_patches = {f"diffusion_model.{names[name]}": ("set", (tensors[name],)) for name in others}
        LOG.info("Through-The-Mask: trained Stage %d %s (step %d, K = %d, +%d input channels)", stage,
                 Path(weights.source).name, config.step, config.num_blocks, config.condition_channels)

    def __deepcopy__(self, memo: dict) -> TrainedInputs:
        return self

    # ---------------------------------------------------------------- what the clone gets
    def install(self, patched: Any) -> None:
        """Object-patch the widened embedding and weight-patch other trained tensors into ``patched`` (a clone)."""
        patched.add_object_patch(PATCH_EMBEDDING, self.embedding)
        if self.weight_patches:
            patched.add_patches(self.weight_patches, 1.0, 1.0)

    def widen(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C_stock, T, h, w]`` with the condition latents appended (inputs of another width pass
        unchanged)."""
        if x.shape[1] != self.stock_channels:
            return x
        cond = self.condition.to(device=x.device, dtype=x.dtype)
        if cond.shape[2:] != x.shape[2:]:
            raise TTMInputError("trained", f"the condition latents {tuple(cond.shape)} do not match the model input "
                                f"{tuple(x.shape)}", "sample at the size and length the node was given")
        return torch.cat([x, cond.expand(x.shape[0], -1, -1, -1, -1)], dim=1)

    def diffusion_model_wrapper(self, executor: Callable, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """ComfyUI DIFFUSION_MODEL wrapper of a model with only the input side (Stage 1): ``x`` widened."""
        return executor(self.widen(x), *args, **kwargs)


class TrainedWan(TrainedInputs):
    """A Stage 2 checkpoint prepared for one native Wan MODEL and one generation's condition: the input
    side (``TrainedInputs``) and the new masked layers of the first K blocks.

    Args:
        weights, model, info, condition: as ``TrainedInputs`` (``condition`` from ``build_condition``).
        trajectory: the trajectory (its objects' order is the local prompts' order).
        local_states: float32 ``[M, D]`` concatenated local prompts; ``key_owner`` int64 ``[M]``
            (1-based object of each key), as ``wan.encode_local_prompts`` gives them.
        masking: the masked attention (``trained.trained_masking``: the checkpoint's K, new layers).
    """

    def __init__(self, weights: TrainedWeights, model: Any, info: WanInfo, condition: torch.Tensor,
                 trajectory: Trajectory, local_states: torch.Tensor, key_owner: torch.Tensor,
                 masking: MaskedAttention, input_name: str = "trained") -> None:
        super().__init__(weights, model, info, condition, 2, input_name)
        self.trajectory = trajectory
        self.masking = masking
        self.layers = wan_layers(weights, model.model.diffusion_model, input_name)
        prompts = []
        for index in range(1, trajectory.objects.count + 1):
            rows = (key_owner == index).nonzero().flatten()
            if rows.numel():
                prompts.append(local_states.index_select(0, rows))
        self.local_prompts = tuple(prompts) if len(prompts) == trajectory.objects.count else ()
        self._states: dict[tuple[int, int, int], MaskedAttentionState | None] = {}
        self._local: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def __deepcopy__(self, memo: dict) -> TrainedWan:
        return self

    def state_for(self, frames: int, height: int, width: int) -> MaskedAttentionState | None:
        """The masked-attention state of a ``[*, *, frames, height, width]`` latent (None: no object in view)."""
        key = (frames, height, width)
        if key not in self._states:
            rows, cols = -(-height // 2), -(-width // 2)
            ratio = self.geometry.spatial_ratio
            num_frames = 4 * (frames - 1) + 1
            fitted = fit_trajectory(self.trajectory, rows * 2 * ratio, cols * 2 * ratio, num_frames)
            grid = token_grid(fitted, self.geometry, num_frames, rows * 2 * ratio, cols * 2 * ratio)
            state = None
            if bool((grid.ids > 0).any()):
                state = MaskedAttentionState(MaskedAttentionPlan(grid, self.local_prompts, self.masking))
            self._states[key] = state
        return self._states[key]

    def _local_context(self, diffusion: Any, like: torch.Tensor) -> torch.Tensor:
        """``[M, dim]``: the local prompts through the model's ``text_embedding`` (as the global prompt goes)."""
        key = (str(like.device), like.dtype)
        if key not in self._local:
            tokens = torch.cat(self.local_prompts).to(device=like.device, dtype=like.dtype)
            with torch.no_grad():
                self._local[key] = diffusion.text_embedding(tokens[None])[0]
        return self._local[key]

    @contextmanager
    def layers_on(self, diffusion: Any, state: MaskedAttentionState, cond_rows: tuple[bool, ...]) -> Iterator[None]:
        """The new layers in the first K blocks of ``diffusion`` for one forward (hooks removed in ``finally``).

        Args:
            state: this latent shape's masked-attention state.
            cond_rows: per batch row, whether it is conditional (local prompts reach only those).
        """
        state.cross_rows = cond_rows
        layers = self.layers
        handles = []
        try:
            for index, block in enumerate(diffusion.blocks[: layers.num_blocks]):
                own = layers.blocks[index]
                handles.append(block.self_attn.register_forward_hook(self._self_hook(own, state), with_kwargs=True))
                if own.masked_cross is not None and self.local_prompts:
                    handles.append(block.cross_attn.register_forward_hook(self._cross_hook(own, state, diffusion),
                                                                          with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _self_hook(self, own: MaskedBlockLayers, state: MaskedAttentionState):
        layer = own.masked_self

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            strength = state.self_strength
            x = args[0]
            freqs = args[1] if len(args) > 1 else kwargs["freqs"]
            if strength == 0.0 or x.shape[1] != state.plan.grid.num_tokens:
                return output
            state.calls[f"self_attn.{id(module)}"] += 1

            def rope(t: torch.Tensor) -> torch.Tensor:  # Wan's RoPE of this forward, on [B, H, N, D]
                return rearrange(apply_rope1(rearrange(t, "b h n d -> b n h d"), freqs), "b n h d -> b h n d")

            param = next(layer.parameters())
            if param.device != x.device:
                layer.to(x.device)
            extra = layer(x.to(param.dtype), state.video_self_plan(x.shape[1]), rope, state.backend)
            return output + strength * extra.to(output.dtype)

        return hook

    def _cross_hook(self, own: MaskedBlockLayers, state: MaskedAttentionState, diffusion: Any):
        layer = own.masked_cross
        assert layer is not None

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            strength = state.cross_strength
            x = args[0]
            batch, num_tokens = x.shape[:2]
            rows = state.cross_row_index(batch, x.device) if strength else None
            if strength == 0.0 or num_tokens != state.plan.grid.num_tokens or (rows is not None and not rows.numel()):
                return output
            state.calls[f"cross_attn.{id(module)}"] += 1
            param = next(layer.parameters())
            if param.device != x.device:
                layer.to(x.device)
            h = x.to(param.dtype)
            context = self._local_context(diffusion, h).to(h.dtype)[None].expand(batch, -1, -1)
            extra = layer(h, context, state.local_plan(num_tokens), state.backend).to(output.dtype)
            if rows is not None:
                extra = rows_only(extra, rows)
            return output + strength * extra

        return hook
