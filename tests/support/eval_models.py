"""Tiny random-weight models for the evaluation metrics, saved in the layouts users put the real ones in:

* ``make_tiny_clip``: a transformers ``CLIPModel`` folder (config.json, model.safetensors,
  preprocessor_config.json), as a local copy of openai/clip-vit-large-patch14 is;
* ``make_tiny_i3d``: a TorchScript file with StyleGAN-V's I3D calling convention
  (``model(videos [N, 3, T, H, W] in -1..1, rescale=False, resize=True, return_features=True) -> [N, 400]``);
* ``make_tiny_viclip``: OpenGVLab's ViCLIP checkpoint layout (``torch.save({"model": state_dict})`` with
  ``vision_encoder.*`` / ``text_encoder.*`` / ``temp``) plus CLIP tokenizer files beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tiny_diffusers import _clip_tokenizer


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(77)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


class TinyI3D(nn.Module):
    """I3D's calling convention on a two-layer 3D CNN (400 features, like Kinetics-400 I3D's logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 16, kernel_size=(3, 8, 8), stride=(2, 8, 8))
        self.fc = nn.Linear(16, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        if resize and (x.shape[-2] != 224 or x.shape[-1] != 224):
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        features = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))
        if return_features:
            return features
        return torch.softmax(features, dim=-1)


def make_tiny_i3d(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.jit.script(TinyI3D().eval()).save(str(path))
    return path


def make_tiny_viclip(folder: Path, seed: int = 0) -> Path:
    from ttm_core.eval.viclip import VICLIP_FILE, ViCLIP, ViCLIPConfig

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(77)
    config = ViCLIPConfig(width=64, layers=2, heads=1, patch=8, image_size=32, frames=4, embed_dim=16,
                          text_width=64, text_layers=1, text_heads=1, context=32, vocab=len(tokenizer))
    model = ViCLIP(config)
    with torch.no_grad():  # the checkpoint's zero-initialised temporal embedding, made informative
        model.vision_encoder.temporal_positional_embedding.normal_(0, 0.02)
    torch.save({"model": model.state_dict()}, folder / VICLIP_FILE)
    tokenizer.save_pretrained(str(folder))
    return folder / VICLIP_FILE
