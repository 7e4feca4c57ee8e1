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
