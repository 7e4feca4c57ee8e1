"""Procedural training videos with KNOWN masks, in ``ttm-data build``'s input layout.

Each clip is one of the flow tracker's procedural scenes (``benchmarks/flow_scenes.py``: textured
shapes moving over a textured background, with the true label video), written as

* ``<root>/videos/<name>.mp4`` (H.264, CRF 12, at the scene's size and ``fps``),
* ``<root>/videos/<name>.txt``: the caption,
* ``<root>/masks/<name>.png``: the first-frame label map (pixel value = object id),

and the true labels are returned for comparison with what the shards hold.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from benchmarks.flow_scenes import make_scene

CAPTIONS = {
    "translation": "a textured blob slides to the right across a patterned floor",
    "crossing": "two shapes swap sides, the first passing in front of the second",
    "rotation": "a long bar turns clockwise in the middle of the frame",
    "scaling": "a blob grows as it comes closer",
    "several": "three blobs drift across the frame on separate paths",
}


@dataclass(frozen=True, eq=False)
class ProceduralClip:
    """A written clip: its files and the truth (uint8 labels ``[T, H, W]``)."""

    name: str
    video: Path
    caption: Path
    masks: Path
    labels: np.ndarray
    fps: float


def write_video(path: Path, frames: np.ndarray, fps: float, crf: int = 12) -> Path:
    """uint8 ``[T, H, W, 3]`` -> an H.264 mp4 at ``path``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_label_png(path: Path, labels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)
    return path


def write_clip(root: Path, name: str, scene: str, *, height: int = 96, width: int = 128, frames: int = 17,
               fps: float = 8.0, seed: int = 0, objects: int = 3) -> ProceduralClip:
    """Render ``scene`` and write it as ``name`` under ``root`` (videos/, masks/)."""
    made = make_scene(scene, height, width, frames, objects=objects, seed=seed)
    pictures = (made.frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = made.labels.numpy()
    video = write_video(root / "videos" / f"{name}.mp4", pictures, fps)
    caption = root / "videos" / f"{name}.txt"
    caption.write_text(CAPTIONS.get(scene, f"a {scene} scene") + "\n", encoding="utf-8")
    masks = write_label_png(root / "masks" / f"{name}.png", labels[0])
    return ProceduralClip(name, video, caption, masks, labels, fps)


def write_clips(root: Path, scenes: list[str], **kwargs: object) -> list[ProceduralClip]:
    """One clip per scene, named ``clip<i>_<scene>``."""
    return [write_clip(root, f"clip{i}_{scene}", scene, **kwargs) for i, scene in enumerate(scenes)]  # type: ignore[arg-type]


def write_garbage_video(path: Path) -> Path:
    """A file with a video extension that no decoder can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a video\x00" * 64)
    return path


def png_bytes(labels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
