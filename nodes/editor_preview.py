"""What the path editor (web/ttm_path_editor.js) needs to draw the objects: Image To Motion's UI output.

The editor runs in the browser and the objects exist only once the graph has run, so Image To Motion sends
them with its result (as core's Preview Image sends its pictures): the first frame, one mask per object
and each object's id, name, colour and first-frame centroid. No route of the pack's own is needed, the
frontend delivers it to the node (``onExecuted``) on both frontends, and a saved workflow holds nothing
but the paths JSON.
"""

from __future__ import annotations

import secrets

import torch
from comfy_api.latest import io, ui
from einops import repeat

from ..ttm_core.motion.poses import mask_centroids
from ..ttm_core.types import Objects

EDITOR_KEY = "ttm_editor"
"""The key of the editor's payload in the node's UI output (read by web/ttm_path_editor.js)."""


def editor_ui(image: torch.Tensor, objects: Objects, order: tuple[int, ...]) -> dict[str, list[dict]]:
    """Image To Motion's UI output for the path editor.

    Args:
        image: float ``[B, H, W, 3]`` in 0..1; its first frame is shown under the objects.
        objects: the objects, masks ``[L, H, W]`` of the same size.
        order: object ids front to back (empty: object 1 in front, then 2, ...).
    Returns:
        ``{"ttm_editor": [payload]}`` with temp-folder PNGs (``filename``, ``subfolder``, ``type``) as
        ``/view`` takes them: ``image``, ``masks`` (one greyscale PNG per object, in the objects' order),
        and ``width``, ``height``, ``objects`` ({id, name, color, x, y}: centroid in pixels), ``order``.
    """
    prefix = f"ttm_editor_{secrets.token_hex(4)}"
    # Temp files without the prompt's metadata: they are previews, and the masks go out as plain pictures.
    first = ui.ImageSaveHelper.save_images(image[:1], f"{prefix}_image", io.FolderType.temp, None, compress_level=1)
    masks = repeat((objects.masks > 0.5).to(torch.float32), "l h w -> l h w c", c=3)
    saved = ui.ImageSaveHelper.save_images(masks, f"{prefix}_mask", io.FolderType.temp, None, compress_level=1)
    centroids = mask_centroids(objects.masks)
    height, width = objects.size
    entries = [{"id": object_id, "name": prompt.name, "color": list(color),
                "x": round(float(centroids[i, 0]), 4), "y": round(float(centroids[i, 1]), 4)}
               for i, (object_id, prompt, color) in enumerate(zip(objects.ids, objects.prompts.objects,
                                                                   objects.colors))]
    payload = {"image": dict(first[0]), "masks": [dict(item) for item in saved], "width": width, "height": height,
               "objects": entries, "order": list(order or objects.ids)}
    return {EDITOR_KEY: [payload]}
