"""Golden frames of the shipped workflows on the test fixtures (the redesign's before/after check, kept).

``prepared(name, graph)`` puts the tiny models into a shipped API workflow (warp and SAM2 + LLM run as
shipped; native Wan gets the tiny ComfyUI checkpoints; diffusers the tiny models of the same family;
the trained workflow the tiny models and checkpoints of ``trained_checkpoints``, on the native server,
whose models/ ``trained_checkpoints.install_trained_models`` fills; the Stage 1 workflow its tiny TI2V and
Stage 1 checkpoint on the plain server, ``install_stage1_models``) and makes Video Combine write PNGs,
so the decoded frames are the node's exact 8-bit output. A workflow with several Video Combines (the
trained one) gets one prefix per node, ``<prefix>_<node id>``, so its frames come in node order.
``tests/data/golden/<workflow>.npz`` holds, per workflow: the sha256 of every frame, the frames'
shape, and a few frames as uint8. They were captured from main BEFORE the redesign (commit f8366b1)
and must not change unless behaviour changes on purpose: then ``tools/golden.py`` writes new ones.

``compare(frames, golden)``: identical (every frame's hash) is the expectation on this machine kind;
another CPU may round a float differently, so a frame that differs passes only when the kept frames
are within one 8-bit level at under 0.5 % of their values.
"""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from native_wan import tiny_workflow
from trained_checkpoints import tiny_stage1_workflow, tiny_trained_workflow

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
STAGE2_NODES = ("TTM_MaskedMotionToVideo", "TTM_DiffusersMotionToVideo")
DIFFUSERS = {"ttm_cogvideox_i2v": ("cogvideox-1.0-i2v",
                                   {"TTM_ImageToMotion": {"num_frames": 9}, "stage2": {"steps": 2}}),
             "ttm_i2vgen_xl": ("i2vgen-xl", {"TTM_ImageToMotion": {"num_frames": 4},
                                             "stage2": {"steps": 2, "width": 64, "height": 64}})}
TRAINED = ("ttm_trained_stage2",)
"""Workflows with a trained Stage 2 checkpoint: native Wan and diffusers side by side (trained_checkpoints)."""
STAGE1 = ("ttm_stage1_trained",)
"""Workflows with a trained Stage 1 checkpoint on the tiny diffusers TI2V, on the plain server
(``trained_checkpoints.install_stage1_models``)."""


NOT_ON_PROJECT_COMFYUI = {
    "ttm_wanmove_tracks": "core's WanMoveTrackToVideo needs ComfyUI >= 0.8; the project's ComfyUI 0.3.75 has no "
                          "Wan-Move nodes, so tests/server/test_wanmove_workflow.py checks it against core 0.8.0's "
                          "schema and runs its Stage 1 instead",
}
"""Shipped workflows (by stem) that cannot run on the project's ComfyUI, so they have no golden frames, and why."""


def stem(name: str) -> str:
    return Path(name).name.removesuffix(".json").removesuffix("_api")


def needs_native(name: str) -> bool:
    """Whether the workflow runs on the native Wan server (its native Wan files)."""
    return stem(name).startswith("ttm_wan2") or stem(name) in TRAINED


def per_node_prefixes(graph: dict) -> dict:
    """With several Video Combines, each writes under ``<its prefix>_<node id>`` (frames in node order)."""
    combines = [node_id for node_id, node in graph.items() if node["class_type"] == "TTM_VideoCombine"]
    if len(combines) > 1:
        for node_id in combines:
            graph[node_id]["inputs"]["filename_prefix"] += f"_{node_id}"
    return graph


def prepared(name: str, graph: dict) -> dict:
    """The workflow on the tiny models with PNG output (see the module docstring); a copy."""
    graph = copy.deepcopy(graph)
    key = stem(name)
    prefix = f"golden/{key}"
    if key in TRAINED:
        return per_node_prefixes(tiny_trained_workflow(graph, prefix, fmt="png"))
    if key in STAGE1:
        return tiny_stage1_workflow(graph, prefix, fmt="png")
    if needs_native(key):
        size = {"size": (64, 64)} if "ti2v" in key else {}
        return tiny_workflow(graph, prefix, fmt="png", **size)
    family, swaps = DIFFUSERS.get(key, (None, {}))
    for node in graph.values():
        kind = node["class_type"]
        if kind == "TTM_VideoModelLoader":
            node["inputs"]["model"] = f"tiny/{family}"
        node["inputs"].update(swaps.get("stage2" if kind in STAGE2_NODES else kind, {}))
        if kind == "TTM_VideoCombine":
            node["inputs"]["format"], node["inputs"]["filename_prefix"] = "png", prefix
    return graph


def frames_of(client: Any, result: Any) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: the PNG frames a finished prompt wrote, in order (by file name)."""
    files = sorted((f for f in result.files() if f.type == "output" and f.filename.endswith(".png")),
                   key=lambda f: f.filename)
    return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f))).convert("RGB")) for f in files])


def hashes(frames: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames]


def save(out: Path, name: str, frames: np.ndarray, keep: int) -> Path:
    picked = sorted({round(i * (len(frames) - 1) / max(1, keep - 1)) for i in range(keep)})
    path = out / f"{stem(name)}.npz"
    np.savez_compressed(path, hashes=np.array(hashes(frames)), shape=np.array(frames.shape), picked=np.array(picked),
                        frames=frames[picked])
    return path


def compare(frames: np.ndarray, name: str) -> str:
    """'identical' or 'within one level'; raises AssertionError saying what differs otherwise."""
    golden = np.load(GOLDEN / f"{stem(name)}.npz")
    assert tuple(frames.shape) == tuple(golden["shape"]), f"{name}: frames {frames.shape}, golden {golden['shape']}"
    differing = [i for i, (a, b) in enumerate(zip(hashes(frames), golden["hashes"])) if a != b]
    if not differing:
        return "identical"
    kept = frames[golden["picked"]].astype(np.int16) - golden["frames"].astype(np.int16)
    worst, share = int(np.abs(kept).max()), float((kept != 0).mean())
    assert worst <= 1 and share < 0.005, (f"{name}: frames {differing} differ from the golden frames; on the kept "
                                          f"frames {list(golden['picked'])} up to {worst} levels at {share:.2%} "
                                          "of the values")
    return "within one level"
