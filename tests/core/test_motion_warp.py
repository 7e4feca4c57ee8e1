"""Trajectory rendering (paths backend) and the cut-and-drag renderer (warp backend)."""

from __future__ import annotations

import pytest
import torch

from ttm_core.errors import TTMInputError
from ttm_core.motion.cut_and_drag import cut_and_drag, push_pull_fill
from ttm_core.motion.paths import Keyframe, ObjectPath
from ttm_core.motion.poses import estimate_affines, mask_centroids
from ttm_core.motion.render import trajectory_from_paths, warp
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

H, W = 48, 64


def scene() -> tuple[torch.Tensor, Objects]:
    """A blue background with a red 8x12 bar (object 1) and a green 10x10 square (object 2)."""
    image = torch.zeros(H, W, 3)
    image[..., 2] = 0.8
    masks = torch.zeros(2, H, W)
    masks[0, 10:18, 8:20] = 1
    masks[1, 30:40, 40:50] = 1
    image[masks[0] > 0] = torch.tensor([0.9, 0.1, 0.1])
    image[masks[1] > 0] = torch.tensor([0.1, 0.9, 0.1])
    prompts = Prompts("g", "m", (ObjectPrompt("bar", "a red bar"), ObjectPrompt("box", "a green box")))
    return image, Objects(prompts, masks)


def linear(frames: int, x: float, y: float, start: tuple[float, float], scale: float = 1.0,
           rotation: float = 0.0) -> ObjectPath:
    return ObjectPath((Keyframe(0, *start), Keyframe(frames - 1, x, y, scale, rotation)))


def test_mask_centroids_use_pixel_centres() -> None:
    masks = torch.zeros(1, 4, 6)
    masks[0, 1:3, 2:5] = 1
    assert mask_centroids(masks)[0].tolist() == pytest.approx([3.5, 2.0])


def test_translation_follows_path_exactly() -> None:
    _, objects = scene()
    start = tuple(mask_centroids(objects.masks)[0].tolist())
    path = linear(9, start[0] + 16, start[1] + 8, start)
    trajectory = trajectory_from_paths(objects, (path, None), 9, 8.0)
    assert trajectory.labels.shape == (9, H, W)
    for t in range(9):
        bar = (trajectory.labels[t] == 1)[None]
        assert mask_centroids(bar)[0].tolist() == pytest.approx([start[0] + 2 * t, start[1] + t], abs=1e-6)
        # The still object keeps exactly its mask in every frame.
        assert torch.equal(trajectory.labels[t] == 2, objects.masks[1] > 0.5)


def test_scale_and_rotation_keep_centroid() -> None:
    _, objects = scene()
    start = tuple(mask_centroids(objects.masks)[0].tolist())
    path = linear(5, start[0], start[1], start, scale=2.0, rotation=90.0)
    trajectory = trajectory_from_paths(objects, (path, None), 5, 8.0)
    last = trajectory.labels[-1] == 1
    assert mask_centroids(last[None])[0].tolist() == pytest.approx(list(start), abs=0.5)
    assert int(last.sum()) == pytest.approx(4 * 96, rel=0.05)
    ys, xs = torch.nonzero(last, as_tuple=True)
    # The 12-wide, 8-tall bar turned 90 degrees and doubled: 16 wide, 24 tall.
    assert (int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)) == (16, 24)


def test_depth_order_decides_overlap() -> None:
    _, objects = scene()
    centroids = mask_centroids(objects.masks)
    target = tuple(centroids[1].tolist())
    path = linear(3, target[0], target[1], tuple(centroids[0].tolist()))
    front_bar = trajectory_from_paths(objects, (path, None), 3, 8.0, depth_order=(1, 2))
    front_box = trajectory_from_paths(objects, (path, None), 3, 8.0, depth_order=(2, 1))
    centre = (int(target[1]), int(target[0]))
    assert front_bar.labels[-1][centre] == 1
    assert front_box.labels[-1][centre] == 2
    with pytest.raises(TTMInputError, match="ordering"):
        trajectory_from_paths(objects, (path, None), 3, 8.0, depth_order=(1, 3))


def test_object_leaving_the_frame_is_fine() -> None:
    _, objects = scene()
    start = tuple(mask_centroids(objects.masks)[0].tolist())
    trajectory = trajectory_from_paths(objects, (linear(4, -100.0, start[1], start), None), 4, 8.0)
    assert int((trajectory.labels[-1] == 1).sum()) == 0
    image, _ = scene()
    video = cut_and_drag(image, trajectory, feather=1.0)
    assert video.shape == (4, H, W, 3)


def test_progress_reports_every_frame_and_can_cancel() -> None:
    _, objects = scene()
    calls: list[tuple[int, int]] = []
    trajectory_from_paths(objects, (None, None), 6, 8.0, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled

    image, _ = scene()
    trajectory = trajectory_from_paths(objects, (None, None), 6, 8.0)
    with pytest.raises(Cancelled):
        cut_and_drag(image, trajectory, progress=cancel)


def test_warp_identity_is_exact() -> None:
    images = torch.rand(2, 3, 8, 8)
    identity = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]] * 2, dtype=torch.float64)
    assert torch.equal(warp(images, identity), images)


def test_push_pull_keeps_known_and_fills_smoothly() -> None:
    gradient = torch.linspace(0, 1, 32).repeat(3, 32, 1)  # [3, 32, 32], varies along x
    known = torch.ones(32, 32)
    known[8:24, 8:24] = 0
    filled = push_pull_fill(gradient * known, known)
    assert torch.equal(filled[:, known > 0], gradient[:, known > 0])
    hole = filled[0, 8:24, 8:24]
    assert float(hole.min()) >= 0.0 and float(hole.max()) <= 1.0
    assert float(hole[:, -1].mean()) > float(hole[:, 0].mean())  # follows the surrounding gradient
    nothing = push_pull_fill(torch.rand(3, 5, 5), torch.zeros(5, 5))
    assert torch.allclose(nothing, torch.full((3, 5, 5), 0.5))


def test_cut_and_drag_first_frame_is_the_image() -> None:
    image, objects = scene()
    start = tuple(mask_centroids(objects.masks)[0].tolist())
    trajectory = trajectory_from_paths(objects, (linear(5, start[0] + 20, start[1], start), None), 5, 8.0)
    video = cut_and_drag(image, trajectory, feather=1.5)
    assert video.dtype == torch.float32 and video.shape == (5, H, W, 3)
    assert float((video[0] - image).abs().max()) <= 1e-6


def test_cut_and_drag_moves_pixels_and_fills_the_hole() -> None:
    image, objects = scene()
    start = tuple(mask_centroids(objects.masks)[0].tolist())
    trajectory = trajectory_from_paths(objects, (linear(3, start[0] + 20, start[1] + 4, start), None), 3, 8.0)
    video = cut_and_drag(image, trajectory, feather=0.0)
    last = video[-1]
    # Integer shift, hard edges: the bar's pixels are exactly where the trajectory puts them.
    assert torch.equal(last[14:22, 28:40], image[10:18, 8:20])
    # Where the bar was, the background is filled from its surroundings (blue), not red.
    hole = last[10:18, 8:20]
    assert float(hole[..., 0].max()) < 0.2 and float(hole[..., 2].min()) > 0.6
    # The still box is untouched.
    assert torch.equal(last[30:40, 40:50], image[30:40, 40:50])


def test_cut_and_drag_respects_depth_order() -> None:
    image, objects = scene()
    centroids = mask_centroids(objects.masks)
    path = linear(3, *centroids[1].tolist(), start=tuple(centroids[0].tolist()))
    for order, color in (((1, 2), 0), ((2, 1), 1)):  # red channel wins when the bar is in front
        trajectory = trajectory_from_paths(objects, (path, None), 3, 8.0, depth_order=order)
        pixel = cut_and_drag(image, trajectory, feather=0.0)[-1, 35, 45]
        assert int(pixel.argmax()) == color


def test_estimated_motion_matches_authored_motion() -> None:
    image, objects = scene()
    start = tuple(mask_centroids(objects.masks)[0].tolist())
    path = linear(6, start[0] + 10, start[1] + 12, start, scale=1.5, rotation=30.0)
    authored = trajectory_from_paths(objects, (path, None), 6, 8.0)
    estimated = estimate_affines(Trajectory(authored.labels, objects, 8.0))
    corners = torch.tensor([[8.0, 10.0], [20.0, 10.0], [8.0, 18.0], [20.0, 18.0]], dtype=torch.float64)

    def moved(affines: torch.Tensor) -> torch.Tensor:  # [T, 4, 2]: where each corner of the bar goes
        return torch.einsum("tij,cj->tci", affines[:, 0, :, :2], corners) + affines[:, 0, None, :, 2]

    # Moments recover translation, scale and angle: the bar's corners land within 1.5 px.
    assert float((moved(estimated) - moved(authored.transforms)).abs().max()) < 1.5
    # Without transforms the renderer uses the estimate and still starts from the image.
    video = cut_and_drag(image, Trajectory(authored.labels, objects, 8.0), feather=1.0)
    assert float((video[0] - image).abs().max()) <= 1e-6


def test_cut_and_drag_rejects_mismatched_image() -> None:
    image, objects = scene()
    trajectory = trajectory_from_paths(objects, (None, None), 2, 8.0)
    with pytest.raises(TTMInputError, match="image is 32x48") as err:
        cut_and_drag(image[:, :32], trajectory)
    assert err.value.input_name == "image"
    with pytest.raises(TTMInputError, match="feather"):
        cut_and_drag(image, trajectory, feather=-1.0)
