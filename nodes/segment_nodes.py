"""TTM_SAM2Loader, TTM_DetectorLoader, TTM_SAM2Segment: first-frame objects found by SAM2."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.segment.detect import load_detector
from ..ttm_core.segment.first_frame import MODES, gather_clicks, segment_objects
from ..ttm_core.segment.masks import overlay_preview
from ..ttm_core.segment.sam2 import SAM2_INSTALL_HINT, hf_sam2_kind, load_sam2, sam2_available
from ._common import CATEGORY, Objects, Prompts, check_combo, progress_callback
from ._models import (
    DETECTOR_FOLDER,
    DEVICES,
    PRECISIONS,
    SAM2_FOLDER,
    Managed,
    check_entry,
    compute_dtype,
    detector_entries,
    devices,
    manage,
    resolve,
    sam2_entries,
)

Sam2 = io.Custom("TTM_SAM2")
"""nodes._models.Managed around a ttm_core.sam2_models.Sam2Model."""
Detector = io.Custom("TTM_DETECTOR")
"""nodes._models.Managed around a ttm_core.detect.Detector."""


class SAM2Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_SAM2Loader",
            display_name="SAM2 Loader (Through-The-Mask)",
            category=CATEGORY,
            description="Load SAM 2 / 2.1 from models/sam2: Meta checkpoints (.pt / .safetensors, config inferred "
                        "from the checkpoint, needs the sam2 package) or Hugging Face SAM2 folders (transformers). "
                        "Nothing is downloaded.",
            inputs=[
                io.Combo.Input("model", options=sam2_entries(),
                               tooltip="A file or folder in models/sam2: sam2.1_hiera_tiny.pt (or small, base_plus, "
                                       "large; SAM 2 or 2.1; .pt or .safetensors) or a Hugging Face folder such as "
                                       "facebook/sam2.1-hiera-tiny saved with config.json."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device (GPU when there is one), managed with its other "
                                       "models; cpu: always on the CPU."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="Compute precision on GPUs (autocast; the weights stay fp32). auto: bf16 where "
                                       "supported, else fp16. CPUs always use fp32."),
                io.Boolean.Input("video_tracking", default=False,
                                 tooltip="Hugging Face sam2_video folders: also load the video model so this SAM2 "
                                         "can track objects through a video (Meta checkpoints always can)."),
            ],
            outputs=[Sam2.Output("sam2", tooltip="The loaded SAM2 (TTM_SAM2).")],
        )

    @classmethod
    def validate_inputs(cls, model=None, device=None, precision=None) -> bool | str:
        for check in (check_combo("device", device, DEVICES), check_combo("precision", precision, PRECISIONS),
                      check_entry("model", model, sam2_entries(), SAM2_FOLDER)):
            if check is not True:
                return check
        if isinstance(model, str) and model.endswith((".pt", ".pth", ".safetensors")) and not sam2_available():
            return (f"model: {model} is a Meta checkpoint but the sam2 package is not installed. "
                    f"Fix: {SAM2_INSTALL_HINT}")
        return True

    @classmethod
    def execute(cls, model: str, device: str, precision: str, video_tracking: bool) -> io.NodeOutput:
        load_device, offload_device = devices(device)
        path = resolve(SAM2_FOLDER, model)
        if path.is_dir() and hf_sam2_kind(path) is None:
            raise TTMInputError("model", f"{model} is not a SAM2 folder", "pick a SAM2 checkpoint or folder")
        handle = load_sam2(path, video=video_tracking, device=offload_device)
        return io.NodeOutput(manage(handle, handle.modules(), load_device, offload_device,
                                    compute_dtype(precision, load_device)))


class DetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_DetectorLoader",
            display_name="Detector Loader (Through-The-Mask)",
            category=CATEGORY,
            description="Load an open-vocabulary detector from models/grounding-dino (Grounding DINO as in the "
                        "paper, or OWLv2) for SAM2 Segment's text mode. Nothing is downloaded.",
            inputs=[
                io.Combo.Input("model", options=detector_entries(),
                               tooltip="A Hugging Face folder in models/grounding-dino, e.g. "
                                       "IDEA-Research/grounding-dino-tiny or google/owlv2-base-patch16-ensemble."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device, managed with its other models; cpu: the CPU."),
            ],
            outputs=[Detector.Output("detector", tooltip="The loaded detector (TTM_DETECTOR).")],
        )

    @classmethod
    def validate_inputs(cls, model=None, device=None) -> bool | str:
        for check in (check_combo("device", device, DEVICES),
                      check_entry("model", model, detector_entries(), DETECTOR_FOLDER)):
            if check is not True:
                return check
        return True

    @classmethod
    def execute(cls, model: str, device: str) -> io.NodeOutput:
        load_device, offload_device = devices(device)
        handle = load_detector(resolve(DETECTOR_FOLDER, model), device=offload_device)
        return io.NodeOutput(manage(handle, [handle.model], load_device, offload_device, torch.float32))


class SAM2Segment(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_SAM2Segment",
            display_name="SAM2 Segment (Through-The-Mask)",
            category=CATEGORY,
            description="Find every object of the prompts in the first frame with SAM2: one mask per object (ids "
                        "1..L in the prompts' order, overlaps resolved), from clicks/boxes, from the object names "
                        "(detector -> SAM2, as in the paper) or automatically.",
            inputs=[
                io.Image.Input("image", tooltip="The first frame (the first image of a batch is used)."),
                Prompts.Input("prompts", tooltip="The decomposed prompts; object k gets mask k and id k."),
                Sam2.Input("sam2", tooltip="From SAM2 Loader."),
                io.Combo.Input("mode", options=list(MODES), default="points_boxes",
                               tooltip="points_boxes: your clicks and boxes per object. text: a detector finds each "
                                       "object from its name, SAM2 makes the masks (objects that have points or "
                                       "boxes use those). automatic: the largest distinct masks, left to right, "
                                       "become objects 1..L."),
                io.String.Input("points", multiline=True, default="",
                                tooltip="Points per object (name or 1-based id), pixels of the image: "
                                        "{\"left dog\": {\"positive\": [[120, 200]], \"negative\": [[300, 210]]}, "
                                        "\"cat\": [[400, 180]]}. Use {\"units\": \"normalized\", \"objects\": {...}} "
                                        "for 0..1 coordinates."),
                io.String.Input("boxes", multiline=True, default="",
                                tooltip="Boxes per object (name or id), [x0, y0, x1, y1] in pixels: "
                                        "{\"left dog\": [60, 120, 220, 330]}, or a list in object order. The "
                                        "'boxes' output of a previous run can be pasted here to pin a result."),
                Detector.Input("detector", optional=True, tooltip="text mode: from Detector Loader."),
                io.Float.Input("box_threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="text mode: keep detections scoring above this (Grounding DINO's box "
                                       "threshold; OWL models' only threshold)."),
                io.Float.Input("text_threshold", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="text mode, Grounding DINO: a detection also needs a word of the name "
                                       "scoring above this."),
                io.Int.Input("auto_points_per_side", default=16, min=1, max=64,
                             tooltip="automatic mode: a grid of n x n single clicks."),
                io.Float.Input("auto_score_threshold", default=0.7, min=0.0, max=1.0, step=0.01,
                               tooltip="automatic mode: ignore masks whose predicted quality (IoU) is lower."),
                io.String.Input("positive_coords", optional=True, force_input=True,
                                tooltip="KJNodes Points Editor positive_coords: the k-th point is object k."),
                io.String.Input("negative_coords", optional=True, force_input=True,
                                tooltip="KJNodes Points Editor negative_coords: negative clicks for every object."),
                io.BBOX.Input("bboxes", optional=True,
                              tooltip="A BBOX list (KJNodes Points Editor bbox, Florence2 coordinates): box k is "
                                      "object k, (x0, y0, x1, y1) pixels."),
            ],
            outputs=[
                Objects.Output("objects", tooltip="Objects with ids 1..L and a colour each (TTM_OBJECTS)."),
                io.Mask.Output("masks", tooltip="The object masks as one batch, object 1 first."),
                io.Image.Output("preview", tooltip="The image with every object tinted in its colour."),
                io.String.Output("boxes_json", tooltip="Each final mask's bounding box, in the 'boxes' input "
                                                       "format (paste it there to pin this result)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, mode=None, points=None, boxes=None) -> bool | str:
        combo = check_combo("mode", mode, MODES)
        if combo is not True:
            return combo
        for name, text in (("points", points), ("boxes", boxes)):
            if isinstance(text, str) and text.strip():
                try:
                    json.loads(text)
                except json.JSONDecodeError as err:
                    return (f"{name}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}). "
                            f"Fix: correct the JSON, or clear the field")
        return True

    @classmethod
    def execute(cls, image: torch.Tensor, prompts, sam2: Managed, mode: str, points: str, boxes: str,
                box_threshold: float, text_threshold: float, auto_points_per_side: int,
                auto_score_threshold: float, detector: Managed | None = None, positive_coords: str | None = None,
                negative_coords: str | None = None, bboxes=None) -> io.NodeOutput:
        first = image[0, ..., :3]
        size = (int(first.shape[0]), int(first.shape[1]))
        clicks = {} if mode == "automatic" else gather_clicks(prompts, size, points, boxes, positive_coords,
                                                              negative_coords, bboxes)
        detector_handle, detector_device = None, None
        if mode == "text" and detector is not None and len(clicks) < len(prompts.objects):
            detector_device = detector.load()
            detector_handle = detector.handle
        device = sam2.load()
        result = segment_objects(sam2.handle, first, prompts, mode, clicks=clicks, detector=detector_handle,
                                 detector_device=detector_device,
                                 box_threshold=box_threshold, text_threshold=text_threshold,
                                 auto_points_per_side=auto_points_per_side,
                                 auto_score_threshold=auto_score_threshold, device=device, dtype=sam2.dtype,
                                 progress=progress_callback(cls.hidden.unique_id))
        objects = result.objects
        return io.NodeOutput(objects, objects.masks.clone(), overlay_preview(first.cpu(), objects),
                             result.boxes_json())
