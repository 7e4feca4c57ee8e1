"""Tiny random-weight diffusers pipelines, saved in the folder layout users have.

No pretrained weights exist on the machines this project is developed and tested on, so tests
and benchmarks build every supported family from configs: real diffusers / transformers classes
with a few channels each, random weights, in-memory tokenizers. ``save_tiny(family, folder)``
writes the same layout a Hugging Face "-Diffusers" repository has (``model_index.json`` plus one
sub-folder per component), which the loader then reads exactly as it reads a user's download.

Sizes are chosen so a 9-frame, 64 x 64 px, 2-step generation takes about a second on a CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ttm_core.stage2.families.wan import WAN_TEXT_TOKENS

logger = logging.getLogger(__name__)

TINY_FAMILIES = ("cogvideox-1.0-i2v", "cogvideox-1.5-i2v", "wan2.1-i2v", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b",
                 "i2vgen-xl")

_TEXT = """a an the two of on to and with in across among other left right up down small big large red blue
ball balls coin coins cat dog table scene object objects thing things move moves moving slide slides sliding glide
glides gliding roll rolls jump jumps ancient silver dark bright blurry distorted discontinuous ugly low quality
resolution motionless static disfigured disconnected limbs faces incomplete arms still"""
WORDS = tuple(dict.fromkeys(_TEXT.split()))
"""The tiny tokenizers' whole words (lower case; T5 also gets them capitalised). Other words are
spelt out letter by letter, so prompts made of these words stay short."""

COG_TEXT_TOKENS = 32
"""Text length of the tiny CogVideoX (its transformer's max_text_seq_length; the real models have 226)."""
CLIP_TEXT_TOKENS = 77
"""CLIP's real text length (the tiny tokenizer splits unknown words into letters)."""


def _t5_tokenizer(max_length: int):
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -float(i + 1)) for i, w in enumerate(WORDS)]
    vocab += [("\u2581" + w.capitalize(), -float(i + 1)) for i, w in enumerate(WORDS) if w.capitalize() != w]
    vocab += [(c, -100.0) for c in "abcdefghijklmnopqrstuvwxyz,.'"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _clip_tokenizer(max_length: int):
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz,.'"
    pieces = ["<|startoftext|>", "<|endoftext|>"] + list(letters) + [c + "</w>" for c in letters]
    merges: list[tuple[str, str]] = []
    for word in WORDS:  # merges that build each word letter by letter: w o -> wo, wo r -> wor, wor d</w> -> ...
        prefix = word[0]
        for i, char in enumerate(word[1:], start=1):
            piece = char + "</w>" if i == len(word) - 1 else char
            merges.append((prefix, piece))
            prefix += piece
            pieces.append(prefix)
        if len(word) == 1:
            pieces.append(word + "</w>")
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=max_length)


def _t5_encoder(width: int, vocab: int, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(vocab_size=vocab, d_model=width, d_kv=8, d_ff=2 * width, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def _clip_vision(width: int, with_projection: bool, projection: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8, projection_dim=projection or width)
    cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    return cls(config).eval()


def _clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_cogvideox(version: str = "1.0", seed: int = 0, sample_size: tuple[int, int] = (64, 64),
                    sample_frames: int = 9, learned_positions: bool | None = None, heads: int = 2,
                    head_dim: int = 16, layers: int = 2, text_tokens: int = COG_TEXT_TOKENS):
    """CogVideoX I2V 1.0 (patch 1x2x2; learned positions fix the size, as in CogVideoX-5b-I2V) or 1.5 (2x2x2).

    ``text_tokens``: the text length (tokenizer and transformer); the GPU benchmark uses the real 226."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(seed)
    height, width = sample_size
    tokenizer = _t5_tokenizer(text_tokens)
    text_encoder = _t5_encoder(24, len(tokenizer))
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4, sample_height=2 * height,
                                 sample_width=2 * width, invert_scale_latents=version == "1.5").eval()
    # (the VAE's sample size only sets its tile size: tiles of half of it; diffusers' CogVideoX tiling
    # gives wrong latent sizes below 2 tiles of 32 px, so the tiny VAE never tiles at its own size)
    extra = dict(patch_size_t=2, ofs_embed_dim=16) if version == "1.5" else {}
    if learned_positions is None:
        learned_positions = version == "1.0"
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=8, out_channels=4, time_embed_dim=16,
        text_embed_dim=24, num_layers=layers, sample_width=width // 8, sample_height=height // 8,
        sample_frames=sample_frames, patch_size=2, max_text_seq_length=text_tokens,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=learned_positions,
        **extra).eval()
    scheduler = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction",
                                       rescale_betas_zero_snr=True, snr_shift_scale=1.0, timestep_spacing="trailing",
                                       clip_sample=False, set_alpha_to_one=True)
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer, scheduler=scheduler)


def _wan_vae(ti2v: bool):
    from diffusers import AutoencoderKLWan

    if ti2v:
        return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
                                in_channels=12, out_channels=12,
                                scale_factor_spatial=16, scale_factor_temporal=4,
                                latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def _wan_transformer(kind: str):
    from diffusers import WanTransformer3DModel

    if kind == "i2v_clip":  # Wan 2.1 I2V: CLIP image tokens in the cross-attention
        extra = dict(in_channels=36, out_channels=16, image_dim=24, added_kv_proj_dim=24)
    elif kind == "i2v":  # Wan 2.2 I2V-A14B experts: no image tokens
        extra = dict(in_channels=36, out_channels=16)
    else:  # Wan 2.2 TI2V-5B: the 48-channel VAE, image via the first latent frame
        extra = dict(in_channels=48, out_channels=48)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=32,
                                 freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=64,
                                 **extra).eval()


def build_wan(variant: str = "2.1-i2v", seed: int = 0):
    """Wan 2.1 I2V (CLIP image encoder), Wan 2.2 I2V-A14B (two experts) or Wan 2.2 TI2V-5B, diffusers format."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    torch.manual_seed(seed)
    tokenizer = _t5_tokenizer(WAN_TEXT_TOKENS)
    text_encoder = _t5_encoder(32, len(tokenizer), umt5=True)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder, scheduler=scheduler)
    if variant == "2.1-i2v":
        return WanImageToVideoPipeline(vae=_wan_vae(False), transformer=_wan_transformer("i2v_clip"),
                                       image_encoder=_clip_vision(24, with_projection=False),
                                       image_processor=_clip_image_processor(), **common)
    if variant == "2.2-i2v-a14b":
        return WanImageToVideoPipeline(vae=_wan_vae(False), transformer=_wan_transformer("i2v"),
                                       transformer_2=_wan_transformer("i2v"), boundary_ratio=0.9, **common)
    if variant == "2.2-ti2v-5b":
        return WanImageToVideoPipeline(vae=_wan_vae(True), transformer=_wan_transformer("ti2v"),
                                       expand_timesteps=True, **common)
    raise ValueError(f"unknown Wan variant {variant!r}")


def build_i2vgen_xl(seed: int = 0):
    """I2VGen-XL: UNet, 2-D VAE, CLIP text and image encoders (cross-attention width 16)."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(CLIP_TEXT_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                max_position_embeddings=CLIP_TEXT_TOKENS,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=2).eval()
    unet = I2VGenXLUNet(sample_size=None, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16, 16),
                        layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4).eval()
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                              rescale_betas_zero_snr=True, timestep_spacing="leading", clip_sample=False)
    return I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            image_encoder=_clip_vision(16, with_projection=True, projection=16),
                            feature_extractor=_clip_image_processor(), unet=unet, scheduler=scheduler)


def build_tiny(family: str, seed: int = 0):
    """A tiny random pipeline of ``family`` (one of ``TINY_FAMILIES``)."""
    if family.startswith("cogvideox"):
        return build_cogvideox(family.split("-")[1], seed=seed)
    if family.startswith("wan"):
        return build_wan(family.removeprefix("wan"), seed=seed)
    if family == "i2vgen-xl":
        return build_i2vgen_xl(seed=seed)
    raise ValueError(f"unknown tiny family {family!r}; use one of {TINY_FAMILIES}")


def save_tiny(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny pipeline and ``save_pretrained`` it into ``folder`` (the users' layout)."""
    folder = Path(folder)
    build_tiny(family, seed).save_pretrained(str(folder))
    logger.debug("saved a tiny %s pipeline to %s", family, folder)
    return folder
