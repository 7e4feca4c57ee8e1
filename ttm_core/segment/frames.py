"""Frames to track through, held in memory or streamed from a video file.

Trackers read frames one at a time, in order, so a long clip never needs all its frames
decoded at once: a ``FrameSource`` is an IMAGE batch already in memory (yielded as views, no
copy) or a video file decoded frame by frame with PyAV. ``select`` picks the clip the trajectory
is made of (every ``stride``-th frame, at most ``num_frames`` of them) and says how the source
was matched, so a tracked trajectory always has exactly the frames that were asked for.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..errors import TTMInputError

VideoPath = str | Path | BinaryIO


class FrameSource:
    """Frames ``[H, W, 3]`` float32 in 0..1 on the CPU, yielded one at a time.

    Attributes:
        count: how many frames there are.
        size: (height, width).
        fps: the source's frame rate, None when unknown (an IMAGE batch).
        name: what to call the source in messages (the node input).
    """

    count: int
    size: tuple[int, int]
    fps: float | None
    name: str

    def frames(self, indices: range) -> Iterator[torch.Tensor]:
        """The frames at ``indices`` (increasing), in order, one at a time."""
        raise NotImplementedError


class TensorFrames(FrameSource):
    """An IMAGE batch ``[T, H, W, C]`` (C = 3 or 4; alpha is dropped), yielded as views."""

    def __init__(self, images: torch.Tensor, fps: float | None = None, name: str = "frames") -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise TTMInputError(name, f"expected frames [T, H, W, 3], got {shape}",
                                "connect an IMAGE batch or a VIDEO")
        if images.shape[0] < 1:
            raise TTMInputError(name, "there are no frames", "connect a clip with at least one frame")
        self.images = images
        self.count = int(images.shape[0])
        self.size = (int(images.shape[1]), int(images.shape[2]))
        self.fps = fps
        self.name = name

    def frames(self, indices: range) -> Iterator[torch.Tensor]:
        for t in indices:
            yield self.images[t, ..., :3].detach().to("cpu", torch.float32)


class VideoFrames(FrameSource):
    """A video file (path or file object) decoded frame by frame with PyAV.

    Only the frames asked for are converted; decoded frames are dropped as soon as they are
    passed on, so memory does not grow with the length of the video.
    """

    def __init__(self, source: VideoPath, count: int | None = None, fps: float | None = None,
                 size: tuple[int, int] | None = None, name: str = "frames") -> None:
        self.source = source
        self.name = name
        if count is None or fps is None or size is None:
            probed = _probe(source, name)
            count = probed[0] if count is None else count
            fps = probed[1] if fps is None else fps
            size = probed[2] if size is None else size
        if count < 1:
            raise TTMInputError(name, "the video has no frames", "load a video with at least one frame")
        self.count, self.fps, self.size = int(count), fps, (int(size[0]), int(size[1]))

    def frames(self, indices: range) -> Iterator[torch.Tensor]:
        import av

        wanted = iter(indices)
        target = next(wanted, None)
        if target is None:
            return
        _rewind(self.source)
        with av.open(self.source, mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index < target:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                if rgb.shape[:2] != self.size:
                    raise TTMInputError(self.name, f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, the video "
                                        f"started at {self.size[1]}x{self.size[0]}",
                                        "use a video whose frames all have one size")
                yield torch.from_numpy(rgb).to(torch.float32).div_(255.0)
                target = next(wanted, None)
                if target is None:
                    return
        raise TTMInputError(self.name, f"the video ended before frame {target} (it decoded fewer frames than the "
                            f"{self.count} its header promised)", "re-encode the video, or ask for fewer frames")


def _rewind(source: VideoPath) -> None:
    if isinstance(source, io.IOBase):
        source.seek(0)


def _probe(source: VideoPath, name: str) -> tuple[int, float | None, tuple[int, int]]:
    """(frame count, fps, (height, width)) of the first video stream; counts by demuxing when the
    header has no frame count (no frame is decoded)."""
    import av

    _rewind(source)
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise TTMInputError(name, "the file has no video stream", "load a video file")
            stream = container.streams.video[0]
            size = (int(stream.codec_context.height), int(stream.codec_context.width))
            rate = stream.average_rate or stream.base_rate
            fps = float(Fraction(rate)) if rate else None
            count = int(stream.frames or 0)
            if count <= 0:
                count = sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as err:
        raise TTMInputError(name, f"the video could not be read ({err})", "load an mp4, webm, mov or mkv") from None
    _rewind(source)
    return count, fps, size


@dataclass(frozen=True)
class Clip:
    """Which source frames a trajectory is made of.

    Attributes:
        indices: source frame indices, increasing.
        fps: frames per second of the clip (the source's divided by ``stride``).
        note: one sentence saying how the source was matched (for the log).
    """

    indices: range
    fps: float
    note: str

    @property
    def count(self) -> int:
        return len(self.indices)


def select(source: FrameSource, num_frames: int = 0, stride: int = 1, start: int = 0,
           fps: float = 0.0) -> Clip:
    """The clip to track: every ``stride``-th frame from ``start``, ``num_frames`` of them.

    Args:
        num_frames: frames in the clip; 0 = as many as the source has.
        stride: take every stride-th frame (2 turns a 30 fps video into a 15 fps clip).
        start: the first source frame (the one the objects were found in).
        fps: the clip's frame rate; 0 = the source's divided by ``stride`` (16 when unknown).
    Raises TTMInputError when the source is shorter than the clip asked for: frames are never
    repeated or invented, the message says how many there are.
    """
    if stride < 1:
        raise TTMInputError("stride", f"stride must be at least 1, got {stride}", "use 1 for every frame")
    if num_frames < 0:
        raise TTMInputError("num_frames", f"num_frames must be 0 (all) or positive, got {num_frames}",
                            "use 0 to track every frame")
    if not 0 <= start < source.count:
        raise TTMInputError("start_frame", f"start frame {start} is outside the {source.count} frames of "
                            f"{source.name}", f"use 0..{source.count - 1}")
    available = (source.count - start + stride - 1) // stride
    count = num_frames or available
    if count > available:
        raise TTMInputError("num_frames", f"{source.name} has {source.count} frames; taking every {stride} from "
                            f"frame {start} gives {available}, but num_frames asks for {count}",
                            f"set num_frames to {available} or less (0 = all), or lower the stride")
    if fps <= 0:
        fps = (source.fps / stride) if source.fps else 16.0
    if not math.isfinite(fps) or fps <= 0:
        raise TTMInputError("fps", f"fps {fps} is not a positive number", "use e.g. 16")
    indices = range(start, start + count * stride, stride)
    note = (f"tracking {count} of {source.count} frames of {source.name} (from frame {start}, taking every {stride}) "
            f"at {fps:g} fps")
    return Clip(indices, float(fps), note)


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from a float frame in 0..1."""
    return (frame.clamp(0, 1) * 255).round_().to(torch.uint8).numpy()
