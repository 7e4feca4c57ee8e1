"""Detector assignment by position and automatic-mode selection (tracking: test_track.py)."""

from __future__ import annotations

import pytest
import torch

from ttm_core.segment.detect import assign_by_position, non_max_suppression, plan_queries, split_position
from ttm_core.segment.first_frame import choose_distinct


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
