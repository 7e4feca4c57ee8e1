"""SAM 3's video tracker (transformers' ``Sam3TrackerVideoModel``) from a folder users have.

SAM 3 ships as one Hugging Face folder (``facebook/sam3``: ``config.json`` with ``model_type``
``sam3_video``, ``model.safetensors`` holding the detector and the tracker, the processor
files). The tracker is SAM 2's video predictor retrained on SAM 3's backbone; transformers loads
it alone from that folder (the detector's weights are skipped, the shared vision backbone is
mapped onto the tracker), and a folder saved from ``Sam3TrackerVideoModel`` itself
(``model_type`` ``sam3_tracker_video``) works too. It follows masks exactly like SAM 2's video
model, with the same processor API, so ``track.py`` drives both the same way.

transformers >= 5 is needed (the SAM 3 classes arrived in 5.0); it is imported lazily and a
missing or older one gives a message that says what to install. Meta's own ``sam3.pt`` (the
``sam3`` package's checkpoint) is not read: use the Hugging Face folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TTMInputError
from ..model_files import model_type
from ..types import PretrainedModel

LOG = logging.getLogger(__name__)

SAM3_KINDS = ("sam3_video", "sam3_tracker_video")
"""``model_type`` values of folders the SAM3 tracker loads from."""
SAM3_INSTALL_HINT = ("install transformers >= 5 into ComfyUI's Python: python -m pip install 'transformers>=5' "
                     "(SAM 3's classes arrived in transformers 5.0)")


@dataclass(frozen=True, eq=False)
class Sam3Tracker:
    """A loaded SAM 3 tracker.

    Attributes:
        name: the folder name the user picked (for messages).
        description: what was loaded.
        video_model: transformers' ``Sam3TrackerVideoModel``.
        video_processor: the ``Sam3TrackerVideoProcessor`` that goes with it.
    """

    name: str
    description: str
    video_model: PretrainedModel
    video_processor: Any

    def __post_init__(self) -> None:
        if not isinstance(self.video_model, torch.nn.Module):
            raise TTMInputError("tracker", "the SAM 3 tracker is not a torch module", "load it with the SAM3 loader")
        if self.video_processor is None:
            raise TTMInputError("tracker", f"{self.name} has no processor", "load it with the SAM3 loader")

    @property
    def image_size(self) -> int:
        """Side of the square image the tracker sees (1008 for facebook/sam3)."""
        return int(self.video_model.config.image_size)

    def modules(self) -> list[torch.nn.Module]:
        return [self.video_model]


def sam3_available() -> bool:
    """True when the installed transformers has SAM 3's tracker."""
    try:
        import transformers
    except ImportError:
        return False
    return hasattr(transformers, "Sam3TrackerVideoModel")


def sam3_kind(folder: Path) -> str | None:
    """``"sam3_video"`` / ``"sam3_tracker_video"`` for a folder the tracker loads from, else None."""
    kind = model_type(folder)
    return kind if kind in SAM3_KINDS else None


def load_sam3_tracker(folder: Path, device: torch.device | str = "cpu") -> Sam3Tracker:
    """Load SAM 3's tracker from a Hugging Face folder (never downloads).

    Args:
        folder: a ``facebook/sam3`` snapshot (``sam3_video``) or a ``sam3_tracker_video`` folder.
        device: where the weights go (float32; callers choose the compute dtype by autocast).
    """
    folder = Path(folder)
    if folder.is_file():
        raise TTMInputError("model", f"{folder.name} is a file; the SAM 3 tracker loads from a Hugging Face folder",
                            "download facebook/sam3 (config.json, model.safetensors, processor files) into a folder "
                            "in models/sam3; Meta's sam3.pt is not supported")
    if not folder.is_dir():
        raise TTMInputError("model", f"{folder} does not exist", "put the facebook/sam3 folder into models/sam3")
    kind = sam3_kind(folder)
    if kind is None:
        found = model_type(folder)
        what = f"model_type {found!r}" if found else "no readable config.json"
        hint = ("a SAM 2 folder goes into models/sam2 and the SAM2 Loader" if found and found.startswith("sam2")
                else "use the facebook/sam3 folder (model_type 'sam3_video')")
        if found == "sam3":
            hint = "this is SAM 3's image model without the tracker; use the full facebook/sam3 folder ('sam3_video')"
        raise TTMInputError("model", f"{folder.name} is not a SAM 3 tracker folder ({what})", hint)
    if not sam3_available():
        raise TTMInputError("model", "the installed transformers has no SAM 3 tracker", SAM3_INSTALL_HINT)
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

    try:
        model: PretrainedModel = Sam3TrackerVideoModel.from_pretrained(str(folder), local_files_only=True,
                                                                       dtype=torch.float32)
        processor = Sam3TrackerVideoProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise TTMInputError("model", f"{folder.name} could not be loaded ({err})",
                            "the folder needs config.json, model.safetensors and the processor files "
                            "(processor_config.json) as saved by transformers") from None
    model = model.to(device).eval()
    description = f"SAM 3 tracker from a Hugging Face {kind} folder ({model.config.image_size} px)"
    LOG.info("loaded %s: %s", folder.name, description)
    return Sam3Tracker(folder.name, description, model, processor)
