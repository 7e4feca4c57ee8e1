"""The training configuration of ``ttm-train``: ONE typed, frozen dataclass tree read from YAML or JSON.

Every section is a frozen dataclass that validates itself; ``load_config(path, overrides)`` reads a
file, applies ``--set key.sub=value`` overrides (values parsed as YAML: ``--set steps=100``,
``--set data.size=[64,64]``) and refuses an unknown key naming it and the keys that exist there (no
silent typos). The model folder is checked against the config in ``check_model`` (before any weight
loads): its variant is detected from ``model_index.json`` with the pack's own detector, and a folder
of another family than ``model.variant`` names is refused. See docs/TRAINING.md for every key.

Example (``configs/train/stage2_wan21_i2v.yaml``)::

    stage: 2
    model: {path: /models/Wan2.1-I2V-14B-480P-Diffusers, variant: wan2.1-i2v}
    masked_blocks: 10
    data: {shards: [/data/ttm-shards], size: [480, 832], frames: 81, batch_size: 4}
    groups: {layers: {lr: 2.0e-5}, patch: {lr: 2.0e-5}}
    schedule: {warmup_steps: 2000}
    steps: 50000
    output_dir: runs/stage2-wan21
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from ..errors import TTMInputError

logger = logging.getLogger(__name__)

Precision = Literal["no", "bf16", "fp16"]
ObjectiveKind = Literal["auto", "flow", "v_prediction"]
Weighting = Literal["none", "min_snr"]
OptimizerName = Literal["adamw", "adamw8bit"]
WeightsDtype = Literal["fp32", "bf16", "fp16"]
GROUP_NAMES = ("layers", "patch", "full", "lora")
"""Trainable groups: ``layers`` the new masked layers, ``patch`` the (widened) input patch
embedding, ``full`` the rest of the base denoiser (or the parameters matching ``patterns``),
``lora`` peft LoRA adapters on the base attention (merged into the saved tensors)."""


def _positive(key: str, value: float, fix: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise TTMInputError(key, f"{value!r} must be > 0", fix)


def _fraction(key: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise TTMInputError(key, f"{value!r} is outside 0..1", f"give {key} in 0..1")


@dataclass(frozen=True)
class ModelConfig:
    """The base model.

    Attributes:
        path: a diffusers-format folder (``model_index.json``); never downloaded.
        variant: the expected variant key (``wan2.1-i2v``, ``wan2.2-ti2v-5b``, ``cogvideox-1.0-i2v``,
            ``cogvideox-1.5-i2v``) or ``auto`` (whatever the folder is, if trainable).
        dtype: dtype of the frozen parts (VAE, text / image encoders); trained tensors are float32
            masters, mixed precision is ``precision``.
    """

    path: str
    variant: str = "auto"
    dtype: WeightsDtype = "fp32"

    def __post_init__(self) -> None:
        from ..stage2.trained import TRAINED_VARIANTS

        if not self.path:
            raise TTMInputError("model.path", "no model folder given", "set model.path to a diffusers-format folder")
        if self.variant != "auto" and self.variant not in TRAINED_VARIANTS:
            raise TTMInputError("model.variant", f"unknown model family {self.variant!r}",
                                f"use one of auto, {', '.join(TRAINED_VARIANTS)}")


@dataclass(frozen=True)
class DataConfig:
    """The training clips.

    Attributes:
        shards: WebDataset shard files or folders written by ``ttm-data build``.
        size: (height, width) in pixels the clips are read at (multiples of the model's pixels per token).
        frames: frames per clip (1 + 4k for the causal video VAEs).
        batch_size: clips per process per optimisation step (the global batch is
            batch_size x processes x accumulation).
        accumulation: optimisation steps' worth of gradient accumulation (1 = none).
        workers: decoding worker processes of the reader (0 = in the training process).
    """

    shards: tuple[str, ...] = ()
    size: tuple[int, int] = (480, 832)
    frames: int = 81
    batch_size: int = 1
    accumulation: int = 1
    workers: int = 2

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise TTMInputError("data.size", f"{self.size!r} is not (height, width)", "give data.size: [H, W]")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise TTMInputError("data.frames", f"{self.frames} frames", "use 1 + 4k frames (e.g. 49, 81)")
        for key, value in (("data.batch_size", self.batch_size), ("data.accumulation", self.accumulation)):
            if value < 1:
                raise TTMInputError(key, f"{value} < 1", f"set {key} to 1 or more")
        if self.workers < 0:
            raise TTMInputError("data.workers", f"{self.workers} < 0", "use 0 or more workers")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective (``train.objectives``).

    Attributes:
        kind: ``auto`` = flow matching for Wan, v-prediction (zero terminal SNR, the model folder's
            CogVideoXDDIMScheduler) for CogVideoX.
        flow_shift: the flow sigma shift (sigma' = s sigma / (1 + (s - 1) sigma)); 0 = the model
            folder's scheduler's ``flow_shift`` / ``shift``.
        weighting: ``none`` (plain MSE) or ``min_snr`` (min(SNR, gamma) / SNR-style weights, v-prediction only).
        min_snr_gamma: gamma of ``min_snr``.
        fixed_noise: draw each clip's noise, timestep and dropout from its position in the data set
            instead of its position in the run, so every epoch repeats them (an overfitting check:
            the loss of a memorised set must fall; not for real training).
    """

    kind: ObjectiveKind = "auto"
    flow_shift: float = 0.0
    weighting: Weighting = "none"
    min_snr_gamma: float = 5.0
    fixed_noise: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.flow_shift) and self.flow_shift >= 0):
            raise TTMInputError("objective.flow_shift", f"{self.flow_shift!r}", "use 0 (the model's) or a shift > 0")
        _positive("objective.min_snr_gamma", self.min_snr_gamma, "use a gamma > 0 (5 is common)")


@dataclass(frozen=True)
class DropoutConfig:
    """Condition dropout for classifier-free guidance (each condition zeroed independently).

    Attributes:
        text: probability of the empty prompt (global prompt, and no local prompts).
        trajectory: probability of a zero trajectory condition (label latents and masked layers off).
    """

    text: float = 0.1
    trajectory: float = 0.1

    def __post_init__(self) -> None:
        _fraction("dropout.text", self.text)
        _fraction("dropout.trajectory", self.trajectory)


@dataclass(frozen=True)
class GroupConfig:
    """One trainable parameter group.

    Attributes:
        lr: its learning rate.
        patterns: fnmatch patterns over the base denoiser's parameter names (``full``) or module
            names (``lora`` target modules); empty = the group's default (all of ``full``; the
            attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` for ``lora``).
        weight_decay: AdamW weight decay of the group (None = ``optimizer.weight_decay``).
        rank, alpha: LoRA only.
    """

    lr: float = 2.0e-5
    patterns: tuple[str, ...] = ()
    weight_decay: float | None = None
    rank: int = 16
    alpha: float = 16.0

    def __post_init__(self) -> None:
        _positive("groups.*.lr", self.lr, "give a learning rate > 0 (the paper: 2e-5)")
        if self.rank < 1:
            raise TTMInputError("groups.lora.rank", f"{self.rank} < 1", "use a LoRA rank of 1 or more")


def _default_groups() -> dict[str, GroupConfig]:
    return {"layers": GroupConfig(), "patch": GroupConfig()}


STAGE1_GROUPS = ("patch", "full")
"""Stage 1's default groups when a config names none (the paper fine-tunes Stage 1 fully)."""


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (``adamw8bit``: bitsandbytes' 8-bit AdamW, if installed).

    Attributes:
        name, betas, eps, weight_decay: AdamW's.
        max_grad_norm: gradient clipping (0 = off).
    """

    name: OptimizerName = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise TTMInputError("optimizer.betas", f"{self.betas!r}", "give two betas in [0, 1)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise TTMInputError("optimizer", "weight_decay and max_grad_norm must be >= 0", "fix the value")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning rate: constant after a linear warm-up (the paper: 2k steps)."""

    warmup_steps: int = 2000

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise TTMInputError("schedule.warmup_steps", f"{self.warmup_steps} < 0", "use 0 or more steps")


@dataclass(frozen=True)
class CacheConfig:
    """In-memory caches keyed by clip key (deterministic encodings, so results are unchanged).

    Attributes:
        text: keep each clip's encoded prompts (the text encoder runs once per clip).
        latents: keep each clip's VAE latents (video, trajectory, first frame); memory grows with
            the data set, so for small data sets / overfitting runs.
    """

    text: bool = True
    latents: bool = False


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints: ``<output_dir>/checkpoints/step-<N>/`` with ``ttm.safetensors`` (the trained
    tensors, ``stage2.trained`` format) and ``state/`` (accelerate's optimizer, scheduler, RNG and
    data position) for exact resume.

    Attributes:
        every: steps between checkpoints (0 = only the final one).
        keep: how many recent checkpoint folders stay (older ones are deleted; the final one stays).
    """

    every: int = 1000
    keep: int = 3

    def __post_init__(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise TTMInputError("checkpoint", f"every={self.every}, keep={self.keep}", "use every >= 0 and keep >= 1")


@dataclass(frozen=True)
class EmaConfig:
    """An exponential moving average of the trained tensors (saved instead of the raw ones when on)."""

    enabled: bool = False
    decay: float = 0.9999

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise TTMInputError("ema.decay", f"{self.decay!r}", "use a decay in (0, 1), e.g. 0.9999")


@dataclass(frozen=True)
class ValidationConfig:
    """Validation every N steps: the loss at a fixed noise / timestep set on the first clips, and a
    clip rendered by the stock diffusers pipeline with the trained tensors (``trainer.render``),
    written to ``<output_dir>/validation/step-<N>.mp4``.

    Attributes:
        every: steps between validations (0 = never).
        clips: how many of the first clips are validated.
        render: also render a clip (costs a full sampling run).
        steps: sampling steps of the render.
        cfg: guidance scale of the render (0 = the model's default).
    """

    every: int = 1000
    clips: int = 1
    render: bool = True
    steps: int = 20
    cfg: float = 0.0

    def __post_init__(self) -> None:
        if self.every < 0 or self.clips < 1 or self.steps < 1 or self.cfg < 0:
            raise TTMInputError("validation", f"{self}", "use every >= 0, clips >= 1, steps >= 1, cfg >= 0")


@dataclass(frozen=True)
class LoggingConfig:
    """Logging: TensorBoard (and Weights & Biases when ``wandb`` and the package is installed)."""

    tensorboard: bool = True
    wandb: bool = False
    every: int = 10
    project: str = "ttm-train"

    def __post_init__(self) -> None:
        if self.every < 1:
            raise TTMInputError("logging.every", f"{self.every} < 1", "log every 1 or more steps")


@dataclass(frozen=True)
class TrainConfig:
    """The whole training run.

    Attributes:
        model, data, objective, dropout, optimizer, schedule, cache, checkpoint, ema, validation,
        logging: the sections above.
        stage: 2 (motion-to-video, ``ttm-train stage2``) or 1 (image-to-motion: the mask trajectory
            from x(0), s(0) and c_motion, ``ttm-train stage1``; no masked layers).
        masked_blocks: K, blocks from the input side that get the new masked layers (0 = the
            family default: a quarter of the blocks, the paper's 10 of 40); Stage 1: 0 (none).
        groups: trainable groups by name (``GROUP_NAMES``) with their learning rates.
        steps: optimisation steps.
        precision: accelerate's mixed precision (``no``, ``bf16``, ``fp16``).
        gradient_checkpointing: the diffusers model's ``enable_gradient_checkpointing()``.
        seed: the run's seed (noise, timesteps, dropout are a function of seed, step and clip index).
        output_dir: where checkpoints, logs and validations go.
    """

    model: ModelConfig
    stage: Literal[1, 2] = 2
    masked_blocks: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    groups: dict[str, GroupConfig] = field(default_factory=_default_groups)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: int = 50000
    precision: Precision = "bf16"
    gradient_checkpointing: bool = True
    cache: CacheConfig = field(default_factory=CacheConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 0
    output_dir: str = "runs/ttm-train"

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise TTMInputError("stage", f"{self.stage!r}", "use stage: 1 (ttm-train stage1) or stage: 2 "
                                "(ttm-train stage2)")
        if self.masked_blocks < 0:
            raise TTMInputError("masked_blocks", f"K = {self.masked_blocks}", "use K >= 1, or 0 for the default")
        unknown = sorted(set(self.groups) - set(GROUP_NAMES))
        if unknown:
            raise TTMInputError(f"groups.{unknown[0]}", f"unknown trainable group {unknown[0]!r}",
                                f"use groups among {', '.join(GROUP_NAMES)}")
        if not self.groups:
            raise TTMInputError("groups", "nothing is trainable", "list at least one group (layers, patch)")
        if self.stage == 2 and "layers" not in self.groups:
            raise TTMInputError("groups", "Stage 2 trains the new masked layers but groups has no 'layers'",
                                "add groups.layers: {lr: 2.0e-5}")
        if self.stage == 1:
            # Stage 1 (Sec. 3.1) is a full fine-tune with E(x0) on the input channels: no masked layers, and
            # the widened patch embedding must train or the appended condition stays at its zero init
            if self.masked_blocks:
                raise TTMInputError("masked_blocks", f"K = {self.masked_blocks} but Stage 1 has no masked layers",
                                    "remove masked_blocks (or set 0) in a Stage 1 config")
            if "layers" in self.groups:
                raise TTMInputError("groups.layers", "Stage 1 has no masked layers to train",
                                    "remove groups.layers; Stage 1 trains groups.patch and groups.full (or lora)")
            if "patch" not in self.groups:
                raise TTMInputError("groups", "Stage 1 reads x(0) through the widened patch embedding but groups "
                                    "has no 'patch'", "add groups.patch: {lr: 2.0e-5}")
        if "full" in self.groups and "lora" in self.groups:
            raise TTMInputError("groups", "both 'full' and 'lora' train the base attention",
                                "choose one of groups.full and groups.lora")
        if self.steps < 1:
            raise TTMInputError("steps", f"{self.steps} < 1", "train for 1 or more steps")
        if not self.output_dir:
            raise TTMInputError("output_dir", "empty", "give an output folder")

    @property
    def trained_groups(self) -> tuple[str, ...]:
        return tuple(name for name in GROUP_NAMES if name in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------- reading
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(key: str, tp: Any, value: Any) -> Any:
    """``value`` (from YAML / JSON) as type ``tp``; TTMInputError naming ``key`` when it is not one."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TTMInputError(key, f"expected a mapping, got {value!r}", f"write {key} as key: value lines")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        return _convert(key, next(o for o in options if o is not type(None)), value)
    if origin is Literal:
        if value is False and "no" in get_args(tp):
            value = "no"  # YAML 1.1 reads an unquoted `no` (precision: no) as false
        if value not in get_args(tp):
            raise TTMInputError(key, f"{value!r} is not one of {', '.join(map(repr, get_args(tp)))}",
                                f"set {key} to one of them")
        return value
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, (str, int, float)) and len(args) == 2 and args[1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TTMInputError(key, f"expected a list, got {value!r}", f"write {key} as [a, b, ...]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
        if len(value) != len(args):
            raise TTMInputError(key, f"expected {len(args)} values, got {len(value)}", f"give {len(args)} values")
        return tuple(_convert(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        _, value_type = get_args(tp)
        if not isinstance(value, dict):
            raise TTMInputError(key, f"expected a mapping, got {value!r}", f"write {key} as name: settings lines")
        return {str(k): _convert(f"{key}.{k}", value_type, {} if v is None else v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise TTMInputError(key, f"expected true or false, got {value!r}", f"set {key} to true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TTMInputError(key, f"expected a whole number, got {value!r}", f"set {key} to an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)  # YAML 1.1 reads 2e-5 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TTMInputError(key, f"expected a number, got {value!r}", f"set {key} to a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TTMInputError(key, f"expected text, got {value!r}", f"set {key} to a string")
        return str(value)
    raise TypeError(f"{key}: unsupported config type {_type_name(tp)}")


def _build(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise TTMInputError(key, f"unknown key {name!r}" + (f" in {prefix}" if prefix else ""),
                                f"use one of {', '.join(fields)} (check the spelling; docs/TRAINING.md lists them)")
        kwargs[name] = _convert(key, hints[name], value)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise TTMInputError(key, "missing", f"add {key} to the config")
    try:
        return cls(**kwargs)
    except TTMInputError as err:
        if prefix and not err.input_name.startswith(prefix):
            raise TTMInputError(f"{prefix}.{err.input_name.split('.')[-1]}" if err.input_name.startswith("groups.*")
                                else err.input_name, err.problem, err.fix) from err
        raise


def _set(data: dict[str, Any], assignment: str) -> None:
    import yaml  # type: ignore[import-untyped]

    if "=" not in assignment:
        raise TTMInputError("--set", f"{assignment!r} is not key=value", "write --set section.key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TTMInputError(key, f"{part} is not a section", "set a key inside a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text)


def config_from_dict(data: dict[str, Any], overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """Build a ``TrainConfig`` from a mapping (a parsed file) and ``key=value`` overrides."""
    if not isinstance(data, dict):
        raise TTMInputError("config", f"the top level is a {type(data).__name__}", "write a mapping of sections")
    data = json.loads(json.dumps(data))  # a deep copy; also rejects non-JSON values early
    for assignment in overrides:
        _set(data, assignment)
    if data.get("stage") == 1 and "groups" not in data:  # Stage 1's own default: the paper's full fine-tune
        data["groups"] = {name: {} for name in STAGE1_GROUPS}
    return _build(TrainConfig, data)


def load_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """Read a ``.yaml`` / ``.yml`` / ``.json`` training config (see the module docstring)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TTMInputError("--config", f"{path} does not exist", "pass a training config file (configs/train/)")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise TTMInputError("--config", f"{path.name} is not valid YAML/JSON ({err})", "fix the file's syntax") from err
    try:
        return config_from_dict(data or {}, overrides)
    except TTMInputError as err:
        raise TTMInputError(err.input_name, f"{path.name}: {err.problem}", err.fix) from err


def check_model(config: TrainConfig) -> Any:
    """Detect the model folder's variant (``model_index.json`` only) and check it against the config.

    Returns:
        the ``families.detect.DetectedModel``.
    Raises:
        TTMInputError naming ``model.path`` / ``model.variant`` and the fix.
    """
    from ..stage2.families.detect import detect_family
    from ..stage2.trained import TRAINED_VARIANTS

    folder = Path(config.model.path).expanduser()
    try:
        detected = detect_family(folder)
    except TTMInputError as err:
        raise TTMInputError("model.path", err.problem, err.fix) from err
    key = detected.variant.key
    if key not in TRAINED_VARIANTS:
        raise TTMInputError("model.path", f"{folder.name} is {detected.variant.label}, which ttm-train does not train",
                            f"use a folder of one of {', '.join(TRAINED_VARIANTS)}")
    if config.model.variant not in ("auto", key):
        raise TTMInputError("model.variant", f"the config says {config.model.variant} but {folder} is "
                            f"{detected.variant.label} ({key})",
                            f"set model.variant: {key}, or point model.path at a {config.model.variant} folder")
    return detected
