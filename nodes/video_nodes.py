"""TTM_VideoCombine: IMAGE frames -> a video file in ComfyUI's output folder, with a preview."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import folder_paths
import torch
from comfy.cli_args import args
from comfy_api.latest import InputImpl, Types, io, ui

from ..ttm_core.errors import TTMInputError
from ..ttm_core.media import FORMATS, encode_video, split_prefix
from ._common import CATEGORY, check_combo, progress_callback


class VideoCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_VideoCombine",
            display_name="Video Combine (Through-The-Mask)",
            category=CATEGORY,
            description="Encode IMAGE frames to mp4 (H.264), webm (VP9), gif, webp or a png sequence in the "
                        "output folder, streaming the frames (no second float32 copy of the clip).",
            inputs=[
                io.Image.Input("images", tooltip="The frames to encode [T, H, W, 3]."),
                io.Float.Input("fps", default=16.0, min=0.01, max=240.0, step=0.01,
                               tooltip="Frames per second of the file."),
                io.Combo.Input("format", options=list(FORMATS), default="mp4",
                               tooltip="mp4 = H.264 (plays everywhere), webm = VP9, gif, animated webp, or "
                                       "png = one lossless file per frame."),
                io.Int.Input("quality", default=85, min=1, max=100,
                             tooltip="1..100 (100 = best): sets the CRF of mp4/webm and the quality of webp "
                                     "(100 = lossless); gif and png ignore it."),
                io.String.Input("filename_prefix", default="ttm/TTM",
                                tooltip="File name prefix inside ComfyUI's output folder; subfolders allowed "
                                        "('ttm/shot1'), nothing outside the output folder."),
                io.Boolean.Input("save_metadata", default=True,
                                 tooltip="Embed the workflow in mp4, webm and png files (drag them back into "
                                         "ComfyUI to restore it)."),
            ],
            outputs=[io.Video.Output("video", tooltip="The written video, for core video nodes.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, format=None, filename_prefix=None) -> bool | str:  # `format`: the input's name
        combo = check_combo("format", format, FORMATS)
        if combo is not True:
            return combo
        if isinstance(filename_prefix, str):
            try:
                split_prefix(filename_prefix)
            except TTMInputError as err:
                return str(err)
        return True

    @classmethod
    def execute(cls, images: torch.Tensor, fps: float, format: str, quality: int,  # `format`: the input's name
                filename_prefix: str, save_metadata: bool) -> io.NodeOutput:
        subfolder, stem = split_prefix(filename_prefix)
        output_dir = Path(folder_paths.get_output_directory())
        metadata: dict[str, object] = {}
        if save_metadata and not args.disable_metadata:
            if cls.hidden.prompt is not None:
                metadata["prompt"] = cls.hidden.prompt
            for key, value in (cls.hidden.extra_pnginfo or {}).items():
                metadata[key] = value
        files = encode_video(images, output_dir / subfolder, stem, format, fps, quality, metadata,
                             progress=progress_callback(cls.hidden.unique_id))
        results = [ui.SavedResult(f.name, subfolder, io.FolderType.output) for f in files]
        if FORMATS[format].writer == "png":
            preview = ui.SavedImages(results)
        else:
            preview = ui.PreviewVideo(results)
        if format in ("mp4", "webm"):
            video = InputImpl.VideoFromFile(str(files[0]))
        else:
            video = InputImpl.VideoFromComponents(
                Types.VideoComponents(images=images[..., :3], frame_rate=Fraction(fps).limit_denominator(1001)))
        return io.NodeOutput(video, ui=preview)
