"""Regenerate the example image and object masks shipped in examples/ (developer tool).

The image is scikit-image's ``coins`` photograph (Greek coins from Pompeii, "no known
copyright restrictions", bundled with scikit-image), cropped to 384x288 and stored as RGB.
The two masks are coins segmented by Otsu thresholding, hole filling and connected
components. Two more assets serve motion transfer (workflows/ttm_reference_video*.json):

* ``ttm_coins_reference.mp4``: a reference clip (33 frames, 16 fps, H.264) of the two coins moving
  (the left coin arcs down and right, the big coin turns and slides up and left), cut and dragged
  from the photograph by the pack's own warp renderer: a video whose motion is known exactly.
* ``ttm_coins_gold.png``: the same photograph toned gold, standing in for an edited first frame
  (the "another image" the reference motion is transferred to; same layout, so the masks hold).

A saved trajectory serves workflows/ttm_saved_trajectory_warp*.json and ttm-batch's ``trajectory`` field:

* ``ttm_coins_trajectory.npz``: the mask trajectory of workflows/ttm_warp_paths_api.json (its Stage 1 up to
  Image To Motion, 49 frames) written by Save Trajectory in a real ComfyUI (tools/comfy_harness.py), so the file
  is exactly what the node writes (docs/TRAJECTORY_FILE.md).

Run: .venv/bin/python tools/make_example_assets.py [--only trajectory]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, filters

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CROP = (slice(8, 296), slice(0, 384))  # 288 x 384: even sizes for H.264, multiples of 16
# (row, col) of a pixel inside each chosen coin, in the cropped image.
PICKS = {"ttm_coins_mask_left.png": (116, 45), "ttm_coins_mask_right.png": (178, 348)}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("trajectory",), default=None,
                        help="regenerate only this asset (default: all of them)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if options.only == "trajectory":
        saved_trajectory(ROOT / "examples")
        return
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
    gold = np.stack([gray * 1.0, gray * 0.82, gray * 0.45], axis=2) + np.array([18.0, 10.0, 0.0])
    Image.fromarray(np.clip(gold, 0, 255).astype(np.uint8)).save(out / "ttm_coins_gold.png", optimize=True)
    reference_clip(out)
    saved_trajectory(out)


REFERENCE_PATHS = {"version": 1, "units": "pixels", "objects": {
    "left coin": {"keyframes": [{"t": 0.5, "x": 110, "y": 170, "easing": "ease_in_out"},
                                {"t": 1.0, "x": 170, "y": 200, "easing": "ease_out"}]},
    "big coin": {"keyframes": [{"t": 1.0, "x": 290, "y": 120, "rotation": -30, "easing": "ease_in_out"}]}}}
"""The reference clip's motion (paths JSON v1): what a tracker run on the clip should find again."""


def reference_trajectory(folder: Path = ROOT / "examples", num_frames: int = 33, fps: float = 16.0):
    """(image float [H, W, 3] in 0..1, the reference clip's exact mask trajectory) from the example image and
    masks moved along ``REFERENCE_PATHS`` (a ``ttm_core.types.Trajectory``)."""
    import json

    import torch

    from ttm_core.motion.paths import parse_paths
    from ttm_core.motion.poses import mask_centroids
    from ttm_core.motion.render import trajectory_from_paths
    from ttm_core.types import ObjectPrompt, Objects, Prompts

    image = torch.from_numpy(np.array(Image.open(folder / "ttm_coins.png").convert("RGB"))).float() / 255.0
    masks = torch.stack([torch.from_numpy(np.array(Image.open(folder / name).convert("L")) > 127).float()
                         for name in PICKS])
    prompts = Prompts("Two coins move on a table.", "Two coins move on a table.",
                      (ObjectPrompt("left coin", "a small silver coin"), ObjectPrompt("big coin", "a large coin")))
    objects = Objects(prompts, masks)
    paths = parse_paths(json.dumps(REFERENCE_PATHS), prompts, objects.size, num_frames, mask_centroids(masks))
    return image, trajectory_from_paths(objects, paths, num_frames, fps)


def reference_clip(out: Path) -> Path:
    """Render ``ttm_coins_reference.mp4`` from the example image and masks along ``REFERENCE_PATHS``."""
    import shutil
    import tempfile

    from ttm_core.media import encode_video
    from ttm_core.motion.cut_and_drag import cut_and_drag

    image, trajectory = reference_trajectory(out)
    frames = cut_and_drag(image, trajectory)
    with tempfile.TemporaryDirectory() as tmp:
        (written,) = encode_video(frames, Path(tmp), "reference", "mp4", trajectory.fps, quality=90)
        target = out / "ttm_coins_reference.mp4"
        shutil.copy(written, target)
    LOG.info("%s: %d frames at %g fps, %d bytes", target.name, trajectory.num_frames, trajectory.fps,
             target.stat().st_size)
    return target


SAVED_TRAJECTORY = "ttm_coins_trajectory.npz"


def saved_trajectory(out: Path) -> Path:
    """Write ``ttm_coins_trajectory.npz``: the warp workflow's trajectory saved by Save Trajectory in a real
    ComfyUI (the harness copies the example image and masks into its input folder)."""
    import json
    import tempfile

    if str(ROOT / "batch") not in sys.path:
        sys.path.insert(0, str(ROOT / "batch"))
    from tools.comfy_harness import ComfyServer
    from ttm_batch.client import ComfyClient

    workflow = json.loads((ROOT / "workflows" / "ttm_warp_paths_api.json").read_text())
    keep = {"1", "2", "3", "4", "5", "6"}  # LoadImage, the two masks, Prompt Decompose, Objects, Image To Motion
    if [workflow[k]["class_type"] for k in sorted(keep)][-1] != "TTM_ImageToMotion":
        raise SystemExit("workflows/ttm_warp_paths_api.json changed: node 6 is not Image To Motion")
    workflow = {k: v for k, v in workflow.items() if k in keep}
    workflow["20"] = {"class_type": "TTM_SaveTrajectory",
                      "inputs": {"trajectory": ["6", 0], "filename_prefix": "examples/ttm_coins_trajectory"}}
    with tempfile.TemporaryDirectory(prefix="ttm-example-") as base, ComfyServer(Path(base)) as server:
        client = ComfyClient(server.url, timeout=120)
        (file,) = client.run(workflow, timeout=600).files()
        target = out / SAVED_TRAJECTORY
        target.write_bytes(client.view(file))
    LOG.info("%s: %d bytes (Save Trajectory's %s)", target.name, target.stat().st_size, file.filename)
    return target


if __name__ == "__main__":
    main()
