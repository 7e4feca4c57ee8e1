"""CLIPFrame (CF): temporal consistency as the mean cosine similarity of CLIP image embeddings of
consecutive frames (the paper's CF, after Esser et al. 2023 / Wu et al. 2023).

The model is a transformers ``CLIPModel`` folder (``config.json`` + weights; the paper's figures use
ViT-L/14, e.g. a local copy of ``openai/clip-vit-large-patch14``) loaded from disk only. Frames are
preprocessed on the device as CLIP's processor does (shorter side to the model's image size, bicubic,
centre crop, CLIP mean/std from ``preprocessor_config.json`` when the folder has one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import TTMInputError
from ..types import PretrainedModel, ProgressFn
from ._common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, batches, check_video, local_folder, resize_center_crop

LOG = logging.getLogger(__name__)

CLIP_FIX = ("put a transformers CLIP folder there (config.json and model.safetensors, e.g. a local copy of "
            "openai/clip-vit-large-patch14: ComfyUI/models/ttm/eval/clip-vit-large-patch14/)")


@dataclass(frozen=True, eq=False)
class ClipImageEncoder:
    """A loaded CLIP image tower and its preprocessing.

    Attributes:
        model: transformers ``CLIPModel`` (eval mode, on ``device``).
        side: input size (pixels); mean / std: normalisation.
    """

    model: PretrainedModel
    side: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    dtype: torch.dtype

    @torch.inference_mode()
    def embed(self, frames: torch.Tensor, batch_size: int = 16, progress: ProgressFn | None = None) -> torch.Tensor:
        """L2-normalised image embeddings, float32 ``[N, D]`` on the CPU, of float ``[N, H, W, 3]`` frames."""
        out = []
        for part in batches(frames.shape[0], batch_size):
            x = resize_center_crop(frames[part].to(self.device), self.side, self.mean, self.std).to(self.dtype)
            features = self.model.get_image_features(pixel_values=x)
            if not isinstance(features, torch.Tensor):  # transformers >= 5 may return an output object
                features = features.pooler_output if getattr(features, "pooler_output", None) is not None \
                    else features[0]
            out.append(F.normalize(features.float(), dim=-1).cpu())
            if progress is not None:
                progress(part.stop, frames.shape[0])
        return torch.cat(out)


def load_clip(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              input_name: str = "clip") -> ClipImageEncoder:
    """Load a transformers CLIP folder (local files only)."""
    path = local_folder(folder, input_name, "CLIP model", ("config.json",), CLIP_FIX)
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise TTMInputError(input_name, f"{path} holds no weights (*.safetensors or *.bin)", CLIP_FIX)
    from transformers import CLIPModel

    model: Any = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    model = model.to(torch.device(device)).eval()
    side = int(model.config.vision_config.image_size)
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        config: dict[str, Any] = json.loads(processor.read_text())
        mean = tuple(config.get("image_mean", mean))
        std = tuple(config.get("image_std", std))
    return ClipImageEncoder(model, side, tuple(mean), tuple(std), torch.device(device), dtype)


def clip_frame_scores(encoder: ClipImageEncoder, video: torch.Tensor, batch_size: int = 16,
                      progress: ProgressFn | None = None) -> torch.Tensor:
    """Cosine similarity of each consecutive frame pair's CLIP embeddings: float32 ``[T - 1]`` in -1..1."""
    frames = check_video(video, min_frames=2)
    if not isinstance(encoder, ClipImageEncoder):
        raise TTMInputError("clip", f"expected a loaded CLIP ({type(encoder).__name__} given)",
                            "load it with ttm_core.eval.clip_frame.load_clip")
    embeddings = encoder.embed(frames, batch_size, progress)
    return (embeddings[1:] * embeddings[:-1]).sum(-1)


def clip_frame(encoder: ClipImageEncoder, video: torch.Tensor, batch_size: int = 16,
               progress: ProgressFn | None = None) -> float:
    """CLIPFrame: the mean of ``clip_frame_scores``."""
    return float(clip_frame_scores(encoder, video, batch_size, progress).mean())
