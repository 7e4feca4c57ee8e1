"""Which diffusers-format folders Stage 2 runs, recognised from ``model_index.json`` alone.

A diffusers-format model is a folder with ``model_index.json`` (the pipeline class and one entry
per component) and one sub-folder per component, exactly as the Hugging Face "-Diffusers"
repositories ship it. Detection reads only JSON (no diffusers import, no weights), so a wrong
folder is refused before anything heavy happens, with an error that names what was found.

================================  =================================  ==============================
family                            model_index.json                   told apart by
================================  =================================  ==============================
CogVideoX 1.0 I2V                 CogVideoXImageToVideoPipeline      transformer patch_size_t null
CogVideoX 1.5 I2V                 CogVideoXImageToVideoPipeline      transformer patch_size_t 2
Wan 2.1 I2V (480P / 720P)         WanImageToVideoPipeline            an image_encoder
Wan 2.2 I2V-A14B                  WanImageToVideoPipeline            a transformer_2 (two experts)
Wan 2.2 TI2V-5B                   WanPipeline or WanImageToVideo...  expand_timesteps true
I2VGen-XL                         I2VGenXLPipeline                   -
================================  =================================  ==============================
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import TTMInputError

logger = logging.getLogger(__name__)

CAUSAL_4K1 = "4k+1"
"""Frame rule of the causal video VAEs: 1 + 4k frames (frame 0 alone, then groups of 4)."""
ANY_FRAMES = "any"
"""Frame rule of UNets without temporal compression: any count >= 2."""


@dataclass(frozen=True)
class FamilySpec:
    """What Stage 2 needs to know about one supported model family.

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
            raise ValueError(f"invalid family spec {self.key}")


FAMILIES: dict[str, FamilySpec] = {spec.key: spec for spec in (
    FamilySpec("cogvideox-1.0-i2v", "CogVideoX 1.0 I2V", "CogVideoXImageToVideoPipeline", ("transformer",),
               CAUSAL_4K1, 5, (480, 720), True, 49, 50, 6.0, 8.0, "T5-XXL"),
    FamilySpec("cogvideox-1.5-i2v", "CogVideoX 1.5 I2V", "CogVideoXImageToVideoPipeline", ("transformer",),
               CAUSAL_4K1, 5, (768, 1360), False, 81, 50, 6.0, 16.0, "T5-XXL"),
    FamilySpec("wan2.1-i2v", "Wan 2.1 I2V", "WanImageToVideoPipeline", ("transformer",),
               CAUSAL_4K1, 5, (480, 832), False, 81, 40, 5.0, 16.0, "umT5-XXL"),
    FamilySpec("wan2.2-i2v-a14b", "Wan 2.2 I2V-A14B", "WanImageToVideoPipeline", ("transformer", "transformer_2"),
               CAUSAL_4K1, 5, (480, 832), False, 81, 40, 3.5, 16.0, "umT5-XXL"),
    FamilySpec("wan2.2-ti2v-5b", "Wan 2.2 TI2V-5B", "WanImageToVideoPipeline", ("transformer",),
               CAUSAL_4K1, 5, (704, 1280), False, 121, 50, 5.0, 24.0, "umT5-XXL"),
    FamilySpec("i2vgen-xl", "I2VGen-XL", "I2VGenXLPipeline", ("unet",),
               ANY_FRAMES, 2, (704, 1280), False, 16, 50, 9.0, 16.0, "OpenCLIP ViT-H"),
)}

SUPPORTED_TEXT = ("CogVideoX 1.0 / 1.5 I2V, Wan 2.1 I2V, Wan 2.2 I2V-A14B, Wan 2.2 TI2V-5B or I2VGen-XL in diffusers "
                  "format (a folder with model_index.json, e.g. THUDM/CogVideoX-5b-I2V, "
                  "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers or ali-vilab/i2vgen-xl)")

_UNSUPPORTED_HINTS = {
    "CogVideoXPipeline": "a text-to-video CogVideoX; Stage 2 animates an image, so use CogVideoX-5b-I2V or "
                         "CogVideoX1.5-5B-I2V",
    "CogVideoXVideoToVideoPipeline": "CogVideoX video-to-video; use the I2V model (CogVideoX-5b-I2V)",
    "WanPipeline": "a text-to-video Wan (T2V); use an I2V model such as Wan2.1-I2V-14B-480P-Diffusers, "
                   "Wan2.2-I2V-A14B-Diffusers or Wan2.2-TI2V-5B-Diffusers",
    "StableVideoDiffusionPipeline": "Stable Video Diffusion, which takes no text prompt, so the per-object prompts "
                                    "of Through-The-Mask cannot apply; use I2VGen-XL as the UNet model",
}


@dataclass(frozen=True)
class DetectedModel:
    """A model folder recognised as a supported family.

    Attributes:
        folder: the folder holding ``model_index.json``.
        family: the family it belongs to.
        class_name: ``_class_name`` from ``model_index.json``.
        components: component name -> (library, class) for every non-empty component.
    """

    folder: Path
    family: FamilySpec
    class_name: str
    components: dict[str, tuple[str, str]]


def read_model_index(folder: Path) -> tuple[str, dict[str, tuple[str, str]], dict[str, object]]:
    """(class name, non-empty components, other config entries) of a diffusers folder.

    Raises TTMInputError naming the folder and what it holds when there is no readable index.
    """
    index = folder / "model_index.json"
    if not index.is_file():
        found = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
        raise TTMInputError("model", f"{folder.name!r} has no model_index.json (it holds: "
                            f"{', '.join(found) or 'nothing'}), so it is not a diffusers-format model",
                            f"download a diffusers-format repository as a whole folder; supported: {SUPPORTED_TEXT}")
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TTMInputError("model", f"{folder.name}/model_index.json cannot be read ({err})",
                            "re-download the model's model_index.json") from err
    if not isinstance(data, dict):
        raise TTMInputError("model", f"{folder.name}/model_index.json is not a JSON object",
                            "re-download the model's model_index.json")
    class_name = str(data.get("_class_name", "?"))
    components: dict[str, tuple[str, str]] = {}
    config: dict[str, object] = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 2:
            if value[0] is not None and value[1] is not None:
                components[key] = (str(value[0]), str(value[1]))
        else:
            config[key] = value
    return class_name, components, config


def _component_config(folder: Path, name: str) -> dict[str, object]:
    path = folder / name / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TTMInputError("model", f"{folder.name}/{name}/config.json cannot be read ({err})",
                            "re-download the model folder completely") from err


def _describe(class_name: str, components: dict[str, tuple[str, str]]) -> str:
    parts = ", ".join(f"{name}: {cls}" for name, (_, cls) in sorted(components.items()))
    return f"{class_name} ({parts or 'no components'})"


def detect_family(folder: Path) -> DetectedModel:
    """Recognise the model family of a diffusers-format folder from its JSON files only.

    Raises:
        TTMInputError: naming ``model_index.json``'s class and components when the folder is
            not a supported image-to-video model.
    """
    class_name, components, config = read_model_index(folder)
    found = _describe(class_name, components)

    def refuse(why: str) -> TTMInputError:
        return TTMInputError("model", f"{folder.name!r} holds {found}: {why}", f"use {SUPPORTED_TEXT}")

    key: str | None = None
    if class_name == "CogVideoXImageToVideoPipeline":
        if "transformer" not in components:
            raise refuse("it has no transformer")
        patch_t = _component_config(folder, "transformer").get("patch_size_t")
        key = "cogvideox-1.0-i2v" if patch_t is None else "cogvideox-1.5-i2v"
    elif class_name in ("WanImageToVideoPipeline", "WanPipeline"):
        if "transformer" not in components:
            raise refuse("it has no transformer")
        if config.get("expand_timesteps"):
            key = "wan2.2-ti2v-5b"
        elif class_name == "WanPipeline":
            raise refuse(_UNSUPPORTED_HINTS["WanPipeline"])
        elif "transformer_2" in components:
            key = "wan2.2-i2v-a14b"
        elif "image_encoder" in components:
            key = "wan2.1-i2v"
        else:
            raise refuse("a Wan image-to-video layout that is neither Wan 2.1 I2V (image_encoder), Wan 2.2 "
                         "I2V-A14B (transformer_2) nor Wan 2.2 TI2V-5B (expand_timesteps)")
    elif class_name == "I2VGenXLPipeline":
        if "unet" not in components:
            raise refuse("it has no unet")
        key = "i2vgen-xl"
    else:
        raise refuse(_UNSUPPORTED_HINTS.get(class_name, "not a supported image-to-video model"))
    family = FAMILIES[key]
    missing = [name for name in family.denoisers if name not in components]
    if missing:
        raise refuse(f"{', '.join(missing)} missing")
    logger.debug("%s: %s", folder, family.label)
    return DetectedModel(folder, family, class_name, components)


def list_model_folders(roots: list[Path]) -> list[str]:
    """Folders (relative to their root, '/'-separated) holding a ``model_index.json``, sorted.

    Model folders are not searched further (their sub-folders are components); symlinks are
    followed, as ComfyUI's own diffusers loader does.
    """
    found: set[str] = set()
    for root in roots:
        if not root.is_dir():
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            if (folder / "model_index.json").is_file():
                found.add(folder.relative_to(root).as_posix())
                continue
            try:
                stack.extend(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError as err:
                logger.warning("cannot list %s: %s", folder, err)
    return sorted(found)


def resolve_model_folder(name: str, roots: list[Path]) -> Path:
    """The folder called ``name`` under the first root that has it.

    Raises TTMInputError listing what is there when none does (or ``name`` tries to leave the roots).
    """
    candidate = Path(name)
    if not name.strip() or candidate.is_absolute() or ".." in candidate.parts:
        raise TTMInputError("model", f"{name!r} is not a folder name under models/diffusers",
                            "pick a folder from the list")
    for root in roots:
        folder = root / candidate
        if folder.is_dir():
            return folder
    available = list_model_folders(roots)
    where = ", ".join(str(r) for r in roots) or "(no diffusers folder is registered)"
    raise TTMInputError("model", f"there is no folder {name!r} under {where} (found: {', '.join(available) or 'none'})",
                        "put the diffusers-format model folder there (e.g. models/diffusers/CogVideoX-5b-I2V with its "
                        "model_index.json) and refresh, or pick a folder from the list")
