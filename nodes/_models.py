"""Model folders, devices and ComfyUI memory management for the pack's loaders.

Folders (under ComfyUI's ``models/``; extra paths via extra_model_paths.yaml work too):
``sam2`` (SAM 2 checkpoints and HF folders), ``sam3`` (SAM 3 HF folders, for its tracker),
``LLM`` (transformers chat models),
``grounding-dino`` (open-vocabulary detector folders: Grounding DINO or OWLv2),
``ttm`` (trained Through-The-Mask checkpoints written by ttm-train, ``.safetensors``). They are
registered with folder_paths by ``register_model_folders()``, called from the extension's
``on_load`` and again (idempotently) before any listing, never at import.

Loaded torch modules are wrapped in a ComfyUI ``ModelPatcher`` (load device from
``model_management.get_torch_device()``, offload device from ``unet_offload_device()``), so
ComfyUI moves them to the GPU when a node needs them and can evict them when a video model
needs the memory, exactly like its own models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.model_patcher
import folder_paths
import torch

from ..ttm_core.errors import TTMInputError
from ..ttm_core.model_files import list_entries, resolve_entry
from ..ttm_core.segment.sam3 import SAM3_KINDS

SAM2_FOLDER = "sam2"
SAM3_FOLDER = "sam3"
LLM_FOLDER = "LLM"
DETECTOR_FOLDER = "grounding-dino"
TRAINED_FOLDER = "ttm"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
DEVICES = ("auto", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def register_model_folders() -> None:
    """Add the pack's model folders to folder_paths (idempotent; no folders are created)."""
    for name in (SAM2_FOLDER, SAM3_FOLDER, LLM_FOLDER, DETECTOR_FOLDER, TRAINED_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def roots(folder: str) -> list[Path]:
    register_model_folders()
    return [Path(p) for p in folder_paths.get_folder_paths(folder)]


def sam2_entries() -> list[str]:
    return list_entries(roots(SAM2_FOLDER), suffixes=CHECKPOINT_SUFFIXES,
                        folder_types=lambda kind: kind in ("sam2", "sam2_video"))


def sam3_entries() -> list[str]:
    return list_entries(roots(SAM3_FOLDER), folder_types=lambda kind: kind in SAM3_KINDS)


def llm_entries() -> list[str]:
    return list_entries(roots(LLM_FOLDER), folder_types=lambda kind: True)


def detector_entries() -> list[str]:
    return list_entries(roots(DETECTOR_FOLDER), folder_types=lambda kind: True)


def resolve(folder: str, entry: str, input_name: str = "model") -> Path:
    return resolve_entry(roots(folder), entry, input_name, folder)


def check_entry(name: str, value: object, entries: list[str], folder: str) -> bool | str:
    """validate_inputs helper for model combos (ComfyUI does not check V3 combo values)."""
    if value is None or value in entries:
        return True
    if not entries:
        return (f"{name}: no models in models/{folder}. Fix: put the weights there (see the pack's "
                f"docs/SEGMENTATION_AND_PROMPTS.md) and refresh (R)")
    return f"{name}: {value!r} is not in models/{folder} ({', '.join(entries[:8])}). Fix: pick one of them"


def devices(device: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for a loader's ``device`` input."""
    if device == "cpu":
        cpu = torch.device("cpu")
        return cpu, cpu
    return comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute precision for ``precision`` on ``device`` (float32 on CPUs for 'auto')."""
    if precision == "fp32" or device.type == "cpu":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if comfy.model_management.should_use_bf16(device):
        return torch.bfloat16
    if comfy.model_management.should_use_fp16(device):
        return torch.float16
    return torch.float32


class _Modules(torch.nn.Module):
    """Holds the loaded modules for ModelPatcher (which sets ``.device`` on what it manages;
    SAM2 and transformers models expose ``device`` as a read-only property)."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)


@dataclass(frozen=True, eq=False)
class Managed:
    """A ttm_core model handle plus the ComfyUI ModelPatcher that moves its modules.

    Attributes:
        handle: the ttm_core handle (Sam2Model, Detector, LocalLLM).
        patcher: ComfyUI's ModelPatcher over the handle's modules.
        dtype: the compute dtype chosen in the loader.
    """

    handle: Any
    patcher: Any
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if not isinstance(self.patcher, comfy.model_patcher.ModelPatcher):
            raise TTMInputError("model", "the model has no ComfyUI patcher", "load it with the pack's loader node")
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TTMInputError("precision", f"unsupported dtype {self.dtype}", "use fp32, fp16 or bf16")

    def load(self) -> torch.device:
        """Put the modules on the load device (ComfyUI frees memory for them); returns it."""
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.patcher.load_device


def manage(handle: Any, modules: list[torch.nn.Module], load_device: torch.device, offload_device: torch.device,
           dtype: torch.dtype) -> Managed:
    patcher = comfy.model_patcher.ModelPatcher(_Modules(modules), load_device=load_device,
                                               offload_device=offload_device)
    return Managed(handle, patcher, dtype)
