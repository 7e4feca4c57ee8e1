"""The payload types validate themselves and say which input is wrong."""

from __future__ import annotations

import pytest
import torch

from ttm_core.errors import TTMInputError
from ttm_core.types import MAX_OBJECTS, PALETTE, ObjectPrompt, Objects, Prompts, Trajectory


def two_objects(height: int = 8, width: int = 10) -> Objects:
    masks = torch.zeros(2, height, width)
    masks[0, 1:3, 1:3] = 1
    masks[1, 4:7, 5:9] = 1
    prompts = Prompts("g", "m", (ObjectPrompt("cat", "a cat"), ObjectPrompt("dog", "a dog")))
    return Objects(prompts, masks)


@pytest.mark.parametrize("name, prompt, message", [
    ("", "x", "empty name"),
    ("a:b", "x", "colon"),
    ("cat", "  ", "empty local prompt"),
    ("x" * 65, "y", "characters long"),
])
def test_object_prompt_rejects(name: str, prompt: str, message: str) -> None:
    with pytest.raises(TTMInputError, match=message) as err:
        ObjectPrompt(name, prompt)
    assert err.value.input_name == "objects"
    assert "Fix:" in str(err.value)


def test_object_prompt_strips() -> None:
    obj = ObjectPrompt("  left dog ", " a dog  ")
    assert (obj.name, obj.local_prompt) == ("left dog", "a dog")


def test_prompts_unique_names_case_insensitive() -> None:
    with pytest.raises(TTMInputError, match="used twice"):
        Prompts("g", "m", (ObjectPrompt("Dog", "a"), ObjectPrompt("dog", "b")))


def test_prompts_too_many_objects() -> None:
    objects = tuple(ObjectPrompt(f"o{i}", "p") for i in range(MAX_OBJECTS + 1))
    with pytest.raises(TTMInputError, match=f"{MAX_OBJECTS + 1} objects"):
        Prompts("g", "m", objects)


def test_prompts_index_by_name_or_id() -> None:
    prompts = Prompts("g", "m", (ObjectPrompt("cat", "a"), ObjectPrompt("dog", "b")))
    assert prompts.index_of("DOG") == 1
    assert prompts.index_of("1") == 0
    with pytest.raises(TTMInputError, match=r"no object 'bird'.*1 = 'cat', 2 = 'dog'"):
        prompts.index_of("bird")
    with pytest.raises(TTMInputError):
        prompts.index_of("3")


def test_objects_defaults_ids_and_colors() -> None:
    objects = two_objects()
    assert objects.ids == (1, 2)
    assert objects.colors == (PALETTE[0], PALETTE[1])
    assert objects.size == (8, 10)
    assert objects.masks.dtype == torch.float32


def test_objects_mask_count_must_match() -> None:
    prompts = Prompts("g", "m", (ObjectPrompt("cat", "a"),))
    with pytest.raises(TTMInputError, match="2 masks for 1 objects") as err:
        Objects(prompts, torch.ones(2, 4, 4))
    assert err.value.input_name == "masks"


def test_objects_empty_mask_named() -> None:
    prompts = Prompts("g", "m", (ObjectPrompt("cat", "a"), ObjectPrompt("dog", "b")))
    masks = torch.zeros(2, 4, 4)
    masks[0, 1, 1] = 1
    with pytest.raises(TTMInputError, match=r"object 2 \('dog'\) is empty"):
        Objects(prompts, masks)


def test_objects_need_objects() -> None:
    with pytest.raises(TTMInputError, match="name no objects"):
        Objects(Prompts("g", "m", ()), torch.ones(0, 4, 4))


def test_objects_bad_shape() -> None:
    prompts = Prompts("g", "m", (ObjectPrompt("cat", "a"),))
    with pytest.raises(TTMInputError, match=r"\[objects, H, W\]"):
        Objects(prompts, torch.ones(4, 4))


def test_trajectory_validates() -> None:
    objects = two_objects()
    labels = torch.zeros(3, 8, 10, dtype=torch.uint8)
    labels[:, 1, 1] = 1
    labels[1, 5, 5] = 2
    trajectory = Trajectory(labels, objects, fps=8.0)
    assert trajectory.depth_order == (1, 2)
    assert trajectory.num_frames == 3
    masks = trajectory.object_masks()
    assert masks.shape == (3, 2, 8, 10)
    assert int(masks[:, 1].sum()) == 1 and bool(masks[1, 1, 5, 5])
    colors = trajectory.color_video()
    assert colors.shape == (3, 8, 10, 3)
    assert torch.allclose(colors[0, 1, 1], torch.tensor(PALETTE[0], dtype=torch.float32) / 255)
    assert torch.equal(colors[0, 0, 0], torch.zeros(3))
    assert trajectory.foreground().sum() == 4

    with pytest.raises(TTMInputError, match="uint8"):
        Trajectory(labels.to(torch.int64), objects, 8.0)
    with pytest.raises(TTMInputError, match=r"\(4, 10\) but the object masks are \(8, 10\)"):
        Trajectory(labels[:, :4], objects, 8.0)
    bad = labels.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(TTMInputError, match=r"labels \[7\] belong to no object"):
        Trajectory(bad, objects, 8.0)
    with pytest.raises(TTMInputError, match="fps"):
        Trajectory(labels, objects, 0.0)
    with pytest.raises(TTMInputError, match="ordering"):
        Trajectory(labels, objects, 8.0, depth_order=(1, 1))
    with pytest.raises(TTMInputError, match="transforms have shape"):
        Trajectory(labels, objects, 8.0, transforms=torch.zeros(3, 2, 3, 3))


def test_payloads_are_frozen() -> None:
    objects = two_objects()
    with pytest.raises(AttributeError):
        objects.ids = (3, 4)  # type: ignore[misc]
