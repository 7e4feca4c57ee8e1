"""Weight memory of the supported diffusers models, computed from their architectures (no download).

Every component is built on PyTorch's ``meta`` device from the configuration the public
"-Diffusers" repositories ship (the values are written out below), its parameters are counted,
and bytes = parameters x bytes per value (bf16 / fp16: 2, fp32: 4; Wan's VAE stays fp32). The
table goes into docs/DIFFUSERS_STAGE2.md. Run: .venv/bin/python tools/stage2_vram.py
"""

from __future__ import annotations

import logging
import sys

import torch

GIB = 1024 ** 3

T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, feed_forward_proj="gated-gelu",
              vocab_size=32128)
UMT5_XXL = dict(T5_XXL, vocab_size=256384)
COG_5B = dict(num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16, num_layers=42,
              text_embed_dim=4096, time_embed_dim=512, max_text_seq_length=226, patch_size=2,
              use_rotary_positional_embeddings=True)
WAN_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, text_dim=4096, freq_dim=256,
               ffn_dim=13824, num_layers=40, cross_attn_norm=True, in_channels=36, out_channels=16)
WAN_5B = dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, text_dim=4096, freq_dim=256,
              ffn_dim=14336, num_layers=30, cross_attn_norm=True, in_channels=48, out_channels=48)


def count(build) -> int:
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def components() -> dict[str, dict[str, tuple[int, int]]]:
    """Per model: component -> (parameters, bytes per value)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLCogVideoX,
        AutoencoderKLWan,
        CogVideoXTransformer3DModel,
        I2VGenXLUNet,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
        T5Config,
        T5EncoderModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    t5 = count(lambda: T5EncoderModel(T5Config(**T5_XXL)))
    umt5 = count(lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)))
    cog_vae = count(lambda: AutoencoderKLCogVideoX())
    wan_vae = count(lambda: AutoencoderKLWan())
    wan22_vae = count(lambda: AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True,
                                               patch_size=2, in_channels=12, out_channels=12,
                                               scale_factor_spatial=16, latents_mean=[0.0] * 48,
                                               latents_std=[1.0] * 48))
    vit_h = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                 image_size=224, patch_size=14)
    return {
        "CogVideoX-5b-I2V (1.0)": {
            "transformer": (
                count(lambda: CogVideoXTransformer3DModel(**COG_5B, use_learned_positional_embeddings=True)), 2),
            "text_encoder (T5-XXL)": (t5, 2), "vae": (cog_vae, 2)},
        "CogVideoX1.5-5B-I2V": {
            "transformer": (count(lambda: CogVideoXTransformer3DModel(**COG_5B, patch_size_t=2, ofs_embed_dim=512,
                                                                      sample_height=96, sample_width=170,
                                                                      sample_frames=81)), 2),
            "text_encoder (T5-XXL)": (t5, 2), "vae": (cog_vae, 2)},
        "Wan2.1-I2V-14B-480P-Diffusers": {
            "transformer": (count(lambda: WanTransformer3DModel(**WAN_14B, image_dim=1280, added_kv_proj_dim=5120)), 2),
            "text_encoder (umT5-XXL)": (umt5, 2),
            "image_encoder (CLIP ViT-H/14)": (count(lambda: CLIPVisionModel(CLIPVisionConfig(**vit_h))), 2),
            "vae (fp32)": (wan_vae, 4)},
        "Wan2.2-I2V-A14B-Diffusers": {
            "transformer (high noise)": (count(lambda: WanTransformer3DModel(**WAN_14B)), 2),
            "transformer_2 (low noise)": (count(lambda: WanTransformer3DModel(**WAN_14B)), 2),
            "text_encoder (umT5-XXL)": (umt5, 2), "vae (fp32)": (wan_vae, 4)},
        "Wan2.2-TI2V-5B-Diffusers": {
            "transformer": (count(lambda: WanTransformer3DModel(**WAN_5B)), 2),
            "text_encoder (umT5-XXL)": (umt5, 2), "vae (Wan 2.2, fp32)": (wan22_vae, 4)},
        "i2vgen-xl": {
            "unet": (count(lambda: I2VGenXLUNet(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                                cross_attention_dim=1024, attention_head_dim=64)), 2),
            "text_encoder (OpenCLIP ViT-H text)": (count(lambda: CLIPTextModel(CLIPTextConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                projection_dim=1024))), 2),
            "image_encoder (CLIP ViT-H/14)": (count(lambda: CLIPVisionModelWithProjection(
                CLIPVisionConfig(**vit_h, projection_dim=1024))), 2),
            "vae": (count(lambda: AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                                down_block_types=("DownEncoderBlock2D",) * 4,
                                                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4)), 2)},
    }


def table() -> str:
    lines = ["| model | component | parameters | weights |", "|---|---|---|---|"]
    for model, parts in components().items():
        total = 0
        largest = 0
        for name, (params, width) in parts.items():
            size = params * width
            total += size
            largest = max(largest, size)
            lines.append(f"| {model} | {name} | {params / 1e9:.2f} B | {size / GIB:.1f} GiB |")
        lines.append(f"| {model} | **all (offload none)** / **largest (offload model)** | | "
                     f"**{total / GIB:.1f} GiB** / **{largest / GIB:.1f} GiB** |")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(__name__).info("%s", table())
    sys.exit(0)
