"""A tiny Wan 2.1 VAE whose ENCODER carries colours locally, for reading Stage-1 samples in latent space.

A random-weight VAE maps palette videos to latents that do not separate the colours cell by cell, so
``palette.classify_latents`` cannot read a sampled trajectory back into labels with it (IoU 0.0-0.1 against the
downsampled labels). ``palette_vae()`` is the tiny Wan 2.1 VAE of ``tests/support/tiny_diffusers.py`` (same
config, same random decoder) with its encoder set analytically so that, in the pipeline's normalised latent space
(``(mu - latents_mean) / latents_std``, what ``WanFamily.encode_reference`` returns),

    latent[:, k, i, j] = CODE @ (2 * mean colour of pixel frames group(k), rows 8i..8i+7, cols 8j..8j+7 - 1)

with group(0) = frame 0 and group(k) = frames 4k-3..4k (Wan's causal 1 + 4k chunks) and ``CODE`` a fixed random
``[16, 3]`` matrix (``code_matrix``). How the stock modules are set:

- ``conv_in`` (causal 3x3x3, 3 -> 8 channels): current-frame centre tap only; channels ``(x, -x, K, 0)`` with
  ``x = 2 * rgb - 1`` and a constant ``K`` (bias).
- every residual block's ``conv2`` and the mid attention's ``proj`` zero: those blocks are identities.
- each stride-2 ``Conv2d`` of the down-samplers: the mean of its 2x2 block (taps [0:2, 0:2] = 1/4 per channel);
  each ``time_conv`` (kernel 3, stride 2 over [cached previous frame, chunk]): taps (0, 1/2, 1/2), the mean of
  consecutive frame pairs; two of them give the mean of Wan's 4-frame chunk; frame 0 skips them.
- ``norm_out`` (RMS over channels) divides by ``|(x, -x, K)| / sqrt(8)``, nearly constant for ``K = 20``
  (``|x|^2 <= 3``: within 0.75 %), and ``SiLU(v) - SiLU(-v) = v`` exactly, so ``conv_out``'s centre tap reads
  ``x`` linearly from the ``x`` and ``-x`` channels: ``mu = latents_mean + latents_std * CODE @ x`` (log-variance 0);
  ``quant_conv`` the identity.

The decoder keeps ``tiny_diffusers``' random weights (nothing here reads pixels back). No fitting: built in
milliseconds, exactly reproducible, so nothing is cached. (Fitting the encoder with Adam to the same target was
tried first: loss ~0.01 after 600 steps at 32 px, but at 64 px its reading of grid-aligned labels
reached only IoU 0.12-0.55 after 400 steps.)
"""

from __future__ import annotations

from typing import Any

import torch

CODE_SEED = 1234
CONSTANT = 20.0
"""``K``: the constant channel that keeps the RMS norm's divisor nearly independent of the colour."""


def code_matrix(channels: int = 16, seed: int = CODE_SEED) -> torch.Tensor:
    """The fixed ``[channels, 3]`` colour code (entries N(0, 1/3): palette colours sit ~1.6-3.3 apart)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(channels, 3, generator=g) / 3.0**0.5


def local_target(video: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """What ``palette_vae`` encodes float ``[B, F, H, W, 3]`` (0..1) to, normalised:
    ``[B, C, 1 + (F - 1) // 4, H / 8, W / 8]``."""
    import torch.nn.functional as F
    from einops import rearrange

    x = rearrange(video, "b f h w c -> b c f h w") * 2.0 - 1.0
    groups = [x[:, :, :1]] + [x[:, :, 4 * k - 3:4 * k + 1] for k in range(1, 1 + (x.shape[2] - 1) // 4)]
    means = torch.cat([F.avg_pool3d(g, (g.shape[2], 8, 8)) for g in groups], dim=2)
    return torch.einsum("oc,bcfhw->bofhw", code, means)


@torch.no_grad()
def palette_vae(seed: int = 0) -> Any:
    """The tiny Wan 2.1 ``AutoencoderKLWan`` (``tiny_diffusers``' config, seed ``seed``) with the local encoder."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample, WanResidualBlock

    from tests.support.tiny_diffusers import _wan_vae

    torch.manual_seed(seed)
    vae: Any = _wan_vae(False)
    encoder: Any = vae.encoder
    z = vae.config.z_dim
    dim = encoder.conv_in.out_channels
    if dim < 8:
        raise ValueError(f"the local encoder needs >= 8 channels, the tiny VAE has {dim}")
    conv_in: Any = encoder.conv_in  # weight [dim, 3, t, kh, kw]; causal: the last time tap is the current frame
    conv_in.weight.zero_()
    conv_in.bias.zero_()
    t, cy, cx = conv_in.weight.shape[2] - 1, conv_in.weight.shape[3] // 2, conv_in.weight.shape[4] // 2
    for c in range(3):
        conv_in.weight[c, c, t, cy, cx] = 1.0
        conv_in.weight[3 + c, c, t, cy, cx] = -1.0
    conv_in.bias[6] = CONSTANT
    module: Any
    for module in encoder.modules():
        if isinstance(module, WanResidualBlock):
            conv2: Any = module.conv2
            conv2.weight.zero_()
            conv2.bias.zero_()
        elif isinstance(module, WanResample) and module.mode in ("downsample2d", "downsample3d"):
            conv: Any = module.resample[1]
            conv.weight.zero_()
            conv.bias.zero_()
            for c in range(dim):
                conv.weight[c, c, 0:2, 0:2] = 0.25
            if module.mode == "downsample3d":
                time_conv: Any = module.time_conv
                time_conv.weight.zero_()
                time_conv.bias.zero_()
                for c in range(dim):
                    time_conv.weight[c, c, 1:3, 0, 0] = 0.5
    for attention in encoder.mid_block.attentions:
        attention.proj.weight.zero_()
        attention.proj.bias.zero_()
    encoder.norm_out.gamma.fill_(1.0)
    scale = dim**0.5 / (CONSTANT**2 + 2.0) ** 0.5  # norm_out's factor at |x|^2 = 1 (|x|^2 is 0..3)
    code = code_matrix(z) * torch.tensor(vae.config.latents_std).view(-1, 1) / scale  # [z, 3]
    conv_out: Any = encoder.conv_out  # [2z, dim, t, kh, kw]: mean channels first, then log-variance
    conv_out.weight.zero_()
    conv_out.bias.zero_()
    t, cy, cx = conv_out.weight.shape[2] - 1, conv_out.weight.shape[3] // 2, conv_out.weight.shape[4] // 2
    conv_out.weight[:z, 0:3, t, cy, cx] = code
    conv_out.weight[:z, 3:6, t, cy, cx] = -code
    conv_out.bias[:z] = torch.tensor(vae.config.latents_mean)
    quant: Any = vae.quant_conv
    quant.weight.zero_()
    quant.bias.zero_()
    for c in range(quant.weight.shape[0]):
        quant.weight[c, c].fill_(1.0)
    return vae.eval()
