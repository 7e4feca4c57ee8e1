"""Loading a diffusers-format image-to-video model from a local folder (never downloads).

``load_video_model(folder, dtype)`` detects the variant from ``model_index.json``
(``families.detect.detect_family``), loads the pipeline with ``from_pretrained(local_files_only=True)``
and returns a ``VideoModel``: a typed, frozen handle that travels between the nodes. Device
placement and offloading are the caller's business (the ComfyUI adapter registers the
components with ComfyUI's model management); the handle only lists the components.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...errors import TTMInputError
from ...types import PretrainedModel
from ..families import VARIANTS, Family, Variant, family_of_variant
from ..families.detect import DetectedModel, detect_family

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

_TEXT = ("text_encoder",)
_VAE = ("vae",)


@dataclass(frozen=True, eq=False)
class VideoModel:
    """A loaded diffusers image-to-video model.

    Attributes:
        name: the folder name the user picked (as listed under models/diffusers).
        folder: the model folder.
        variant: which model it is (size rules, defaults).
        pipeline: the diffusers pipeline (``variant.pipeline_class``).
        dtype: the dtype the components were loaded in (Wan's VAE stays float32, as the Wan
            authors and diffusers recommend).
        vae_tiling: whether the VAE encodes and decodes in tiles.
    """

    name: str
    folder: Path
    variant: Variant
    pipeline: PretrainedModel
    dtype: torch.dtype
    vae_tiling: bool = False

    def __post_init__(self) -> None:
        if VARIANTS.get(self.variant.key) is not self.variant:
            raise ValueError(f"unknown variant {self.variant.key!r}")
        for name in self.variant.denoisers:
            if not isinstance(getattr(self.pipeline, name, None), nn.Module):
                raise ValueError(f"the {self.variant.label} pipeline has no {name}")

    @property
    def family(self) -> Family:
        """The family adapter (layout, reference encoding, prompts, pipeline arguments)."""
        return family_of_variant(self.variant)

    @property
    def denoisers(self) -> list[nn.Module]:
        """The denoising networks (both Wan 2.2 A14B experts)."""
        return [getattr(self.pipeline, name) for name in self.variant.denoisers]

    def components(self) -> dict[str, nn.Module]:
        """Every torch module of the pipeline by component name (text/image encoders, denoisers, VAE)."""
        out = {}
        for name, value in self.pipeline.components.items():
            if isinstance(value, nn.Module):
                out[name] = value
        return out

    def component_groups(self) -> dict[str, list[str]]:
        """Component names by role: ``text`` (prompt encoders), ``image`` (image encoders),
        ``denoise`` (the denoisers), ``vae``."""
        names = list(self.components())
        groups = {"text": [n for n in names if n in _TEXT], "denoise": list(self.variant.denoisers),
                  "vae": [n for n in names if n in _VAE]}
        groups["image"] = [n for n in names if n not in groups["text"] + groups["denoise"] + groups["vae"]]
        return groups

    def parameter_bytes(self) -> dict[str, int]:
        """Bytes of parameters and buffers per component (what each needs on the device)."""
        sizes = {}
        for name, module in self.components().items():
            sizes[name] = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        return sizes

    @property
    def text_tokens(self) -> int:
        """The most tokens its text encoder reads per prompt (special tokens included)."""
        return self.family.text_tokens(self.pipeline)


def weights_variant(folder: Path, components: list[str]) -> str | None:
    """``"fp16"`` when a component has only ``*.fp16.*`` weight files (e.g. ali-vilab/i2vgen-xl downloaded with
    its fp16 variant only), else None (the plain files are used)."""
    for name in components:
        files = [p.name for p in (folder / name).glob("*") if p.suffix in (".safetensors", ".bin", ".json")]
        weights = [f for f in files if f.startswith(("diffusion_pytorch_model", "model", "pytorch_model"))]
        plain = [f for f in weights if ".fp16." not in f]
        if weights and not plain and any(".fp16." in f for f in weights):
            return "fp16"
    return None


def load_video_model(folder: Path, dtype: torch.dtype = torch.float32, vae_tiling: bool = False,
                     name: str | None = None, detected: DetectedModel | None = None) -> VideoModel:
    """Load a supported diffusers-format folder.

    Args:
        folder: the model folder (with ``model_index.json``).
        dtype: the components' dtype (Wan's VAE is kept in float32).
        vae_tiling: let the VAE work in tiles (less memory at high resolution, a little slower).
        name: the name to show in messages (default: the folder name).
        detected: the result of ``detect_family(folder)`` if the caller already has it.
    Raises:
        TTMInputError: the folder is not a supported model (see ``families.detect_family``), or a
            component cannot be loaded (named, with the loader's message).
    """
    detected = detected or detect_family(folder)
    variant = detected.variant
    import diffusers

    pipeline_class = getattr(diffusers, variant.pipeline_class)
    logger.info("loading %s from %s (%s)", variant.label, folder, str(dtype).removeprefix("torch."))
    extra: dict[str, object] = {}
    weights = weights_variant(folder, list(detected.index.components))
    if weights is not None:
        extra["variant"] = weights
    try:
        extra.update(detected.family.load_overrides(folder, dtype, weights))
        pipe = pipeline_class.from_pretrained(str(folder), dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise TTMInputError("model", f"{folder.name!r} ({variant.label}) could not be loaded: {err}",
                            "re-download the folder completely (every component sub-folder with its weights)") from err
    for module in pipe.components.values():
        if isinstance(module, nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)  # progress goes through the caller's callback
    if vae_tiling:
        pipe.vae.enable_tiling()
    return VideoModel(name or folder.name, folder, variant, pipe, dtype, vae_tiling)
