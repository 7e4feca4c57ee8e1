"""TTM_VideoModelLoader: a diffusers-format video model from ComfyUI's models/diffusers folder.

The model travels as a ``LoadedVideoModel`` (frozen dataclass): the ttm_core ``VideoModel`` plus
how ComfyUI manages its memory. Memory management, decided per ``offload`` option:

* ``none``: every component (text encoder, image encoder, denoiser(s), VAE) is wrapped in its own
  ``comfy.model_patcher.ModelPatcher`` and loaded with ``comfy.model_management.load_models_gpu``
  before it is used (text encoder first, then the rest). ComfyUI therefore counts their memory,
  frees other nodes' models to make room, and unloads ours when a later node needs the space
  (its next run loads them again). Fastest, most VRAM.
* ``model`` / ``sequential``: diffusers' own ``enable_model_cpu_offload`` (one component on the GPU
  at a time) / ``enable_sequential_cpu_offload`` (weights streamed layer by layer; least VRAM,
  slowest), both through accelerate's hooks. The weights live in CPU RAM between uses, so ComfyUI
  has nothing to unload; before a run ComfyUI frees the memory the run needs
  (``comfy.model_management.free_memory``). On a CPU-only ComfyUI both behave as ``none``.

ComfyUI's ``diffusers`` model folder (``models/diffusers``, registered by ComfyUI itself and
listed the way its own DiffusersLoader lists it) holds the models; nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io, ui
from torch import nn

from ..ttm_core.errors import TTMInputError
from ..ttm_core.stage2.diffusers.loader import DTYPES, VideoModel, load_video_model
from ..ttm_core.stage2.families.detect import detect_family, list_model_folders, resolve_model_folder
from ._common import CATEGORY, check_combo
from ._models import compute_dtype

logger = logging.getLogger(__name__)

VideoModelSocket = io.Custom("TTM_VIDEO_MODEL")
"""nodes.model_nodes.LoadedVideoModel: a loaded diffusers video model and its memory management."""

DTYPE_OPTIONS = ("auto", "bf16", "fp16", "fp32")
OFFLOAD_OPTIONS = ("none", "model", "sequential")
FOLDER_NAME = "diffusers"
MIB = 1 << 20


def model_roots() -> list[Path]:
    """ComfyUI's folders for diffusers-format models (models/diffusers plus extra_model_paths)."""
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]


def available_models() -> list[str]:
    return list_model_folders(model_roots())


class _Component(nn.Module):
    """One pipeline component as ComfyUI's ModelPatcher wants a model: it sets ``.device`` on it,
    which diffusers and transformers models expose as a read-only property."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = module
        self.device = device


@dataclass(frozen=True, eq=False)
class LoadedVideoModel:
    """A diffusers video model as the nodes pass it around.

    Attributes:
        model: the ttm_core handle (family, pipeline, dtype).
        offload: ``none`` | ``model`` | ``sequential`` (see the module docstring).
        device: the device ComfyUI computes on.
        patchers: (component name, ModelPatcher) pairs with offload ``none``; empty otherwise.
        notes: what the loader decided (dtype, offload), for the UI.
    """

    model: VideoModel
    offload: str
    device: torch.device
    patchers: tuple[tuple[str, comfy.model_patcher.ModelPatcher], ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD_OPTIONS:
            raise ValueError(f"unknown offload {self.offload!r}")
        if self.offload == "none" and not self.patchers:
            raise ValueError("offload none needs one ModelPatcher per component")

    def prepare(self, phase: str, names: list[str]) -> None:
        """ttm_core's ``PrepareFn``: load what a phase needs through ComfyUI's model management."""
        if self.offload == "none":
            wanted = [patcher for name, patcher in self.patchers if name in names]
            if wanted:
                mm.load_models_gpu(wanted, force_full_load=True)
            return
        sizes = self.model.parameter_bytes()
        if self.offload == "model":
            needed = max((sizes[n] for n in names if n in sizes), default=0)
        else:
            needed = 0
        mm.free_memory(needed + mm.minimum_inference_memory(), self.device)


def _offload_devices(model: VideoModel) -> dict[str, torch.device]:
    groups = model.component_groups()
    devices = {}
    for name in model.components():
        if name in groups["text"] or name in groups["image"]:
            devices[name] = mm.text_encoder_offload_device()
        elif name in groups["vae"]:
            devices[name] = mm.vae_offload_device()
        else:
            devices[name] = mm.unet_offload_device()
    return devices


def register(model: VideoModel, offload: str) -> LoadedVideoModel:
    """Wrap a loaded model for ComfyUI's memory management (see the module docstring)."""
    device = mm.get_torch_device()
    notes = [f"{model.variant.label}, {str(model.dtype).removeprefix('torch.')}"]
    patchers: list[tuple[str, comfy.model_patcher.ModelPatcher]] = []
    if offload != "none" and mm.is_device_cpu(device):
        notes.append(f"offload {offload!r} needs a GPU; on the CPU every component simply stays in RAM")
        offload = "none"
    if offload == "none":
        offload_devices = _offload_devices(model)
        for name, module in model.components().items():
            module.to(offload_devices[name])
            holder = _Component(module, offload_devices[name])
            patchers.append((name, comfy.model_patcher.ModelPatcher(holder, device, offload_devices[name])))
    elif offload == "model":
        model.pipeline.enable_model_cpu_offload(device=device)
    else:
        model.pipeline.enable_sequential_cpu_offload(device=device)
    if offload != "none":
        notes.append(f"offload {offload}")
    return LoadedVideoModel(model, offload, device, tuple(patchers), tuple(notes))


def load(name: str, dtype: str, offload: str, vae_tiling: bool) -> LoadedVideoModel:
    """Resolve, detect (JSON only), load and register a model folder."""
    folder = resolve_model_folder(name, model_roots())
    detected = detect_family(folder)
    device = mm.get_torch_device()
    torch_dtype = compute_dtype("auto", device) if dtype == "auto" else DTYPES[dtype]
    model = load_video_model(folder, torch_dtype, vae_tiling, name=name, detected=detected)
    loaded = register(model, offload)
    sizes = model.parameter_bytes()
    logger.info("loaded %s (%s): %s", name, model.variant.label,
                ", ".join(f"{n} {s / MIB:.0f} MiB" for n, s in sizes.items()))
    return loaded


class VideoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_VideoModelLoader",
            display_name="Video Model Loader (Through-The-Mask)",
            category=CATEGORY,
            description="Load a diffusers-format image-to-video model (CogVideoX 1.0/1.5 I2V, I2VGen-XL, Wan 2.1 / "
                        "2.2 in diffusers format) from models/diffusers for Masked Motion To Video's diffusers "
                        "backend. Never downloads.",
            inputs=[
                io.Combo.Input("model", options=available_models(),
                               tooltip="A folder under models/diffusers holding model_index.json (a whole "
                                       "'-Diffusers' repository, e.g. CogVideoX-5b-I2V). The family is detected "
                                       "from model_index.json."),
                io.Combo.Input("dtype", options=list(DTYPE_OPTIONS), default="auto",
                               tooltip="Weights' precision. auto: bf16 on GPUs that support it, else fp16; fp32 on "
                                       "the CPU. Wan's VAE always stays fp32."),
                io.Combo.Input("offload", options=list(OFFLOAD_OPTIONS), default="none",
                               tooltip="none: all components on the GPU, managed by ComfyUI (fastest). model: one "
                                       "component on the GPU at a time. sequential: weights streamed layer by "
                                       "layer (least VRAM, slowest). Both offloads need a GPU."),
                io.Boolean.Input("vae_tiling", default=False,
                                 tooltip="Encode and decode with the VAE in tiles: much less memory at 480p and "
                                         "above, slightly slower, rarely visible seams."),
            ],
            outputs=[VideoModelSocket.Output("video_model", tooltip="The loaded model, for Masked Motion To Video "
                                                                    "(backend diffusers).")],
        )

    @classmethod
    def validate_inputs(cls, model=None, dtype=None, offload=None) -> bool | str:
        for name, value, options in (("dtype", dtype, DTYPE_OPTIONS), ("offload", offload, OFFLOAD_OPTIONS)):
            combo = check_combo(name, value, options)
            if combo is not True:
                return combo
        if isinstance(model, str):
            try:  # JSON only: an unknown or unsupported folder is refused before any weight is read
                detect_family(resolve_model_folder(model, model_roots()))
            except TTMInputError as err:
                return str(err)
        return True

    @classmethod
    def execute(cls, model: str, dtype: str, offload: str, vae_tiling: bool) -> io.NodeOutput:
        loaded = load(model, dtype, offload, vae_tiling)
        return io.NodeOutput(loaded, ui=ui.PreviewText("; ".join(loaded.notes)))
