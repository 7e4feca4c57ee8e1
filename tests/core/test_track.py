"""Tracking first-frame objects through a clip: SAM 2 (Meta and Hugging Face), SAM 3, frame sources.

The tiny models have random weights, so these tests check the plumbing (shapes, ids, frame 0,
progress, cancel, bounded memory state, errors); the flow tracker's accuracy is measured in
test_flow_track.py on scenes whose true label video is known.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import TinyModels
from ttm_core.errors import TTMInputError
from ttm_core.media import encode_video
from ttm_core.segment.frames import TensorFrames, VideoFrames, select
from ttm_core.segment.sam2 import load_sam2
from ttm_core.segment.sam3 import load_sam3_tracker
from ttm_core.segment.track import _DepthVotes, _memory_window, _prune, frames_state, track_objects
from ttm_core.types import ObjectPrompt, Objects, Prompts


@pytest.fixture(scope="module")
def moving_squares() -> tuple[torch.Tensor, Objects]:
    """8 frames [8, 96, 128, 3] of two squares moving apart, and their first-frame objects."""
    frames = torch.full((8, 96, 128, 3), 0.1)
    for t in range(8):
        frames[t, 20:50, 10 + 4 * t:40 + 4 * t] = torch.tensor([1.0, 0.2, 0.2])
        frames[t, 55:85, 80 - 3 * t:110 - 3 * t] = torch.tensor([0.2, 0.3, 1.0])
    masks = torch.zeros(2, 96, 128)
    masks[0, 20:50, 10:40] = 1
    masks[1, 55:85, 80:110] = 1
    prompts = Prompts("g", "m", (ObjectPrompt("red square", "a"), ObjectPrompt("blue square", "b")))
    return frames, Objects(prompts, masks, ids=(3, 7))


def _tracker(tiny_models: TinyModels, kind: str):
    if kind == "sam3":
        return load_sam3_tracker(tiny_models.hf_sam3)
    return load_sam2(tiny_models.meta_small_image if kind == "meta" else tiny_models.hf_sam2, video=True)


@pytest.mark.parametrize("kind", ["meta", "hf", "sam3"])
def test_tracks_two_objects_through_eight_frames(tiny_models: TinyModels, moving_squares, kind: str) -> None:
    frames, objects = moving_squares
    seen: list[tuple[int, int]] = []
    tracked = track_objects(_tracker(tiny_models, kind), frames, objects,
                            progress=lambda done, total: seen.append((done, total)))
    labels = tracked.labels
    assert labels.shape == (8, 96, 128) and labels.dtype == torch.uint8
    assert seen == [(t, 8) for t in range(1, 9)]  # progress once per tracked frame
    assert set(torch.unique(labels).tolist()) <= {0, 3, 7}  # only background and the objects' ids
    first = torch.zeros(96, 128, dtype=torch.uint8)
    first[objects.binary()[0]] = 3
    first[objects.binary()[1]] = 7
    assert (labels[0] == first).float().mean().item() > 0.99  # frame 0 is the given masks (mask input as output)
    assert sorted(tracked.depth_order) == [3, 7]
    trajectory = tracked.trajectory()
    assert trajectory.num_frames == 8 and trajectory.fps == 16.0 and trajectory.objects is objects
    assert tracked.visible().shape == (8, 2) and bool(tracked.visible()[0].all())
    assert len(tracked.report()) == 2 and "red square" in tracked.report()[0]


@pytest.mark.parametrize("kind", ["meta", "hf", "sam3"])
def test_cancel_stops_tracking_at_the_next_frame(tiny_models: TinyModels, moving_squares, kind: str) -> None:
    frames, objects = moving_squares
    seen: list[int] = []

    class Cancelled(Exception):
        pass

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        track_objects(_tracker(tiny_models, kind), frames, objects, progress=progress)
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("kind", ["hf", "sam3"])
def test_a_clip_from_a_video_file_tracks_like_its_decoded_frames(tiny_models: TinyModels, moving_squares, kind,
                                                                 tmp_path) -> None:
    """Streaming from the file (frame by frame) gives what the same frames give from memory; stride and
    num_frames pick the frames, fps follows the video."""
    frames, objects = moving_squares
    [path] = encode_video(frames, tmp_path, "clip", "mp4", fps=24.0, quality=100)
    source = VideoFrames(str(path))
    assert (source.count, source.size, source.fps) == (8, (96, 128), 24.0)
    decoded = torch.stack(list(source.frames(range(8))))
    assert decoded.shape == (8, 96, 128, 3) and (decoded - frames).abs().mean() < 0.02
    clip = select(source, num_frames=4, stride=2)
    assert list(clip.indices) == [0, 2, 4, 6] and clip.fps == 12.0
    tracker = _tracker(tiny_models, kind)
    streamed = track_objects(tracker, source, objects, clip)
    in_memory = track_objects(tracker, TensorFrames(decoded[0::2]), objects)
    assert streamed.labels.shape == (4, 96, 128) and streamed.clip.fps == 12.0
    assert torch.equal(streamed.labels, in_memory.labels)


def test_frame_sources_refuse_bad_clips(moving_squares, tmp_path) -> None:
    frames, _ = moving_squares
    source = TensorFrames(frames)
    with pytest.raises(TTMInputError, match=r"num_frames: frames has 8 frames; taking every 2 from frame 0 gives 4, "
                                            r"but num_frames asks for 5.*Fix: set num_frames to 4 or less"):
        select(source, num_frames=5, stride=2)
    with pytest.raises(TTMInputError, match="start_frame: start frame 8 is outside the 8 frames"):
        select(source, start=8)
    with pytest.raises(TTMInputError, match="frames: there are no frames"):
        TensorFrames(frames[:0])
    with pytest.raises(TTMInputError, match=r"frames: expected frames \[T, H, W, 3\], got \(96, 128, 3\)"):
        TensorFrames(frames[0])
    assert select(source, num_frames=3, start=2).indices == range(2, 5)
    [path] = encode_video(frames, tmp_path, "clip", "mp4", fps=8.0)
    liar = VideoFrames(str(path), count=12, fps=8.0, size=(96, 128))  # a header promising more than there is
    with pytest.raises(TTMInputError, match="the video ended before frame 8"):
        list(liar.frames(range(12)))
    (tmp_path / "not_a_video.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(TTMInputError, match="frames: the video could not be read"):
        VideoFrames(str(tmp_path / "not_a_video.mp4"))


def test_tracking_refuses_what_it_cannot_do(tiny_models: TinyModels, moving_squares) -> None:
    frames, objects = moving_squares
    with pytest.raises(TTMInputError, match=r"tracker: .* was loaded without its video model.*video_tracking on"):
        track_objects(load_sam2(tiny_models.hf_sam2, video=False), frames, objects)
    with pytest.raises(TTMInputError, match="frames: the frames are 64x96 but the objects' masks are 128x96"):
        track_objects(load_sam2(tiny_models.meta_small_image), frames[:, :, :64], objects)
    with pytest.raises(TTMInputError, match="tracker: str is not a tracker"):
        track_objects("sam2", frames, objects)


def test_sam3_loader_names_what_is_wrong(tiny_models: TinyModels, tmp_path) -> None:
    with pytest.raises(TTMInputError, match=r"is not a SAM 3 tracker folder \(model_type 'sam2_video'\).*models/sam2"):
        load_sam3_tracker(tiny_models.hf_sam2)
    image_only = tmp_path / "sam3-image"
    image_only.mkdir()
    (image_only / "config.json").write_text(json.dumps({"model_type": "sam3"}))
    with pytest.raises(TTMInputError, match="SAM 3's image model without the tracker"):
        load_sam3_tracker(image_only)
    (tmp_path / "sam3.pt").write_bytes(b"")
    with pytest.raises(TTMInputError, match=r"sam3\.pt is a file.*Meta's sam3\.pt is not supported"):
        load_sam3_tracker(tmp_path / "sam3.pt")
    with pytest.raises(TTMInputError, match="does not exist"):
        load_sam3_tracker(tmp_path / "missing")
    tracker = load_sam3_tracker(tiny_models.hf_sam3)
    assert tracker.image_size == 112 and type(tracker.video_model).__name__ == "Sam3TrackerVideoModel"


def test_lazy_state_matches_sam2s_own_init_state(tiny_models: TinyModels, moving_squares, tmp_path) -> None:
    """The in-memory state has init_state's keys and values; its images are made frame by frame."""
    frames, _ = moving_squares
    predictor = load_sam2(tiny_models.meta_small_image).video_model
    for t, frame in enumerate(frames):
        Image.fromarray((frame.numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"{t:05d}.jpg", quality=100)
    reference = predictor.init_state(str(tmp_path))
    ours = frames_state(predictor, iter(frames), 8, (96, 128), torch.device("cpu"))
    assert set(ours) == set(reference)
    for key in ("num_frames", "video_height", "video_width", "device", "storage_device"):
        assert ours[key] == reference[key], key
    assert len(ours["images"]) == 8
    for t in range(8):
        assert ours["images"][t].shape == reference["images"][t].shape == (3, 256, 256)
        assert (ours["images"][t] - reference["images"][t]).abs().mean() < 0.05  # JPEG + PIL resize vs bilinear
    assert ours["images"][0] is not None  # frame 0 stays (masks are added on it)
    with pytest.raises(IndexError, match="frame 2 was already passed"):
        ours["images"][2]


def test_memory_state_is_pruned_to_what_memory_attention_reads() -> None:
    window = _memory_window(num_maskmem=7, stride=1, max_pointers=16)
    assert window == 17
    outputs = {0: {"cond_frame_outputs": {0: "c"}, "non_cond_frame_outputs": {t: t for t in range(1, 40)}}}
    _prune(outputs, frame=39, window=window)
    assert sorted(outputs[0]["non_cond_frame_outputs"]) == list(range(22, 40))
    assert outputs[0]["cond_frame_outputs"] == {0: "c"}


def test_depth_order_comes_from_who_wins_the_overlaps() -> None:
    votes = _DepthVotes(3)
    logits = torch.full((3, 4, 4), -5.0)
    logits[0, :, :2] = 2.0  # object 0 and 1 overlap in columns 1; object 1 is stronger there
    logits[1, :, 1:3] = 3.0
    logits[2, :, 3] = 1.0  # object 2 overlaps nobody
    votes.add(logits)
    assert votes.order((5, 6, 9)) == (6, 5, 9)
    assert int(votes.wins[1, 0]) == 4 and int(votes.wins[0, 1]) == 0
