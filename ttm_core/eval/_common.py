"""Shared by the metrics: local-file checks, frame preprocessing, batching."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def local_file(path: str | Path, input_name: str, what: str, fix: str) -> Path:
    """The path of a weights file that must exist locally (nothing is ever downloaded)."""
    file = Path(path).expanduser()
    if not str(path) or not file.is_file():
        raise TTMInputError(input_name, f"{what} {str(file)!r} does not exist" if str(path) else f"no {what} given",
                            fix)
    return file


def local_folder(path: str | Path, input_name: str, what: str, needs: Sequence[str], fix: str) -> Path:
    """A model folder that must exist locally and hold ``needs`` (the first missing file is named)."""
    folder = Path(path).expanduser()
    if not str(path) or not folder.is_dir():
        raise TTMInputError(input_name, f"{what} folder {str(folder)!r} does not exist" if str(path)
                            else f"no {what} folder given", fix)
    for name in needs:
        if not (folder / name).is_file():
            raise TTMInputError(input_name, f"{folder / name} is missing (the {what} folder needs {', '.join(needs)})",
                                fix)
    return folder


def check_video(video: object, name: str = "video", min_frames: int = 1) -> torch.Tensor:
    """float ``[T, H, W, 3]`` in 0..1 (alpha dropped), or a TTMInputError naming ``name``."""
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[-1] not in (3, 4):
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise TTMInputError(name, f"expected frames [T, H, W, 3] in 0..1, got {shape}", "pass a decoded video")
    if video.shape[0] < min_frames:
        raise TTMInputError(name, f"{video.shape[0]} frame(s); this metric needs at least {min_frames}",
                            f"score videos of {min_frames} or more frames")
    return video[..., :3]


def resize_center_crop(frames: torch.Tensor, side: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP's preprocessing on tensors: shorter side to ``side`` (bicubic, antialiased), centre crop
    ``side`` x ``side``, normalise.

    Args:
        frames: float ``[N, H, W, 3]`` in 0..1 on any device.
    Returns:
        float32 ``[N, 3, side, side]``.
    """
    x = rearrange(frames.to(torch.float32), "n h w c -> n c h w")
    height, width = x.shape[-2:]
    scale = side / min(height, width)
    size = (max(side, round(height * scale)), max(side, round(width * scale)))
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    x = x[:, :, top:top + side, left:left + side]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


def batches(count: int, size: int) -> Iterator[slice]:
    if size < 1:
        raise TTMInputError("batch_size", f"{size} is below 1", "use e.g. 16")
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


def sample_frames(count: int, wanted: int) -> list[int]:
    """``wanted`` frame indices spread evenly over ``count`` frames (repeats when the clip is shorter)."""
    if wanted == 1:
        return [count // 2]
    return [round(i * (count - 1) / (wanted - 1)) for i in range(wanted)]
