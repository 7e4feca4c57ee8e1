"""TTM_ObjectsFromMasks: first-frame objects from any MASK source."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..ttm_core.segment.masks import objects_from_masks, overlay_preview
from ..ttm_core.types import MAX_OBJECTS
from ._common import CATEGORY, Objects, Prompts

EXTRA_MASKS = tuple(f"mask_{i}" for i in range(2, MAX_OBJECTS + 1))


class ObjectsFromMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_ObjectsFromMasks",
            display_name="Objects From Masks (Through-The-Mask)",
            category=CATEGORY,
            description="Turn masks from the mask editor, segmentation nodes or files into Through-The-Mask "
                        "objects: one mask per object line of the prompts, in order.",
            inputs=[
                io.Image.Input("image", tooltip="The first frame the masks were made on (sizes must match)."),
                Prompts.Input("prompts", tooltip="The decomposed prompts; object line k belongs to mask k."),
                io.Mask.Input("masks", tooltip="The first object mask, or a batch of masks (one per object)."),
                *(io.Mask.Input(name, optional=True,
                                tooltip=f"Another object mask (or batch), appended after the ones above "
                                        f"(up to {MAX_OBJECTS} objects in all).")
                  for name in EXTRA_MASKS),
                io.Boolean.Input("split_components", default=False,
                                 tooltip="Split every mask into its separate painted regions (ordered left to "
                                         "right), so one mask can hold several objects."),
                io.Int.Input("min_area", default=16, min=1, max=1 << 20,
                             tooltip="With split_components: regions smaller than this many pixels are ignored."),
            ],
            outputs=[
                Objects.Output("objects", tooltip="Objects with stable ids 1..L and a colour each (TTM_OBJECTS)."),
                io.Mask.Output("object_masks", tooltip="The object masks as one batch, object 1 first."),
                io.Image.Output("preview", tooltip="The image with every object tinted in its colour."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, prompts, masks: torch.Tensor, split_components: bool, min_area: int,
                **extra: torch.Tensor) -> io.NodeOutput:
        sources = [("masks", masks)] + [(name, extra[name]) for name in EXTRA_MASKS if extra.get(name) is not None]
        first = image[0]
        objects = objects_from_masks(prompts, sources, (first.shape[0], first.shape[1]), split_components, min_area)
        return io.NodeOutput(objects, objects.masks.clone(), overlay_preview(first, objects))
