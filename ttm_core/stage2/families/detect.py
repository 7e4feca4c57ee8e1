"""Which diffusers-format folders the diffusers engine runs, recognised from ``model_index.json`` alone.

A diffusers-format model is a folder with ``model_index.json`` (the pipeline class and one entry
per component) and one sub-folder per component, exactly as the Hugging Face "-Diffusers"
repositories ship it. Detection reads only JSON (no diffusers import, no weights), so a wrong
folder is refused before anything heavy happens, with an error that names what was found. Each
family adapter tells its own variants apart (``Family.detect``):

================================  =================================  ==============================
variant                           model_index.json                   told apart by
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

from ...errors import TTMInputError
from . import FAMILIES, SUPPORTED_TEXT, family_of_variant
from .base import Family, ModelIndex, Variant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectedModel:
    """A model folder recognised as a supported variant.

    Attributes:
        index: what its ``model_index.json`` says.
        variant: the variant it is.
    """

    index: ModelIndex
    variant: Variant

    @property
    def folder(self) -> Path:
        return self.index.folder

    @property
    def family(self) -> Family:
        return family_of_variant(self.variant)


def read_model_index(folder: Path) -> ModelIndex:
    """What a diffusers folder's ``model_index.json`` says.

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
    return ModelIndex(folder, str(data.get("_class_name", "?")), components, config)


def detect_family(folder: Path) -> DetectedModel:
    """Recognise the variant of a diffusers-format folder from its JSON files only.

    Raises:
        TTMInputError: naming ``model_index.json``'s class and components when the folder is
            not a supported image-to-video model.
    """
    index = read_model_index(folder)

    def refuse(why: str) -> TTMInputError:
        return TTMInputError("model", f"{folder.name!r} holds {index.describe()}: {why}", f"use {SUPPORTED_TEXT}")

    family = next((f for f in FAMILIES if index.class_name in f.pipeline_classes), None)
    if family is None:
        hint = next((f.unsupported[index.class_name] for f in FAMILIES if index.class_name in f.unsupported),
                    "not a supported image-to-video model")
        raise refuse(hint)
    variant = family.detect(index, refuse)
    missing = [name for name in variant.denoisers if name not in index.components]
    if missing:
        raise refuse(f"{', '.join(missing)} missing")
    logger.debug("%s: %s", folder, variant.label)
    return DetectedModel(index, variant)


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
