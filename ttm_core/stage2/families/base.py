"""What a model family is to Through-The-Mask: the adapter every family implements.

A family adapter (one file per family: ``wan.py``, ``cogvideox.py``, ``unet.py``) holds everything
the pack knows about one kind of video model, so that adding a family (or a trained variant of
one) touches one file and one line of ``families/__init__.py``:

* masked attention on a loaded denoiser: token geometry (``geometry``), the blocks that can carry
  masked attention from the input side (``sites``), the default K, the width and projection of
  local prompts, and the attention processors of one site (``site_processors``);
* its diffusers pipelines: the variants it runs (``Variant``: recognised from ``model_index.json``),
  the latent layout of the pipeline's tensors, how the cut-and-drag reference is VAE-encoded, how
  prompts are encoded and how many tokens they may have, and the pipeline's call arguments.

Models are recognised by class name, so nothing here imports diffusers at import time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import TTMInputError
from ...types import PretrainedModel
from ..attention.grids import VideoGeometry

logger = logging.getLogger(__name__)

CAUSAL_4K1 = "4k+1"
"""Frame rule of the causal video VAEs: 1 + 4k frames (frame 0 alone, then groups of 4)."""
ANY_FRAMES = "any"
"""Frame rule of UNets without temporal compression: any count >= 2."""


@dataclass(frozen=True)
class Variant:
    """One diffusers image-to-video model the diffusers engine runs (a family has one or more).

    Attributes:
        key: stable identifier, e.g. ``"cogvideox-1.5-i2v"``.
        label: human name for messages and docs.
        pipeline_class: the diffusers pipeline class that runs it (image-to-video).
        denoisers: the pipeline attributes holding the denoising networks.
        frames_rule: ``CAUSAL_4K1`` or ``ANY_FRAMES``.
        min_frames: the fewest frames it generates.
        default_size: (height, width) it was trained at; with ``fixed_size`` the only size.
        fixed_size: True when learned positional embeddings fix the resolution (and frame count).
        default_frames: frames it was trained with.
        default_steps: denoising steps recommended by its authors.
        default_cfg: classifier-free guidance scale recommended by its authors.
        default_fps: the frame rate its training clips had.
        text_encoder: a short name of its text encoder, for messages.
    """

    key: str
    label: str
    pipeline_class: str
    denoisers: tuple[str, ...]
    frames_rule: str
    min_frames: int
    default_size: tuple[int, int]
    fixed_size: bool
    default_frames: int
    default_steps: int
    default_cfg: float
    default_fps: float
    text_encoder: str

    def __post_init__(self) -> None:
        if self.frames_rule not in (CAUSAL_4K1, ANY_FRAMES):
            raise ValueError(f"unknown frames rule {self.frames_rule!r}")
        if self.min_frames < 1 or self.default_steps < 1 or self.default_cfg < 1 or min(self.default_size) < 8:
            raise ValueError(f"invalid variant {self.key}")


@dataclass(frozen=True)
class Site:
    """One block of a model that can carry masked attention.

    Attributes:
        index: 0-based position from the input side.
        block: module path of the block, e.g. ``"blocks.3"``.
        self_attn: module path of its self-attention (CogVideoX: the joint attention).
        cross_attn: module path of its text cross-attention, or None (CogVideoX: joint; SVD: no text).
    """

    index: int
    block: str
    self_attn: str
    cross_attn: str | None


@dataclass(frozen=True)
class ModelIndex:
    """What ``model_index.json`` of a diffusers folder says (read without importing diffusers).

    Attributes:
        folder: the model folder.
        class_name: the pipeline class (``_class_name``).
        components: component name -> (library, class) for every non-empty component.
        config: the other (non-component) entries, e.g. ``expand_timesteps``.
    """

    folder: Path
    class_name: str
    components: dict[str, tuple[str, str]]
    config: dict[str, object]

    def component_config(self, name: str) -> dict[str, object]:
        """``<component>/config.json`` of the folder; raises TTMInputError naming the file when unreadable."""
        path = self.folder / name / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TTMInputError("model", f"{self.folder.name}/{name}/config.json cannot be read ({err})",
                                "re-download the model folder completely") from err
        return data if isinstance(data, dict) else {}

    def describe(self) -> str:
        parts = ", ".join(f"{name}: {cls}" for name, (_, cls) in sorted(self.components.items()))
        return f"{self.class_name} ({parts or 'no components'})"


class Family:
    """A model family's adapter (see the module docstring). Subclasses set the class attributes
    and implement the methods that raise ``NotImplementedError`` here.

    Class attributes:
        name: short family name (``"wan"``), the key trained layers and messages use.
        denoiser_classes: diffusers class names of the denoisers it patches.
        variants: the diffusers pipelines of this family the diffusers engine runs.
        pipeline_classes: ``model_index.json`` pipeline classes it recognises.
        unsupported: pipeline classes of this family that are refused, with the reason.
    """

    name: str = ""
    denoiser_classes: tuple[str, ...] = ()
    variants: tuple[Variant, ...] = ()
    pipeline_classes: tuple[str, ...] = ()
    unsupported: ClassVar[dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def handles(self, model: PretrainedModel) -> bool:
        """Whether ``model`` is one of this family's denoisers (by class name, subclasses included)."""
        return any(cls.__name__ in self.denoiser_classes for cls in type(model).__mro__)

    # -------------------------------------------------------------- masked attention on a denoiser
    def geometry(self, model: PretrainedModel, vae: PretrainedModel | None = None) -> VideoGeometry:
        """The token geometry of a loaded model (from its config, and the VAE's when given)."""
        raise NotImplementedError

    def sites(self, model: PretrainedModel) -> list[Site]:
        """The model's masked-attention sites from the input side."""
        raise NotImplementedError

    def default_num_blocks(self, model: PretrainedModel) -> int:
        """K when none is given. DiTs: a quarter of the blocks, at least one (the paper's 10 of 40)."""
        return max(1, round(len(self.sites(model)) / 4))

    def local_prompt_width(self, model: PretrainedModel) -> int | None:
        """Width D of the encoder states a local prompt must have (None: the model takes no prompt)."""
        raise NotImplementedError

    def local_context_projector(self, model: PretrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model's own map from text-encoder states to what its attention layers read."""
        raise NotImplementedError

    def layer_context_width(self, model: PretrainedModel, dim: int) -> int | None:
        """Width of the context a new masked cross-attention layer reads (None: no such layer)."""
        raise NotImplementedError

    def site_processors(self, name: str, site: Site, modules: dict[str, nn.Module], saved: dict[str, Any],
                        state: Any, layers: Any, local: Any) -> tuple[dict[str, Any], list[Any]]:
        """The masked processors of one site and any forward hooks they need.

        Args:
            name: the denoiser's name in the pipeline (for messages and call counts).
            site: the site.
            modules: ``dict(model.named_modules())``.
            saved: the model's original processors (``dict(model.attn_processors)``).
            state: the installation's ``attention.state.MaskedAttentionState``.
            layers: the site's new layers (``attention.layers.MaskedBlockLayers``) or None.
            local: the local prompts as the model reads them (``attention.state.LocalContext``) or None.
        Returns:
            ({processor key: processor}, [hook handles to remove on exit]).
        """
        raise NotImplementedError

    # -------------------------------------------------------------------- its diffusers pipelines
    def detect(self, index: ModelIndex, refuse: Callable[[str], TTMInputError]) -> Variant:
        """The variant of a folder whose pipeline class is one of ``pipeline_classes``; raises
        ``refuse(why)`` when the folder is of this family but not one the engine runs."""
        raise NotImplementedError

    def variant(self, key: str) -> Variant:
        for variant in self.variants:
            if variant.key == key:
                return variant
        raise KeyError(key)

    def latents_to_bcfhw(self, x: torch.Tensor) -> torch.Tensor:
        """The pipeline's latents (as ``prepare_latents`` returns them) -> ``[B, C, F, H, W]``."""
        return x

    def latents_from_bcfhw(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def step_to_bcfhw(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``scheduler.step``'s ``prev_sample`` -> ``[B, C, F, H, W]``."""
        return self.latents_to_bcfhw(x)

    def step_from_bcfhw(self, x: torch.Tensor) -> torch.Tensor:
        return self.latents_from_bcfhw(x).contiguous()

    def encode_reference(self, pipeline: Any, video: torch.Tensor, device: torch.device) -> torch.Tensor:
        """VAE latents of a video in the pipeline's latent space (scaled / normalised as it decodes).
        Called without gradients.

        Args:
            video: float ``[F, H, W, 3]`` in 0..1.
            device: where the VAE runs (its execution device).
        Returns:
            float32 ``[1, C, F_lat, H_lat, W_lat]`` on ``device``.
        """
        raise NotImplementedError

    def clean_prompt(self, text: str) -> str:
        """The text as the pipeline's tokenizer sees it (after the pipeline's own cleaning)."""
        return text

    def text_tokens(self, pipeline: Any) -> int:
        """The most tokens its text encoder reads per prompt (special tokens included)."""
        raise NotImplementedError

    def encode_prompt(self, pipeline: Any, text: str, device: torch.device, max_tokens: int) -> torch.Tensor:
        """``[1, L, D]``: one prompt, encoded exactly as the pipeline encodes its own prompt."""
        raise NotImplementedError

    def fixed_size(self, variant: Variant, pipeline: Any, geometry: VideoGeometry
                   ) -> tuple[tuple[int, int], int] | None:
        """((height, width), frames) when the model generates only one size, else None."""
        return None

    def pipeline_kwargs(self, pipeline: Any, fps: float) -> dict[str, object]:
        """Family-specific arguments of the pipeline call."""
        return {}

    def load_overrides(self, folder: Path, dtype: torch.dtype, weights_variant: str | None) -> dict[str, object]:
        """Components to load differently from ``dtype`` (passed to ``from_pretrained``)."""
        return {}

    @contextmanager
    def conditional_rows(self, denoisers: list[nn.Module], state: Any, negative: torch.Tensor | None,
                         do_cfg: bool) -> Iterator[None]:
        """Keep the local prompts on the conditional rows of classifier-free guidance.

        Default: the pipeline batches [uncond ; cond] in one model call.
        """
        if do_cfg:
            state.cross_rows = (False, True)
        yield
