"""A test-only ComfyUI custom node (copied into a test server's custom_nodes, never shipped): what core's
WanMoveTrackToVideo does with a TRACKS value, for ComfyUI 0.3.75, which has no Wan-Move nodes.

``create_pos_embeddings`` is written out as ComfyUI 0.8.0 writes it (comfy_extras/nodes_wanmove.py, the function
of that name; ``WanMoveTrackToVideo.execute`` calls it with ``tracks["track_path"][:length]``,
``tracks.get("track_visibility", ...)``, ``[4, 8, 8]``, ``height``, ``width``, ``track_num=N``), not imported
from the pack under test. The node reports the shapes and the latent cells the tracks reach as a UI output.
"""

from __future__ import annotations

import torch
from comfy_api.latest import ComfyExtension, io


def create_pos_embeddings(pred_tracks, pred_visibility, downsample_ratios, height, width, track_num=-1,
                          t_down_strategy="sample"):
    t, n, _ = pred_tracks.shape
    t_down, h_down, w_down = downsample_ratios
    track_pos = - torch.ones(n, (t-1) // t_down + 1, 2, dtype=torch.long)
    if track_num == -1:
        track_num = n
    tracks_idx = torch.randperm(n)[:track_num]
    tracks = pred_tracks[:, tracks_idx]
    visibility = pred_visibility[:, tracks_idx]
    for t_idx in range(0, t, t_down):
        if t_down_strategy == "sample" or t_idx == 0:
            cur_tracks = tracks[t_idx]
            cur_visibility = visibility[t_idx]
        else:
            cur_tracks = tracks[t_idx:t_idx+t_down].mean(dim=0)
            cur_visibility = torch.any(visibility[t_idx:t_idx+t_down], dim=0)
        for i in range(track_num):
            if not cur_visibility[i] or cur_tracks[i][0] < 0 or cur_tracks[i][1] < 0 or cur_tracks[i][0] >= width \
                    or cur_tracks[i][1] >= height:
                continue
            x, y = cur_tracks[i]
            x, y = int(x // w_down), int(y // h_down)
            track_pos[i, t_idx // t_down, 0], track_pos[i, t_idx // t_down, 1] = y, x
    return track_pos


class TestWanMoveProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestWanMoveProbe",
            category="testing",
            inputs=[io.Custom("TRACKS").Input("tracks"), io.Int.Input("width", max=16384),
                    io.Int.Input("height", max=16384), io.Int.Input("length", max=16384)],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, tracks, width, height, length) -> io.NodeOutput:
        path = tracks["track_path"][:length]  # as WanMoveTrackToVideo.execute
        num_tracks = path.shape[-2]
        visibility = tracks.get("track_visibility", torch.ones((length, num_tracks), dtype=torch.bool))
        pos = create_pos_embeddings(path, visibility, [4, 8, 8], height, width, track_num=num_tracks)
        placed = pos[..., 0] >= 0
        report = {"keys": sorted(tracks), "path_shape": list(tracks["track_path"].shape),
                  "path_dtype": str(tracks["track_path"].dtype),
                  "visibility_shape": list(tracks["track_visibility"].shape),
                  "visibility_dtype": str(tracks["track_visibility"].dtype),
                  "pos_shape": list(pos.shape), "latent_frames": ((length - 1) // 4) + 1,
                  "placed_per_latent_frame": placed.sum(0).tolist(),
                  "max_row": int(pos[..., 0].max()), "max_col": int(pos[..., 1].max()),
                  "finite": bool(torch.isfinite(tracks["track_path"]).all())}
        return io.NodeOutput(ui={"wanmove": [report]})


class Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TestWanMoveProbe]


async def comfy_entrypoint() -> Extension:
    return Extension()
