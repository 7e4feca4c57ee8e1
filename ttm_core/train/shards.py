"""WebDataset shards of training clips, written atomically and reproducibly, with a resume manifest.

One sample per clip, three tar members sharing the clip's key (WebDataset's convention, so any
WebDataset reader can open the shards):

* ``<key>.mp4``: the frames, H.264 (yuv420p, CRF ``settings.crf``; lossy unless CRF 0, which is
  lossless in YUV), one x264 thread, muxed with FFmpeg's bitexact flags (no encoder version or time in
  the container).
* ``<key>.labels.png``: the label video LOSSLESS: one 8-bit greyscale PNG of the T label frames stacked
  vertically (``[T * H, W]``, pixel value = object id, 0 = background); the JSON holds T. A PNG round-trips
  exactly, compresses label maps ~50x, has no timestamps, and opens in any image viewer.
* ``<key>.json``: ``ClipRecord.metadata()``: global / motion / local prompts, names, frame-0 boxes, fps,
  frames / height / width, the source path and frame indices, the filter statistics.

Shards are ``shard-000000.tar``...; each is written to ``<name>.partial`` and renamed when complete
(``os.replace``, atomic on one file system), so a crash or an exception mid-shard leaves no half shard
(a stale ``.partial`` from a killed process is removed by the next run). Tar members have mtime 0,
uid / gid 0, no user names and mode 0444, so the same samples give byte-identical shards.

``manifest.jsonl`` in the output folder has one line per finished clip: ``{"key", "source",
"status": "done" | "skipped", "shard", "reason", "message"}``; a rerun skips every clip it lists as
done in a shard that exists (or as skipped).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TTMInputError
from .clips import ClipRecord

LOG = logging.getLogger(__name__)

SHARD_PATTERN = "shard-{index:06d}.tar"
MANIFEST = "manifest.jsonl"
PARTIAL = ".partial"
FRAMES_EXT = "mp4"
LABELS_EXT = "labels.png"
META_EXT = "json"


def _import_webdataset() -> Any:
    try:
        import webdataset  # type: ignore[import-untyped]
    except ImportError as err:
        raise TTMInputError("webdataset", f"webdataset is not installed ({err})",
                            "pip install -r requirements-train.txt") from None
    return webdataset


# --------------------------------------------------------------------------- members

def encode_frames(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """uint8 ``[T, H, W, 3]`` (even H and W) -> H.264 mp4 bytes, reproducibly (bitexact muxing)."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[1] % 2 \
            or frames.shape[2] % 2:
        raise TTMInputError("frames", f"expected uint8 [T, H, W, 3] with even H and W, got {frames.shape} "
                            f"{frames.dtype}", "build clips with even sides")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = int(frames.shape[2]), int(frames.shape[1]), "yuv420p"
        # one encoder thread: x264's output depends on its thread count, so a fixed count keeps shards
        # byte-identical across machines (parallelism comes from the clip workers)
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def decode_frames(data: bytes, name: str = "frames") -> np.ndarray:
    """mp4 bytes -> uint8 ``[T, H, W, 3]``."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    except av.error.FFmpegError as err:
        raise TTMInputError(name, f"the frames cannot be decoded ({err})",
                            "rebuild the shard with ttm-data build") from None
    if not frames:
        raise TTMInputError(name, "the frames video is empty", "rebuild the shard with ttm-data build")
    return np.stack(frames)


def encode_labels(labels: np.ndarray) -> bytes:
    """uint8 ``[T, H, W]`` -> one greyscale PNG ``[T * H, W]`` (lossless; no time chunks)."""
    from PIL import Image

    if labels.ndim != 3 or labels.dtype != np.uint8:
        raise TTMInputError("labels", f"expected uint8 [T, H, W], got {labels.shape} {labels.dtype}",
                            "pass the label video")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels.reshape(-1, labels.shape[2])), mode="L").save(
        buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_labels(data: bytes, frames: int, name: str = "labels") -> np.ndarray:
    """PNG bytes of ``encode_labels`` -> uint8 ``[T, H, W]`` (exactly what was written)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        stacked = np.array(image, dtype=np.uint8)  # writable: torch.from_numpy shares it
    if stacked.ndim != 2 or frames < 1 or stacked.shape[0] % frames:
        raise TTMInputError(name, f"a {stacked.shape} label image does not hold {frames} frames",
                            "rebuild the shard with ttm-data build")
    return stacked.reshape(frames, stacked.shape[0] // frames, stacked.shape[1])


def encode_sample(record: ClipRecord, crf: int = 18) -> dict[str, Any]:
    """A ``ClipRecord`` as the WebDataset sample written to a shard (members as bytes)."""
    meta = json.dumps(record.metadata(), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"__key__": record.key, FRAMES_EXT: encode_frames(record.frames, record.fps, crf),
            LABELS_EXT: encode_labels(record.labels), META_EXT: meta}


@dataclass(frozen=True, eq=False)
class DecodedSample:
    """A sample read back from a shard: uint8 frames ``[T, H, W, 3]``, uint8 labels ``[T, H, W]``, its JSON."""

    key: str
    frames: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any]


def decode_sample(members: dict[str, bytes], key: str, where: str = "") -> DecodedSample:
    """The members of one sample (extension -> bytes) decoded; errors name the shard and key."""
    label = f"{where}:{key}" if where else key
    missing = [ext for ext in (FRAMES_EXT, LABELS_EXT, META_EXT) if ext not in members]
    if missing:
        raise TTMInputError("shard", f"{label} lacks {', '.join(missing)}", "rebuild the shard with ttm-data build")
    meta = json.loads(members[META_EXT].decode("utf-8"))
    frames = decode_frames(members[FRAMES_EXT], label)
    labels = decode_labels(members[LABELS_EXT], int(meta["frames"]), label)
    if frames.shape[:3] != labels.shape:
        raise TTMInputError("shard", f"{label}: frames {frames.shape[:3]} but labels {labels.shape}",
                            "rebuild the shard with ttm-data build")
    return DecodedSample(key, frames, labels, meta)


# --------------------------------------------------------------------------- shards

def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index)


def write_shard(path: Path, samples: Iterable[dict[str, Any]]) -> int:
    """Write ``samples`` (``encode_sample`` dicts) to the tar ``path`` atomically: all or nothing.

    Returns the number of samples written. Any exception (a bad sample, a full disk, a cancel) removes
    the partial file and propagates.
    """
    webdataset = _import_webdataset()
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL)
    count = 0
    try:
        with open(partial, "wb") as stream:
            writer = webdataset.TarWriter(stream, user="", group="", mode=0o444, encoder=False, mtime=0.0)
            try:
                for sample in samples:
                    writer.write(sample)
                    count += 1
            finally:
                writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return count


def remove_partials(folder: Path) -> list[Path]:
    """Delete ``*.partial`` shards a killed build left behind; returns them."""
    stale = sorted(Path(folder).glob("*.tar" + PARTIAL))
    for path in stale:
        LOG.warning("removing the unfinished shard %s of an interrupted build", path.name)
        path.unlink()
    return stale


def remove_orphans(folder: Path, manifest: Manifest) -> list[Path]:
    """Delete finished shards no manifest entry names: a build killed between renaming a shard into
    place and appending its clips to the manifest (those clips are rebuilt, so the orphan would hold
    them twice for readers that glob the folder); returns them."""
    named = {entry.shard for entry in manifest.entries.values() if entry.shard}
    orphans = sorted(p for p in Path(folder).glob("shard-*.tar") if p.name not in named)
    for path in orphans:
        LOG.warning("removing %s: no manifest entry names it (a build was interrupted while recording it)",
                    path.name)
        path.unlink()
    return orphans


def read_shard_members(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a shard, in order (WebDataset's key/extension split)."""
    import tarfile

    current: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            if current is not None and key != current:
                yield current, members
                members = {}
            current = key
            handle = tar.extractfile(info)
            assert handle is not None
            members[ext] = handle.read()
    if current is not None:
        yield current, members


# --------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class ManifestEntry:
    """One finished clip: ``done`` in ``shard``, or ``skipped`` with a reason."""

    key: str
    source: str
    status: str
    shard: str = ""
    reason: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("done", "skipped"):
            raise TTMInputError("manifest", f"unknown status {self.status!r} for {self.key}",
                                "delete the manifest line or the output folder")


class Manifest:
    """``manifest.jsonl`` of an output folder: read on start, appended (and fsynced) as clips finish."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / MANIFEST
        self.entries: dict[str, ManifestEntry] = {}
        if self.path.exists():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = ManifestEntry(**json.loads(line))
                except (json.JSONDecodeError, TypeError) as err:
                    raise TTMInputError("manifest", f"{self.path} line {number} is not a manifest entry ({err})",
                                        "delete that line (its clip is rebuilt) or start a new --out folder") from None
                self.entries[entry.key] = entry

    def finished(self, key: str) -> bool:
        """Done in a shard that exists, or skipped."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        return entry.status == "skipped" or (self.path.parent / entry.shard).is_file()

    def append(self, entries: Iterable[ManifestEntry]) -> None:
        lines = [json.dumps(e.__dict__, sort_keys=True, ensure_ascii=False) for e in entries]
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        for line in lines:
            entry = ManifestEntry(**json.loads(line))
            self.entries[entry.key] = entry
