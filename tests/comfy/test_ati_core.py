"""The pack's ATI track JSON read by core's own ATI code: parse_json_tracks, pad_pts and process_tracks of the
ComfyUI in use (comfy_extras/nodes_wan.py, the functions WanTrackToVideo.execute calls), taken from its source
file and run as they are (importing the module would start ComfyUI's model management), so a change of core's
convention fails here."""

from __future__ import annotations

import ast
import json
import math

import numpy as np
import torch

from tools.comfy_harness import ComfyInstall
from ttm_core.motion.formats import ati_json_from_tracks

CORE_FUNCTIONS = {"parse_json_tracks", "pad_pts", "process_tracks"}


def core_ati() -> dict:
    path = ComfyInstall.locate().comfy_dir / "comfy_extras" / "nodes_wan.py"
    tree = ast.parse(path.read_text())
    keep = [node for node in tree.body
            if (isinstance(node, ast.FunctionDef) and node.name in CORE_FUNCTIONS)
            or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FIXED_LENGTH" for t in node.targets))]
    assert {n.name for n in keep if isinstance(n, ast.FunctionDef)} == CORE_FUNCTIONS, f"{path} changed"
    namespace = {"json": json, "np": np, "torch": torch, "math": math, "Tuple": tuple}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def test_core_reads_the_pack_ati_json_where_the_points_are() -> None:
    width, height, length = 832, 480, 49
    frames = torch.arange(length, dtype=torch.float32)
    starts = torch.tensor([[100.0, 120.0], [400.0, 300.0], [700.0, 60.0]])
    velocity = torch.tensor([[3.0, 1.0], [-2.0, 0.5], [0.0, 4.0]])
    path = starts[None] + frames[:, None, None] * velocity[None]  # [T, N, 2] pixels
    core = core_ati()
    tracks = core["parse_json_tracks"](ati_json_from_tracks(path))
    assert len(tracks) == 3 and len(tracks[0]) == core["FIXED_LENGTH"] == 121
    tracks_np = np.stack([core["pad_pts"](track) for track in tracks], axis=0)  # as WanTrackToVideo.execute
    out = core["process_tracks"](tracks_np, (width, height), length - 1)  # [1 + F, N, 4]: t, x, y, visible
    assert tuple(out.shape) == (length, 3, 4)
    short_edge = min(width, height)
    pixels = out[..., 1:3] * short_edge / 2 + torch.tensor([width / 2, height / 2])  # core's normalisation undone
    assert torch.allclose(pixels[0], path[0], atol=0.02)  # the first frame
    assert torch.allclose(pixels[-1], path[-1], atol=0.02)  # the last: 121 points spread back over the clip
    assert torch.allclose(pixels, path, atol=0.6)  # and every frame within the resampling's rounding
    assert bool((out[..., 3] == 1).all())  # every point visible
