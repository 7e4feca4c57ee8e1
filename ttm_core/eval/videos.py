"""Reading and writing the videos a scoring run compares (PyAV)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import TTMInputError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".gif", ".webp", ".avi")


def read_video(path: Path, input_name: str = "video") -> tuple[torch.Tensor, float]:
    """Decode a whole (short) video: (float32 ``[T, H, W, 3]`` in 0..1, fps)."""
    import av

    if not path.is_file():
        raise TTMInputError(input_name, f"{path} does not exist", "render the clip first, or check the folder")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.base_rate or 16)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as error:
        raise TTMInputError(input_name, f"{path} is not a readable video ({error})", "re-encode it as mp4") from error
    if not frames:
        raise TTMInputError(input_name, f"{path} has no frames", "render the clip again")
    return torch.from_numpy(np.stack(frames)).to(torch.float32) / 255.0, fps


def write_video(path: Path, frames: torch.Tensor, fps: float, crf: int = 10) -> Path:
    """Write float ``[T, H, W, 3]`` frames in 0..1 as H.264 mp4 (even size, near-lossless CRF)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (frames[..., :3].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    height, width = array.shape[1] - array.shape[1] % 2, array.shape[2] - array.shape[2] % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for image in array:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]),
                                                                    format="rgb24")))
        container.mux(stream.encode(None))
    return path


def find_video(folder: Path, clip_id: str) -> Path | None:
    """The video of clip ``clip_id`` in ``folder``: ``folder/<id>.<ext>``, else the first video under
    ``folder/<id>/`` (ttm-batch's ``renders/<id>/``), by name."""
    for extension in VIDEO_EXTENSIONS:
        candidate = folder / f"{clip_id}{extension}"
        if candidate.is_file():
            return candidate
    sub = folder / clip_id
    if sub.is_dir():
        found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if found:
            return found[0]
    return None
