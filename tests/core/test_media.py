"""Video encoding: every format decodes back, names are safe, failures leave nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ttm_core.errors import TTMInputError
from ttm_core.media import FORMATS, encode_video, frames_to_uint8, next_counter, split_prefix

ROOT = Path(__file__).resolve().parents[2]


def moving_square(frames: int = 10, height: int = 64, width: int = 96) -> torch.Tensor:
    video = torch.full((frames, height, width, 3), 0.2)
    for t in range(frames):
        video[t, 20:40, 4 + 5 * t:24 + 5 * t] = torch.tensor([1.0, 0.8, 0.1])
    return video


@pytest.mark.parametrize("prefix, expected", [("ttm/TTM", ("ttm", "TTM")), ("shot", ("", "shot")),
                                              ("a\\b\\c", ("a/b", "c")), ("  x/y  ", ("x", "y"))])
def test_split_prefix_accepts(prefix: str, expected: tuple[str, str]) -> None:
    assert split_prefix(prefix) == expected


@pytest.mark.parametrize("prefix", ["../evil", "ttm/../../x", "/etc/passwd", "C:/x", "a//b", "", "x/.", "a\x00b",
                                    "ttm/"])
def test_split_prefix_refuses_escapes(prefix: str) -> None:
    with pytest.raises(TTMInputError) as err:
        split_prefix(prefix)
    assert err.value.input_name == "filename_prefix"


def decode(path: Path) -> tuple[list[np.ndarray], float]:
    if path.suffix == ".webp":  # FFmpeg cannot decode animated WebP; Pillow can
        with Image.open(path) as image:
            frames = []
            for index in range(image.n_frames):
                image.seek(index)
                frames.append(np.asarray(image.convert("RGB")))
            return frames, 1000.0 / image.info["duration"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, float(stream.average_rate or stream.guessed_rate or 0)


@pytest.mark.parametrize("name", ["mp4", "webm", "webp"])
def test_av_formats_round_trip(tmp_path: Path, name: str) -> None:
    video = moving_square()
    files = encode_video(video, tmp_path / "out", "clip", name, fps=12.0, quality=90, metadata={"prompt": {"1": {}}})
    assert [f.name for f in files] == [f"clip_00001_.{FORMATS[name].extension}"]
    frames, fps = decode(files[0])
    assert len(frames) == 10
    assert frames[0].shape == (64, 96, 3)
    assert fps == pytest.approx(12.0, rel=0.02)
    # The yellow square is where it should be in the last frame (lossy, so compare loosely).
    expected = (video[-1].numpy() * 255).astype(np.float32)
    assert float(np.abs(frames[-1].astype(np.float32) - expected).mean()) < 6.0
    assert not list((tmp_path / "out").glob(".*.part"))


def test_mp4_carries_workflow_metadata(tmp_path: Path) -> None:
    files = encode_video(moving_square(3), tmp_path, "meta", "mp4", 8.0, metadata={"prompt": {"5": {"x": 1}}})
    with av.open(str(files[0])) as container:
        assert json.loads(container.metadata["prompt"]) == {"5": {"x": 1}}


def test_gif_and_png_sequence(tmp_path: Path) -> None:
    video = moving_square(6)
    gif = encode_video(video, tmp_path, "anim", "gif", fps=10.0)[0]
    with Image.open(gif) as image:
        assert image.n_frames == 6 and image.size == (96, 64)
        assert image.info["duration"] == 100
    pngs = encode_video(video, tmp_path, "seq", "png", fps=10.0, metadata={"workflow": {"nodes": []}})
    assert [p.name for p in pngs] == [f"seq_00001_{i:05}.png" for i in range(6)]
    with Image.open(pngs[3]) as image:
        assert json.loads(image.text["workflow"]) == {"nodes": []}
        assert np.array_equal(np.asarray(image.convert("RGB")), (video[3].numpy() * 255).round().astype(np.uint8))


def test_counter_continues_and_odd_sizes_are_padded(tmp_path: Path) -> None:
    odd = moving_square(4, height=33, width=51)
    first = encode_video(odd, tmp_path, "odd", "mp4", 8.0)[0]
    second = encode_video(odd, tmp_path, "odd", "mp4", 8.0)[0]
    assert (first.name, second.name) == ("odd_00001_.mp4", "odd_00002_.mp4")
    assert next_counter(tmp_path, "odd") == 3
    frames, _ = decode(second)
    assert frames[0].shape == (34, 52, 3)


def test_cancel_leaves_nothing_behind(tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        if done == 3:
            raise Cancelled

    for name in FORMATS:
        with pytest.raises(Cancelled):
            encode_video(moving_square(8), tmp_path, f"cut_{name}", name, 8.0, progress=cancel)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [({"format_name": "avi"}, "unknown format"), ({"fps": 0.0}, "fps"),
                                             ({"quality": 0}, "quality")])
def test_bad_encoder_settings(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"frames": moving_square(2), "folder": tmp_path, "stem": "x", "format_name": "mp4", "fps": 8.0} | kwargs
    with pytest.raises(TTMInputError, match=message):
        encode_video(**args)
    with pytest.raises(TTMInputError, match="IMAGE frames"):
        encode_video(torch.zeros(4, 4, 3), tmp_path, "x", "mp4", 8.0)


def test_uint8_conversion_is_chunked_and_exact() -> None:
    video = torch.rand(10, 5, 7, 3)
    frames = list(frames_to_uint8(video, chunk=3))
    assert len(frames) == 10
    assert np.array_equal(np.stack(frames), (video * 255).round().to(torch.uint8).numpy())


@pytest.mark.slow
def test_encoding_peak_memory_is_a_fraction_of_the_frames() -> None:
    """120 frames of 512x512 (377 MiB as float32): encoding must not copy them whole."""
    out = subprocess.run([sys.executable, "-m", "benchmarks", "encode", "--frames", "120", "--size", "512", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["frames_mib"] == pytest.approx(360.0, rel=0.01)
    # A second float32 copy alone would add 100% of the frames. What remains is x264's own
    # look-ahead buffers (~60 MiB at 512x512) plus one 4-frame conversion chunk (~15 MiB).
    assert figures["extra_peak_mib"] < 0.4 * figures["frames_mib"], figures
