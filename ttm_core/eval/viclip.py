"""ViCLIP (Wang et al. 2023, InternVid): a CLIP ViT-L/14 whose vision tower attends over space and time.

The paper's ViCLIP-T (video-text: cosine similarity of a video's ViCLIP embedding and its prompt's) and
ViCLIP-V (video-video: of a generated video's and its reference video's embeddings).

The model classes here follow the layout of OpenGVLab's published checkpoint
(``ViClip-InternVid-10M-FLT.pth`` on huggingface.co/OpenGVLab/ViCLIP: a ``torch.save``d dict whose
``model`` entry, or the dict itself, holds ``vision_encoder.*``, ``text_encoder.*`` and ``temp``), so that
file loads with ``load_state_dict(strict=True)``. The sizes are read from the checkpoint's tensors, so
ViCLIP-B/16 checkpoints load too. Architecture (as in InternVideo's ``viclip_vision.py`` /
``viclip_text.py``):

* vision: a Conv3d patch embedding (kernel ``[t, p, p]``), a class token and spatial positional embedding
  per frame, a temporal positional embedding added per patch position, then ONE transformer over all
  space-time tokens with the class token in front; ``ln_post`` of the class token times ``proj``.
* text: OpenAI CLIP's text transformer (causal mask) of context length 32, pooled at the end-of-text token.
* blocks: pre-norm residual attention (``nn.MultiheadAttention``) and an MLP with QuickGELU.

Input: 8 frames (the checkpoint's ``temporal_positional_embedding`` length) evenly spread over the clip,
224x224 (shorter side resized, centre crop), CLIP mean/std. Text: CLIP's BPE tokenizer (a transformers
``CLIPTokenizer`` folder, ``vocab.json`` + ``merges.txt``; ViCLIP ships none of its own and uses OpenAI
CLIP's). Files users provide::

    ComfyUI/models/ttm/eval/viclip/ViClip-InternVid-10M-FLT.pth
    ComfyUI/models/ttm/eval/viclip/tokenizer_config.json + tokenizer.json (or vocab.json + merges.txt)
        of openai/clip-vit-large-patch14
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import TTMInputError
from ..types import ProgressFn
from ._common import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    batches,
    check_video,
    local_file,
    local_folder,
    resize_center_crop,
    sample_frames,
)

LOG = logging.getLogger(__name__)

VICLIP_FILE = "ViClip-InternVid-10M-FLT.pth"
VICLIP_FIX = (f"download {VICLIP_FILE} from huggingface.co/OpenGVLab/ViCLIP and put it at "
              f"ComfyUI/models/ttm/eval/viclip/{VICLIP_FILE}, or pass its path")
TOKENIZER_FIX = ("put OpenAI CLIP's tokenizer files (tokenizer_config.json with tokenizer.json, or "
                 "vocab.json + merges.txt, of openai/clip-vit-large-patch14) beside the ViCLIP checkpoint, or pass "
                 "their folder")


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm attention + MLP (QuickGELU), sequence-first ``[N, B, D]`` as in OpenAI CLIP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


@dataclass(frozen=True)
class ViCLIPConfig:
    """ViCLIP's sizes (defaults: the published ViT-L/14 checkpoint)."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    patch: int = 14
    kernel_t: int = 1
    image_size: int = 224
    frames: int = 8
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context: int = 32
    vocab: int = 49408

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ViCLIPConfig:
        """Read the sizes from the checkpoint's tensors (heads: 64 channels each, as in CLIP)."""
        conv = state["vision_encoder.conv1.weight"]
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        grid = math.isqrt(int(state["vision_encoder.positional_embedding"].shape[0]) - 1)
        text_width = int(state["text_encoder.token_embedding.weight"].shape[1])

        def layers(prefix: str) -> int:
            return len({k.split(".")[3] for k in state if k.startswith(prefix + ".transformer.resblocks.")})

        return cls(width=width, layers=layers("vision_encoder"), heads=max(1, width // 64), patch=patch,
                   kernel_t=int(conv.shape[2]), image_size=grid * patch,
                   frames=int(state["vision_encoder.temporal_positional_embedding"].shape[1]),
                   embed_dim=int(state["vision_encoder.proj"].shape[1]), text_width=text_width,
                   text_layers=layers("text_encoder"), text_heads=max(1, text_width // 64),
                   context=int(state["text_encoder.positional_embedding"].shape[0]),
                   vocab=int(state["text_encoder.token_embedding.weight"].shape[0]))


class ViCLIPVision(nn.Module):
    def __init__(self, c: ViCLIPConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, c.width, (c.kernel_t, c.patch, c.patch), (c.kernel_t, c.patch, c.patch),
                               bias=False)
        scale = c.width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(c.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((c.image_size // c.patch) ** 2 + 1, c.width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, c.frames, c.width))
        self.ln_pre = nn.LayerNorm(c.width)
        self.transformer = Transformer(c.width, c.layers, c.heads)
        self.ln_post = nn.LayerNorm(c.width)
        self.proj = nn.Parameter(scale * torch.randn(c.width, c.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` normalised frames -> ``[B, embed_dim]``."""
        batch = video.shape[0]
        x = self.conv1(video)  # [B, D, T', h, w]
        frames = x.shape[2]
        x = rearrange(x, "b d t h w -> (b t) (h w) d")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        cls_tokens = x[:batch, :1]  # class token + its position: the same for every frame
        x = rearrange(x[:, 1:], "(b t) n d -> (b n) t d", b=batch)
        temporal: torch.Tensor = self.temporal_positional_embedding
        if temporal.shape[1] != frames:
            temporal = F.interpolate(rearrange(temporal, "1 t d -> 1 d t"), size=frames, mode="linear",
                                     align_corners=False)
            temporal = rearrange(temporal, "1 d t -> 1 t d")
        x = x + temporal.to(x.dtype)
        x = rearrange(x, "(b n) t d -> b (n t) d", b=batch)
        x = self.ln_pre(torch.cat([cls_tokens, x], dim=1))
        x = self.transformer(rearrange(x, "b n d -> n b d"))
        return self.ln_post(x[0]) @ self.proj


class ViCLIPText(nn.Module):
    def __init__(self, c: ViCLIPConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab, c.text_width)
        self.positional_embedding = nn.Parameter(torch.randn(c.context, c.text_width) * 0.01)
        self.transformer = Transformer(c.text_width, c.text_layers, c.text_heads)
        self.ln_final = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Parameter(torch.randn(c.text_width, c.embed_dim) * c.text_width**-0.5)
        self.context = c.context

    def forward(self, tokens: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """``tokens`` int64 ``[B, context]``, ``end`` the end-of-text positions ``[B]`` -> ``[B, embed_dim]``."""
        x = self.token_embedding(tokens) + self.positional_embedding
        causal = torch.full((self.context, self.context), float("-inf"), device=x.device).triu_(1)
        x = self.transformer(rearrange(x, "b n d -> n b d"), causal.to(x.dtype))
        x = self.ln_final(rearrange(x, "n b d -> b n d"))
        return x[torch.arange(x.shape[0], device=x.device), end] @ self.text_projection


class ViCLIP(nn.Module):
    """OpenGVLab's ViCLIP: ``vision_encoder``, ``text_encoder`` and the contrastive temperature ``temp``."""

    def __init__(self, config: ViCLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = ViCLIPVision(config)
        self.text_encoder = ViCLIPText(config)
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))


@dataclass(frozen=True, eq=False)
class LoadedViCLIP:
    model: ViCLIP
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def frames(self) -> int:
        return self.model.config.frames * self.model.config.kernel_t

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """OpenAI CLIP's ``clip.tokenize``: start, BPE tokens, end; truncated to the context (the end token
        kept), zero-padded. Returns (tokens ``[B, context]``, end positions ``[B]``)."""
        context = self.model.config.context
        start, end = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        rows, ends = [], []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: context - 2]
            row = [start, *ids, end]
            ends.append(len(row) - 1)
            rows.append(row + [0] * (context - len(row)))
        return torch.tensor(rows, dtype=torch.int64), torch.tensor(ends, dtype=torch.int64)

    @torch.inference_mode()
    def embed_videos(self, videos: list[torch.Tensor], batch_size: int = 4,
                     progress: ProgressFn | None = None) -> torch.Tensor:
        """L2-normalised video embeddings float32 ``[N, D]`` (CPU) of float ``[T, H, W, 3]`` videos in 0..1."""
        side = self.model.config.image_size
        out = []
        for part in batches(len(videos), batch_size):
            clips = []
            for video in videos[part]:
                frames = check_video(video, "video")
                picked = frames[sample_frames(frames.shape[0], self.frames)].to(self.device)
                clips.append(rearrange(resize_center_crop(picked, side, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
                                       "t c h w -> c t h w"))
            x = torch.stack(clips).to(self.dtype)
            out.append(F.normalize(self.model.vision_encoder(x).float(), dim=-1).cpu())
            if progress is not None:
                progress(part.stop, len(videos))
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings float32 ``[N, D]`` (CPU)."""
        tokens, end = self.tokenize(texts)
        features = self.model.text_encoder(tokens.to(self.device), end.to(self.device))
        return F.normalize(features.float(), dim=-1).cpu()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or "vision_encoder.conv1.weight" not in loaded:
        raise TTMInputError("viclip", f"{path} is not a ViCLIP checkpoint (no vision_encoder.conv1.weight)",
                            VICLIP_FIX)
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_viclip(path: str | Path, tokenizer: str | Path | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> LoadedViCLIP:
    """Load ViCLIP from OpenGVLab's checkpoint file (strictly: every tensor must fit) and CLIP's tokenizer
    from ``tokenizer`` (default: the checkpoint's folder). Local files only."""
    file = local_file(path, "viclip", "ViCLIP checkpoint", VICLIP_FIX)
    folder = local_folder(tokenizer if tokenizer is not None else file.parent, "viclip_tokenizer",
                          "CLIP tokenizer", ("tokenizer_config.json",), TOKENIZER_FIX)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise TTMInputError("viclip_tokenizer", f"{folder} holds neither tokenizer.json nor vocab.json + merges.txt",
                            TOKENIZER_FIX)
    from transformers import CLIPTokenizer

    state = read_checkpoint(file)
    try:
        model = ViCLIP(ViCLIPConfig.from_state_dict(state))
        model.load_state_dict(state, strict=True)
    except KeyError as error:
        raise TTMInputError("viclip", f"{file} does not fit ViCLIP's layout (no tensor {error})",
                            VICLIP_FIX) from error
    except RuntimeError as error:
        raise TTMInputError("viclip", f"{file} does not fit ViCLIP's layout ({str(error).splitlines()[0]} ...)",
                            VICLIP_FIX) from error
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedViCLIP(model, CLIPTokenizer.from_pretrained(str(folder), local_files_only=True),
                        torch.device(device), dtype)


def viclip_t(model: LoadedViCLIP, videos: list[torch.Tensor], prompts: list[str], batch_size: int = 4,
             progress: ProgressFn | None = None) -> torch.Tensor:
    """ViCLIP-T: cosine similarity of each video with its prompt, float32 ``[N]``."""
    if len(videos) != len(prompts):
        raise TTMInputError("prompts", f"{len(prompts)} prompts for {len(videos)} videos", "give one per video")
    return (model.embed_videos(videos, batch_size, progress) * model.embed_texts(prompts)).sum(-1)


def viclip_v(model: LoadedViCLIP, videos: list[torch.Tensor], references: list[torch.Tensor], batch_size: int = 4,
             progress: ProgressFn | None = None) -> torch.Tensor:
    """ViCLIP-V: cosine similarity of each video with its reference video, float32 ``[N]``."""
    if len(videos) != len(references):
        raise TTMInputError("references", f"{len(references)} reference videos for {len(videos)} videos",
                            "give one reference per video")
    return (model.embed_videos(videos, batch_size, progress) * model.embed_videos(references, batch_size)).sum(-1)
