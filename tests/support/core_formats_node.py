"""A test-only ComfyUI custom node (copied into a test server's custom_nodes, never shipped): SAM3_TRACK_DATA
built from per-object MASK batches the way core builds it, for ComfyUI 0.3.75, which has no SAM 3 nodes.

Core (comfy/ldm/sam3/tracker.py ``forward_video``): per frame, the mask logits at the model resolution are
packed with ``pack_masks`` (logit > 0; bit i of byte j is pixel 8 j + i) and stacked to uint8
[frames, objects, Hm, Wm / 8]; comfy_extras/nodes_sam3.py ``SAM3_VideoTrack.execute`` adds ``orig_size``.
The packing is written out here as core writes it, not imported from the pack under test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import ComfyExtension, io


def pack_masks(masks):
    binary = masks > 0
    shifts = torch.arange(8, device=masks.device)
    return (binary.view(*masks.shape[:-1], -1, 8) * (1 << shifts)).sum(-1).byte()


class TestSAM3TrackData(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestSAM3TrackData",
            category="testing",
            inputs=[io.Mask.Input("mask_0"), io.Mask.Input("mask_1"), io.Int.Input("scale", default=2)],
            outputs=[io.Custom("SAM3_TRACK_DATA").Output("track_data")],
        )

    @classmethod
    def execute(cls, mask_0, mask_1, scale) -> io.NodeOutput:
        masks = torch.stack([mask_0, mask_1], dim=1)  # [T, objects, H, W]
        logits = F.interpolate(masks * 2.0 - 1.0, scale_factor=float(scale), mode="nearest")  # model resolution
        packed = [pack_masks(frame) for frame in logits]
        return io.NodeOutput({"packed_masks": torch.stack(packed, dim=0), "n_frames": masks.shape[0],
                              "scores": [1.0, 1.0], "orig_size": (masks.shape[2], masks.shape[3])})


class Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TestSAM3TrackData]


async def comfy_entrypoint() -> Extension:
    return Extension()
