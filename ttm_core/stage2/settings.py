"""What Stage 2 is asked to do: one typed settings object for every engine.

* ``MaskedAttention``: where and how strongly masked self- and cross-attention run
  (Through-The-Mask Sec. 3.2): K, the two strengths, the part of the schedule, the mode.
* ``DualClock`` (``guidance``): trajectory guidance towards the cut-and-drag reference.
* ``Stage2Settings``: both, plus the reference's soft edges. The diffusers engine
  (``stage2.diffusers.run.generate``) and the ComfyUI-native Wan engine take this one object.
* ``Sampling``: the sampler's own knobs (seed, steps, cfg, negative prompt, size, frames).

K has one meaning everywhere: ``None`` = the family's default (a quarter of a DiT's blocks, the
paper's 10 of 40; a UNet's encoder spatial blocks, the paper's K = 6), ``0`` = no block is masked,
``n`` = the first n blocks from the input side. Node widgets that show 0 as "auto" translate it to
``None`` where the node reads them.

Errors name the node inputs the values come from (``masked_blocks``, ``start_percent``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from ..errors import TTMInputError
from .attention.kernels import BACKENDS, Backend
from .guidance import DualClock

Mode = Literal["training_free", "new_layers"]
"""``training_free``: the block's own attention weights are reused with the masks and blended with the
stock output by the strengths (strength 0 = stock output, exactly). ``new_layers``: added masked
attention layers (``attention.layers.MaskedLayers``, output projections zero-initialised): what
training and trained checkpoints use."""
MODES: tuple[str, ...] = get_args(Mode)
MAX_SEED = 2**64 - 1


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise TTMInputError(name, f"{value!r} is outside 0..1", f"give {name} in 0..1")
    return float(value)


@dataclass(frozen=True)
class MaskedAttention:
    """Masked self- and cross-attention in the first K blocks (Through-The-Mask Sec. 3.2).

    Attributes:
        num_blocks: K (see the module docstring): None = the family default, 0 = none.
        self_strength: masked self-attention (a token sees only its own object, over all frames):
            0 = stock attention, 1 = fully masked.
        cross_strength: masked cross-attention (each object's local prompt inside its per-frame
            box): 0 = stock, 1 = fully masked. Ignored without local prompts.
        window: (start, end), the part of the sampling schedule with masked attention on, like
            ComfyUI's start/end percent. The native engine maps it to noise levels
            (``model_sampling.percent_to_sigma``), the diffusers engine to steps
            (``steps``: round(start n) <= i < round(end n)).
        mode: ``training_free`` or ``new_layers`` (``Mode``).
        backend: kernel of the masked parts (``Backend``).
    """

    num_blocks: int | None = None
    self_strength: float = 1.0
    cross_strength: float = 1.0
    window: tuple[float, float] = (0.0, 1.0)
    mode: Mode = "training_free"
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.num_blocks is not None and (isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int)
                                            or self.num_blocks < 0):
            raise TTMInputError("masked_blocks", f"K = {self.num_blocks!r} is not a block count",
                                "use a whole number >= 0 (0 masks no block), or leave it empty for the model's "
                                "default")
        object.__setattr__(self, "self_strength", _fraction("self_strength", self.self_strength))
        object.__setattr__(self, "cross_strength", _fraction("cross_strength", self.cross_strength))
        if not isinstance(self.window, tuple) or len(self.window) != 2:
            raise TTMInputError("start_percent", f"window {self.window!r} is not (start, end)",
                                "give start_percent and end_percent")
        start, end = _fraction("start_percent", self.window[0]), _fraction("end_percent", self.window[1])
        if end < start:
            raise TTMInputError("end_percent", f"{end} is before start_percent {start}",
                                "make end_percent >= start_percent")
        object.__setattr__(self, "window", (start, end))
        if self.mode not in MODES:
            raise TTMInputError("mode", f"unknown masked-attention mode {self.mode!r}", f"use one of {MODES}")
        if self.backend not in BACKENDS:
            raise TTMInputError("backend", f"unknown attention backend {self.backend!r}", f"use one of {BACKENDS}")

    @property
    def active(self) -> bool:
        """False when nothing would be masked: K = 0 or both strengths 0."""
        return self.num_blocks != 0 and (self.self_strength > 0 or self.cross_strength > 0)

    def steps(self, steps: int) -> range:
        """The denoising steps (0-based) of an ``steps``-step schedule that run masked attention."""
        start, end = self.window
        return range(round(start * steps), round(end * steps))


@dataclass(frozen=True)
class Stage2Settings:
    """Everything Through-The-Mask changes in a Stage 2 generation.

    Attributes:
        masking: masked attention (``MaskedAttention``).
        guidance: the dual clock (``guidance.DualClock``); None = no trajectory guidance.
        feather: soft-edge width (px, a Gaussian sigma) of the cut-and-drag reference.
    """

    masking: MaskedAttention = field(default_factory=MaskedAttention)
    guidance: DualClock | None = field(default_factory=DualClock)
    feather: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.masking, MaskedAttention):
            raise TypeError(f"masking must be a MaskedAttention, not {type(self.masking).__name__}")
        if self.guidance is not None and not isinstance(self.guidance, DualClock):
            raise TypeError(f"guidance must be a DualClock or None, not {type(self.guidance).__name__}")
        if isinstance(self.feather, bool) or not isinstance(self.feather, (int, float)) \
                or not math.isfinite(self.feather) or self.feather < 0:
            raise TTMInputError("feather", f"feather {self.feather!r}", "use a width >= 0 px")


@dataclass(frozen=True)
class Sampling:
    """The sampler's own settings (0 = automatic where noted).

    Attributes:
        seed: the seed of the sampler's noise.
        steps: denoising steps; 0 = the model's recommended count.
        cfg: classifier-free guidance scale; 0 = the model's recommended scale; 1 = off.
        negative_prompt: what to avoid (classifier-free guidance only).
        width, height, num_frames: the video to generate; 0 = automatic (from the image and trajectory).
    """

    seed: int = 0
    steps: int = 0
    cfg: float = 0.0
    negative_prompt: str = ""
    width: int = 0
    height: int = 0
    num_frames: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise TTMInputError("seed", f"{self.seed!r} is not a seed", f"use a whole number 0..{MAX_SEED}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 0 <= self.steps <= 1000:
            raise TTMInputError("steps", f"{self.steps!r} steps", "use 1..1000 steps, or 0 for the model's default")
        if not math.isfinite(self.cfg) or self.cfg < 0 or 0 < self.cfg < 1 or self.cfg > 100:
            raise TTMInputError("cfg", f"guidance scale {self.cfg!r}", "use 1 (off) to 100, or 0 for the model's "
                                "default")
        if not isinstance(self.negative_prompt, str):
            raise TTMInputError("negative_prompt", f"{type(self.negative_prompt).__name__} is not text",
                                "give the negative prompt as text")
