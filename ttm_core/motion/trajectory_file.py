"""Trajectory files: a saved mask trajectory, exact bit for bit, in one ``.npz`` file.

The format (version 1; the full spec is docs/TRAJECTORY_FILE.md) is a ZIP archive, the
container NumPy's ``np.savez`` writes, holding::

    trajectory.json   version, size, frame count, fps, depth order, prompts, objects
    labels.npy        uint8 [T, H, W]: the label video (0 = background, else an object id)
    masks.npy         float32 [L, H, W]: the first-frame (possibly soft) masks s(0)
    transforms.npy    float64 [T, L, 2, 3]: per-frame affines, only when the trajectory has them

Why this container: ``.npy`` stores the raw little-endian bytes of each array, so labels,
soft masks and transforms come back bit for bit; deflate shrinks a label video (long runs of
a few values) to a few percent of its size; and any ZIP tool, ``np.load``, or a ``.npy``
reader in another language (NPZ.jl, cnpy, npyjs) opens it. One file also uploads through
ComfyUI's /upload route and shows up as one entry in Load Trajectory's list. A PNG sequence
would be lossless for the labels too, but it cannot hold float32 masks or float64
transforms, and it is many files to upload and to pick.

Writing is deterministic (fixed member order and time stamps): the same trajectory always
gives the same bytes. Reading refuses other versions, damaged archives (ZIP CRC checks),
missing members, wrong dtypes or shapes and anything the ``Trajectory`` dataclass refuses,
each with a TTMInputError naming the input and the fix.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..errors import TTMInputError
from ..media import next_counter
from ..types import ObjectPrompt, Objects, Prompts, Trajectory

FORMAT = "through-the-mask-trajectory"
VERSION = 1
EXTENSION = ".npz"
META = "trajectory.json"
LABELS = "labels.npy"
MASKS = "masks.npy"
TRANSFORMS = "transforms.npy"
_DATE = (1980, 1, 1, 0, 0, 0)  # ZIP's earliest time stamp: the same trajectory always gives the same bytes
_MAX_JSON_BYTES = 1 << 20


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def trajectory_metadata(trajectory: Trajectory) -> dict[str, Any]:
    """The ``trajectory.json`` member of a file holding ``trajectory``."""
    objects = trajectory.objects
    frames, height, width = (int(v) for v in trajectory.labels.shape)
    return {
        "format": FORMAT,
        "version": VERSION,
        "frames": frames,
        "height": height,
        "width": width,
        "fps": float(trajectory.fps),
        "depth_order": list(trajectory.depth_order),
        "prompts": {"global": objects.prompts.global_prompt, "motion": objects.prompts.motion_prompt},
        "objects": [{"id": object_id, "name": prompt.name, "prompt": prompt.local_prompt, "color": list(color)}
                    for object_id, prompt, color in zip(objects.ids, objects.prompts.objects, objects.colors)],
        "arrays": {"labels": LABELS, "masks": MASKS,
                   "transforms": TRANSFORMS if trajectory.transforms is not None else None},
    }


def trajectory_to_bytes(trajectory: Trajectory) -> bytes:
    """The file contents of ``trajectory`` (see the module docstring)."""
    members = [
        (META, json.dumps(trajectory_metadata(trajectory), ensure_ascii=False, indent=1).encode("utf-8")),
        (LABELS, _npy(trajectory.labels.numpy())),
        (MASKS, _npy(trajectory.objects.masks.numpy().astype("<f4", copy=False))),
    ]
    if trajectory.transforms is not None:
        members.append((TRANSFORMS, _npy(trajectory.transforms.numpy().astype("<f8", copy=False))))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=6)
    return buffer.getvalue()


def write_trajectory(trajectory: Trajectory, path: Path) -> Path:
    """Write ``trajectory`` to ``path`` (through a temporary file: a failed write leaves nothing)."""
    data = trajectory_to_bytes(trajectory)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.part")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def save_trajectory(trajectory: Trajectory, folder: Path, stem: str) -> Path:
    """Write ``folder/{stem}_{counter:05}_.npz`` with the next free counter (Video Combine's scheme).

    ``stem`` must already be validated (``ttm_core.media.split_prefix``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    return write_trajectory(trajectory, folder / f"{stem}_{next_counter(folder, stem):05}_{EXTENSION}")


# --------------------------------------------------------------------------- reading

class _Reader:
    """Reads one archive; every problem becomes a TTMInputError on ``input_name``."""

    def __init__(self, data: bytes, source: str, input_name: str) -> None:
        self.source, self.input_name = source, input_name
        self.fix_resave = "save it again with Save Trajectory (Through-The-Mask), or pick another file"
        try:
            self.archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise self.error("is not a trajectory file (not a ZIP / .npz archive, or truncated)") from None
        self.names = set(self.archive.namelist())

    def error(self, problem: str, fix: str | None = None) -> TTMInputError:
        return TTMInputError(self.input_name, f"{self.source} {problem}", fix or self.fix_resave)

    def read(self, name: str, max_bytes: int) -> bytes:
        if name not in self.names:
            raise self.error(f"lacks its {name} member")
        size = self.archive.getinfo(name).file_size
        if size > max_bytes:
            raise self.error(f"has a {name} of {size} bytes, more than the size {META} declares allows ({max_bytes})")
        try:
            return self.archive.read(name)
        except (zipfile.BadZipFile, zlib.error) as err:  # a CRC mismatch or a damaged deflate stream
            raise self.error(f"is damaged ({name}: {err})") from None

    def array(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        # A bound against a decompression bomb, loose enough that a wrong dtype is reported as such below.
        data = self.read(name, int(np.prod(shape, dtype=np.int64)) * 8 + 4096)
        try:
            array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise self.error(f"has an unreadable {name} ({err})") from None
        if array.dtype != np.dtype(dtype) or tuple(array.shape) != shape:
            raise self.error(f"has {name} of {array.dtype} {tuple(array.shape)}, expected {np.dtype(dtype)} {shape}")
        return np.array(array, order="C", copy=True)  # writable: read_array over bytes gives a read-only view


def _field(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], reader: _Reader) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise reader.error(f"has no valid {key!r} in {META} (found {value!r})")
    return value


def trajectory_from_bytes(data: bytes, source: str = "the file", input_name: str = "file") -> Trajectory:
    """Read a trajectory file's contents; ``source`` names it in errors, ``input_name`` is the node input."""
    reader = _Reader(data, source, input_name)
    try:
        meta = json.loads(reader.read(META, _MAX_JSON_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise reader.error(f"has an unreadable {META} ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise reader.error(f"is not a Through-The-Mask trajectory ({META} has no \"format\": \"{FORMAT}\")")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:  # 1.0 or true are not version 1
        raise reader.error(f"is a version {version!r} trajectory file; this pack reads version {VERSION}",
                           f"save it again with this pack's Save Trajectory, or use the pack version that wrote it"
                           f"{' (a newer one)' if isinstance(version, int) and version > VERSION else ''}")
    frames, height, width = (_field(meta, k, int, reader) for k in ("frames", "height", "width"))
    if min(frames, height, width) < 1:
        raise reader.error(f"declares a {frames} x {height} x {width} label video")
    fps = _field(meta, "fps", (int, float), reader)
    if not math.isfinite(fps) or fps <= 0:
        raise reader.error(f"declares fps {fps}")
    prompts = _field(meta, "prompts", dict, reader)
    entries = _field(meta, "objects", list, reader)
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise reader.error(f"has no object list in {META}")
    order = _field(meta, "depth_order", list, reader)
    arrays = _field(meta, "arrays", dict, reader)
    try:
        objects_prompts = Prompts(
            str(prompts.get("global", "")), str(prompts.get("motion", "")),
            tuple(ObjectPrompt(str(e.get("name", "")), str(e.get("prompt", ""))) for e in entries))
        ids = tuple(int(e["id"]) for e in entries)
        colors = tuple(tuple(int(v) for v in e["color"]) for e in entries)
        depth_order = tuple(int(i) for i in order if not isinstance(i, bool))
    except (KeyError, TypeError, ValueError) as err:
        problem = err.problem if isinstance(err, TTMInputError) else f"{type(err).__name__}: {err}"
        raise reader.error(f"has a bad object entry in {META} ({problem})") from None
    count = len(entries)
    labels = reader.array(LABELS, "|u1", (frames, height, width))
    masks = reader.array(MASKS, "<f4", (count, height, width))
    transforms = None
    if arrays.get("transforms") is not None:
        transforms = torch.from_numpy(reader.array(TRANSFORMS, "<f8", (frames, count, 2, 3)))
    try:
        objects = Objects(objects_prompts, torch.from_numpy(masks), ids, colors)  # type: ignore[arg-type]
        return Trajectory(torch.from_numpy(labels), objects, float(fps), depth_order, transforms)
    except (TTMInputError, TypeError, ValueError) as err:
        problem = f"{err.input_name}: {err.problem}" if isinstance(err, TTMInputError) else str(err)
        raise reader.error(f"holds an invalid trajectory ({problem})") from None


def read_trajectory(path: Path, input_name: str = "file", shown: str | None = None) -> Trajectory:
    """Read the trajectory file at ``path`` (``shown``: its name in errors, default the path)."""
    source = repr(shown if shown is not None else str(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TTMInputError(input_name, f"{source} does not exist", "pick a file from the list, or upload / "
                            "copy the .npz into ComfyUI's input folder") from None
    except OSError as err:
        raise TTMInputError(input_name, f"{source} cannot be read ({err.strerror})",
                            "check the file's permissions") from None
    return trajectory_from_bytes(data, source, input_name)


# --------------------------------------------------------------------------- the input folder

def resolve_input_file(root: Path, name: str, input_name: str = "file") -> Path:
    """The file ``name`` (relative, '/'-separated, as Load Trajectory lists it) inside ``root``.

    Refuses absolute paths, drive letters, ``..`` parts and anything whose real path (links
    followed) lies outside ``root``.
    """
    fix = ("pick a file from the list: trajectory files live in ComfyUI's input folder (upload them there, "
           "or copy them from the output folder)")
    text = name.strip().replace("\\", "/")
    if not text:
        raise TTMInputError(input_name, "no file is chosen", fix)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or any(c in text for c in "\x00\r\n"):
        raise TTMInputError(input_name, f"{name!r} is not a name inside the input folder", fix)
    parts = PurePosixPath(text).parts
    if any(part in ("..", ".") for part in text.split("/")):
        raise TTMInputError(input_name, f"{name!r} leaves the input folder ('..' or '.' parts)", fix)
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise TTMInputError(input_name, f"{name!r} points outside the input folder (a link to {path})", fix)
    return path


def list_trajectory_files(root: Path) -> list[str]:
    """Every ``*.npz`` under ``root`` (subfolders too, hidden ones skipped), '/'-separated, sorted."""
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob(f"*{EXTENSION}"):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)
