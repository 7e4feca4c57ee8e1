"""What the pack needs from the Python environment it runs in, checked where the pack loads.

ComfyUI brings PyTorch (usually a CUDA build chosen for the user's GPU). The pack's requirements
therefore never name torch: pip could otherwise replace that build. Instead the version is checked
when the nodes load, and a too-old torch is refused with what to do.
"""

from __future__ import annotations

import re

from .errors import TTMInputError

MIN_TORCH = (2, 4)
"""torch.nn.RMSNorm (the new masked layers) and the scaled_dot_product_attention arguments used arrived in 2.4."""


def torch_version_ok(version: str) -> bool:
    """Whether a torch version string (e.g. ``"2.14.1+cu130"``) is at least ``MIN_TORCH``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= MIN_TORCH


def check_torch(version: str) -> None:
    """Raise TTMInputError naming the fix when ``version`` is older than ``MIN_TORCH``."""
    if not torch_version_ok(version):
        need = ".".join(map(str, MIN_TORCH))
        raise TTMInputError("torch", f"Through-The-Mask needs PyTorch {need} or newer, this ComfyUI has {version}",
                            f"update the PyTorch of ComfyUI's own environment to {need}+ the way ComfyUI's install "
                            "guide says for your GPU (the pack's requirements leave torch alone so that pip never "
                            "replaces your CUDA build)")
