"""Trajectory -> paths JSON (fit_paths): the round trip through parse_paths and the renderer."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from ttm_core.errors import TTMInputError
from ttm_core.motion.fit_paths import FitSettings, _segment, paths_from_trajectory, paths_json_from_trajectory
from ttm_core.motion.paths import EASINGS, Keyframe, ObjectPath, parse_paths, sample_path
from ttm_core.motion.poses import (
    estimate_poses,
    mask_centroids,
    mask_radii,
    pose_affines,
    poses_from_affines,
    unwrap_rotation,
)
from ttm_core.motion.render import trajectory_from_paths
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

H, W, T = 64, 96, 33
ACCEPTANCE_PX = 1.5
PROMPTS = Prompts("g", "m", (ObjectPrompt("bar", "a red bar"), ObjectPrompt("box", "a green box")))


def scene() -> Objects:
    """A 14x8 bar (object 1, centroid (15, 14)) and a 12x12 box (object 2, centroid (82, 50))."""
    masks = torch.zeros(2, H, W)
    masks[0, 10:18, 8:22] = 1
    masks[1, 44:56, 76:88] = 1
    return Objects(PROMPTS, masks)


def authored(spec: dict[str, object], objects: Objects | None = None, frames: int = T) -> Trajectory:
    """The trajectory Image To Motion renders from a paths JSON (with its exact transforms)."""
    objects = objects or scene()
    paths = parse_paths(json.dumps(spec), objects.prompts, objects.size, frames, mask_centroids(objects.masks))
    return trajectory_from_paths(objects, paths, frames, 8.0)


def labels_only(trajectory: Trajectory) -> Trajectory:
    """The same label video without transforms, as a tracker would hand it over."""
    return Trajectory(trajectory.labels, trajectory.objects, trajectory.fps, trajectory.depth_order)


def label_centroids(trajectory: Trajectory) -> torch.Tensor:
    """float64 ``[L, T, 2]`` centroid of each object's pixels per frame; NaN where it is absent."""
    return torch.stack([mask_centroids(trajectory.labels == i) for i in trajectory.objects.ids])


def round_trip(trajectory: Trajectory, **kwargs: object) -> tuple[dict[str, object], tuple[ObjectPath | None, ...],
                                                                   list[float]]:
    """Fit, write, parse and render again; the worst centroid error of each object (pixels) over
    the frames where it is visible in ``trajectory``."""
    text = paths_json_from_trajectory(trajectory, **kwargs)  # type: ignore[arg-type]
    spec = json.loads(text)
    assert spec == paths_from_trajectory(trajectory, **kwargs)  # type: ignore[arg-type]
    objects = trajectory.objects
    frames = trajectory.num_frames
    parsed = parse_paths(text, objects.prompts, objects.size, frames, mask_centroids(objects.masks))
    again = trajectory_from_paths(objects, parsed, frames, trajectory.fps, trajectory.depth_order)
    before, after = label_centroids(trajectory), label_centroids(again)
    visible = ~before.isnan().any(-1)
    assert not after[visible].isnan().any(), "an object visible in the input is missing after the round trip"
    errors = (before - after).norm(dim=-1).where(visible, torch.zeros(()))
    return spec, parsed, [float(e) for e in errors.amax(dim=1)]


def keyframe_counts(spec: dict[str, object]) -> dict[str, int]:
    objects = spec["objects"]
    assert isinstance(objects, dict)
    return {name: len(entry["keyframes"]) for name, entry in objects.items()}


# --------------------------------------------------------------------------- authored trajectories

CASES: dict[str, tuple[dict[str, object], dict[str, int]]] = {
    # name: (paths JSON the trajectory is rendered from, most keyframes allowed per object)
    "translation": ({"version": 1, "units": "pixels", "objects": {
        "bar": {"keyframes": [{"frame": 32, "x": 64, "y": 38}]}}}, {"bar": 1}),
    "ease in and out": ({"version": 1, "units": "pixels", "objects": {
        "bar": {"keyframes": [{"frame": 12, "x": 40, "y": 14, "easing": "ease_in"},
                              {"frame": 32, "x": 60, "y": 44, "easing": "ease_out"}]}}}, {"bar": 2}),
    "scale and rotation past 90 degrees": ({"version": 1, "units": "pixels", "objects": {
        "bar": {"keyframes": [{"frame": 16, "x": 40, "y": 30, "scale": 1.6, "rotation": 60},
                              {"frame": 32, "x": 48, "y": 34, "scale": 0.8, "rotation": 135}]}}}, {"bar": 2}),
    "smooth spline": ({"version": 1, "units": "pixels", "objects": {
        "bar": {"spline": '[{"x": 15, "y": 14}, {"x": 45, "y": 40}, {"x": 75, "y": 14}, {"x": 60, "y": 50}]',
                "anchor": "absolute", "curve": "smooth"}}}, {"bar": 12}),
    "several objects": ({"version": 1, "units": "pixels", "objects": {
        "bar": {"keyframes": [{"frame": 20, "x": 50, "y": 20, "easing": "ease_in_out"},
                              {"frame": 32, "x": 50, "y": 30, "rotation": -40}]},
        "box": {"keyframes": [{"frame": 8, "x": 82, "y": 50}, {"frame": 28, "x": 30, "y": 50, "scale": 1.3},
                              {"frame": 32, "x": 30, "y": 50, "easing": "hold"}]}}}, {"bar": 2, "box": 3}),
}


@functools.cache
def case_trajectory(case: str) -> Trajectory:
    """The rendered trajectory of ``CASES[case]`` (immutable, so the tests share one render)."""
    return authored(CASES[case][0])


@pytest.mark.parametrize("case", CASES)
def test_authored_trajectory_round_trips(case: str) -> None:
    most = CASES[case][1]
    trajectory = case_trajectory(case)
    fitted, parsed, errors = round_trip(trajectory)
    assert max(errors) < ACCEPTANCE_PX
    counts = keyframe_counts(fitted)
    assert set(counts) == set(most)  # objects keyed by name; an object without a path gets none
    assert all(counts[name] <= most[name] for name in counts), counts
    # The bound holds for the poses themselves, through the parser's own sampling of the JSON as written.
    truth = poses_from_affines(trajectory.transforms, mask_centroids(trajectory.objects.masks))
    radii = mask_radii(trajectory.objects.masks)
    for i, path in enumerate(parsed):
        poses = sample_path(path, T) if path is not None else truth[:1, i].expand(T, 4)
        assert float((poses[:, :2] - truth[:, i, :2]).norm(dim=-1).max()) <= 1.0
        assert float((poses[:, 2] / truth[:, i, 2]).log().abs().max()) <= math.log1p(1.0 / float(radii[i]))
        assert float((poses[:, 3] - truth[:, i, 3]).abs().max()) <= math.degrees(1.0 / float(radii[i]))


@pytest.mark.parametrize("case", CASES)
def test_label_video_without_transforms_round_trips(case: str) -> None:
    most = CASES[case][1]
    fitted, _, errors = round_trip(labels_only(case_trajectory(case)))
    assert max(errors) < ACCEPTANCE_PX
    counts = keyframe_counts(fitted)
    assert set(counts) == set(most)
    # Mask moments are noisier than transforms; a few keyframes more, not a keyframe a frame.
    assert all(counts[name] <= 2 * most[name] + 6 for name in counts), counts


def test_eased_move_comes_back_as_one_keyframe_or_a_handful_of_linear_ones() -> None:
    trajectory = authored({"version": 1, "units": "pixels", "objects": {
        "bar": {"keyframes": [{"frame": 32, "x": 75, "y": 44, "easing": "ease_in_out"}]}}})
    fitted, _, errors = round_trip(trajectory)
    assert fitted["objects"] == {"bar": {"keyframes": [{"frame": 32, "x": 75, "y": 44, "easing": "ease_in_out"}]}}
    assert errors[0] < 1e-6
    linear, _, errors = round_trip(trajectory, settings=FitSettings(fit_easings=False))
    # Straight segments only: 10 keyframes for this 67 px cubic ease at 1 px (the continuous optimum
    # for interpolating keys is about 7: the integral of sqrt(|x''| / 8) over the clip).
    assert 3 <= keyframe_counts(linear)["bar"] <= 10
    assert errors[0] < ACCEPTANCE_PX
    assert all("easing" not in key for key in linear["objects"]["bar"]["keyframes"])  # type: ignore[index]


def test_still_objects_get_no_path() -> None:
    objects = scene()
    still = trajectory_from_paths(objects, (None, None), T, 8.0)
    assert paths_from_trajectory(still) == {"version": 1, "units": "pixels", "objects": {}}
    assert paths_json_from_trajectory(still) == '{"version": 1, "units": "pixels", "objects": {}}'
    # A drift below the tolerance is no motion either.
    drift = authored({"version": 1, "units": "pixels", "objects": {
        "box": {"keyframes": [{"frame": 32, "x": 82.6, "y": 50.5}]}}})
    assert paths_from_trajectory(drift)["objects"] == {}
    assert parse_paths(paths_json_from_trajectory(drift), PROMPTS, (H, W), T, mask_centroids(objects.masks)) == (
        None, None)


def test_json_is_readable_and_accepted_by_the_parser() -> None:
    trajectory = case_trajectory("several objects")
    text = paths_json_from_trajectory(trajectory)
    lines = text.splitlines()
    assert lines[0] == '{"version": 1, "units": "pixels", "objects": {'
    assert lines[1] == '  "bar": {"keyframes": ['
    assert all(line.startswith('    {"frame": ') for line in lines[2:4])  # one keyframe a line
    spec = json.loads(text)
    for entry in spec["objects"].values():
        frames = [key["frame"] for key in entry["keyframes"]]
        assert all(isinstance(f, int) for f in frames) and frames == sorted(set(frames))
    assert all(p is not None for p in parse_paths(text, PROMPTS, (H, W), T, mask_centroids(trajectory.objects.masks)))


def test_normalized_units_and_clip_times_round_trip() -> None:
    trajectory = case_trajectory("several objects")
    fitted, _, errors = round_trip(trajectory, units="normalized", settings=FitSettings(time_key="t"))
    assert fitted["units"] == "normalized"
    assert max(errors) < ACCEPTANCE_PX
    for entry in fitted["objects"].values():  # type: ignore[union-attr]
        for key in entry["keyframes"]:
            assert "frame" not in key and 0.0 <= key["t"] <= 1.0
            assert "x" not in key or (0.0 <= key["x"] <= 1.0 and 0.0 <= key["y"] <= 1.0)


# --------------------------------------------------------------------------- procedural label videos

def draw(frames: int, centres: torch.Tensor, axes: tuple[float, float], angles: torch.Tensor,
         size: tuple[int, int]) -> torch.Tensor:
    """bool ``[T, H, W]``: an ellipse with semi-axes ``axes`` centred at ``centres`` ``[T, 2]``,
    its long axis turned by ``angles`` ``[T]`` degrees (clockwise on screen), per frame."""
    ys = torch.arange(size[0], dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(size[1], dtype=torch.float64)[None, :] + 0.5
    out = torch.zeros(frames, *size, dtype=torch.bool)
    for t in range(frames):
        dx, dy = xs - centres[t, 0], ys - centres[t, 1]
        theta = math.radians(float(angles[t]))
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        out[t] = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0
    return out


def test_drawn_disc_on_a_circle_and_rotating_ellipse_round_trip() -> None:
    frames, size = 41, (64, 128)
    phase = torch.linspace(0.0, 2.0 * math.pi, frames, dtype=torch.float64)
    disc = draw(frames, torch.stack([40 + 18 * torch.cos(phase), 32 + 18 * torch.sin(phase)], -1), (7.0, 7.0),
                torch.zeros(frames), size)
    turn = torch.linspace(0.0, 150.0, frames, dtype=torch.float64)
    ellipse = draw(frames, torch.tensor([[96.0, 32.0]], dtype=torch.float64).expand(frames, 2), (14.0, 5.0), turn,
                   size)
    labels = torch.zeros(frames, *size, dtype=torch.uint8)
    labels[disc] = 1
    labels[ellipse] = 2
    prompts = Prompts("g", "m", (ObjectPrompt("disc", "a disc"), ObjectPrompt("ellipse", "an ellipse")))
    objects = Objects(prompts, torch.stack([disc[0], ellipse[0]]).to(torch.float32))
    trajectory = Trajectory(labels, objects, 8.0)
    fitted, parsed, errors = round_trip(trajectory)
    assert max(errors) < ACCEPTANCE_PX
    counts = keyframe_counts(fitted)
    assert counts["disc"] <= 14  # a full circle of radius 18 px at 1 px: about ten chords
    assert counts["ellipse"] <= 3
    # The principal axis is unwrapped over time: 150 degrees, not -30.
    ellipse_path = parsed[1]
    assert ellipse_path is not None
    assert float(sample_path(ellipse_path, frames)[-1, 3]) == pytest.approx(150.0, abs=3.0)


# --------------------------------------------------------------------------- absent frames

def shifted(mask: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    return torch.roll(mask, shifts=(dy, dx), dims=(0, 1))


def test_absent_frames_are_bridged_or_held_and_jumped() -> None:
    """Visible 0..7, gone 8..10 (short gap), visible 11..13, gone 14..25 (long gap), back elsewhere
    26..29, gone 30..32 (to the end)."""
    objects = scene()
    bar = objects.masks[0] > 0.5
    labels = torch.zeros(T, H, W, dtype=torch.uint8)
    visible = [*range(8), *range(11, 14), *range(26, 30)]
    for t in visible:
        moved = shifted(bar, 2 * t, 0) if t < 20 else shifted(bar, 70 - 2 * t, 30)
        labels[t][moved] = 1
    labels[:, objects.masks[1] > 0.5] = 2
    fitted, parsed, errors = round_trip(Trajectory(labels, objects, 8.0))
    assert max(errors) < ACCEPTANCE_PX
    keys = fitted["objects"]["bar"]["keyframes"]  # type: ignore[index]
    frames = [key["frame"] for key in keys]
    assert not set(frames) & {*range(8, 11), *range(14, 26)}  # nothing keyed inside a gap
    assert max(frames) <= 29  # after the last visible frame the parser holds
    jump = next(key for key in keys if key["frame"] == 26)
    assert jump["easing"] == "hold" and jump["y"] == pytest.approx(44.0)
    path = parsed[0]
    assert path is not None
    poses = sample_path(path, T)
    assert poses[9, 0].item() == pytest.approx(15 + 18, abs=1.0)  # the short gap follows the motion
    assert poses[20, :2].tolist() == pytest.approx([15 + 26, 14], abs=1.0)  # the long gap holds the last pose


def test_object_missing_from_the_first_frames_starts_from_its_mask() -> None:
    objects = scene()
    bar = objects.masks[0] > 0.5
    labels = torch.zeros(T, H, W, dtype=torch.uint8)
    for t in range(3, T):
        labels[t][shifted(bar, t, t // 2)] = 1
    labels[:, objects.masks[1] > 0.5] = 2
    fitted, parsed, errors = round_trip(Trajectory(labels, objects, 8.0))
    assert max(errors) < ACCEPTANCE_PX
    assert parsed[0] is not None and parsed[1] is None
    assert fitted["objects"]["bar"]["keyframes"][0]["frame"] > 0  # type: ignore[index]


# --------------------------------------------------------------------------- property-style

def random_spec(generator: torch.Generator) -> dict[str, object]:
    """A random smooth path for the bar: 2-4 keyframes, random easings, scale 0.7..1.4,
    rotation -120..120, a linear or smooth curve; it stays inside the image."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))

    count = int(torch.randint(2, 5, (), generator=generator))
    frames = sorted(torch.randperm(T - 1, generator=generator)[:count].add(1).tolist())
    easings = ("linear", "ease_in", "ease_out", "ease_in_out")
    keys = [{"frame": f, "x": round(uniform(20, W - 20), 2), "y": round(uniform(18, H - 18), 2),
             "scale": round(uniform(0.7, 1.4), 3), "rotation": round(uniform(-120, 120), 1),
             "easing": easings[int(torch.randint(0, 4, (), generator=generator))]} for f in frames]
    curve = "smooth" if bool(torch.rand((), generator=generator) < 0.5) else "linear"
    return {"version": 1, "units": "pixels", "objects": {"bar": {"keyframes": keys, "curve": curve}}}


def test_random_smooth_paths_round_trip() -> None:
    generator = torch.Generator().manual_seed(2025)
    for case in range(6):
        spec = random_spec(generator)
        trajectory = authored(spec)
        fitted, parsed, errors = round_trip(trajectory)
        assert errors[0] < ACCEPTANCE_PX, (case, spec, errors)
        truth = poses_from_affines(trajectory.transforms, mask_centroids(trajectory.objects.masks))[:, 0]
        path = parsed[0]
        assert path is not None
        poses = sample_path(path, T)
        assert float((poses[:, :2] - truth[:, :2]).norm(dim=-1).max()) <= 1.0, (case, spec)
        assert keyframe_counts(fitted)["bar"] <= 16, (case, spec, fitted)
        _, _, label_errors = round_trip(labels_only(trajectory))
        assert label_errors[0] < ACCEPTANCE_PX, (case, spec, label_errors)


# --------------------------------------------------------------------------- poses helpers and bad input

@pytest.mark.parametrize("easing", EASINGS)
def test_segment_is_the_parsers_interpolation(easing: str) -> None:
    start, end = (10.0, 20.0, 0.8, -30.0), (47.5, -3.25, 1.7, 95.0)
    expected = sample_path(ObjectPath((Keyframe(0.0, *start), Keyframe(13.0, *end, easing=easing))), 14)
    assert torch.allclose(_segment(start, end, 13, easing), expected, rtol=0.0, atol=1e-12)


def test_pose_helpers_invert_and_unwrap() -> None:
    centroids = torch.tensor([[10.0, 20.0]], dtype=torch.float64)
    poses = torch.tensor([[[30.0, 40.0, 2.0, 170.0]], [[1.0, 2.0, 0.5, -45.0]]], dtype=torch.float64)
    back = poses_from_affines(pose_affines(poses, centroids), centroids)
    assert back.flatten().tolist() == pytest.approx(poses.flatten().tolist())
    angles = torch.tensor([0.0, 170.0, -170.0, float("nan"), 175.0], dtype=torch.float64)
    unwrapped = unwrap_rotation(angles, 360.0)
    assert unwrapped[[0, 1, 2, 4]].tolist() == [0.0, 170.0, 190.0, 175.0] and unwrapped[3].isnan()
    assert unwrap_rotation(torch.tensor([0.0, 80.0, -85.0]), 180.0).tolist() == [0.0, 80.0, 95.0]
    masks = torch.zeros(1, 4, 6)
    masks[0, 1:3, 2:5] = 1
    assert mask_radii(masks).tolist() == pytest.approx([math.hypot(1.0, 0.5) + 0.5])


def test_estimate_poses_marks_absent_frames() -> None:
    objects = scene()
    labels = torch.zeros(2, H, W, dtype=torch.uint8)
    labels[0][objects.masks[0] > 0.5] = 1
    poses = estimate_poses(Trajectory(labels, objects, 8.0))
    assert poses[0, 0].tolist() == pytest.approx([15.0, 14.0, 1.0, 0.0])
    assert poses[1].isnan().all() and poses[0, 1].isnan().all()


@pytest.mark.parametrize("kwargs, input_name", [
    ({"tolerance_px": 0.0}, "tolerance_px"),
    ({"tolerance_px": -1.0}, "tolerance_px"),
    ({"tolerance_px": float("nan")}, "tolerance_px"),
    ({"units": "inches"}, "units"),
    ({"settings": FitSettings}, "settings"),
])
def test_bad_arguments(kwargs: dict[str, object], input_name: str) -> None:
    trajectory = trajectory_from_paths(scene(), (None, None), 2, 8.0)
    with pytest.raises(TTMInputError) as err:
        paths_from_trajectory(trajectory, **kwargs)  # type: ignore[arg-type]
    assert err.value.input_name == input_name


@pytest.mark.parametrize("fields, message", [
    ({"tolerance_px": True}, "tolerance_px: tolerance True px"),
    ({"scale_tolerance": 0.0}, "scale_tolerance"),
    ({"rotation_tolerance": 200.0}, "rotation_tolerance"),
    ({"time_key": "seconds"}, "time_key: unknown time key 'seconds'"),
    ({"max_gap": -1}, "max_gap"),
    ({"max_gap": 1.5}, "max_gap"),
    ({"fit_easings": "yes"}, "fit_easings"),
])
def test_bad_settings(fields: dict[str, object], message: str) -> None:
    with pytest.raises(TTMInputError, match=message):
        FitSettings(**fields)  # type: ignore[arg-type]


def test_object_absent_from_every_frame_is_refused() -> None:
    objects = scene()
    labels = torch.zeros(3, H, W, dtype=torch.uint8)
    labels[:, objects.masks[0] > 0.5] = 1
    with pytest.raises(TTMInputError, match="object 'box' is absent from every frame") as err:
        paths_from_trajectory(Trajectory(labels, objects, 8.0))
    assert err.value.input_name == "trajectory"
    transforms = trajectory_from_paths(objects, (None, None), 3, 8.0).transforms.clone()
    transforms[:, 1] = float("nan")
    with pytest.raises(TTMInputError, match="'box' is absent"):
        paths_from_trajectory(Trajectory(labels, objects, 8.0, transforms=transforms))
    with pytest.raises(TTMInputError, match="expected a Trajectory"):
        paths_from_trajectory("labels")  # type: ignore[arg-type]
