"""Path interpolation, easing, the paths JSON and KJNodes spline strings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ttm_core.errors import TTMInputError
from ttm_core.kjnodes import parse_spline_points
from ttm_core.motion.paths import EASINGS, Keyframe, ObjectPath, attach_splines, parse_paths, sample_path
from ttm_core.motion.poses import pose_affines
from ttm_core.types import ObjectPrompt, Prompts

PROMPTS = Prompts("g", "m", (ObjectPrompt("cat", "a cat"), ObjectPrompt("dog", "a dog")))
REST = torch.tensor([[10.0, 20.0], [50.0, 40.0]], dtype=torch.float64)
SIZE = (100, 200)  # H, W


def parse(spec: object, frames: int = 11):
    return parse_paths(json.dumps(spec) if not isinstance(spec, str) else spec, PROMPTS, SIZE, frames, REST)


@pytest.mark.parametrize("name, half", [("linear", 0.5), ("ease_in", 0.125), ("ease_out", 0.875),
                                        ("ease_in_out", 0.5), ("hold", 0.0)])
def test_easing_values(name: str, half: float) -> None:
    ease = EASINGS[name]
    assert ease(0.0) == 0.0
    assert ease(1.0) == 1.0
    assert ease(0.5) == pytest.approx(half)
    samples = [ease(i / 20) for i in range(21)]
    assert samples == sorted(samples)  # monotone


def test_linear_segment_and_hold_after_last() -> None:
    path = ObjectPath((Keyframe(0, 0, 0), Keyframe(10, 100, 50, scale=4.0, rotation=90)))
    poses = sample_path(path, 15)
    assert poses[5].tolist() == pytest.approx([50, 25, 2.0, 45])  # scale is geometric: sqrt(1 * 4)
    assert poses[10].tolist() == pytest.approx([100, 50, 4.0, 90])
    assert poses[14].tolist() == pytest.approx([100, 50, 4.0, 90])


def test_easing_applies_to_arriving_segment() -> None:
    path = ObjectPath((Keyframe(0, 0, 0), Keyframe(4, 8, 0, easing="ease_in"), Keyframe(8, 16, 0)))
    xs = sample_path(path, 9)[:, 0].tolist()
    assert xs[2] == pytest.approx(8 * 0.125)  # eased first segment
    assert xs[6] == pytest.approx(12)  # linear second segment


def test_smooth_curve_passes_through_keys() -> None:
    keys = (Keyframe(0, 0, 0), Keyframe(5, 50, 30), Keyframe(10, 100, 0))
    smooth = sample_path(ObjectPath(keys, curve="smooth"), 11)
    for key in keys:
        assert smooth[int(key.time), :2].tolist() == pytest.approx([key.x, key.y])
    linear = sample_path(ObjectPath(keys), 11)
    assert smooth[2, 1] != pytest.approx(linear[2, 1])  # a curve, not the polyline


def test_path_validation() -> None:
    with pytest.raises(TTMInputError, match="start at frame 0"):
        ObjectPath((Keyframe(1, 0, 0),))
    with pytest.raises(TTMInputError, match="do not increase"):
        ObjectPath((Keyframe(0, 0, 0), Keyframe(3, 0, 0), Keyframe(3, 1, 1)))
    with pytest.raises(TTMInputError, match="not positive"):
        Keyframe(0, 0, 0, scale=0)
    with pytest.raises(TTMInputError, match="unknown easing 'bounce'"):
        Keyframe(0, 0, 0, easing="bounce")


def test_pose_affines_move_centroid_and_turn_clockwise() -> None:
    centroid = torch.tensor([[10.0, 20.0]], dtype=torch.float64)
    poses = torch.tensor([[[30.0, 40.0, 2.0, 90.0]]], dtype=torch.float64)
    affine = pose_affines(poses, centroid)[0, 0]

    def apply(x: float, y: float) -> list[float]:
        return (affine[:, :2] @ torch.tensor([x, y], dtype=torch.float64) + affine[:, 2]).tolist()

    assert apply(10, 20) == pytest.approx([30, 40])
    # One pixel right of the centroid ends up two pixels BELOW the target: clockwise on screen (y down).
    assert apply(11, 20) == pytest.approx([30, 42])


def test_parse_keyframes_normalized_with_t_and_rest_start() -> None:
    paths = parse({"objects": {"cat": {"keyframes": [{"t": 0.5, "x": 0.5, "y": 0.5}]}}})
    assert paths[1] is None  # dog has no path: stays still
    keys = paths[0].keyframes
    assert (keys[0].time, keys[0].x, keys[0].y) == (0.0, 10.0, 20.0)  # implicit rest pose
    assert (keys[1].time, keys[1].x, keys[1].y) == (5.0, 100.0, 50.0)


def test_parse_inherits_missing_fields_and_addresses_by_id() -> None:
    spec = {"units": "pixels", "objects": {"2": {"keyframes": [
        {"frame": 0, "x": 60, "y": 40}, {"frame": 10, "scale": 1.5}]}}}
    keys = parse(spec)[1].keyframes
    assert (keys[1].x, keys[1].y, keys[1].scale) == (60.0, 40.0, 1.5)


@pytest.mark.parametrize("spec, message", [
    ({"objects": {"bird": {"keyframes": [{"frame": 1, "x": 0, "y": 0}]}}}, r"no object 'bird' \(objects: 1 = 'cat'"),
    ({"objects": {"cat": {"keyframes": [{"frame": 11, "x": 0, "y": 0}]}}}, "outside frames 0..10"),
    ({"objects": {"cat": {"keyframes": [{"t": 1.5, "x": 0, "y": 0}]}}}, "outside 0..1"),
    ({"objects": {"cat": {"keyframes": [{"x": 0, "y": 0}]}}}, "has no time"),
    ({"objects": {"cat": {"keyframes": [{"frame": 2, "x": 0}]}}}, "only one of x and y"),
    ({"objects": {"cat": {"keyframes": [{"frame": 2, "x": "a", "y": 0}]}}}, "not a number"),
    ({"objects": {"cat": {"keyframes": [{"frame": 2, "speed": 3}]}}}, "unknown fields"),
    ({"objects": {"cat": {"keyframes": [{"frame": 2, "x": 9.0, "y": 0.5}]}}}, "far off the 200x100 image"),
    ({"version": 2}, "version 2"),
    ({"units": "inches"}, "unknown units"),
    ({"objects": {"cat": {}}}, "exactly one of 'keyframes' and 'spline'"),
    ({"objects": {"cat": {"keyframes": [{"frame": 1}], "curve": "bezier"}}}, "unknown curve"),
    ("{not json", "not valid JSON"),
])
def test_parse_errors(spec: object, message: str) -> None:
    with pytest.raises(TTMInputError, match=message) as err:
        parse(spec)
    assert err.value.input_name == "paths"


def test_empty_spec_keeps_everything_still() -> None:
    assert parse("  ") == (None, None)


def test_objects_may_leave_the_frame() -> None:
    path = parse({"units": "pixels", "objects": {"cat": {"keyframes": [{"t": 1, "x": -150, "y": 20}]}}})[0]
    assert path.keyframes[-1].x == -150.0


def test_kjnodes_spline_strings() -> None:
    single = '[{"x":10,"y":20},{"x":30.5,"y":40}]'
    assert parse_spline_points(single) == [[(10.0, 20.0), (30.5, 40.0)]]
    multi = "[[{'x': 1, 'y': 2}], [{'x': 3, 'y': 4}, {'x': 5, 'y': 6}]]"  # KJNodes' single-quoted variant
    assert parse_spline_points(multi) == [[(1.0, 2.0)], [(3.0, 4.0), (5.0, 6.0)]]
    assert parse_spline_points([[1, 2], [3, 4]]) == [[(1.0, 2.0), (3.0, 4.0)]]
    for bad, message in [("[{x:1}", "not valid JSON"), ("[]", "non-empty list"), ('[{"x": 1}]', "point 0"),
                         ('[{"x": "a", "y": 1}]', "coordinate 'a'"), ("", "empty")]:
        with pytest.raises(TTMInputError, match=message):
            parse_spline_points(bad, "spline_coords")


def test_spline_relative_spread_over_frames_and_canvas_scaled() -> None:
    # Canvas 100x50 for a 200x100 image: every coordinate doubles.
    spec = {"objects": {"dog": {"spline": [[0, 0], [10, 5], [20, 0]], "size": [100, 50], "start": 2, "end": 10}}}
    keys = parse(spec)[1].keyframes
    assert [k.time for k in keys] == [0.0, 2.0, 6.0, 10.0]
    assert [(k.x, k.y) for k in keys] == [(50.0, 40.0), (50.0, 40.0), (70.0, 50.0), (90.0, 40.0)]


def test_spline_absolute_anchor() -> None:
    spec = {"objects": {"dog": {"spline": [[100, 50], [120, 50]], "anchor": "absolute"}}}
    keys = parse(spec)[1].keyframes
    assert [(k.time, k.x, k.y) for k in keys] == [(0.0, 100.0, 50.0), (10.0, 120.0, 50.0)]


def test_spline_far_off_canvas_mismatch_is_reported() -> None:
    spec = {"objects": {"dog": {"spline": [[0, 0], [2000, 0]], "anchor": "absolute"}}}
    with pytest.raises(TTMInputError, match="spline canvas 'size'"):
        parse(spec)


def test_attach_splines_from_socket() -> None:
    spec = attach_splines("", '[[{"x":0,"y":0},{"x":10,"y":0}], [{"x":5,"y":5},{"x":5,"y":15}]]', "dog, cat",
                          PROMPTS, (200, 100))
    keys = parse(spec)
    assert keys[1].keyframes[-1].x == pytest.approx(REST[1, 0].item() + 10)
    assert keys[0].keyframes[-1].y == pytest.approx(REST[0, 1].item() + 10)
    with pytest.raises(TTMInputError, match="2 splines for 1 objects") as err:
        attach_splines("", '[[{"x":0,"y":0}], [{"x":1,"y":1}]]', "cat", PROMPTS, None)
    assert err.value.input_name == "spline_objects"
    with pytest.raises(TTMInputError, match="already has a path"):
        attach_splines('{"objects": {"cat": {"keyframes": [{"frame": 1}]}}}', '[{"x":0,"y":0}]', "1", PROMPTS, None)


def test_keyframe_times_are_fractional_for_t() -> None:
    keys = parse({"objects": {"cat": {"keyframes": [{"t": 0.25, "x": 0.1, "y": 0.2}]}}}, frames=10)[0].keyframes
    assert keys[1].time == pytest.approx(2.25)
    assert math.isclose(keys[1].x, 20.0)
