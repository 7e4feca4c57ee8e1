"""Trained Stage 2: the checkpoint format and how a checkpoint changes a loaded diffusers denoiser.

Through-The-Mask's trained Stage 2 (Sec. 3.2) conditions on the mask trajectory twice:

* **channel concatenation**: the colour-coded label video (``train.palette.colorize``) is encoded by
  the model's own VAE and concatenated to the denoiser's input channels, so the input patch
  embedding is widened by the VAE's latent channels; the new input channels start at zero, so an
  untrained checkpoint gives exactly the stock model;
* **new masked self- and cross-attention layers** in the first K blocks
  (``attention.layers.MaskedLayers``, zero-initialised output projections).

One checkpoint file serves training (``ttm-train``), the diffusers backend and the ComfyUI-native
Wan engine. It is a ``.safetensors`` file holding only the trained tensors:

=====================  ===============================================================
key                    tensor
=====================  ===============================================================
``layers.<k>``         ``MaskedLayers.state_dict()`` (``blocks.<i>.masked_self.*``, ...)
``model.<name>``       a trained tensor of the base denoiser by its diffusers parameter
                       name; always the widened patch embedding (``model.patch_embedding
                       .weight`` for Wan), plus whatever else was trained (full fine-tune)
=====================  ===============================================================

and, in the file's metadata under ``"ttm"``, the JSON of ``TrainedConfig`` (format, stage, family,
variant, the base model's shape, K, the condition channels, the palette, the trained groups, the
step). A checkpoint is refused, naming the file and the fix, when it is for another family, base
model shape, K or palette.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TTMInputError
from ..types import PretrainedModel
from .attention.layers import MaskedLayers
from .families import family_of, masked_layers
from .settings import MaskedAttention

logger = logging.getLogger(__name__)

FORMAT = "ttm-trained"
VERSION = 1
TRAINED_VARIANTS = ("wan2.1-i2v", "wan2.2-ti2v-5b", "cogvideox-1.0-i2v", "cogvideox-1.5-i2v")
"""Variants the trained path supports (one denoiser each; Wan 2.2 A14B's two experts would need two)."""
Stage = Literal[1, 2]


@dataclass(frozen=True)
class BaseShape:
    """What identifies a base denoiser for a checkpoint (read from its diffusers config).

    Attributes:
        family: ``Family.name`` (``"wan"``, ``"cogvideox"``).
        in_channels: the stock input channels (before widening).
        inner_dim: hidden width of the blocks.
        num_blocks: transformer blocks.
        patch_size: (t, h, w) patch of the input embedding.
        text_dim: width of the text-encoder states it reads.
    """

    family: str
    in_channels: int
    inner_dim: int
    num_blocks: int
    patch_size: tuple[int, int, int]
    text_dim: int

    def __post_init__(self) -> None:
        if min(self.in_channels, self.inner_dim, self.num_blocks, self.text_dim, *self.patch_size) < 1:
            raise ValueError(f"invalid base shape {self}")

    def describe(self) -> str:
        return (f"{self.family}, {self.in_channels} input channels, width {self.inner_dim}, {self.num_blocks} blocks, "
                f"patch {'x'.join(map(str, self.patch_size))}, text width {self.text_dim}")


def base_shape(model: PretrainedModel) -> BaseShape:
    """The ``BaseShape`` of a loaded (unwidened) diffusers denoiser."""
    family = family_of(model)
    config = model.config
    if family.name == "wan":
        patch = tuple(int(p) for p in config.patch_size)
        inner = int(config.num_attention_heads * config.attention_head_dim)
        return BaseShape("wan", int(config.in_channels), inner, len(model.blocks), (patch[0], patch[1], patch[2]),
                         int(config.text_dim))
    if family.name == "cogvideox":
        pt = config.patch_size_t or 1
        inner = int(config.num_attention_heads * config.attention_head_dim)
        return BaseShape("cogvideox", int(config.in_channels), inner, len(model.transformer_blocks),
                         (int(pt), int(config.patch_size), int(config.patch_size)), int(config.text_embed_dim))
    raise TTMInputError("model", f"the trained path does not support {family.name} models",
                        "use Wan 2.1 I2V, Wan 2.2 TI2V-5B or CogVideoX I2V")


@dataclass(frozen=True)
class TrainedConfig:
    """The metadata of a trained checkpoint (stored as JSON in the safetensors header).

    Attributes:
        stage: 2 (motion-to-video) or 1 (image + masks + c_motion -> mask video).
        variant: the base model's variant key (``families.VARIANTS``), e.g. ``"wan2.1-i2v"``.
        base: the base denoiser's shape.
        num_blocks: K, the blocks carrying new masked layers (0 for Stage 1).
        condition_channels: input channels appended to the stock ones (latent channels of each
            VAE-encoded condition video: Stage 2 the label video; Stage 1 the first frame and masks).
        palette: the label palette's name (``train.palette.PALETTE_NAME``).
        groups: the trained parameter groups (``"layers"``, ``"patch"``, ``"full"``, ``"lora"``).
        step: the optimisation step the tensors are from.
        format: always ``FORMAT``; version: ``VERSION``.
    """

    stage: Stage
    variant: str
    base: BaseShape
    num_blocks: int
    condition_channels: int
    palette: str
    groups: tuple[str, ...] = ("layers", "patch")
    step: int = 0
    format: str = FORMAT
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"not a Through-The-Mask checkpoint (format {self.format!r})")
        if self.variant not in TRAINED_VARIANTS:
            raise ValueError(f"variant {self.variant!r} is not one of {', '.join(TRAINED_VARIANTS)}")
        if self.stage not in (1, 2) or self.num_blocks < 0 or self.condition_channels < 1 or self.step < 0:
            raise ValueError(f"invalid trained config {self}")
        if self.stage == 2 and self.num_blocks < 1:
            raise ValueError("a Stage 2 checkpoint needs K >= 1 masked blocks")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainedConfig:
        data = json.loads(text)
        base = data.pop("base")
        base["patch_size"] = tuple(base["patch_size"])
        data["groups"] = tuple(data.get("groups", ()))
        return cls(base=BaseShape(**base), **data)


@dataclass(frozen=True, eq=False)
class TrainedWeights:
    """A loaded checkpoint: its config and its tensors (``layers.*`` and ``model.*`` keys)."""

    config: TrainedConfig
    tensors: dict[str, torch.Tensor]
    source: str = ""

    def __post_init__(self) -> None:
        if not any(key.startswith("model.") for key in self.tensors):
            raise ValueError("a trained checkpoint holds at least the widened patch embedding (model.*)")
        if self.config.stage == 2 and not any(key.startswith("layers.") for key in self.tensors):
            raise ValueError("a Stage 2 checkpoint holds its masked layers (layers.*)")

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix.`` with the prefix removed."""
        cut = len(prefix) + 1
        return {key[cut:]: value for key, value in self.tensors.items() if key.startswith(prefix + ".")}


def save_trained(path: str | os.PathLike[str], config: TrainedConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a checkpoint atomically (a temporary file renamed into place): never a half file."""
    from safetensors.torch import save_file

    TrainedWeights(config, tensors)  # validates the key sections
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={"ttm": config.to_json()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_trained(path: str | os.PathLike[str], input_name: str = "checkpoint") -> TrainedWeights:
    """Read a checkpoint written by ``save_trained`` (``ttm-train``); errors name the file and the fix."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise TTMInputError(input_name, f"{path} does not exist", "pick a checkpoint written by ttm-train")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise TTMInputError(input_name, f"{path.name} is not a readable safetensors file ({err})",
                            "pick a checkpoint written by ttm-train (a .safetensors file)") from err
    if "ttm" not in metadata:
        raise TTMInputError(input_name, f"{path.name} has no Through-The-Mask metadata: it is not a ttm-train "
                            "checkpoint (a plain model or LoRA file?)",
                            "load base models with their own loaders; pick a checkpoint written by ttm-train")
    try:
        config = TrainedConfig.from_json(metadata["ttm"])
        return TrainedWeights(config, tensors, str(path))
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
        raise TTMInputError(input_name, f"{path.name}: damaged or unsupported checkpoint metadata ({err})",
                            "use a checkpoint written by this version of ttm-train") from err


def check_compatible(weights: TrainedWeights, model: PretrainedModel, stage: Stage, variant: str | None = None,
                     input_name: str = "checkpoint") -> None:
    """Refuse a checkpoint of another stage, family, variant or base model shape for a diffusers denoiser."""
    check_base(weights, base_shape(model), stage, variant, input_name)


def check_base(weights: TrainedWeights, shape: BaseShape, stage: Stage, variant: str | None = None,
               input_name: str = "checkpoint") -> None:
    """Refuse a checkpoint of another stage, base model shape or variant (naming both); ``shape`` is the
    loaded model's, however it was read (diffusers config, ComfyUI's Wan)."""
    config, name = weights.config, Path(weights.source).name or "the checkpoint"
    if config.stage != stage:
        raise TTMInputError(input_name, f"{name} is a Stage {config.stage} checkpoint, this is Stage {stage}",
                            f"load a Stage {stage} checkpoint here")
    if shape != config.base:
        raise TTMInputError(input_name, f"{name} was trained on {config.base.describe()} but the model is "
                            f"{shape.describe()}", f"load the base model it was trained on ({config.variant})")
    if variant is not None and variant != config.variant:
        raise TTMInputError(input_name, f"{name} was trained on {config.variant}, the model is {variant}",
                            f"load the {config.variant} base model")


# ---------------------------------------------------------------------------------- the widening
class _SplitInput:
    """Mixin of a widened patch embedding: the stock channels and the appended ones go through
    separate products that are then added. With the appended weights zero the second product is
    exactly zero, so the output is BIT-identical to the stock module's (one product over all
    channels would sum in another order and differ in the last bits)."""

    stock_channels: int
    layout: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.stock_channels
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        bias = self.bias  # type: ignore[attr-defined]
        if isinstance(self, nn.Linear):
            per = int(torch.tensor(self.layout).prod())
            wide = weight.view(weight.shape[0], -1, per)
            x = x.unflatten(-1, (-1, per))
            stock = F.linear(x[..., :c, :].flatten(-2), wide[:, :c].flatten(1), bias)
            return stock + F.linear(x[..., c:, :].flatten(-2), wide[:, c:].flatten(1))
        conv = self._conv_forward  # type: ignore[attr-defined]
        return conv(x[:, :c], weight[:, :c], bias) + conv(x[:, c:], weight[:, c:], None)


class _WideConv2d(_SplitInput, nn.Conv2d):
    pass


class _WideConv3d(_SplitInput, nn.Conv3d):
    pass


class _WideLinear(_SplitInput, nn.Linear):
    pass


def widen_patch_embedding(module: nn.Module, extra: int, layout: tuple[int, ...] | None = None) -> nn.Module:
    """A copy of an input patch embedding with ``extra`` more input channels, their weights zero.

    Args:
        module: ``nn.Conv2d`` / ``nn.Conv3d`` (weight ``[out, C, ...]``), or ``nn.Linear`` over
            flattened patches, whose input order is ``(C, *layout)`` (CogVideoX 1.5: ``(pt, p, p)``).
        extra: channels to append after the stock ones.
        layout: for ``nn.Linear`` only, the patch dimensions after the channel one.
    Returns:
        a new module of the same kind; for inputs whose extra channels are zero it gives the
        stock output, and with zero extra weights it gives the stock output for any extra input.
    """
    weight: torch.Tensor = module.weight.detach()  # type: ignore[operator]
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        conv_cls = _WideConv3d if isinstance(module, nn.Conv3d) else _WideConv2d
        wide = conv_cls(module.in_channels + extra, module.out_channels, module.kernel_size,  # type: ignore[arg-type]
                        stride=module.stride, padding=module.padding,  # type: ignore[arg-type]
                        bias=module.bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            wide.weight.zero_()
            wide.weight[:, : module.in_channels] = weight
            if module.bias is not None:
                wide.bias.copy_(module.bias)  # type: ignore[union-attr]
        wide.stock_channels = module.in_channels
        return wide
    if isinstance(module, nn.Linear):
        if not layout:
            raise ValueError("widening a Linear patch embedding needs its patch layout")
        per_channel = int(torch.tensor(layout).prod())
        channels = module.in_features // per_channel
        wide_linear = _WideLinear((channels + extra) * per_channel, module.out_features, bias=module.bias is not None,
                                device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            view = wide_linear.weight.view(module.out_features, channels + extra, per_channel)
            view.zero_()
            view[:, :channels] = weight.view(module.out_features, channels, per_channel)
            if module.bias is not None:
                wide_linear.bias.copy_(module.bias)
        wide_linear.stock_channels, wide_linear.layout = channels, tuple(layout)
        return wide_linear
    raise TypeError(f"cannot widen a {type(module).__name__} patch embedding")


class SplitPatchEmbedding(nn.Module):
    """A widened convolutional patch embedding computed as (stock channels) + (extra channels).

    Convolution is linear in its input channels, so this equals ``wide(x)``; computing the stock
    channels with their own convolution keeps an untrained checkpoint (extra weights zero) exactly
    the stock output, bit for bit (a single wider convolution may sum in another order). The
    diffusers backend and the ComfyUI-native Wan engine both use it.

    Args:
        wide: the widened ``nn.Conv2d`` / ``nn.Conv3d`` (input channels ``[stock ; extra]``).
        stock_channels: the stock input channel count.
    """

    def __init__(self, wide: nn.Module, stock_channels: int) -> None:
        super().__init__()
        if not isinstance(wide, (nn.Conv2d, nn.Conv3d)) or not 0 < stock_channels < wide.in_channels:
            raise ValueError(f"cannot split {type(wide).__name__} at {stock_channels} input channels")
        self.wide = wide
        self.stock_channels = stock_channels

    @property
    def weight(self) -> torch.Tensor:
        return self.wide.weight

    @property
    def in_channels(self) -> int:
        return int(self.wide.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_stock + C_extra, ...]`` -> the embedding (a stock-width input is refused by the conv)."""
        wide, c = self.wide, self.stock_channels
        conv = torch.nn.functional.conv3d if isinstance(wide, nn.Conv3d) else torch.nn.functional.conv2d
        weight = wide.weight.to(device=x.device, dtype=x.dtype)
        bias = wide.bias.to(device=x.device, dtype=x.dtype) if wide.bias is not None else None
        stock = conv(x[:, :c], weight[:, :c].contiguous(), bias, wide.stride, wide.padding)
        extra = conv(x[:, c:], weight[:, c:].contiguous(), None, wide.stride, wide.padding)
        return stock + extra


def _patch_path(model: PretrainedModel) -> tuple[str, tuple[int, ...] | None]:
    """Module path of the input patch embedding and, for Linear ones, the patch layout after C."""
    family = family_of(model)
    if family.name == "wan":
        return "patch_embedding", None
    if family.name == "cogvideox":
        config = model.config
        pt = config.patch_size_t
        return "patch_embed.proj", None if pt is None else (int(pt), int(config.patch_size), int(config.patch_size))
    raise TTMInputError("model", f"the trained path does not support {family.name} models",
                        "use Wan 2.1 I2V, Wan 2.2 TI2V-5B or CogVideoX I2V")


def patch_embedding_name(model: PretrainedModel) -> str:
    """Module path of the denoiser's input patch embedding (``patch_embedding`` / ``patch_embed.proj``)."""
    return _patch_path(model)[0]


def channel_axis(model: PretrainedModel) -> int:
    """The channel axis of the denoiser's latent input (Wan ``[B, C, F, H, W]``: 1; CogVideoX
    ``[B, F, C, H, W]``: 2)."""
    return 2 if family_of(model).name == "cogvideox" else 1


def _swap(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    setattr(parent, attr, module)
    return old


def widen_model(model: PretrainedModel, extra: int) -> nn.Module:
    """Widen the denoiser's patch embedding in place (training); returns the stock module it replaced."""
    path, layout = _patch_path(model)
    stock = model.get_submodule(path)
    return _swap(model, path, widen_patch_embedding(stock, extra, layout))


def trained_layers(weights: TrainedWeights, model: PretrainedModel, input_name: str = "checkpoint") -> MaskedLayers:
    """The checkpoint's masked layers, built for ``model`` and loaded (float32, on the model's device)."""
    layers = masked_layers(model, weights.config.num_blocks)
    state = weights.section("layers")
    try:
        layers.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise TTMInputError(input_name, f"{Path(weights.source).name}: its masked layers do not fit the model "
                            f"({str(err).splitlines()[0]})", "use a checkpoint trained on this base model") from err
    device = next(model.parameters()).device
    return layers.to(device)


@contextmanager
def trained_denoiser(model: PretrainedModel, weights: TrainedWeights, condition: torch.Tensor,
                     input_name: str = "checkpoint") -> Iterator[MaskedLayers | None]:
    """Run a stock diffusers denoiser as the trained one for the duration of a ``with`` block.

    Swaps in the widened patch embedding and any other trained tensor, and appends ``condition``
    to the input channels of every call whose input has the stock channel count (routing by what
    the call is: an input that already has the widened count passes unchanged). Restores the
    stock module and tensors in ``finally`` (also on error and on cancel).

    Args:
        model: the loaded stock denoiser (``check_compatible`` is run).
        weights: the checkpoint.
        condition: float ``[1, C_cond, F, H, W]`` latents in the model's latent layout order
            (``[B, C, F, H, W]``); broadcast over the batch (both classifier-free-guidance rows
            keep the visual condition, as in the paper's two-condition guidance at image scale 1).
    Yields:
        the loaded masked layers (Stage 2) or None (Stage 1).
    """
    config = weights.config
    check_compatible(weights, model, config.stage, input_name=input_name)
    if condition.ndim != 5 or condition.shape[1] != config.condition_channels:
        raise TTMInputError("trajectory", f"the condition latents are {tuple(condition.shape)}; the checkpoint "
                            f"expects {config.condition_channels} channels [1, C, F, H, W]",
                            "encode the colour-coded trajectory with the base model's VAE")
    path, layout = _patch_path(model)
    stock_patch = model.get_submodule(path)
    wide = widen_patch_embedding(stock_patch, config.condition_channels, layout)
    model_tensors = weights.section("model")
    params = dict(model.named_parameters())
    own = {f"{path}.{name}" for name, _ in wide.named_parameters()}
    unknown = sorted(set(model_tensors) - own - set(params))
    if unknown:
        raise TTMInputError(input_name, f"{Path(weights.source).name} holds tensors the model does not have: "
                            f"{', '.join(unknown[:3])}", "use a checkpoint trained on this base model")
    with torch.no_grad():
        for name, param in wide.named_parameters():
            key = f"{path}.{name}"
            if key in model_tensors:
                if model_tensors[key].shape != param.shape:
                    raise TTMInputError(input_name, f"{key} is {tuple(model_tensors[key].shape)} in the checkpoint, "
                                        f"{tuple(param.shape)} in the widened model", "use a matching checkpoint")
                param.copy_(model_tensors[key])
    saved: dict[str, torch.Tensor] = {}
    layers = trained_layers(weights, model, input_name) if config.stage == 2 else None
    axis = channel_axis(model)
    stock_channels = config.base.in_channels
    layout_cond = condition if axis == 1 else condition.transpose(1, 2)  # CogVideoX: [1, F, C, H, W]

    def add_condition(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if x.shape[axis] != stock_channels:
            return None  # already widened by the caller (training), or not a latent call
        cond = layout_cond.to(x.device, x.dtype)
        if cond.shape[:axis] + cond.shape[axis + 1:] != (1, *x.shape[1:axis], *x.shape[axis + 1:]):
            raise TTMInputError("trajectory", f"the trajectory latents {tuple(cond.shape)} do not match the "
                                f"model input {tuple(x.shape)}", "generate at the trajectory's frames and size")
        widened = torch.cat([x, cond.expand(x.shape[0], *cond.shape[1:])], dim=axis)
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": widened}
        return (widened, *args[1:]), kwargs

    handle = None
    wide = wide.to(next(stock_patch.parameters()).dtype)
    _swap(model, path, SplitPatchEmbedding(wide, stock_channels) if isinstance(wide, (nn.Conv2d, nn.Conv3d)) else wide)
    try:
        with torch.no_grad():
            for name, tensor in model_tensors.items():
                if name in params and not name.startswith(path + "."):
                    saved[name] = params[name].detach().clone()
                    params[name].copy_(tensor.to(params[name].dtype))
        handle = model.register_forward_pre_hook(add_condition, with_kwargs=True)
        logger.info("trained Stage %d: %s (step %d, K = %d, +%d input channels)", config.stage,
                    Path(weights.source).name, config.step, config.num_blocks, config.condition_channels)
        yield layers
    finally:
        if handle is not None:
            handle.remove()
        _swap(model, path, stock_patch)
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)


def condition_video(labels: torch.Tensor, object_ids: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The colour-coded label video a Stage 2 checkpoint is conditioned on (before VAE encoding).

    Object ``i`` of the trajectory (its local prompt's position, 0-based) gets the training
    palette's colour ``i + 1`` (``train.palette.colorize``), whatever its id, as in the training
    samples (labels 1..L in local-prompt order); pixels of ids not listed are background.

    Args:
        labels: uint8 ``[T, H, W]``, 0 = background, ``object_ids[i]`` = object i.
        object_ids: the trajectory's object ids in local-prompt order.
    Returns:
        float32 ``[T, H, W, 3]`` in 0..1 on the labels' device.
    """
    from ..train.palette import colorize, palette_labels

    return colorize(palette_labels(labels, tuple(object_ids)))


def trained_masking(weights: TrainedWeights, masking: MaskedAttention) -> MaskedAttention:
    """The masked attention of a trained generation: the checkpoint's K, "new_layers" mode.

    The strengths and the window stay the user's (1 = the trained model as trained). A user K
    other than the checkpoint's is refused, naming ``masked_blocks``.
    """
    k = weights.config.num_blocks
    if masking.num_blocks is not None and masking.num_blocks != k:
        name = Path(weights.source).name or "the checkpoint"
        raise TTMInputError("masked_blocks", f"K = {masking.num_blocks} but {name} was trained with K = {k}",
                            f"set masked_blocks to {k} (or 0 = the checkpoint's own)")
    return replace(masking, num_blocks=k, mode="new_layers")
