"""Regenerate the example image and object masks shipped in examples/ (developer tool).

The image is scikit-image's ``coins`` photograph (Greek coins from Pompeii, "no known
copyright restrictions", bundled with scikit-image), cropped to 384x288 and stored as RGB.
The two masks are coins segmented by Otsu thresholding, hole filling and connected
components. Run: .venv/bin/python tools/make_example_assets.py
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, filters

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
CROP = (slice(8, 296), slice(0, 384))  # 288 x 384: even sizes for H.264, multiples of 16
# (row, col) of a pixel inside each chosen coin, in the cropped image.
PICKS = {"ttm_coins_mask_left.png": (116, 45), "ttm_coins_mask_right.png": (178, 348)}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gray = data.coins()[CROP]
    rgb = np.repeat(gray[..., None], 3, axis=2)
    out = ROOT / "examples"
    out.mkdir(exist_ok=True)
    Image.fromarray(rgb).save(out / "ttm_coins.png", optimize=True)
    smooth = filters.gaussian(gray, sigma=1.0, preserve_range=True)
    coins = ndimage.binary_fill_holes(smooth > filters.threshold_otsu(smooth))
    coins = ndimage.binary_opening(coins, iterations=2)
    labels, _ = ndimage.label(coins)
    for name, (row, col) in PICKS.items():
        label = labels[row, col]
        if label == 0:
            raise SystemExit(f"{name}: the pick {(row, col)} is not on a coin")
        mask = ndimage.binary_fill_holes(labels == label)
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / name, optimize=True)
        ys, xs = np.nonzero(mask)
        LOG.info("%s: %d px, centroid (x=%.1f, y=%.1f)", name, mask.sum(), xs.mean() + 0.5, ys.mean() + 0.5)


if __name__ == "__main__":
    main()
