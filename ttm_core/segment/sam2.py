"""Loading SAM 2 / 2.1 from the files users have, without any download.

Two formats are supported, both found under ComfyUI's ``models/sam2`` folder:

* **Meta checkpoints** (``sam2_hiera_tiny.pt``, ``sam2.1_hiera_large.safetensors``, ...): a state
  dict (``.pt`` holding ``{"model": state_dict}`` as Meta ships it, or a plain state dict;
  ``.safetensors`` with the same keys). They run through Meta's ``sam2`` package. The Hydra
  config is *inferred from the checkpoint*: the version (2 or 2.1) from the keys that only 2.1
  has, the size (tiny / small / base+ / large) from the Hiera stage layout, and every width from
  the tensor shapes. A ``<checkpoint stem>.yaml`` beside the file overrides the inference (for
  fine-tunes with a custom architecture). Loaded with ``weights_only=True`` / safetensors.
* **Hugging Face folders** (``config.json`` with ``model_type`` ``sam2`` or ``sam2_video``,
  ``model.safetensors``, the processor files): transformers' ``Sam2Model`` for images and, for
  ``sam2_video`` folders when asked, ``Sam2VideoModel`` for tracking.

The ``sam2`` package is optional and imported lazily: ``import sam2`` initialises Hydra's global
config module, which would make a later ``initialize_config_module`` of another pack fail, so
that global state is restored right after the import (the pack itself never uses Hydra's global
state: configs are read with OmegaConf and instantiated with ``hydra.utils.instantiate``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TTMInputError
from ..model_files import model_type
from ..types import PretrainedModel

LOG = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
SAM2_INSTALL_HINT = (
    "install Meta's sam2 package into ComfyUI's Python: "
    "SAM2_BUILD_CUDA=0 python -m pip install --no-deps --no-build-isolation sam2==1.1.0 "
    "and python -m pip install hydra-core iopath omegaconf (see docs/SEGMENTATION_AND_PROMPTS.md), "
    "or use a Hugging Face SAM2 folder instead"
)

# Hiera stage layouts of Meta's four sizes -> the packaged config's size suffix.
_FAMILIES: dict[tuple[int, ...], str] = {
    (1, 2, 7, 2): "t",
    (1, 2, 11, 2): "s",
    (2, 3, 16, 3): "b+",
    (2, 6, 36, 4): "l",
}
_FAMILY_NAMES = {"t": "tiny", "s": "small", "b+": "base+", "l": "large"}


# --------------------------------------------------------------------------- the sam2 package

def sam2_available() -> bool:
    """Whether Meta's ``sam2`` package is installed (found without importing it)."""
    try:
        return importlib.util.find_spec("sam2") is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules["sam2"] = None
        return False


def import_sam2() -> Any:
    """Import Meta's ``sam2`` package, leaving Hydra's global state as it was.

    Raises TTMInputError naming the ``model`` input and how to install the package when it
    is missing.
    """
    if not sam2_available():
        raise TTMInputError("model", "this is a Meta SAM2 checkpoint but the sam2 package is not installed",
                            SAM2_INSTALL_HINT)
    try:
        from hydra.core.global_hydra import GlobalHydra
    except ImportError as err:
        raise TTMInputError("model", f"sam2 needs hydra-core ({err})", SAM2_INSTALL_HINT) from None
    hydra_state = GlobalHydra.instance()
    was_initialized = hydra_state.is_initialized()
    try:
        module = importlib.import_module("sam2")
        importlib.import_module("sam2.sam2_video_predictor")
        importlib.import_module("sam2.sam2_image_predictor")
    except ImportError as err:  # installed without its dependencies (hydra-core, iopath, omegaconf)
        raise TTMInputError("model", f"the sam2 package does not import ({err})", SAM2_INSTALL_HINT) from None
    finally:
        if not was_initialized and hydra_state.is_initialized():
            # sam2/__init__ called initialize_config_module("sam2"); undo it so other packs can
            # initialise Hydra themselves. We never compose through the global state.
            hydra_state.clear()
    return module


def _packaged_config(version: str, size: str) -> Path:
    """Path of the yaml the sam2 package ships for a version ('2' / '2.1') and size suffix."""
    sam2 = import_sam2()
    root = Path(sam2.__file__).parent / "configs"
    name = f"sam2.1_hiera_{size}.yaml" if version == "2.1" else f"sam2_hiera_{size}.yaml"
    path = root / ("sam2.1" if version == "2.1" else "sam2") / name
    if not path.is_file():
        raise TTMInputError("model", f"the sam2 package has no config {name}", SAM2_INSTALL_HINT)
    return path


# --------------------------------------------------------------------------- checkpoints

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Meta-format checkpoint (``.pt`` / ``.pth`` / ``.safetensors``), on CPU.

    ``.pt`` files are read with ``weights_only=True`` (no code runs). A ``{"model": ...}``
    wrapper and a common ``model.`` key prefix are removed.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:  # unreadable or unsafe
        raise TTMInputError("model", f"{path.name} could not be read as a checkpoint ({err})",
                            "re-download the file; .pt files must be plain state dicts (weights only)") from None
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise TTMInputError("model", f"{path.name} holds no state dict of tensors",
                            "use Meta's SAM 2 / 2.1 checkpoint files")
    state = dict(data)
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _shape(state: Mapping[str, torch.Tensor], key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise TTMInputError("model", f"{name} is not a SAM 2 checkpoint (no {key})",
                            "use Meta's SAM 2 / 2.1 checkpoints (sam2_hiera_*.pt, sam2.1_hiera_*.pt)")
    return tuple(state[key].shape)


def infer_meta_config(state: Mapping[str, torch.Tensor], name: str = "checkpoint") -> tuple[Any, str]:
    """The OmegaConf model config of a Meta SAM2 state dict, and a description of it.

    The version and size pick the packaged yaml (heads, windows and global-attention blocks,
    which weights do not reveal, come from it); every width, depth and count that the tensors
    do reveal is then read from their shapes, so reduced-width variants of the four layouts
    load too. ``load_state_dict(strict=True)`` afterwards checks the result.
    """
    from omegaconf import OmegaConf

    version = "2.1" if ("no_obj_embed_spatial" in state or "obj_ptr_tpos_proj.weight" in state) else "2"
    depth = _count(state, r"image_encoder\.trunk\.blocks\.(\d+)\.")
    if depth == 0:
        _shape(state, "image_encoder.trunk.blocks.0.norm1.weight", name)
    starts = [0] + [i for i in range(depth) if f"image_encoder.trunk.blocks.{i}.proj.weight" in state]
    stages = tuple(b - a for a, b in zip(starts, [*starts[1:], depth]))
    size = _FAMILIES.get(stages)
    if size is None:
        known = ", ".join(f"{_FAMILY_NAMES[v]} {list(k)}" for k, v in _FAMILIES.items())
        raise TTMInputError("model", f"{name} has the Hiera stage layout {list(stages)}, which is none of "
                            f"Meta's ({known})",
                            f"put the model's yaml config beside it as {Path(name).stem}.yaml")
    cfg = OmegaConf.load(_packaged_config(version, size))
    model = cfg.model

    trunk = model.image_encoder.trunk
    trunk.embed_dim = _shape(state, "image_encoder.trunk.patch_embed.proj.weight", name)[0]
    trunk.window_pos_embed_bkg_spatial_size = list(_shape(state, "image_encoder.trunk.pos_embed", name)[2:])
    window0 = _shape(state, "image_encoder.trunk.pos_embed_window", name)[2]
    if "window_spec" in trunk:
        trunk.window_spec[0] = window0
    elif window0 != 8:
        trunk.window_spec = [window0, 4, 14, 7]

    neck = model.image_encoder.neck
    levels = _count(state, r"image_encoder\.neck\.convs\.(\d+)\.")
    d_model = _shape(state, "image_encoder.neck.convs.0.conv.weight", name)[0]
    neck.d_model = d_model
    neck.position_encoding.num_pos_feats = d_model
    neck.backbone_channel_list = [_shape(state, f"image_encoder.neck.convs.{i}.conv.weight", name)[1]
                                  for i in range(levels)]

    attention = model.memory_attention
    attention.d_model = d_model
    attention.num_layers = _count(state, r"memory_attention\.layers\.(\d+)\.")
    layer = attention.layer
    layer.d_model = d_model
    layer.dim_feedforward = _shape(state, "memory_attention.layers.0.linear1.weight", name)[0]
    layer.self_attention.embedding_dim = d_model
    layer.cross_attention.embedding_dim = d_model
    layer.cross_attention.kv_in_dim = _shape(state, "memory_attention.layers.0.cross_attn_image.k_proj.weight",
                                             name)[1]
    feat = model.image_size // 16
    layer.self_attention.feat_sizes = [feat, feat]
    layer.cross_attention.feat_sizes = [feat, feat]

    encoder = model.memory_encoder
    mem_dim = (_shape(state, "memory_encoder.out_proj.weight", name)[0]
               if "memory_encoder.out_proj.weight" in state else d_model)
    encoder.out_dim = mem_dim
    encoder.in_dim = d_model
    encoder.position_encoding.num_pos_feats = mem_dim
    last = max(int(m.group(1)) for k in state
               if (m := re.match(r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.weight", k)))
    encoder.mask_downsampler.embed_dim = _shape(state, f"memory_encoder.mask_downsampler.encoder.{last}.weight",
                                                name)[0]
    encoder.fuser.num_layers = _count(state, r"memory_encoder\.fuser\.layers\.(\d+)\.")
    encoder.fuser.layer.dim = _shape(state, "memory_encoder.fuser.layers.0.dwconv.weight", name)[0]

    model.num_maskmem = _shape(state, "maskmem_tpos_enc", name)[0]
    description = f"SAM {version} Hiera-{_FAMILY_NAMES[size]} layout (config inferred from the checkpoint)"
    return cfg, description


def _video_overrides(model_cfg: Any) -> None:
    """The settings Meta's build_sam2_video_predictor applies, minus the CUDA-only hole filling."""
    model_cfg._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    extra = model_cfg.get("sam_mask_decoder_extra_args") or {}
    model_cfg.sam_mask_decoder_extra_args = {
        **extra,
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    model_cfg.binarize_mask_from_pts_for_mem_enc = True
    # Meta fills small holes with a CUDA extension that a CPU-safe install does not build.
    model_cfg.fill_hole_area = 0


def build_meta_model(cfg: Any) -> torch.nn.Module:
    """Instantiate a SAM2VideoPredictor (a SAM2Base, so it also serves images) from a config."""
    import_sam2()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    _video_overrides(cfg.model)
    return instantiate(cfg.model, _recursive_=True)


# --------------------------------------------------------------------------- the handle

@dataclass(frozen=True, eq=False)
class Sam2Model:
    """A loaded SAM2: what travels between the loader and the segmentation nodes.

    Attributes:
        name: the file or folder name the user picked (for messages).
        backend: ``"meta"`` (the sam2 package) or ``"hf"`` (transformers).
        description: what was loaded, e.g. the inferred config.
        model: Meta: a ``SAM2VideoPredictor`` (serves images and video); HF: ``Sam2Model``.
        processor: HF only: the ``Sam2Processor`` (image resizing, prompt scaling).
        video_model: the model that tracks through a video, or None when not loaded (HF folders
            load ``Sam2VideoModel`` only on request; Meta: the same module as ``model``).
        video_processor: HF only: the ``Sam2VideoProcessor`` that goes with ``video_model``.
    """

    name: str
    backend: str
    description: str
    model: PretrainedModel
    processor: Any = None
    video_model: PretrainedModel | None = None
    video_processor: Any = None

    def __post_init__(self) -> None:
        if self.backend not in ("meta", "hf"):
            raise TTMInputError("model", f"unknown SAM2 backend {self.backend!r}", "use 'meta' or 'hf'")
        if not isinstance(self.model, torch.nn.Module):
            raise TTMInputError("model", "the SAM2 model is not a torch module", "load it with the SAM2 loader")
        if self.backend == "hf" and self.processor is None:
            raise TTMInputError("model", f"{self.name} has no SAM2 processor", "load the folder with the SAM2 loader")
        if self.video_model is not None and self.backend == "hf" and self.video_processor is None:
            raise TTMInputError("model", f"{self.name}: the video model has no video processor",
                                "load the folder with the SAM2 loader")

    @property
    def image_size(self) -> int:
        """Side of the square image the model sees (1024 for Meta's checkpoints)."""
        if self.backend == "meta":
            return int(self.model.image_size)
        size = self.model.config.vision_config.backbone_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def can_track(self) -> bool:
        return self.video_model is not None

    def modules(self) -> list[torch.nn.Module]:
        """The distinct torch modules (to move between devices or register with a memory manager)."""
        found: list[torch.nn.Module] = [self.model]
        if self.video_model is not None and self.video_model is not self.model:
            found.append(self.video_model)
        return found


# --------------------------------------------------------------------------- loading

def hf_sam2_kind(folder: Path) -> str | None:
    """``"sam2"`` / ``"sam2_video"`` for a Hugging Face SAM2 folder, None for anything else."""
    kind = model_type(folder)
    return kind if kind in ("sam2", "sam2_video") else None


def load_sam2(path: Path, *, video: bool = True, device: torch.device | str = "cpu") -> Sam2Model:
    """Load a Meta checkpoint file or a Hugging Face folder from ``path`` (never downloads).

    Args:
        path: a ``.pt`` / ``.pth`` / ``.safetensors`` file, or a folder with ``config.json``.
        video: HF folders of type ``sam2_video``: also load ``Sam2VideoModel`` for tracking
            (Meta checkpoints always can track: one module serves both).
        device: where the weights go (float32; callers choose the compute dtype by autocast).
    """
    path = Path(path)
    if path.is_dir():
        return _load_hf(path, video, device)
    if not path.is_file():
        raise TTMInputError("model", f"{path} does not exist", "put SAM2 checkpoints into ComfyUI's models/sam2 folder")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise TTMInputError("model", f"{path.name} is not a .pt, .pth or .safetensors checkpoint",
                            "pick a SAM2 checkpoint or a Hugging Face SAM2 folder")
    return _load_meta(path, device)


def _load_meta(path: Path, device: torch.device | str) -> Sam2Model:
    import_sam2()
    from omegaconf import OmegaConf

    state = read_state_dict(path)
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        cfg = OmegaConf.load(sidecar)
        if "model" not in cfg:
            raise TTMInputError("model", f"{sidecar.name} has no 'model' section", "use a SAM2 Hydra config yaml")
        description = f"SAM2 with the config {sidecar.name}"
    else:
        cfg, description = infer_meta_config(state, path.name)
    model = build_meta_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TTMInputError("model", f"{path.name} does not match the {description} "
                            f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})",
                            f"put the model's yaml config beside it as {path.stem}.yaml")
    model = model.to(device).eval()
    LOG.info("loaded %s: %s", path.name, description)
    return Sam2Model(path.name, "meta", description, model, video_model=model)


def _load_hf(folder: Path, video: bool, device: torch.device | str) -> Sam2Model:
    kind = hf_sam2_kind(folder)
    if kind is None:
        raise TTMInputError("model", f"{folder.name} is not a Hugging Face SAM2 folder (config.json with "
                            "model_type 'sam2' or 'sam2_video')", "pick a SAM2 checkpoint file or SAM2 folder")
    from transformers import Sam2Model as HFSam2Model
    from transformers import Sam2Processor

    try:
        model: PretrainedModel = HFSam2Model.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        processor = Sam2Processor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise TTMInputError("model", f"{folder.name} could not be loaded ({err})",
                            "the folder needs config.json, model.safetensors and the processor files "
                            "(preprocessor_config.json) as saved by transformers") from None
    model = model.to(device).eval()
    video_model: PretrainedModel | None = None
    video_processor: Any = None
    if video and kind == "sam2_video":
        from transformers import Sam2VideoModel, Sam2VideoProcessor

        loaded: PretrainedModel = Sam2VideoModel.from_pretrained(str(folder), local_files_only=True,
                                                                 dtype=torch.float32)
        video_model = loaded.to(device).eval()
        video_processor = Sam2VideoProcessor.from_pretrained(str(folder), local_files_only=True)
    description = f"Hugging Face {kind} folder"
    LOG.info("loaded %s: %s", folder.name, description)
    return Sam2Model(folder.name, "hf", description, model, processor, video_model, video_processor)
