"""Where a moved object is in decoded video frames (shared by the server and browser tests)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def measure_centroids(frames: np.ndarray, mask: np.ndarray, rest: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Track an object through decoded frames by matching its first-frame pixels.

    For every frame the object's pixels (mask eroded by 2 px, grey levels of frame 0) are
    compared with the frame at integer shifts within +-6 px of the guess (sum of squared
    differences); a parabola through the best score and its neighbours gives the sub-pixel
    shift. Returns measured centroids [T, 2] = rest + shift.
    """
    grey = frames.astype(np.float64).mean(axis=-1)
    inner = ndimage.binary_erosion(mask > 0.5, iterations=2)
    ys, xs = np.nonzero(inner)
    template = grey[0][ys, xs]
    height, width = grey.shape[1:]
    out = []
    for t in range(len(grey)):
        base = np.rint(guess[t] - rest).astype(int)
        scores = np.full((13, 13), np.inf)
        for j, dy in enumerate(range(base[1] - 6, base[1] + 7)):
            for i, dx in enumerate(range(base[0] - 6, base[0] + 7)):
                yy, xx = ys + dy, xs + dx
                keep = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                if keep.mean() > 0.5:
                    scores[j, i] = np.mean((grey[t][yy[keep], xx[keep]] - template[keep]) ** 2)
        j, i = np.unravel_index(np.argmin(scores), scores.shape)

        def refine(a: float, b: float, c: float) -> float:
            denominator = a - 2 * b + c
            return 0.0 if not np.isfinite(denominator) or denominator <= 0 else 0.5 * (a - c) / denominator

        sub_x = refine(*scores[j, i - 1:i + 2]) if 0 < i < 12 else 0.0
        sub_y = refine(*scores[j - 1:j + 2, i]) if 0 < j < 12 else 0.0
        out.append(rest + np.array([base[0] - 6 + i + sub_x, base[1] - 6 + j + sub_y]))
    return np.array(out)
