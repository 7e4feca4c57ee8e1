"""``ttm-train``'s training loop on accelerate (one GPU, DDP, FSDP2, DeepSpeed, or CPU processes with gloo).

Through-The-Mask Stage 2 (Sec. 3.2) on a stock diffusers I2V model:

* the colour-coded label video (``palette.colorize``) is VAE-encoded by the model's own VAE and
  concatenated on the input channels AFTER the stock ones (``stage2.trained.widen_model``: the
  patch embedding widened, new input weights zero), exactly where ``trained_denoiser`` appends it
  at inference;
* new masked self- and cross-attention layers (``families.masked_layers``, zero-initialised outputs)
  in the first K blocks run through ``attention.install.masked_attention`` in ``new_layers`` mode,
  with the local prompts through the model's own text encoder;
* the stock conditioning around it (first frame, CLIP image states, timesteps) is built by the family
  adapter's training section (``training_image_condition`` / ``training_call``), mirroring its
  diffusers pipeline, so a checkpoint runs in the stock pipeline + ``trained_denoiser``;
* the objective is the base model's own (``objectives``), condition dropout zeroes the trajectory
  (label latents and masked layers off) and/or the text (empty prompt, no local prompts).

What is conditioned and what is generated is a ``Task``, so one loop serves both stages:
``Stage2Task`` above, and ``Stage1Task`` (Sec. 3.1, the contract of ``motion.trained``): the
colour-coded label video is the target, s(0) colour-coded is the base model's own image input,
E(x(0) then mid grey) is appended on the input channels, c_motion is the prompt, no masked layers
(K = 0) and no local prompts. For Stage 1 the ``dropout.trajectory`` probability zeroes the appended
x(0) latents (the visual condition of the paper's two-condition guidance).

Batching: the masked-attention plan is one trajectory, so each process runs its ``batch_size`` clips
one forward/backward at a time and accumulates (accelerate's gradient accumulation); the optimiser
steps once per ``batch_size x accumulation`` clips per process (the global batch is that times the
processes).

Reproducibility: noise, timestep and dropout of a clip are drawn from a generator seeded by
(seed, global clip index); rank r's j-th clip is global clip j * world + r, so a 2-process run sees
the same clips with the same noise as a 1-process run with the doubled batch, and a resumed run
continues bit-identically (optimizer, scheduler, EMA, RNG and the data position are in the
checkpoint's ``state/``, written by ``Accelerator.save_state``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import TTMInputError
from ..stage2.attention.grids import token_grid_from_labels
from ..stage2.attention.install import masked_attention
from ..stage2.attention.layers import MaskedLayers
from ..stage2.attention.state import MaskedAttentionPlan
from ..stage2.families import default_num_blocks, geometry_for, masked_layers
from ..stage2.settings import MaskedAttention
from ..stage2.trained import (
    TrainedConfig,
    TrainedWeights,
    base_shape,
    load_trained,
    patch_embedding_name,
    save_trained,
    trained_denoiser,
    widen_model,
)
from ..types import ProgressFn
from .config import TrainConfig, check_model
from .objectives import Objective, make_objective, masked_mse
from .palette import PALETTE_NAME, colorize
from .sample import TrainingSample

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "ttm.safetensors"
STATE_DIR = "state"
_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


# ------------------------------------------------------------------------------------- the task
class Task(Protocol):
    """What a stage conditions on and generates (Stage 2 here; Stage 1 plugs in its own)."""

    stage: int
    uses_masked_layers: bool

    def target_video(self, sample: TrainingSample) -> torch.Tensor:
        """float ``[F, H, W, 3]`` in 0..1: the video the model learns to generate."""

    def condition_videos(self, sample: TrainingSample) -> Sequence[torch.Tensor]:
        """Videos (each ``[F, H, W, 3]`` in 0..1) VAE-encoded and appended to the input channels, in order."""

    def image(self, sample: TrainingSample) -> torch.Tensor:
        """float ``[H, W, 3]``: the base I2V model's own image input (its first frame)."""

    def prompt(self, sample: TrainingSample) -> str:
        """The text prompt the model's own cross-attention reads."""

    def local_prompts(self, sample: TrainingSample) -> tuple[str, ...]:
        """One prompt per object for the masked cross-attention (empty: none)."""


class Stage2Task:
    """Stage 2 (motion-to-video): x0 generated from E(x0[0]), E(colorize(s)), c and c_local."""

    stage = 2
    uses_masked_layers = True

    def target_video(self, sample: TrainingSample) -> torch.Tensor:
        return sample.frames

    def condition_videos(self, sample: TrainingSample) -> Sequence[torch.Tensor]:
        return (colorize(sample.labels),)

    def image(self, sample: TrainingSample) -> torch.Tensor:
        return sample.frames[0]

    def prompt(self, sample: TrainingSample) -> str:
        return sample.global_prompt

    def local_prompts(self, sample: TrainingSample) -> tuple[str, ...]:
        return sample.local_prompts


class Stage1Task:
    """Stage 1 (image-to-motion): colorize(s) generated from s(0) (the image input), E(x(0)) and c_motion
    (``motion.trained``: ``stage1_image`` / ``stage1_condition``, the inputs the trained backend gives)."""

    stage = 1
    uses_masked_layers = False

    def target_video(self, sample: TrainingSample) -> torch.Tensor:
        return colorize(sample.labels)

    def condition_videos(self, sample: TrainingSample) -> Sequence[torch.Tensor]:
        from ..motion.trained import stage1_condition

        return (stage1_condition(sample.frames[0], sample.frames.shape[0]),)

    def image(self, sample: TrainingSample) -> torch.Tensor:
        from ..motion.trained import stage1_image

        return stage1_image(sample.labels[0])

    def prompt(self, sample: TrainingSample) -> str:
        return sample.motion_prompt

    def local_prompts(self, sample: TrainingSample) -> tuple[str, ...]:
        return ()


# ---------------------------------------------------------------------------------- encodings
@dataclass(frozen=True, eq=False)
class EncodedClip:
    """One clip ready for the denoiser (float32, on the training device).

    Attributes:
        key: the cache key of the sample it came from (``TrainingSample.cache_key``).
        target: x0 latents ``[1, C, F_lat, h, w]``.
        condition: the appended condition latents ``[1, C_cond, F_lat, h, w]``.
        image_condition: the family's stock image conditioning (``training_image_condition``).
        prompt: ``[1, L, D]`` prompt states.
        local: one ``[tokens_l, D]`` per object.
        labels: uint8 ``[F, H, W]`` (for the token grid) or None.
    """

    key: str
    target: torch.Tensor
    condition: torch.Tensor
    image_condition: dict[str, torch.Tensor]
    prompt: torch.Tensor
    local: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None


@dataclass
class TrainState:
    """The loop's position (saved with the checkpoint): optimisation steps done."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class Ema:
    """Exponential moving average of the trained tensors (float32 shadows)."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.params = params
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.shadow:
            self.shadow[name].copy_(state[name])


def _trainable_only(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
    """accelerate save-state hook: keep only the trained tensors of each model's state dict, so a
    resume folder holds what training changed (megabytes to a few GB) instead of a copy of the
    frozen base (28 GB for Wan 2.1 14B). FSDP / DeepSpeed save through their own code (no hook
    weights) and still write the whole model."""
    for model, state in zip(models, weights):
        wrapped = getattr(model, "module", None)  # DDP
        inner = wrapped if isinstance(wrapped, nn.Module) else model
        trained = {name for name, p in inner.named_parameters() if p.requires_grad}
        for key in list(state):
            if key.removeprefix("module.") not in trained:
                del state[key]


class TrainModule(nn.Module):
    """The trained model as one module for accelerate (DDP / FSDP wrap it): the denoiser and the
    new masked layers (which the installed processors call)."""

    def __init__(self, transformer: nn.Module, layers: MaskedLayers | None) -> None:
        super().__init__()
        self.transformer = transformer
        self.layers = layers

    def forward(self, **kwargs: Any) -> torch.Tensor:
        return self.transformer(**kwargs)[0]


@dataclass(frozen=True)
class StepRecord:
    """What one optimisation step did (for callbacks and tests)."""

    step: int
    loss: float
    lr: float


@dataclass
class RunResult:
    """The end of a run: the final step, the last checkpoint folder, per-step losses (this process)."""

    step: int
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)
    stopped: bool = False


# ------------------------------------------------------------------------------------ helpers
def _sample_seed(seed: int, index: int, salt: int = 0) -> int:
    """A generator seed from (run seed, global clip index, salt) (splitmix-style mixing)."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


def _latent_channels(vae: Any) -> int:
    config = vae.config
    return int(getattr(config, "z_dim", None) or config.latent_channels)


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / CHECKPOINT_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def resolve_resume(output_dir: Path, resume: str) -> Path:
    """``latest`` -> the newest checkpoint folder of the run; else the given folder (checked)."""
    if resume == "latest":
        found = checkpoint_folders(output_dir)
        if not found:
            raise TTMInputError("--resume", f"no checkpoint under {output_dir / 'checkpoints'}",
                                "train without --resume first, or pass a checkpoint folder")
        return found[-1]
    folder = Path(resume)
    if not (folder / CHECKPOINT_FILE).is_file() or not (folder / STATE_DIR).is_dir():
        raise TTMInputError("--resume", f"{folder} is not a ttm-train checkpoint folder (no {CHECKPOINT_FILE} and "
                            f"{STATE_DIR}/)", "pass a checkpoints/step-N folder of a run, or latest")
    return folder


class _StopFlag:
    """Ctrl-C asks for a stop at the next step boundary; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stop requested: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """One training run (see the module docstring).

    Args:
        config: the run's config.
        data: the clips: a sequence of ``TrainingSample`` (cycled), or a ``reader.ShardReader``;
            None = ``config.data.shards`` through the reader.
        task: what is conditioned / generated (default ``Stage2Task``).
        progress: called with (step, steps) after every optimisation step; may raise to stop.
        accelerator: an ``accelerate.Accelerator`` (default: one from the config and the environment).
    """

    def __init__(self, config: TrainConfig, data: Sequence[TrainingSample] | Any | None = None,
                 task: Task | None = None, progress: ProgressFn | None = None, accelerator: Any = None) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs  # type: ignore[import-untyped]
        from accelerate.utils import ProjectConfiguration, set_seed  # type: ignore[import-untyped]

        from ..stage2.diffusers.loader import DTYPES, load_video_model

        self.config = config
        self.task = task or Stage2Task()
        if self.task.stage != config.stage:
            got, want = config.stage, self.task.stage
            raise TTMInputError("stage", f"the config is a Stage {got} config (stage: {got}) but this trains Stage "
                                f"{want}", f"train it with ttm-train stage{got}, or give a Stage {want} config "
                                f"(configs/train/stage{want}_*.yaml)")
        self.progress = progress
        detected = check_model(config)  # before any weights load
        self.output_dir = Path(config.output_dir)
        if accelerator is None:
            log_with = self._trackers()
            dropout = config.dropout.text > 0 or config.dropout.trajectory > 0
            accelerator = Accelerator(
                # no GPU: processes started by torchrun / accelerate launch join a gloo group (MULTI_CPU)
                cpu=not torch.cuda.is_available(),
                mixed_precision=config.precision,
                gradient_accumulation_steps=config.data.batch_size * config.data.accumulation,
                log_with=log_with or None,
                project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                    logging_dir=str(self.output_dir / "logs")),
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=dropout)])
        self.accelerator = accelerator
        set_seed(config.seed)
        device = accelerator.device

        self.model = load_video_model(detected.folder, dtype=DTYPES[config.model.dtype], detected=detected)
        self.pipeline = self.model.pipeline
        # Any: the training section (training_check / _image_condition / _call) is on the trained families only
        family: Any = self.model.family
        self.family = family
        self.variant = self.model.variant
        family.training_check(self.pipeline, config.data.frames, *config.data.size)
        self.pipeline.to(device)
        transformer = self.pipeline.transformer
        self.base = base_shape(transformer)
        self.num_blocks = 0
        if self.task.uses_masked_layers:
            available = len(self.family.sites(transformer))
            self.num_blocks = config.masked_blocks or default_num_blocks(transformer)
            if self.num_blocks > available:
                raise TTMInputError("masked_blocks", f"K = {self.num_blocks} but {self.variant.label} has {available} "
                                    "blocks", f"use masked_blocks between 1 and {available} (0 = a quarter)")
        self.geometry = geometry_for(transformer, self.pipeline.vae)
        self.condition_channels = _latent_channels(self.pipeline.vae) * len(
            self.task.condition_videos(_probe_sample(config)))
        self.objective: Objective = make_objective(config.objective, self.family.name, self.pipeline.scheduler)

        # the trained model: widened patch embedding, new layers, LoRA / full groups
        self.patch_name = patch_embedding_name(transformer)
        self.stock_patch = widen_model(transformer, self.condition_channels)
        self.wide_patch = transformer.get_submodule(self.patch_name)
        self.layers = masked_layers(transformer, self.num_blocks).to(device) if self.num_blocks else None
        self.lora_scale = 0.0
        if "lora" in config.groups:
            self._add_lora(transformer)
        groups = self._param_groups(transformer)
        self.trained = {name: p for name, params, _ in groups for name, p in params}
        for p in self.trained.values():
            p.data = p.data.float()  # float32 masters (mixed precision runs the forward in bf16/fp16)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        module = TrainModule(transformer, self.layers)
        module.train()
        optimizer = self._optimizer(groups)
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        warmup = config.schedule.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
            lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.state = TrainState()
        accelerator.register_for_checkpointing(self.scheduler, self.state)
        accelerator.register_save_state_pre_hook(_trainable_only)
        self.ema = None
        if config.ema.enabled:
            if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
                # FSDP2 / ZeRO-3 replace or partition the parameters at prepare(): float32 shadows of the
                # local shards would average nothing (and a checkpoint would hold the initial values).
                raise TTMInputError("ema.enabled", f"EMA is not supported under {accelerator.distributed_type.value}",
                                    "use DDP (configs/train/ddp.yaml) for EMA runs, or set ema.enabled: false")
            self.ema = Ema(self.trained, config.ema.decay)
            accelerator.register_for_checkpointing(self.ema)
        self.data = data
        self._text_cache: dict[str, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self._latent_cache: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._empty: torch.Tensor | None = None
        self._grids: dict[str, Any] = {}
        logger.info("ttm-train stage %d: %s, K = %d, +%d input channels, groups %s, %d trained tensors "
                    "(%.2f M values), %d process(es)", config.stage, self.variant.label, self.num_blocks,
                    self.condition_channels, ", ".join(config.trained_groups), len(self.trained),
                    sum(p.numel() for p in self.trained.values()) / 1e6, accelerator.num_processes)

    # ------------------------------------------------------------------------------ setup parts
    def _trackers(self) -> list[str]:
        import importlib.util

        out = []
        if self.config.logging.tensorboard and importlib.util.find_spec("tensorboard") is not None:
            out.append("tensorboard")
        if self.config.logging.wandb:
            if importlib.util.find_spec("wandb") is None:
                logger.warning("logging.wandb is on but wandb is not installed (pip install wandb); skipped")
            else:
                out.append("wandb")
        return out

    def _add_lora(self, transformer: nn.Module) -> None:
        try:
            from peft import LoraConfig
        except ImportError as err:
            raise TTMInputError("groups.lora", "peft is not installed",
                                "pip install -r requirements-train.txt") from err
        group = self.config.groups["lora"]
        patterns = group.patterns or tuple(f"*.{t}" for t in _LORA_TARGETS)
        targets = [name for name, m in transformer.named_modules()
                   if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
                   and not name.startswith(self.patch_name)]
        if not targets:
            raise TTMInputError("groups.lora.patterns", f"no linear layer matches {list(patterns)}",
                                "give module-name patterns such as '*.attn1.to_q'")
        lora_alpha: Any = group.alpha
        cast_model: Any = transformer
        cast_model.add_adapter(LoraConfig(r=group.rank, lora_alpha=lora_alpha, target_modules=targets,
                                           init_lora_weights=True))
        self.lora_scale = group.alpha / group.rank

    def _param_groups(self, transformer: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]], Any]]:
        transformer.requires_grad_(False)
        config = self.config
        named = dict(transformer.named_parameters())
        out: list[tuple[str, list[tuple[str, nn.Parameter]], Any]] = []
        for name in config.trained_groups:
            group = config.groups[name]
            if name == "layers":
                if self.layers is None:
                    raise TTMInputError("groups.layers", f"Stage {config.stage} has no masked layers",
                                        "remove groups.layers")
                params = [(f"layers.{k}", p) for k, p in self.layers.named_parameters()]
            elif name == "patch":
                params = [(f"model.{k}", p) for k, p in named.items() if k.startswith(self.patch_name + ".")]
            elif name == "lora":
                params = [(f"lora.{k}", p) for k, p in named.items() if "lora_" in k]
            else:  # full
                patterns = group.patterns or ("*",)
                params = [(f"model.{k}", p) for k, p in named.items()
                          if not k.startswith(self.patch_name + ".") and "lora_" not in k
                          and any(fnmatch.fnmatchcase(k, pat) for pat in patterns)]
                if not params:
                    raise TTMInputError("groups.full.patterns", f"no parameter matches {list(patterns)}",
                                        "give parameter-name patterns such as 'blocks.*.ffn.*'")
            for _, p in params:
                p.requires_grad_(True)
            out.append((name, params, group))
        return out

    def _optimizer(self, groups: list[tuple[str, list[tuple[str, nn.Parameter]], Any]]) -> torch.optim.Optimizer:
        opt = self.config.optimizer
        param_groups = [{"params": [p for _, p in params], "lr": group.lr, "name": name,
                         "weight_decay": opt.weight_decay if group.weight_decay is None else group.weight_decay}
                        for name, params, group in groups]
        if opt.name == "adamw8bit":
            try:
                import bitsandbytes as bnb  # type: ignore[import-not-found]
            except ImportError as err:
                raise TTMInputError("optimizer.name", "adamw8bit needs bitsandbytes, which is not installed",
                                    "pip install bitsandbytes, or use optimizer.name: adamw") from err
            return bnb.optim.AdamW8bit(param_groups, betas=opt.betas, eps=opt.eps)
        return torch.optim.AdamW(param_groups, betas=opt.betas, eps=opt.eps)

    # ---------------------------------------------------------------------------------- encoding
    def _encode_text(self, text: str) -> torch.Tensor:
        device = self.accelerator.device
        return self.family.encode_prompt(self.pipeline, text, device, self.family.text_tokens(self.pipeline)).float()

    def _empty_prompt(self) -> torch.Tensor:
        if self._empty is None:
            with torch.no_grad():
                self._empty = self._encode_text("")
        return self._empty

    def _check_sample(self, sample: TrainingSample) -> None:
        frames, (height, width) = self.config.data.frames, self.config.data.size
        if tuple(sample.frames.shape[:3]) != (frames, height, width):
            raise TTMInputError("data", f"clip {sample.key} is {tuple(sample.frames.shape[:3])} (frames, H, W), the "
                                f"config trains at ({frames}, {height}, {width})",
                                "read the shards at data.size / data.frames (the reader resizes and cuts clips)")

    @torch.no_grad()
    def encode(self, sample: TrainingSample) -> EncodedClip:
        """VAE latents, image conditioning and prompt states of one clip (cached per config.cache)."""
        self._check_sample(sample)
        device = self.accelerator.device
        cache = self.config.cache
        latents = self._latent_cache.get(sample.cache_key) if cache.latents else None
        if latents is None:
            encode = self.family.encode_reference
            target = encode(self.pipeline, self.task.target_video(sample), device).float()
            condition = torch.cat([encode(self.pipeline, v, device).float()
                                   for v in self.task.condition_videos(sample)], dim=1)
            image = self.family.training_image_condition(self.pipeline, self.task.image(sample),
                                                         self.config.data.frames, device)
            latents = (target, condition, image)
            if cache.latents:
                self._latent_cache[sample.cache_key] = latents
        text = self._text_cache.get(sample.cache_key) if cache.text else None
        if text is None:
            prompt = self._encode_text(self.task.prompt(sample))
            local = []
            if self.num_blocks:
                tokenizer = self.pipeline.tokenizer
                limit = self.family.text_tokens(self.pipeline)
                for i, words in enumerate(self.task.local_prompts(sample)):
                    count = len(tokenizer(self.family.clean_prompt(words), add_special_tokens=True).input_ids)
                    if count > limit:
                        raise TTMInputError("data", f"clip {sample.key}: local prompt {i + 1} is {count} tokens, the "
                                            f"text encoder reads {limit}", "shorten the local prompts in the shard")
                    local.append(self._encode_text(words)[0, :count].contiguous())
            text = (prompt, tuple(local))
            if cache.text:
                self._text_cache[sample.cache_key] = text
        labels = sample.labels if self.num_blocks else None
        return EncodedClip(sample.cache_key, latents[0], latents[1], latents[2], text[0], text[1], labels)

    def _plan(self, clip: EncodedClip, with_local: bool) -> MaskedAttentionPlan | None:
        if clip.labels is None or not self.num_blocks:
            return None
        height, width = self.config.data.size
        ids = tuple(range(1, len(clip.local) + 1)) if clip.local else tuple(
            int(i) for i in torch.unique(clip.labels).tolist() if i)
        grid = self._grids.get(clip.key)  # the cache key: shard, frame window and clip
        if grid is None:  # the trajectory's token grid is a function of the clip's labels alone
            grid = token_grid_from_labels(clip.labels, ids, self.geometry, self.config.data.frames, height, width)
            if len(self._grids) < 4096:
                self._grids[clip.key] = grid
        local = clip.local if with_local else ()
        return MaskedAttentionPlan(grid, local, MaskedAttention(num_blocks=self.num_blocks, mode="new_layers"))

    # ------------------------------------------------------------------------------------ a step
    def _inputs(self, clip: EncodedClip, generator: torch.Generator, u: float | None = None,
                dropout: bool = True) -> tuple[dict[str, Any], torch.Tensor | None, Any, MaskedAttentionPlan | None]:
        """Denoiser kwargs, loss mask, noised batch and plan of one clip, from ``generator``'s draws
        (always drawn in the same order: dropout text, dropout trajectory, u, noise)."""
        draws = torch.rand(3, generator=generator)
        drop_text = dropout and float(draws[0]) < self.config.dropout.text
        drop_traj = dropout and float(draws[1]) < self.config.dropout.trajectory
        noise = torch.randn(clip.target.shape, generator=generator).to(clip.target.device)
        level = torch.tensor([float(draws[2]) if u is None else u])
        noised = self.objective.noise(clip.target, noise, level)
        extra = torch.zeros_like(clip.condition) if drop_traj else clip.condition
        prompt = self._empty_prompt() if drop_text else clip.prompt
        kwargs, mask = self.family.training_call(self.pipeline, noised.noisy, noised.timestep.to(clip.target.device),
                                                 clip.image_condition, prompt, extra)
        plan = None if drop_traj else self._plan(clip, with_local=not drop_text)
        return kwargs, mask, noised, plan

    def _loss(self, module: nn.Module, clip: EncodedClip, generator: torch.Generator, u: float | None = None,
              dropout: bool = True, backward: bool = False) -> torch.Tensor:
        kwargs, mask, noised, plan = self._inputs(clip, generator, u, dropout)
        with masked_attention(self.pipeline.transformer, plan, self.layers) if plan is not None \
                else contextlib.nullcontext():
            prediction = self.family.latents_to_bcfhw(module(**kwargs))
            loss = masked_mse(prediction, noised.target, noised.weight, mask)
            if backward:  # inside the context: gradient checkpointing recomputes with the masked processors
                self.accelerator.backward(loss)
        return loss.detach()

    def _stream(self, skip: int) -> Iterator[tuple[int, TrainingSample]]:
        """(global clip index, clip) of this process from its ``skip``-th clip on (forever, epoch after epoch)."""
        from .reader import ShardReader

        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        data = self.data
        if data is None:
            if not self.config.data.shards:
                raise TTMInputError("data.shards", "no shards given", "set data.shards to ttm-data build's output")
            height, width = self.config.data.size
            data = ShardReader(list(self.config.data.shards), height, width, self.config.data.frames,
                               seed=self.config.seed)
        if isinstance(data, ShardReader):
            from torch.utils.data import DataLoader

            per_epoch = len(data.entries) - len(data.entries) % world
            per_rank = per_epoch // world
            epoch, position = divmod(skip, per_rank)
            while True:
                data.set_epoch(epoch)
                data.rank, data.world_size, data.skip = rank, world, position
                loader = DataLoader(data, batch_size=None, num_workers=self.config.data.workers,
                                    collate_fn=lambda s: s)
                for j, sample in enumerate(loader, start=position):
                    index = j * world + rank
                    yield (index if self.config.objective.fixed_noise else epoch * per_epoch + index), sample
                epoch, position = epoch + 1, 0
        items = list(data)
        if len(items) < world:
            raise TTMInputError("data", f"{len(items)} clip(s) for {world} processes", "give more clips")
        position = skip
        while True:
            index = position * world + rank
            yield (index % len(items) if self.config.objective.fixed_noise else index), items[index % len(items)]
            position += 1

    def fixed_loss(self, samples: Sequence[TrainingSample],
                   levels: Sequence[float] | None = (0.1, 0.3, 0.5, 0.7, 0.9), seed: int = 1234) -> float:
        """Mean loss with fixed noise and no dropout (a low-variance measure).

        Args:
            samples: the clips.
            levels: u values (the objective's timestep parameter) per clip, each with its own fixed
                noise from ``seed``; None = each clip's own training draw (clip i with the noise and
                timestep ``objective.fixed_noise`` training gives the i-th clip of a list).
        """
        module = self.accelerator.unwrap_model(self.module)
        module.eval()
        total, count = 0.0, 0
        with torch.no_grad(), self.accelerator.autocast():
            for i, sample in enumerate(samples):
                clip = self.encode(sample)
                if levels is None:
                    generator = torch.Generator().manual_seed(_sample_seed(self.config.seed, i))
                    total += float(self._loss(module, clip, generator, dropout=False))
                    count += 1
                    continue
                for j, u in enumerate(levels):
                    generator = torch.Generator().manual_seed(_sample_seed(seed, i, j))
                    total += float(self._loss(module, clip, generator, u=u, dropout=False))
                    count += 1
        module.train()
        return total / max(count, 1)

    # ------------------------------------------------------------------------------ checkpoints
    def trained_tensors(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors (``stage2.trained`` keys): layers.*, model.* (LoRA merged)."""
        sharded = self.accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")
        # FSDP / ZeRO-3 shard the parameters: gather them (every process must call this); else read them
        state = self.accelerator.get_state_dict(self.module) if sharded else {}
        values = {}
        for name, p in self.trained.items():
            if self.ema is not None and use_ema:
                values[name] = self.ema.shadow[name]
            else:
                key = ("layers." + name.removeprefix("layers.")) if name.startswith("layers.") else \
                    "transformer." + name.split(".", 1)[1]
                values[name] = state[key] if key in state else p.detach()
        out: dict[str, torch.Tensor] = {}
        for name, value in values.items():
            if name.startswith("lora."):
                continue
            out[name] = value.detach().float().cpu().clone()
        lora = {n.removeprefix("lora."): v for n, v in values.items() if n.startswith("lora.")}
        if lora:
            out.update(self._merged_lora(lora, state))
        return out

    def _merged_lora(self, lora: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W + (alpha / r) B A for every LoRA-wrapped linear, under its stock parameter name."""
        out = {}
        for name, a in lora.items():
            if ".lora_A." not in name:
                continue
            prefix = name.split(".lora_A.")[0]
            b = lora[name.replace(".lora_A.", ".lora_B.")]
            base = state.get(f"transformer.{prefix}.base_layer.weight")
            if base is None:
                base = dict(self.pipeline.transformer.named_parameters())[f"{prefix}.base_layer.weight"]
            out[f"model.{prefix}.weight"] = (base.detach().float().cpu()
                                             + self.lora_scale * (b.float().cpu() @ a.float().cpu()))
        return out

    def trained_config(self) -> TrainedConfig:
        return TrainedConfig(stage=self.config.stage, variant=self.variant.key, base=self.base,
                             num_blocks=self.num_blocks, condition_channels=self.condition_channels,
                             palette=PALETTE_NAME, groups=self.config.trained_groups, step=self.state.step,
                             extra={"objective": self.objective.kind, "seed": self.config.seed,
                                    "frames": self.config.data.frames, "size": list(self.config.data.size)})

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N/`` (trained tensors + accelerate state), written whole then renamed; keeps the
        last ``checkpoint.keep``; also ``<output_dir>/ttm_stage<S>_<variant>.safetensors`` (the latest)."""
        accelerator = self.accelerator
        step = self.state.step
        root = self.output_dir / "checkpoints"
        final = root / f"step-{step:07d}"
        tmp = root / f".step-{step:07d}.tmp"
        tensors = self.trained_tensors()
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / STATE_DIR))
        if accelerator.is_main_process:
            config = self.trained_config()
            save_trained(tmp / CHECKPOINT_FILE, config, tensors)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            save_trained(self.output_dir / f"ttm_stage{self.config.stage}_{self.variant.key}.safetensors", config,
                         tensors)
            for old in checkpoint_folders(self.output_dir)[:-self.config.checkpoint.keep]:
                shutil.rmtree(old, ignore_errors=True)
            logger.info("checkpoint: %s", final)
        accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, folder: Path) -> None:
        """Resume from a checkpoint folder; refuses one of another base model, K or condition width."""
        path = folder / CHECKPOINT_FILE
        weights = load_trained(path, "--resume")
        got, want = weights.config, self.trained_config()
        for what, a, b in (("variant", got.variant, want.variant), ("base model", got.base, want.base),
                           ("masked_blocks (K)", got.num_blocks, want.num_blocks),
                           ("condition channels", got.condition_channels, want.condition_channels),
                           ("stage", got.stage, want.stage), ("palette", got.palette, want.palette),
                           ("trained groups", got.groups, want.groups)):
            if a != b:
                shown_a = a.describe() if hasattr(a, "describe") else a
                shown_b = b.describe() if hasattr(b, "describe") else b
                raise TTMInputError("--resume", f"{path} was trained with {what} {shown_a}, this config has "
                                    f"{shown_b}", "resume with the config the checkpoint was trained with, or start "
                                    "a new run (another output_dir)")
        # strict=False: the state holds the trained tensors only (_trainable_only); the frozen base comes
        # from the model folder, as at the start of the run
        self.accelerator.load_state(str(folder / STATE_DIR), strict=False)
        logger.info("resumed from %s at step %d", folder, self.state.step)

    # ------------------------------------------------------------------------------------- render
    @contextlib.contextmanager
    def stock_model(self) -> Iterator[nn.Module]:
        """The denoiser with its stock patch embedding back (for ``trained_denoiser``), in eval mode."""
        transformer = self.pipeline.transformer
        parent_path, _, attr = self.patch_name.rpartition(".")
        parent = transformer.get_submodule(parent_path) if parent_path else transformer
        setattr(parent, attr, self.stock_patch)
        was_training = transformer.training
        transformer.eval()
        try:
            yield transformer
        finally:
            setattr(parent, attr, self.wide_patch)
            transformer.train(was_training)

    def validate(self, samples: Sequence[TrainingSample]) -> dict[str, float]:
        """Validation loss (fixed noise) and, when configured, a rendered clip per validation step."""
        config = self.config.validation
        report = {"val_loss": self.fixed_loss(samples[:config.clips])}
        if config.render and self.accelerator.is_main_process and "lora" not in self.config.groups \
                and self.accelerator.distributed_type.value in ("NO", "MULTI_GPU", "MULTI_CPU"):
            weights = TrainedWeights(self.trained_config(), self.trained_tensors(), "training")
            frames = render(self, weights, samples[0], steps=config.steps, cfg=config.cfg)
            from ..media import encode_video

            encode_video(frames, self.output_dir / "validation", f"step-{self.state.step:07d}", "video/h264-mp4",
                         samples[0].fps)
        return report

    # --------------------------------------------------------------------------------------- loop
    def train(self, max_steps: int | None = None, resume: str | None = None,
              on_step: Callable[[StepRecord], None] | None = None, save: bool = True) -> RunResult:
        """Train to ``config.steps`` (or ``max_steps``), checkpointing as configured.

        Args:
            max_steps: stop after this many optimisation steps in total (the schedule still assumes
                ``config.steps``), then write a checkpoint.
            resume: a checkpoint folder or ``"latest"``.
            on_step: called after every optimisation step on every process.
            save: write the final checkpoint (benchmarks time steps without it).
        """
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        accelerator, config = self.accelerator, self.config
        if resume:
            self.load_checkpoint(resolve_resume(self.output_dir, resume))
        end = min(config.steps, max_steps) if max_steps else config.steps
        per_step = config.data.batch_size * config.data.accumulation
        stream = self._stream(self.state.step * per_step)
        accelerator.init_trackers(config.logging.project, config=_flat(config.to_dict()))
        validation: list[TrainingSample] = []
        result = RunResult(self.state.step, None)
        bar = tqdm(total=end, initial=self.state.step, disable=not accelerator.is_main_process, desc="ttm-train",
                   unit="step")
        last_saved = -1
        with _StopFlag() as stop:
            try:
                while self.state.step < end:
                    losses = []
                    for _ in range(per_step):
                        index, sample = next(stream)
                        if len(validation) < config.validation.clips:
                            validation.append(sample)
                        clip = self.encode(sample)
                        generator = torch.Generator().manual_seed(_sample_seed(config.seed, index))
                        with accelerator.accumulate(self.module):
                            losses.append(float(self._loss(self.module, clip, generator, backward=True)))
                            if accelerator.sync_gradients:
                                if config.optimizer.max_grad_norm > 0:
                                    # every parameter of the module (frozen ones have no gradient): accelerate
                                    # takes its FSDP path only for the whole module's parameter list
                                    accelerator.clip_grad_norm_(list(self.module.parameters()),
                                                                config.optimizer.max_grad_norm)
                                self.optimizer.step()
                                self.scheduler.step()
                                self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update()
                    self.state.step += 1
                    loss = float(accelerator.reduce(torch.tensor(sum(losses) / len(losses),
                                                                 device=accelerator.device), "mean"))
                    lr = float(self.scheduler.get_last_lr()[0])
                    result.losses.append(loss)
                    step = self.state.step
                    if step % config.logging.every == 0 or step == end:
                        accelerator.log({"loss": loss, "lr": lr}, step=step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if on_step is not None:
                        on_step(StepRecord(step, loss, lr))
                    if self.progress is not None:
                        self.progress(step, end)
                    if config.validation.every and step % config.validation.every == 0:
                        accelerator.log(self.validate(validation), step=step)
                    flag = torch.tensor(float(stop.requested), device=accelerator.device)
                    stopping = bool(accelerator.reduce(flag, "sum") > 0)
                    if (config.checkpoint.every and step % config.checkpoint.every == 0) or stopping \
                            or (step == end and save):
                        result.checkpoint = self.save_checkpoint()
                        last_saved = step
                    if stopping:
                        result.stopped = True
                        break
            finally:
                bar.close()
                accelerator.end_training()
        if save and last_saved != self.state.step and not result.stopped and self.state.step > 0:
            result.checkpoint = self.save_checkpoint()
        result.step = self.state.step
        return result


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat scalar hyper-parameters for the trackers."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        elif value is None or isinstance(value, (int, float, str, bool)):
            out[name] = value if value is not None else "none"
    return out


def _probe_sample(config: TrainConfig) -> TrainingSample:
    """A 1-frame dummy clip: tells how many condition videos the task appends."""
    return TrainingSample("probe", torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, dtype=torch.uint8), "", "", ("x",),
                          ("x",), 1.0)


# ---------------------------------------------------------------------------------------- render
@torch.no_grad()
def render(trainer: Trainer, weights: TrainedWeights, sample: TrainingSample, steps: int = 20, cfg: float = 0.0,
           seed: int = 0) -> torch.Tensor:
    """One clip from the STOCK diffusers pipeline driven by a checkpoint (``trained_denoiser`` + the
    masked layers in ``new_layers`` mode), as the trained Stage 2 runs at inference.

    Returns:
        float32 ``[F, H, W, 3]`` in 0..1.
    """
    from ..stage2.diffusers.run import _pil

    pipeline, family = trainer.pipeline, trainer.family
    clip = trainer.encode(sample)
    cfg = cfg or trainer.variant.default_cfg
    do_cfg = cfg > 1.0
    height, width = trainer.config.data.size
    with trainer.stock_model() as transformer, contextlib.ExitStack() as stack:
        dtype = next(transformer.parameters()).dtype
        # one tensor for the pipeline and for conditional_rows (which tells the CFG halves apart by it)
        negative = trainer._empty_prompt().to(dtype) if do_cfg else None
        layers = stack.enter_context(trained_denoiser(transformer, weights, clip.condition))
        plan = trainer._plan(clip, with_local=True)
        if plan is not None and layers is not None:
            state = stack.enter_context(masked_attention(transformer, plan, layers))
            stack.enter_context(family.conditional_rows([transformer], state, negative, do_cfg))
        output = pipeline(image=_pil(trainer.task.image(sample)), prompt_embeds=clip.prompt.to(dtype),
                          negative_prompt_embeds=negative, height=height,
                          width=width, num_frames=trainer.config.data.frames, num_inference_steps=steps,
                          guidance_scale=cfg, generator=torch.Generator("cpu").manual_seed(seed), output_type="pt",
                          **family.pipeline_kwargs(pipeline, sample.fps))
    from einops import rearrange

    return rearrange(output.frames[0].float(), "f c h w -> f h w c").cpu().clamp(0.0, 1.0).contiguous()

