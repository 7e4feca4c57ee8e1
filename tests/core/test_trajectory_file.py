"""Trajectory files: save -> load is exact bit for bit; other versions, damaged files and paths outside the
input folder are refused with errors that name the input and the fix."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ttm_core.errors import TTMInputError
from ttm_core.motion.trajectory_file import (
    META,
    VERSION,
    list_trajectory_files,
    read_trajectory,
    resolve_input_file,
    save_trajectory,
    trajectory_from_bytes,
    trajectory_to_bytes,
)
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory


def soft_trajectory(transforms: bool = True, frames: int = 6, height: int = 24, width: int = 40) -> Trajectory:
    """Two objects with soft (non-dyadic float32) masks, custom ids, colours and depth order, random affines."""
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand((2, height, width), generator=generator) * 0.3
    masks[0, 2:10, 3:15] = torch.rand((8, 12), generator=generator) * 0.5 + 0.5
    masks[1, 12:20, 20:35] = torch.rand((8, 15), generator=generator) * 0.5 + 0.5
    prompts = Prompts("Two coins slide — «über» the table.", "Coins slide.",
                      (ObjectPrompt("left coin", "a small coin sliding right"),
                       ObjectPrompt("große Münze", "a big coin")))
    objects = Objects(prompts, masks, ids=(7, 3), colors=((1, 2, 3), (250, 0, 128)))
    labels = torch.zeros((frames, height, width), dtype=torch.uint8)
    for t in range(frames):
        labels[t, 2:10, 3 + t:15 + t] = 7
        labels[t, 12:20, 20 - t:35 - t] = 3
    affines = torch.rand((frames, 2, 2, 3), generator=generator, dtype=torch.float64) if transforms else None
    return Trajectory(labels, objects, fps=15.984, depth_order=(3, 7), transforms=affines)


def assert_same(a: Trajectory, b: Trajectory) -> None:
    assert torch.equal(a.labels, b.labels) and a.labels.dtype == b.labels.dtype
    assert a.objects.masks.dtype == b.objects.masks.dtype == torch.float32
    assert a.objects.masks.numpy().tobytes() == b.objects.masks.numpy().tobytes()  # bit for bit
    if a.transforms is None:
        assert b.transforms is None
    else:
        assert b.transforms is not None and b.transforms.dtype == torch.float64
        assert a.transforms.numpy().tobytes() == b.transforms.numpy().tobytes()
    assert a.objects.prompts == b.objects.prompts
    assert (a.fps, a.depth_order, a.objects.ids, a.objects.colors) == \
        (b.fps, b.depth_order, b.objects.ids, b.objects.colors)


@pytest.mark.parametrize("transforms", [True, False])
def test_save_then_load_is_exact(tmp_path: Path, transforms: bool) -> None:
    trajectory = soft_trajectory(transforms)
    path = save_trajectory(trajectory, tmp_path / "ttm", "shot")
    assert path.name == "shot_00001_.npz"
    loaded = read_trajectory(path)
    assert_same(trajectory, loaded)
    assert trajectory_to_bytes(loaded) == path.read_bytes()  # deterministic: the same trajectory, the same bytes
    assert save_trajectory(trajectory, tmp_path / "ttm", "shot").name == "shot_00002_.npz"


def test_the_file_is_a_plain_npz_other_tools_read(tmp_path: Path) -> None:
    trajectory = soft_trajectory()
    path = save_trajectory(trajectory, tmp_path, "t")
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"labels", "masks", "transforms", META}
        assert np.array_equal(npz["labels"], trajectory.labels.numpy())
        assert npz["masks"].dtype == np.float32 and npz["transforms"].dtype == np.float64
    meta = json.loads(zipfile.ZipFile(path).read(META))
    assert meta["version"] == VERSION and (meta["frames"], meta["height"], meta["width"]) == (6, 24, 40)
    assert meta["objects"][1] == {"id": 3, "name": "große Münze", "prompt": "a big coin", "color": [250, 0, 128]}
    assert meta["prompts"] == {"global": "Two coins slide — «über» the table.", "motion": "Coins slide."}
    assert meta["depth_order"] == [3, 7] and meta["fps"] == 15.984


def rewrite(data: bytes, name: str, change) -> bytes:
    """The archive with member ``name`` replaced by change(old bytes) (None: removed)."""
    source, target = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == name:
                content = change(content)
            if content is not None:
                archive.writestr(info.filename, content)
    return target.getvalue()


def with_meta(data: bytes, **fields) -> bytes:
    return rewrite(data, META, lambda old: json.dumps({**json.loads(old), **fields}).encode())


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


GOOD = trajectory_to_bytes(soft_trajectory())


@pytest.mark.parametrize("data, needle", [
    (with_meta(GOOD, version=2), "is a version 2 trajectory file; this pack reads version 1"),
    (with_meta(GOOD, version="1"), "is a version '1' trajectory file"),
    (with_meta(GOOD, format="something-else"), "is not a Through-The-Mask trajectory"),
    (b"PNG not a zip", "is not a trajectory file (not a ZIP / .npz archive, or truncated)"),
    (GOOD[: len(GOOD) // 2], "is not a trajectory file"),
    (rewrite(GOOD, "masks.npy", lambda old: None), "lacks its masks.npy member"),
    (rewrite(GOOD, META, lambda old: b"{oops"), "has an unreadable trajectory.json"),
    (rewrite(GOOD, "labels.npy", lambda old: npy(np.zeros((6, 24, 40), np.int64))),
     "has labels.npy of int64 (6, 24, 40), expected uint8 (6, 24, 40)"),
    (with_meta(GOOD, frames=5), "has labels.npy of uint8 (6, 24, 40), expected uint8 (5, 24, 40)"),
    (rewrite(GOOD, "masks.npy", lambda old: npy(np.zeros((2, 24, 40), np.float32))),
     "holds an invalid trajectory (masks: the mask of object 1 ('left coin') is empty)"),
    (with_meta(GOOD, depth_order=[3, 3]), "holds an invalid trajectory (depth_order:"),
    (with_meta(GOOD, fps=-1), "declares fps -1"),
    (with_meta(GOOD, objects=[{"id": 7, "name": "a"}]), "has a bad object entry"),
])
def test_bad_files_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(TTMInputError) as err:
        trajectory_from_bytes(data, "'shot.npz'")
    assert err.value.input_name == "file"
    assert needle in str(err.value), str(err.value)
    assert "Fix:" in str(err.value)


def test_a_flipped_byte_is_caught_by_the_zip_checksum() -> None:
    archive = zipfile.ZipFile(io.BytesIO(GOOD))
    info = archive.getinfo("masks.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    damaged = bytearray(GOOD)
    damaged[start] ^= 0xFF
    with pytest.raises(TTMInputError, match=r"is damaged \(masks.npy"):
        trajectory_from_bytes(bytes(damaged), "'shot.npz'")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TTMInputError, match=r"'gone\.npz' does not exist\. Fix: pick a file from the list"):
        read_trajectory(tmp_path / "gone.npz", shown="gone.npz")


@pytest.mark.parametrize("name", ["../outside.npz", "a/../../outside.npz", "/etc/passwd", "C:/x.npz", "", "./x.npz",
                                  "a\x00b.npz"])
def test_paths_outside_the_input_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TTMInputError) as err:
        resolve_input_file(tmp_path, name)
    assert err.value.input_name == "file" and "input folder" in err.value.fix


def test_links_out_of_the_input_folder_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "input", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (outside / "t.npz").write_bytes(GOOD)
    os.symlink(outside, root / "link")
    with pytest.raises(TTMInputError, match="points outside the input folder"):
        resolve_input_file(root, "link/t.npz")
    (root / "sub").mkdir()
    (root / "sub" / "t.npz").write_bytes(GOOD)
    assert resolve_input_file(root, "sub\\t.npz") == (root / "sub" / "t.npz").resolve()


def test_listing_finds_npz_files_in_subfolders(tmp_path: Path) -> None:
    for name in ("b.npz", "sub/a.npz", ".hidden/c.npz", "image.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_trajectory_files(tmp_path) == ["b.npz", "sub/a.npz"]
    assert list_trajectory_files(tmp_path / "none") == []


def test_ttm_batch_checks_the_same_format_constants() -> None:
    """ttm-batch (no torch, no ttm_core) keeps its own copy of the file's name, version and header: the same."""
    from ttm_batch import jobs
    from ttm_core.motion import trajectory_file

    assert (jobs.TRAJECTORY_FORMAT, jobs.TRAJECTORY_VERSION, jobs.TRAJECTORY_META) == (
        trajectory_file.FORMAT, trajectory_file.VERSION, trajectory_file.META)
