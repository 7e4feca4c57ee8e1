"""Average Displacement (AD): how much a video moves.

The paper reports AD next to FVD and CLIPFrame as a motion-amount figure (a method that barely moves
scores well on FVD and CLIPFrame; AD shows it). Here AD is the mean optical-flow magnitude between
consecutive frames, in pixels of the video's own resolution, averaged over all pixels and frame pairs.

Which flow: OpenCV's DIS (``cv2.DISOpticalFlow``, preset ``medium``), the flow the pack's weights-free
tracker uses (``ttm_core.segment.flow_track``), computed on grayscale frames resized so that the longer
side is ``flow_side`` pixels and scaled back to the video's pixels. The paper does not name its flow
(RAFT is common); DIS needs no weights, so the figure is comparable between setups measured here, not
with the paper's absolute numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import TTMInputError
from ..types import ProgressFn

PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - opencv is in requirements.txt
        raise TTMInputError("opencv", "OpenCV (cv2) is not installed",
                            "pip install opencv-python-headless (requirements.txt lists it)") from error
    return cv2


def _gray(frame: torch.Tensor, size: tuple[int, int], cv2: Any) -> np.ndarray:
    rgb = (frame[..., :3].detach().to("cpu", torch.float32).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if gray.shape != size:
        gray = cv2.resize(gray, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return gray


def displacement_per_frame(video: torch.Tensor, *, flow_side: int = 256, preset: str = "medium",
                           progress: ProgressFn | None = None) -> np.ndarray:
    """Mean flow magnitude of each consecutive frame pair, in the video's pixels.

    Args:
        video: float ``[T, H, W, 3]`` in 0..1, T >= 2.
        flow_side: the flow runs on frames whose longer side is this many pixels (never enlarged).
        preset: DIS preset (``ultrafast``, ``fast``, ``medium``).
        progress: called with (pairs done, T - 1).
    Returns:
        float64 ``[T - 1]``.
    """
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[-1] not in (3, 4):
        raise TTMInputError("video", "expected frames [T, H, W, 3] in 0..1", "pass a decoded video")
    if video.shape[0] < 2:
        raise TTMInputError("video", f"{video.shape[0]} frame(s): displacement needs two or more",
                            "score a video of at least 2 frames")
    if preset not in PRESETS:
        raise TTMInputError("preset", f"unknown DIS preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    if flow_side < 16:
        raise TTMInputError("flow_side", f"{flow_side} is below 16 pixels", "use e.g. 256")
    cv2 = _cv2()
    height, width = int(video.shape[1]), int(video.shape[2])
    scale = min(1.0, flow_side / max(height, width))
    size = (max(16, round(height * scale)), max(16, round(width * scale)))
    # Flow vectors measured on the smaller grid, in the video's pixels (x and y scale separately).
    to_video = np.array([width / size[1], height / size[0]], dtype=np.float64)
    dis = cv2.DISOpticalFlow_create(PRESETS[preset])
    pairs = video.shape[0] - 1
    out = np.zeros(pairs, dtype=np.float64)
    previous = _gray(video[0], size, cv2)
    for t in range(pairs):
        current = _gray(video[t + 1], size, cv2)
        flow = dis.calc(previous, current, None).astype(np.float64) * to_video
        out[t] = float(np.sqrt((flow**2).sum(-1)).mean())
        previous = current
        if progress is not None:
            progress(t + 1, pairs)
    return out


def average_displacement(video: torch.Tensor, **kwargs: Any) -> float:
    """AD: the mean of ``displacement_per_frame`` (pixels per frame)."""
    return float(displacement_per_frame(video, **kwargs).mean())
