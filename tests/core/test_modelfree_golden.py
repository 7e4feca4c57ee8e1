"""The model-free path (Image To Motion ``paths`` + the ``warp`` cut-and-drag) against its golden outputs,
captured before the crop-based renderer (issue 18; ``tests/support/modelfree_scenes.py``): labels may flip
only on an object's edge, frames stay within one 8-bit level away from edges and differ only inside the
feather width."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modelfree_scenes import CASES, GOLDEN_MODELFREE, edge_band, feather_band, render, to_uint8

GOLDEN = np.load(GOLDEN_MODELFREE)


@pytest.mark.parametrize("name", list(CASES))
def test_procedural_case_matches_its_golden_outputs(name: str) -> None:
    labels, frames = render(name)
    golden_labels = torch.from_numpy(GOLDEN[f"{name}/labels"])
    golden_frames = torch.from_numpy(GOLDEN[f"{name}/frames"])
    assert labels.shape == golden_labels.shape and frames.shape == golden_frames.shape
    flips = labels != golden_labels
    edges = edge_band(golden_labels, 1)
    assert not bool((flips & ~edges).any()), f"{name}: {int((flips & ~edges).sum())} labels flipped off the edges"
    assert int(flips.sum()) <= max(2, flips.numel() // 1000), f"{name}: {int(flips.sum())} edge labels flipped"
    # Frames: away from every edge (of the old labels and the new), within one 8-bit level.
    feather = CASES[name]().feather
    band = edge_band(golden_labels, feather_band(feather)) | edge_band(labels, feather_band(feather))
    diff = (to_uint8(frames).to(torch.int16) - golden_frames.to(torch.int16)).abs().amax(-1)
    assert int(diff[~band].max()) <= 1, f"{name}: {int(diff[~band].max())} levels off the edges"
    assert float((diff > 1).float().mean()) < 0.01, f"{name}: {float((diff > 1).float().mean()):.2%} pixels moved"


def test_chunks_do_not_change_the_output_and_cancel_stops_within_one() -> None:
    from ttm_core.motion.cut_and_drag import cut_and_drag
    from ttm_core.motion.render import render_labels

    case = CASES["crossing"]()
    trajectory = case.trajectory
    objects = trajectory.objects
    assert trajectory.transforms is not None
    whole = cut_and_drag(case.image, trajectory, case.feather, chunk=16)
    assert float((cut_and_drag(case.image, trajectory, case.feather, chunk=4) - whole).abs().max()) < 1e-6
    labels = render_labels(objects.masks, trajectory.transforms, objects.ids, trajectory.depth_order, chunk=2)
    assert torch.equal(labels, trajectory.labels)

    class Cancelled(Exception):
        pass

    calls: list[int] = []

    def cancel(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        cut_and_drag(case.image, trajectory, case.feather, progress=cancel, chunk=3)
    assert calls == [1, 2]  # the first chunk reported frame by frame, and nothing after the cancel
    calls.clear()
    with pytest.raises(Cancelled):
        render_labels(objects.masks, trajectory.transforms, objects.ids, trajectory.depth_order, cancel, chunk=3)
    assert calls == [1, 2]


def test_label_boxes_are_each_objects_pixel_box() -> None:
    from ttm_core.motion.cut_and_drag import label_boxes

    labels = CASES["leaving"]().trajectory.labels  # object 1 leaves the frame: absent at the end
    boxes = label_boxes(labels, (1, 2))
    for t in range(labels.shape[0]):
        for i, object_id in enumerate((1, 2)):
            ys, xs = torch.nonzero(labels[t] == object_id, as_tuple=True)
            expected = [0, 0, 0, 0] if ys.numel() == 0 else [int(ys.min()), int(ys.max()) + 1, int(xs.min()),
                                                              int(xs.max()) + 1]
            assert boxes[t, i].tolist() == expected
    assert boxes[-1, 0].tolist() == [0, 0, 0, 0]


def test_push_pull_for_many_masks_equals_one_at_a_time() -> None:
    from ttm_core.motion.cut_and_drag import push_pull_fill, push_pull_fill_many

    case = CASES["crossing"]()
    planar = case.image.permute(2, 0, 1)
    known = case.trajectory.objects.masks
    many = push_pull_fill_many(planar, known)
    for i in range(known.shape[0]):
        assert torch.equal(many[i], push_pull_fill(planar, known[i]))
