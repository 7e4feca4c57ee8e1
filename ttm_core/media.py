"""Video files from IMAGE frames: mp4 (H.264), webm (VP9), gif, webp and png sequences.

Frames are converted to 8-bit a few at a time and streamed into the encoder, so encoding
never holds a second full-size float32 copy of the clip (VideoHelperSuite users report
10 GiB blow-ups from exactly that). Files are written under a temporary name and renamed
when complete: a failed or cancelled encode leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import TTMInputError
from .types import ProgressFn

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoFormat:
    """An output format: file extension and how it is written."""

    name: str
    extension: str
    writer: str  # "av" (PyAV stream), "gif" (Pillow), "png" (one file per frame)
    container: str = ""
    codec: str = ""
    pix_fmt: str = ""
    even_size: bool = False  # 4:2:0 chroma needs even width and height
    mime: str = ""


FORMATS: dict[str, VideoFormat] = {
    "mp4": VideoFormat("mp4", "mp4", "av", "mp4", "libx264", "yuv420p", True, "video/mp4"),
    "webm": VideoFormat("webm", "webm", "av", "webm", "libvpx-vp9", "yuv420p", True, "video/webm"),
    "gif": VideoFormat("gif", "gif", "gif", mime="image/gif"),
    "webp": VideoFormat("webp", "webp", "av", "webp", "libwebp_anim", "yuv420p", False, "image/webp"),
    "png": VideoFormat("png", "png", "png", mime="image/png"),
}

_BAD_PREFIX_CHARS = re.compile(r'[\x00-\x1f<>:"|?*]')


def split_prefix(prefix: str) -> tuple[str, str]:
    """Validate a ``filename_prefix`` and split it into (subfolder, file name stem).

    Subfolders are allowed ("ttm/shot1"); anything that could leave the output folder is
    refused: absolute paths, ``..`` parts, drive letters, control characters.
    """
    text = prefix.strip().replace("\\", "/")
    fix = "use a relative name such as 'ttm/shot' (subfolders allowed, no '..', no absolute path)"
    if not text:
        raise TTMInputError("filename_prefix", "the prefix is empty", fix)
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise TTMInputError("filename_prefix", f"{prefix!r} is an absolute path", fix)
    parts = text.split("/")
    if any(p in ("..", ".") for p in parts):
        raise TTMInputError("filename_prefix", f"{prefix!r} contains '..' or '.' parts", fix)
    if any(not p for p in parts):
        raise TTMInputError("filename_prefix", f"{prefix!r} has an empty folder or file name", fix)
    if _BAD_PREFIX_CHARS.search(text):
        raise TTMInputError("filename_prefix", f"{prefix!r} contains characters not allowed in file names", fix)
    return "/".join(parts[:-1]), parts[-1]


def next_counter(folder: Path, stem: str) -> int:
    """The next free counter for ``{stem}_{counter:05}_*`` files in ``folder`` (ComfyUI's scheme)."""
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})_")
    counters = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))] if folder.is_dir() else []
    return max(counters, default=0) + 1


def quality_to_crf(quality: int, worst: int) -> int:
    """Map quality 1..100 (100 = best) onto a CRF scale 0..worst (0 = best).

    Linear, with quality 100 at a quarter of the scale (x264: CRF 13, visually lossless) and
    the default 85 at x264's "visually lossless" CRF 18.
    """
    return round(worst * (1.0 - 0.75 * quality / 100.0))


def frames_to_uint8(frames: torch.Tensor, chunk: int = 4, pad_even: bool = False) -> Iterator[np.ndarray]:
    """Yield uint8 ``[H, W, 3]`` frames from float ``[T, H, W, 3]`` in 0..1, ``chunk`` at a time.

    One float and one uint8 buffer of ``chunk`` frames are allocated once and reused, so the
    extra memory is O(chunk) whatever T is (no allocator churn of chunk-sized temporaries).
    Each yielded frame is the caller's own array. With ``pad_even`` an odd width or height is
    padded by repeating the last column/row.
    """
    total = frames.shape[0]
    chunk = max(1, min(chunk, total))
    scratch = torch.empty((chunk, *frames.shape[1:]), dtype=torch.float32)
    as_bytes = torch.empty((chunk, *frames.shape[1:]), dtype=torch.uint8)
    pad = ((0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)) if pad_even else None
    for start in range(0, total, chunk):
        count = min(chunk, total - start)
        buffer = scratch[:count]
        buffer.copy_(frames[start:start + count].detach())
        buffer.clamp_(0.0, 1.0).mul_(255.0).round_()
        as_bytes[:count].copy_(buffer)
        for array in as_bytes[:count].numpy():
            yield np.pad(array, pad, mode="edge") if pad is not None and any(p[1] for p in pad) else array.copy()


def _check_frames(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise TTMInputError("images", f"expected IMAGE frames [T, H, W, 3], got {shape}", "connect an IMAGE batch")
    if frames.shape[0] < 1:
        raise TTMInputError("images", "there are no frames", "connect at least one frame")


def _write_av(frames: torch.Tensor, path: Path, fmt: VideoFormat, fps: float, quality: int,
              metadata: Mapping[str, object], progress: ProgressFn | None) -> None:
    total = frames.shape[0]
    height, width = frames.shape[1], frames.shape[2]
    if fmt.even_size:
        height, width = height + height % 2, width + width % 2
    options = {"movflags": "use_metadata_tags"} if fmt.container == "mp4" else {}
    if fmt.container == "webp":
        options["loop"] = "0"
    with av.open(str(path), mode="w", format=fmt.container, options=options) as container:
        for key, value in metadata.items():
            container.metadata[key] = value if isinstance(value, str) else json.dumps(value)
        stream = container.add_stream(fmt.codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, fmt.pix_fmt
        if fmt.codec == "libx264":
            stream.options = {"crf": str(quality_to_crf(quality, 51)), "preset": "medium"}
        elif fmt.codec == "libvpx-vp9":
            stream.options = {"crf": str(quality_to_crf(quality, 63)), "b": "0", "row-mt": "1"}
        elif fmt.codec == "libwebp_anim":
            stream.options = {"quality": str(quality), "lossless": "1" if quality >= 100 else "0"}
        for index, array in enumerate(frames_to_uint8(frames[..., :3], pad_even=fmt.even_size)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
            if progress is not None:
                progress(index + 1, total)
        container.mux(stream.encode(None))


def _write_gif(frames: torch.Tensor, path: Path, fps: float, progress: ProgressFn | None) -> None:
    total = frames.shape[0]

    def images() -> Iterator[Image.Image]:
        for index, array in enumerate(frames_to_uint8(frames[..., :3])):
            # Per-frame adaptive palette; Pillow keeps 1 byte per pixel per frame.
            yield Image.fromarray(array).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            if progress is not None:
                progress(index + 1, total)

    iterator = images()
    first = next(iterator)
    first.save(path, format="GIF", save_all=True, append_images=iterator, loop=0,
               duration=max(20, round(1000.0 / fps)), disposal=1)


def encode_video(frames: torch.Tensor, folder: Path, stem: str, format_name: str, fps: float, quality: int = 85,
                 metadata: Mapping[str, object] | None = None, progress: ProgressFn | None = None) -> list[Path]:
    """Encode frames to ``folder/{stem}_{counter:05}_.{ext}`` (png: one file per frame).

    Args:
        frames: float ``[T, H, W, 3]`` in 0..1 (an alpha channel is dropped).
        folder: existing or creatable output folder.
        stem: file name stem (already validated, see ``split_prefix``).
        format_name: a key of FORMATS.
        fps: frames per second (> 0).
        quality: 1..100; CRF for mp4/webm, quality for webp; ignored by gif and png.
        metadata: text metadata (the ComfyUI prompt and workflow) for mp4, webm and png.
        progress: called with (frames done, T).
    Returns:
        the written files (a png sequence gives T files).
    """
    _check_frames(frames)
    if format_name not in FORMATS:
        raise TTMInputError("format", f"unknown format {format_name!r}", f"use one of {', '.join(FORMATS)}")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise TTMInputError("fps", f"fps {fps} is out of range", "use a frame rate between 0 and 1000, e.g. 16")
    if not 1 <= quality <= 100:
        raise TTMInputError("quality", f"quality {quality} is outside 1..100", "use e.g. 85")
    fmt = FORMATS[format_name]
    metadata = dict(metadata or {})
    folder.mkdir(parents=True, exist_ok=True)
    counter = next_counter(folder, stem)
    if fmt.writer == "png":
        targets = [folder / f"{stem}_{counter:05}_{i:05}.png" for i in range(frames.shape[0])]
    else:
        targets = [folder / f"{stem}_{counter:05}_.{fmt.extension}"]
    temps = [t.with_name(f".{t.name}.part") for t in targets]
    try:
        if fmt.writer == "av":
            _write_av(frames, temps[0], fmt, fps, quality, metadata, progress)
        elif fmt.writer == "gif":
            _write_gif(frames, temps[0], fps, progress)
        else:
            info = PngInfo()
            for key, value in metadata.items():
                info.add_text(key, value if isinstance(value, str) else json.dumps(value))
            for index, array in enumerate(frames_to_uint8(frames[..., :3])):
                Image.fromarray(array).save(temps[index], format="PNG", pnginfo=info, compress_level=4)
                if progress is not None:
                    progress(index + 1, len(temps))
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    except BaseException:
        # Cancelled or failed: remove every file this call made, partial or renamed.
        for path in temps + targets:
            path.unlink(missing_ok=True)
        raise
    LOG.info("wrote %s (%d frames, %s, %.3g fps)", targets[0], frames.shape[0], format_name, fps)
    return targets
