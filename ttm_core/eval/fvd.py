"""FVD: the Frechet distance between I3D features of a generated and a reference set of videos.

Variant: the TorchScript I3D that StyleGAN-V's FVD (Skorokhodov et al. 2022) and most later video papers
use, ``i3d_torchscript.pt`` (Kinetics-400 I3D, converted from the TF-Hub model of the original FVD of
Unterthiner et al. 2019). Called as StyleGAN-V calls it::

    features = i3d(videos, rescale=False, resize=True, return_features=True)   # [N, 400]

with ``videos`` float32 ``[N, 3, T, H, W]`` in -1..1 (the module resizes to 224x224 itself). Why this one:
it needs no TensorFlow, loads with ``torch.jit.load`` alone, and its numbers are comparable with the many
papers that report "FVD (StyleGAN-V)". Users put the file at ``ComfyUI/models/ttm/eval/i3d_torchscript.pt``
(or pass its path). Each video is read as ``num_frames`` frames (16 by default, StyleGAN-V's FVD16) spread
evenly over the clip.

The Frechet distance of two Gaussians fitted to the features (Heusel et al. 2017):
``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, with the matrix square root from ``scipy.linalg.sqrtm``.
FVD over few videos is biased upwards and noisy; the set sizes are reported with every figure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..types import ProgressFn
from ._common import batches, check_video, local_file, sample_frames

LOG = logging.getLogger(__name__)

I3D_FIX = ("download StyleGAN-V's i3d_torchscript.pt (the FVD detector) and put it at "
           "ComfyUI/models/ttm/eval/i3d_torchscript.pt, or pass its path")
FEATURES = 400


def load_i3d(path: str | Path, device: torch.device | str = "cpu", input_name: str = "i3d") -> torch.jit.ScriptModule:
    """Load the TorchScript I3D from a local file."""
    file = local_file(path, input_name, "I3D TorchScript file", I3D_FIX)
    try:
        model = torch.jit.load(str(file), map_location=torch.device(device))
    except RuntimeError as error:
        raise TTMInputError(input_name, f"{file} is not a TorchScript module ({str(error).splitlines()[0]})",
                            I3D_FIX) from error
    return model.eval()


def video_clip(video: torch.Tensor, num_frames: int, side: int = 224) -> torch.Tensor:
    """One video as the I3D input: float32 ``[3, num_frames, side, side]`` in -1..1 (frames evenly sampled,
    resized with bilinear filtering; I3D resizes again, to the same size, when asked)."""
    frames = check_video(video)
    picked = frames[sample_frames(frames.shape[0], num_frames)].to(torch.float32)
    x = rearrange(picked, "t h w c -> t c h w")
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return rearrange(x.clamp(0, 1) * 2.0 - 1.0, "t c h w -> c t h w")


@torch.inference_mode()
def i3d_features(model: torch.jit.ScriptModule, videos: Sequence[torch.Tensor], *, num_frames: int = 16,
                 batch_size: int = 8, device: torch.device | str = "cpu",
                 progress: ProgressFn | None = None) -> np.ndarray:
    """I3D features of each video: float64 ``[N, F]``.

    Args:
        videos: float ``[T, H, W, 3]`` each, in 0..1 (any sizes and lengths).
    """
    if num_frames < 1:
        raise TTMInputError("num_frames", f"{num_frames} frames", "use e.g. 16")
    out = []
    for part in batches(len(videos), batch_size):
        x = torch.stack([video_clip(v, num_frames) for v in videos[part]]).to(device)
        features = model(x, rescale=False, resize=True, return_features=True)
        out.append(features.detach().to("cpu", torch.float64).reshape(x.shape[0], -1).numpy())
        if progress is not None:
            progress(part.stop, len(videos))
    return np.concatenate(out)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, F]`` (N >= 2 each)."""
    from scipy import linalg

    for name, features in (("generated", features_a), ("reference", features_b)):
        if features.ndim != 2 or features.shape[0] < 2:
            raise TTMInputError(name, f"{features.shape[0] if features.ndim else 0} video(s): FVD needs at least "
                                "2 per set (a covariance)", "score sets of 2 or more videos (FVD is usually "
                                "reported on hundreds)")
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    sigma_a = np.cov(features_a, rowvar=False)
    sigma_b = np.cov(features_b, rowvar=False)
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        # A singular product (fewer videos than features): offset both diagonals, as the FID code does.
        offset = np.eye(sigma_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    covmean = np.real(covmean)
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))
    return max(distance, 0.0)


@dataclass(frozen=True)
class FVDResult:
    fvd: float
    generated: int
    reference: int
    num_frames: int


def fvd(model: torch.jit.ScriptModule, generated: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], *,
        num_frames: int = 16, batch_size: int = 8, device: torch.device | str = "cpu",
        progress: ProgressFn | None = None) -> FVDResult:
    """FVD between two sets of videos (float ``[T, H, W, 3]`` in 0..1 each), with the set sizes."""
    for name, videos in (("generated", generated), ("reference", reference)):
        if len(videos) < 2:
            raise TTMInputError(name, f"{len(videos)} video(s): FVD needs at least 2 per set (a covariance)",
                                "score sets of 2 or more videos (FVD is usually reported on hundreds)")
    total = len(generated) + len(reference)

    def step(offset: int) -> ProgressFn | None:
        return None if progress is None else (lambda done, _total: progress(offset + done, total))

    a = i3d_features(model, generated, num_frames=num_frames, batch_size=batch_size, device=device, progress=step(0))
    b = i3d_features(model, reference, num_frames=num_frames, batch_size=batch_size, device=device,
                     progress=step(len(generated)))
    return FVDResult(frechet_distance(a, b), len(generated), len(reference), num_frames)
