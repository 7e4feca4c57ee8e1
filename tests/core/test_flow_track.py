"""The weights-free flow tracker on procedural scenes with known label videos (benchmarks/flow_scenes.py).

Small scenes (160x128, 32 frames) so the file runs in seconds; the 832x480 figures are the benchmark's
(``python -m benchmarks flow-track``).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest
import torch

from benchmarks.flow_scenes import Scene, identity_swaps, make_scene, object_ious
from ttm_core.errors import TTMInputError
from ttm_core.segment.flow_track import FlowTrackReport, FlowTrackSettings, track_objects_by_flow, trajectory_by_flow
from ttm_core.types import Objects

HEIGHT, WIDTH, FRAMES = 128, 160, 32


@cache
def scene(name: str) -> Scene:
    return make_scene(name, HEIGHT, WIDTH, FRAMES)


@cache
def tracked(name: str) -> tuple[torch.Tensor, FlowTrackReport]:
    s = scene(name)
    return track_objects_by_flow(s.frames, s.objects)


def frames_of(video: torch.Tensor, pulled: list[int] | None = None) -> Iterator[torch.Tensor]:
    """A generator of the frames (no length), counting in ``pulled`` how many were read."""
    for t in range(video.shape[0]):
        if pulled is not None:
            pulled.append(t)
        yield video[t]


def areas(labels: torch.Tensor, object_id: int) -> torch.Tensor:
    return (labels == object_id).flatten(1).sum(1)


@pytest.mark.parametrize("name", ["translation", "scaling", "rotation", "crossing", "exit"])
def test_objects_follow_the_truth_without_swapping(name: str) -> None:
    s = scene(name)
    labels, report = tracked(name)
    assert labels.shape == s.labels.shape and labels.dtype == torch.uint8
    for object_id, ious in object_ious(labels, s.labels, s.objects.ids).items():
        assert sum(ious) / len(ious) >= 0.9, (name, object_id, ious)
    assert identity_swaps(labels, s.labels, s.objects.ids) == dict.fromkeys(s.objects.ids, 0)
    assert report.depth_order == s.depth_order
    assert report.ids == s.objects.ids and report.area.shape == (FRAMES, s.objects.count)


def test_a_covered_object_is_empty_while_covered_and_comes_back() -> None:
    s = scene("occlusion")
    labels, report = tracked("occlusion")
    truth, ours = areas(s.labels, 2), areas(labels, 2)
    covered = truth == 0
    assert int(covered.sum()) >= 6  # the scene hides object 2 completely for a while
    assert int(ours[covered].sum()) == 0  # nothing drawn where it is hidden ...
    assert bool(report.hidden[covered, 1].all()) and not bool(report.outside[:, 1].any())  # ... reported as covered
    assert any("object 2" in line and "covered in frames" in line and "visible again" in line for line in report.events)
    ious = torch.tensor(object_ious(labels, s.labels, (2,), min_area=0)[2])
    mostly_visible = truth >= 0.5 * truth[0]
    assert float(ious[mostly_visible].mean()) >= 0.9 and float(ious[mostly_visible].min()) >= 0.85
    last_hidden = int(torch.nonzero(covered).max())
    assert float(ious[last_hidden + 1:][mostly_visible[last_hidden + 1:]].min()) >= 0.9  # back after
    assert float(ious[-4:].min()) >= 0.9
    front = object_ious(labels, s.labels, (1,))[1]
    assert sum(front) / len(front) >= 0.9
    assert identity_swaps(labels, s.labels, s.objects.ids) == {1: 0, 2: 0}
    assert report.depth_order == (1, 2)


def test_an_object_leaving_the_frame_is_reported_outside() -> None:
    s = scene("exit")
    labels, report = tracked("exit")
    truth, ours = areas(s.labels, 1), areas(labels, 1)
    gone = truth == 0
    assert int(gone.sum()) >= 6 and bool(gone[-1])
    first_gone = int(torch.nonzero(gone).min())
    assert int(ours[first_gone]) <= 0.01 * int(ours[0])  # at most a sliver a frame late ...
    assert int(ours[first_gone + 1:].sum()) == 0  # ... then nothing
    assert torch.equal(report.outside[:, 0], ours == 0)
    assert not bool(report.hidden.any())
    assert any("outside the frame" in line for line in report.events)


def test_streaming_and_tensor_input_give_the_same_labels() -> None:
    s = scene("crossing")
    labels, report = tracked("crossing")
    streamed, streamed_report = track_objects_by_flow(frames_of(s.frames), s.objects, count=FRAMES)
    assert torch.equal(streamed, labels)
    for field in ("area", "reseeded", "confidence", "hidden", "outside"):
        assert torch.equal(getattr(streamed_report, field), getattr(report, field)), field
    assert streamed_report.depth_order == report.depth_order and streamed_report.events == report.events
    as_list, _ = track_objects_by_flow(list(s.frames.unbind(0)), s.objects)  # a sized iterable needs no count
    assert torch.equal(as_list, labels)
    rgba = torch.cat([s.frames, torch.rand(FRAMES, HEIGHT, WIDTH, 1)], dim=-1)  # alpha is ignored
    assert torch.equal(track_objects_by_flow(frames_of(rgba), s.objects, count=FRAMES)[0], labels)
    trajectory, _ = trajectory_by_flow(frames_of(s.frames), s.objects, 16.0, count=FRAMES)
    assert torch.equal(trajectory.labels, labels) and trajectory.depth_order == report.depth_order


def test_frames_are_read_one_at_a_time_and_progress_reports_each() -> None:
    s = scene("translation")
    pulled: list[int] = []
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        assert len(pulled) == done  # the frame was read just before its own report, not ahead
        calls.append((done, total))

    extra = torch.cat([s.frames, s.frames[:3]])  # frames beyond count are not read
    labels, _ = track_objects_by_flow(frames_of(extra, pulled), s.objects, count=FRAMES, progress=progress)
    assert calls == [(t, FRAMES) for t in range(1, FRAMES + 1)]
    assert len(pulled) == FRAMES and labels.shape[0] == FRAMES


def test_a_raising_progress_stops_at_once() -> None:
    s = scene("translation")
    pulled: list[int] = []

    def cancel(done: int, total: int) -> None:
        if done == 3:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        track_objects_by_flow(frames_of(s.frames, pulled), s.objects, count=FRAMES, progress=cancel)
    assert len(pulled) == 3


def test_one_frame_is_the_first_frame_masks() -> None:
    s = scene("crossing")
    labels, report = track_objects_by_flow(s.frames[:1], s.objects)
    assert torch.equal(labels, s.labels[:1]) and report.events == ()


def _error(frames: object, objects: Objects, **kwargs: object) -> TTMInputError:
    with pytest.raises(TTMInputError) as caught:
        track_objects_by_flow(frames, objects, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_bad_frames_and_counts_are_named() -> None:
    s = scene("translation")
    small = torch.rand(4, 64, 80, 3)
    err = _error(small, s.objects)
    assert err.input_name == "frames" and "80x64" in str(err) and "masks are 160x128" in str(err)
    assert "resize the frames" in str(err)
    err = _error(frames_of(small), s.objects, count=4)  # the first streamed frame is checked the same way
    assert err.input_name == "frames" and "masks are 160x128" in str(err)
    mixed = [s.frames[0], s.frames[1], small[0]]
    err = _error(mixed, s.objects)
    assert err.input_name == "frames" and "frame 2 is 80x64" in str(err) and "frames of one size" in str(err)
    err = _error(frames_of(s.frames[:5]), s.objects, count=8)
    assert err.input_name == "frames" and "ended after 5 of the 8 frames" in str(err)
    err = _error(frames_of(s.frames), s.objects)
    assert err.input_name == "count" and "without a length" in str(err) and "count=" in str(err)
    for empty, kwargs in ((s.frames[:0], {}), ([], {}), (frames_of(s.frames), {"count": 0})):
        err = _error(empty, s.objects, **kwargs)
        assert err.input_name == "frames" and "no frames" in str(err)
    err = _error(s.frames, s.objects, count=5)
    assert err.input_name == "count" and "holds 32 frames" in str(err)
    err = _error((s.frames * 255).to(torch.uint8), s.objects)
    assert err.input_name == "frames" and "torch.uint8" in str(err) and "divide 8-bit frames by 255" in str(err)
    err = _error(s.frames[..., :2], s.objects)
    assert err.input_name == "frames" and "[T, H, W, 3]" in str(err)
    err = _error(s.frames, s.frames[0])
    assert err.input_name == "objects" and "expected TTM_OBJECTS" in str(err)


def test_an_empty_first_frame_mask_is_named() -> None:
    s = scene("crossing")
    with pytest.raises(TTMInputError, match=r"mask of object 2 .* is empty"):  # Objects itself refuses one
        Objects(s.objects.prompts, torch.stack([s.objects.masks[0], torch.zeros(HEIGHT, WIDTH)]))
    objects = Objects(s.objects.prompts, s.objects.masks.clone())
    object.__setattr__(objects, "masks", torch.stack([objects.masks[0], torch.zeros(HEIGHT, WIDTH)]))
    err = _error(s.frames, objects)
    assert err.input_name == "objects" and "object 2 ('object 2') has an empty mask" in str(err)


@pytest.mark.parametrize("kwargs, name, text", [
    ({"preset": "slow"}, "preset", "unknown DIS preset 'slow'"),
    ({"flow_side": 8}, "flow_side", "8 is out of range"),
    ({"flow_side": 200.5}, "flow_side", "200.5 is out of range"),
    ({"anchor_every": -1}, "anchor_every", "-1 is out of range"),
    ({"anchor_min_inliers": 1.5}, "anchor_min_inliers", "1.5 is out of range"),
    ({"inlier_px": float("nan")}, "inlier_px", "nan is out of range"),
    ({"min_points": 2}, "min_points", "2 is out of range"),
    ({"min_visible": 1.0}, "min_visible", "1.0 is out of range"),
    ({"velocity_frames": 0}, "velocity_frames", "0 is out of range"),
])
def test_bad_settings_are_named(kwargs: dict[str, object], name: str, text: str) -> None:
    with pytest.raises(TTMInputError) as caught:
        FlowTrackSettings(**kwargs)  # type: ignore[arg-type]
    assert caught.value.input_name == name and text in str(caught.value) and "Fix: use" in str(caught.value)


def test_settings_and_fps_of_the_wrong_kind_are_named() -> None:
    s = scene("translation")
    err = _error(s.frames, s.objects, settings={"flow_side": 128})
    assert err.input_name == "settings" and "FlowTrackSettings" in str(err)
    with pytest.raises(TTMInputError, match="fps 0 is not a positive number"):
        trajectory_by_flow(s.frames, s.objects, 0)


def test_coarser_flow_still_tracks() -> None:
    s = scene("rotation")
    labels, _ = track_objects_by_flow(s.frames, s.objects, settings=FlowTrackSettings(flow_side=96,
                                                                                        consistency=False))
    ious = object_ious(labels, s.labels, s.objects.ids)[1]
    assert sum(ious) / len(ious) >= 0.9


def test_a_small_fast_object_is_not_lost_among_look_alikes() -> None:
    # A blob a tenth of the width wide accelerating to over 6 % of the width per frame (DIS alone smooths its
    # flow into the static background) past static look-alike blobs; 320x256 so that a pixel is not 10 % IoU.
    s = make_scene("fast", 256, 320, FRAMES)
    shift = s.affines[1:, 0, :, 2] - s.affines[:-1, 0, :, 2]
    assert float(shift.norm(dim=-1).max()) >= 0.06 * 320
    labels, report = track_objects_by_flow(s.frames, s.objects)
    for object_id, ious in object_ious(labels, s.labels, s.objects.ids).items():
        assert sum(ious) / len(ious) >= 0.9 and min(ious) >= 0.8, (object_id, ious)
    assert identity_swaps(labels, s.labels, s.objects.ids) == {1: 0, 2: 0}
    assert not bool(report.hidden.any()) and not bool(report.outside.any())
