"""Tiny diffusers models on disk in the users' layout, and inputs for the Stage 2 tests.

``tiny_model_dir`` builds every supported family once per test session with
``ttm_core.stage2.tiny.save_tiny`` (``save_pretrained``: ``model_index.json`` plus one folder per
component) under ``<tmp>/tiny``; ``server_models`` links that folder into the test server's
``models/diffusers``, so the loader node lists them as ``tiny/<family>`` next to whatever the
shipped workflows name. Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attention_cases import one_thread  # noqa: F401 - the same autouse fixture, for the Stage 2 modules
from tiny_diffusers import TINY_FAMILIES, save_tiny
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

TINY_PREFIX = "tiny"
SIZE = 64  # every tiny family generates 64 x 64 px (TI2V's 32 px grid included)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/tiny/<family>`` for every family in ``TINY_FAMILIES`` (built once per session)."""
    root = tmp_path_factory.mktemp("diffusers") / TINY_PREFIX
    for family in TINY_FAMILIES:
        save_tiny(family, root / family)
    logging.getLogger(__name__).info("tiny diffusers models in %s", root)
    return root


def link_tiny_models(server, tiny_model_dir: Path) -> Path:
    """Link the tiny models into ``server``'s models/diffusers folder; returns that folder."""
    target = server.base / "models" / "diffusers"
    target.mkdir(parents=True, exist_ok=True)
    link = target / TINY_PREFIX
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(tiny_model_dir, target_is_directory=True)
    return target


@pytest.fixture(scope="session")
def server_models(comfy_server, tiny_model_dir: Path) -> Iterator[Path]:
    """The tiny models linked into the test server's models/diffusers folder."""
    yield link_tiny_models(comfy_server, tiny_model_dir)


def two_balls(frames: int = 9, size: int = SIZE, shift: int = 2) -> Trajectory:
    """Two boxes far apart; box 1 moves ``shift`` px right per frame, box 2 stays."""
    labels = torch.zeros(frames, size, size, dtype=torch.uint8)
    for t in range(frames):
        labels[t, size // 8:size // 2 - 4, 4 + shift * t:size // 3 + 4 + shift * t] = 1
        labels[t, size // 2 + 4:size - 4, size * 5 // 8:size - 4] = 2
    prompts = Prompts("a red ball and a blue ball on a table", "two balls move",
                      (ObjectPrompt("red ball", "a red ball rolls right"), ObjectPrompt("blue ball", "a blue ball")))
    masks = torch.stack([(labels[0] == i).to(torch.float32) for i in (1, 2)])
    return Trajectory(labels, Objects(prompts, masks), 8.0)


def test_image(size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """float ``[H, W, 3]``: a smooth random picture (the tiny VAEs like smooth input)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return image[0].permute(1, 2, 0).contiguous()


test_image.__test__ = False  # a helper, not a test
