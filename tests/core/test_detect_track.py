"""Detector assignment by position, automatic-mode selection, and SAM2 video tracking in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import TinyModels
from ttm_core.errors import TTMInputError
from ttm_core.segment.detect import assign_by_position, non_max_suppression, plan_queries, split_position
from ttm_core.segment.first_frame import choose_distinct
from ttm_core.segment.sam2 import load_sam2
from ttm_core.segment.track import frames_state, track_objects
from ttm_core.types import ObjectPrompt, Objects, Prompts


@pytest.mark.parametrize("name, query, position", [
    ("left dog", "dog", "left"), ("the dog on the right", "dog", "right"), ("Middle Duck", "Duck", "middle"),
    ("top bird", "bird", "top"), ("lower shelf box", "shelf box", "bottom"), ("dog", "dog", None),
    ("left", "left", None), ("red car", "red car", None),
])
def test_position_words_split_from_names(name: str, query: str, position: str | None) -> None:
    assert split_position(name) == (query, position)


def test_queries_group_objects_of_the_same_kind() -> None:
    plan = plan_queries(["left dog", "cat", "right dog", "middle dog"])
    assert plan == [("dog", [(0, "left"), (2, "right"), (3, "middle")]), ("cat", [(1, None)])]


def box(x: float, y: float = 10.0, size: float = 20.0) -> tuple[float, float, float, float]:
    return (x, y, x + size, y + size)


def test_left_middle_right_get_boxes_by_position() -> None:
    detections = [(box(200), 0.9), (box(10), 0.8), (box(100), 0.7), (box(300), 0.1)]
    members = [(0, "right"), (1, "middle"), (2, "left")]
    chosen = assign_by_position(members, detections)
    assert chosen == {0: (box(200), 0.9), 1: (box(100), 0.7), 2: (box(10), 0.8)}  # the 0.1 box is 4th best: unused
    vertical = assign_by_position([(0, "bottom"), (1, "top")], [(box(0, 100), 0.5), (box(0, 5), 0.6)])
    assert vertical == {0: (box(0, 100), 0.5), 1: (box(0, 5), 0.6)}
    unqualified = assign_by_position([(0, None), (1, "left")], [(box(5), 0.3), (box(50), 0.9)])
    assert unqualified == {1: (box(5), 0.3), 0: (box(50), 0.9)}
    assert assign_by_position([(0, "left"), (1, "right")], [(box(5), 0.3)]) == {0: (box(5), 0.3)}


def test_non_max_suppression_keeps_the_best_of_overlapping_boxes() -> None:
    kept = non_max_suppression([(box(0), 0.5), (box(2), 0.9), (box(100), 0.4)])
    assert kept == [(box(2), 0.9), (box(100), 0.4)]


def test_automatic_selection_takes_the_largest_distinct_masks_left_to_right() -> None:
    def candidate(x0: int, x1: int, y0: int = 0, y1: int = 10) -> tuple[float, torch.Tensor, torch.Tensor]:
        mask = torch.zeros(20, 40, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
        return 0.9, mask.float() * 2 - 1, mask

    big_right, small_left = candidate(20, 40), candidate(0, 8)
    inside_big, tiny = candidate(25, 35), candidate(0, 2, 15, 17)
    chosen = choose_distinct([tiny, inside_big, small_left, big_right], 2)
    assert [c[2].nonzero()[:, 1].min().item() for c in chosen] == [0, 20]  # small_left then big_right
    assert chosen[1] is big_right and chosen[0] is small_left  # inside_big overlaps big_right: not distinct
    assert len(choose_distinct([big_right, inside_big], 2)) == 1


# --------------------------------------------------------------------------- tracking

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


@pytest.mark.parametrize("backend", ["meta", "hf"])
def test_tracks_two_objects_through_eight_frames(tiny_models: TinyModels, moving_squares, backend: str) -> None:
    frames, objects = moving_squares
    model = load_sam2(tiny_models.meta_small_image if backend == "meta" else tiny_models.hf_sam2, video=True)
    seen: list[tuple[int, int]] = []
    labels = track_objects(model, frames, objects, progress=lambda done, total: seen.append((done, total)))
    assert labels.shape == (8, 96, 128) and labels.dtype == torch.uint8
    assert seen == [(t, 8) for t in range(1, 9)]  # progress once per tracked frame
    assert set(torch.unique(labels).tolist()) <= {0, 3, 7}  # only background and the objects' ids
    first = torch.zeros(96, 128, dtype=torch.uint8)
    first[objects.binary()[0]] = 3
    first[objects.binary()[1]] = 7
    agreement = (labels[0] == first).float().mean().item()
    assert agreement > 0.99  # frame 0 is the given masks (SAM2 uses mask inputs as output)
    assert all(bool((labels[t] > 0).any()) for t in range(8)) or backend == "meta"


def test_cancel_stops_tracking_at_the_next_frame(tiny_models: TinyModels, moving_squares) -> None:
    frames, objects = moving_squares
    model = load_sam2(tiny_models.meta_small_image)
    seen: list[int] = []

    class Cancelled(Exception):
        pass

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        track_objects(model, frames, objects, progress=progress)
    assert seen == [1, 2, 3]


def test_in_memory_state_matches_sam2s_own_init_state(tiny_models: TinyModels, moving_squares, tmp_path) -> None:
    """The adapter builds the same inference state as init_state on a JPEG folder of the frames."""
    frames, _ = moving_squares
    predictor = load_sam2(tiny_models.meta_small_image).video_model
    for t, frame in enumerate(frames):
        Image.fromarray((frame.numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"{t:05d}.jpg", quality=100)
    reference = predictor.init_state(str(tmp_path))
    ours = frames_state(predictor, frames, torch.device("cpu"))
    assert set(ours) == set(reference)
    for key in ("num_frames", "video_height", "video_width", "device", "storage_device"):
        assert ours[key] == reference[key], key
    assert ours["images"].shape == reference["images"].shape == (8, 3, 256, 256)
    assert (ours["images"] - reference["images"]).abs().mean() < 0.05  # JPEG and PIL resize vs bilinear


def test_tracking_refuses_what_it_cannot_do(tiny_models: TinyModels, moving_squares) -> None:
    frames, objects = moving_squares
    with pytest.raises(TTMInputError, match="was loaded without its video model"):
        track_objects(load_sam2(tiny_models.hf_sam2, video=False), frames, objects)
    with pytest.raises(TTMInputError, match="frames: frames are 64x96 but the objects' masks are 128x96"):
        track_objects(load_sam2(tiny_models.meta_small_image), frames[:, :, :64], objects)
