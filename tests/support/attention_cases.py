"""Tiny random-weight diffusers models, inputs and trajectories for the attention tests.

Every model is a real diffusers class built from a config (no weights exist here), in eval mode,
small enough that a forward pass takes milliseconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from ttm_core.stage2.attention.grids import token_grid
from ttm_core.stage2.families import geometry_for
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and two CPU cores are shared with other test runs
    (OpenMP threads spin-wait badly under contention). Import this fixture into a test module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


WAN_TEXT_DIM = 32
COG_TEXT_DIM = 24
I2VGEN_CROSS_DIM = 16


def tiny_wan(variant: str = "i2v", layers: int = 3, seed: int = 0) -> torch.nn.Module:
    """Wan 2.1 / 2.2-A14B I2V (``"i2v"``: image cross-attention) or Wan 2.2 TI2V (``"ti2v"``: 48 channels)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    if variant == "i2v":
        extra = dict(in_channels=36, out_channels=16, image_dim=24, added_kv_proj_dim=24)
    else:
        extra = dict(in_channels=48, out_channels=48)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 text_dim=WAN_TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=layers,
                                 cross_attn_norm=True, rope_max_seq_len=64, **extra).eval()


def tiny_cogvideox(version: str = "1.0", layers: int = 2, sample: int = 16, seed: int = 0) -> torch.nn.Module:
    """CogVideoX I2V 1.0 (patch 1x2x2, rotary as in 5B-I2V) or 1.5 (patch 2x2x2, ofs embedding)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    extra = dict(patch_size_t=2, ofs_embed_dim=16) if version == "1.5" else {}
    return CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16,
                                       time_embed_dim=16, text_embed_dim=COG_TEXT_DIM, num_layers=layers,
                                       sample_width=sample, sample_height=sample, sample_frames=9, patch_size=2,
                                       max_text_seq_length=7, use_rotary_positional_embeddings=True,
                                       use_learned_positional_embeddings=False, **extra).eval()


def tiny_i2vgen(seed: int = 0) -> torch.nn.Module:
    from diffusers import I2VGenXLUNet

    torch.manual_seed(seed)
    return I2VGenXLUNet(sample_size=None, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16, 16),
                        layers_per_block=2, norm_num_groups=4, cross_attention_dim=I2VGEN_CROSS_DIM,
                        attention_head_dim=4).eval()


def tiny_svd(seed: int = 0) -> torch.nn.Module:
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(seed)
    return UNetSpatioTemporalConditionModel(
        sample_size=None, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        block_out_channels=(32, 32, 32, 32), addition_time_embed_dim=4, projection_class_embeddings_input_dim=12,
        layers_per_block=1, cross_attention_dim=12, transformer_layers_per_block=1, num_attention_heads=(2, 2, 2, 2),
        num_frames=3).eval()


def trajectory_from_labels(labels: torch.Tensor, ids: tuple[int, ...] | None = None) -> Trajectory:
    """A Trajectory over a uint8 label video; every object must appear in frame 0."""
    ids = ids or tuple(int(i) for i in torch.unique(labels).tolist() if i)
    prompts = Prompts("a scene", "things move", tuple(ObjectPrompt(f"object {i}", f"object {i} moves") for i in ids))
    masks = torch.stack([(labels[0] == i).to(torch.float32) for i in ids])
    return Trajectory(labels=labels, objects=Objects(prompts=prompts, masks=masks, ids=ids), fps=8.0)


def boxes_video(frames: int, height: int, width: int, boxes: dict[int, tuple[int, int, int, int]],
                shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """uint8 ``[T, H, W]`` label video: object id -> (y0, x0, y1, x1) rectangle moving by ``shift`` px/frame.

    Later entries paint over earlier ones.
    """
    labels = torch.zeros(frames, height, width, dtype=torch.uint8)
    for t in range(frames):
        for object_id, (y0, x0, y1, x1) in boxes.items():
            dy, dx = shift[0] * t, shift[1] * t
            labels[t, max(0, y0 + dy):max(0, y1 + dy), max(0, x0 + dx):max(0, x1 + dx)] = object_id
    return labels


@dataclass
class Case:
    """One family under test: a model, a way to run it, and a plan-ready token grid."""

    name: str
    model: torch.nn.Module
    run: object  # Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]: model, latents [B, ...] -> output
    latents: torch.Tensor
    grid: object
    text_width: int | None
    num_frames: int
    height: int
    width: int


def cog_rotary(model: torch.nn.Module, height: int, width: int, latent_frames: int):
    """The rotary embedding CogVideoX's I2V pipeline computes for this size (its own helper)."""
    from diffusers import CogVideoXImageToVideoPipeline

    fake = SimpleNamespace(transformer=model, vae_scale_factor_spatial=8)
    return CogVideoXImageToVideoPipeline._prepare_rotary_positional_embeddings(
        fake, height, width, latent_frames, torch.device("cpu"))


def make_case(name: str, labels: torch.Tensor | None = None, seed: int = 0) -> Case:
    """Build a family case: ``wan_i2v``, ``wan_ti2v``, ``cog10``, ``cog15``, ``i2vgen`` or ``svd``."""
    gen = torch.Generator().manual_seed(seed + 1)
    if name.startswith("wan"):
        model = tiny_wan("ti2v" if name == "wan_ti2v" else "i2v", seed=seed)
        num_frames, px = 9, 16 if name == "wan_i2v" else 32
        height, width = 6 * px, 8 * px  # 6 x 8 tokens per frame, 3 token frames
        channels = model.config.in_channels
        latents = torch.randn(1, channels, 3, 12, 16, generator=gen)
        text = torch.randn(1, 512, WAN_TEXT_DIM, generator=gen)
        image = torch.randn(1, 5, 24, generator=gen) if name == "wan_i2v" else None

        def run(m, x, text=text, image=image):
            b = x.shape[0]
            return m(x, torch.tensor([700] * b), _batch(text, b), _batch(image, b)).sample
        text_width = WAN_TEXT_DIM
    elif name.startswith("cog"):
        version = "1.5" if name == "cog15" else "1.0"
        model = tiny_cogvideox(version, seed=seed)
        num_frames, height, width = 9, 96, 128
        latent_frames = 3 if version == "1.0" else 4  # 1.5: 4 latent frames = 3 real + 1 padded at the front
        latents = torch.randn(1, latent_frames, 32, 12, 16, generator=gen)
        text = torch.randn(1, 7, COG_TEXT_DIM, generator=gen)
        rotary = cog_rotary(model, height, width, latent_frames)
        ofs = torch.tensor([2.0]) if version == "1.5" else None

        def run(m, x, text=text, rotary=rotary, ofs=ofs):
            b = x.shape[0]
            return m(x, _batch(text, b), torch.tensor([700] * b), ofs=_batch(ofs, b), image_rotary_emb=rotary).sample
        text_width = COG_TEXT_DIM
    elif name == "i2vgen":
        model = tiny_i2vgen(seed=seed)
        num_frames, height, width = 3, 96, 128
        latents = torch.randn(1, 4, 3, 12, 16, generator=gen)
        text = torch.randn(1, 5, I2VGEN_CROSS_DIM, generator=gen)
        image_latents = torch.randn(1, 4, 3, 12, 16, generator=gen)
        image_emb = torch.randn(1, I2VGEN_CROSS_DIM, generator=gen)

        def run(m, x, text=text, image_latents=image_latents, image_emb=image_emb):
            b = x.shape[0]
            return m(x, torch.tensor([700] * b), fps=torch.tensor([8] * b), image_latents=_batch(image_latents, b),
                     image_embeddings=_batch(image_emb, b), encoder_hidden_states=_batch(text, b)).sample
        text_width = I2VGEN_CROSS_DIM
    elif name == "svd":
        model = tiny_svd(seed=seed)
        num_frames, height, width = 3, 96, 128
        latents = torch.randn(1, 3, 8, 12, 16, generator=gen)
        image_emb = torch.randn(1, 1, 12, generator=gen)
        added = torch.tensor([[6.0, 127.0, 0.02]])

        def run(m, x, image_emb=image_emb, added=added):
            b = x.shape[0]
            return m(x, torch.tensor([700.0] * b), _batch(image_emb, b), _batch(added, b)).sample
        text_width = None
    else:
        raise ValueError(name)
    if labels is None:
        labels = default_labels(num_frames, height, width)
    grid = token_grid(trajectory_from_labels(labels), geometry_for(model), num_frames, height, width)
    return Case(name, model, run, latents, grid, text_width, num_frames, height, width)


def _batch(t: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """A batch-1 conditioning tensor repeated for ``batch`` rows (None stays None)."""
    return None if t is None else t.expand(batch, *t.shape[1:])


def default_labels(num_frames: int, height: int, width: int) -> torch.Tensor:
    """Two objects far apart (left / right thirds) that move a little: background between them."""
    h, w = height, width
    return boxes_video(num_frames, h, w, {1: (h // 6, 0, h // 2, w // 4), 2: (h // 2, 3 * w // 4, 5 * h // 6, w)},
                       shift=(0, 0))


def local_prompts(width: int, lengths: tuple[int, ...] = (3, 4), seed: int = 5) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, width, generator=gen) for n in lengths)
