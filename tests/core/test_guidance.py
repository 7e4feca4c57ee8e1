"""Dual-clock guidance maths: clocks, the latent foreground, noising and pinning."""

from __future__ import annotations

import pytest
import torch

from ttm_core.errors import TTMInputError
from ttm_core.stage2.families import WAN21_I2V, WAN22_TI2V
from ttm_core.stage2.guidance import DualClock, latent_foreground, noise_to, pin, step_index
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory


def test_clock_in_steps_and_sigmas() -> None:
    clock = DualClock(object_end=0.5, background_end=0.25)
    assert [clock.pins(i, 8, 0.0) for i in range(8)] == [(True, True)] * 2 + [(True, False)] * 2 + [(False, False)] * 4
    by_sigma = DualClock(object_end=0.3, background_end=0.7, units="sigma")
    assert by_sigma.pins(0, 10, 0.9) == (True, True)
    assert by_sigma.pins(3, 10, 0.5) == (True, False)
    assert by_sigma.pins(6, 10, 0.2) == (False, False)


@pytest.mark.parametrize("kwargs, name", [({"object_end": 0.1, "background_end": 0.2}, "object_end"),
                                          ({"object_end": 1.5}, "object_end"),
                                          ({"background_end": -0.1}, "background_end"),
                                          ({"units": "seconds"}, "clock_units"),
                                          ({"object_end": 0.8, "background_end": 0.2, "units": "sigma"}, "object_end")])
def test_clock_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(TTMInputError) as err:
        DualClock(**kwargs)
    assert err.value.input_name == name


def test_step_index_finds_nearest_start_sigma() -> None:
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [step_index(sigmas, s) for s in (1.0, 0.74, 0.26, 0.25)] == [0, 1, 3, 3]


def test_noising_and_pinning() -> None:
    ref, noise = torch.full((1, 2, 3, 2, 2), 2.0), torch.full((1, 2, 3, 2, 2), -1.0)
    assert torch.allclose(noise_to(ref, noise, 0.25), torch.full_like(ref, 0.25 * -1 + 0.75 * 2))
    assert torch.allclose(noise_to(ref, noise, 0.5, "ve"), torch.full_like(ref, 1.5))
    x = torch.zeros_like(ref)
    fg = torch.zeros(3, 2, 2)
    fg[:, 0, 0] = 1.0
    fg[:, 1, 1] = 0.5
    assert pin(x, ref, fg, False, False) is x
    objects_only = pin(x, ref, fg, True, False)
    assert objects_only[0, 0, :, 0, 0].tolist() == [2.0] * 3
    assert objects_only[0, 0, :, 1, 1].tolist() == [1.0] * 3  # half covered: half pinned
    assert objects_only[0, 0, :, 0, 1].tolist() == [0.0] * 3  # background runs free
    assert torch.equal(pin(x, ref, fg, True, True), ref)


def test_latent_foreground_uses_the_causal_vae_mapping() -> None:
    masks = torch.zeros(1, 64, 64)
    masks[0, :16, :16] = 1
    objects = Objects(Prompts("g", "m", (ObjectPrompt("box", "a box"),)), masks)
    labels = torch.zeros(9, 64, 64, dtype=torch.uint8)
    for f in range(9):  # the box moves 4 px right per frame
        labels[f, :16, 4 * f:4 * f + 16] = 1
    fg = latent_foreground(Trajectory(labels, objects, 8.0), WAN21_I2V, 9, 64, 64)
    assert fg.shape == (3, 8, 8)  # 1 + (9 - 1) / 4 latent frames, 64 / 8 latent pixels
    assert fg[0, :2, :2].tolist() == [[1.0, 1.0], [1.0, 1.0]]  # latent frame 0 = video frame 0 alone
    assert float(fg[0].sum()) == 4.0
    # Latent frame 2 holds video frames 5..8 (box at x = 20, 24, 28, 32 .. +16): area shares.
    assert fg[2, 0, 2].item() == pytest.approx(0.125)  # x 16..23: half covered in frame 5 only
    assert fg[2, 0, 3].item() == pytest.approx(0.625)  # x 24..31: 1, 1, 0.5, 0
    ti2v = latent_foreground(Trajectory(labels, objects, 8.0), WAN22_TI2V, 9, 64, 64)
    assert ti2v.shape == (3, 4, 4)  # TI2V's VAE is 16x spatially


def test_frame_weight_leaves_a_frame_alone() -> None:
    x, ref = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2)
    fg = torch.ones(2, 2, 2)
    out = pin(x, ref, fg, True, True, frame_weight=torch.tensor([0.0, 1.0]))
    assert out[0, 0, 0].abs().max() == 0 and bool((out[0, 0, 1] == 1).all())
