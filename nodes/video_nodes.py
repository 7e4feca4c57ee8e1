"""TTM_MaskedMotionToVideo (Stage 2) and TTM_VideoCombine (IMAGE frames -> file)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import folder_paths
import torch
from comfy.cli_args import args
from comfy_api.latest import InputImpl, Types, io, ui

import comfy.samplers

from ..ttm_core.errors import TTMInputError
from ..ttm_core.guidance import CLOCK_UNITS
from ..ttm_core.media import FORMATS, encode_video, split_prefix
from ..ttm_core.warp import cut_and_drag
from . import comfy_stage2, stage2_diffusers
from ._common import CATEGORY, Trajectory, check_combo, progress_callback
from .patch_nodes import patch_inputs, settings_from

STAGE2_BACKENDS = ("warp", "comfy", "diffusers")
COMFY_ONLY = "comfy backend: "
BOTH = "comfy and diffusers backends: "


def _optional(inputs: list[io.Input]) -> list[io.Input]:
    for item in inputs:
        item.optional = True
        prefix = BOTH if item.id in stage2_diffusers.SHARED_INPUTS else COMFY_ONLY
        item.tooltip = prefix + (item.tooltip or "")
    return inputs


class MaskedMotionToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_MaskedMotionToVideo",
            display_name="Masked Motion To Video (Through-The-Mask)",
            category=CATEGORY,
            description="Stage 2: the video from the first frame and the mask trajectory. The warp backend is "
                        "the model-free cut-and-drag animation (objects moved, revealed background inpainted); "
                        "the comfy and diffusers backends render it with a video model.",
            inputs=[
                io.Image.Input("image", tooltip="The first frame x(0); the first image of a batch is used."),
                Trajectory.Input("trajectory", tooltip="The mask trajectory from Image To Motion."),
                io.Combo.Input("backend", options=list(STAGE2_BACKENDS), default="warp",
                               tooltip="warp: cut-and-drag animation, no model needed (also the reference the "
                                       "diffusion backends start from). comfy: your native Wan model (model, "
                                       "clip, vae) patched with masked attention and dual-clock guidance, sampled "
                                       "by ComfyUI. diffusers: a diffusers-format model from Video Model Loader "
                                       "(video_model), with the same masked attention and guidance."),
                io.Float.Input("feather", default=1.0, min=0.0, max=32.0, step=0.1,
                               tooltip="Soft-edge width (Gaussian sigma, pixels) of the moved objects; 0 = hard."),
                *_optional([
                    io.Model.Input("model", tooltip="Wan 2.1 I2V, Wan 2.2 TI2V-5B, or the A14B high-noise expert."),
                    io.Clip.Input("clip", tooltip="The Wan text encoder (umT5)."),
                    io.Vae.Input("vae", tooltip="The Wan VAE (2.1 VAE for Wan 2.1 / A14B, 2.2 VAE for TI2V)."),
                    io.Model.Input("model_2", tooltip="Wan 2.2 A14B: the low-noise expert."),
                    io.ClipVision.Input("clip_vision", tooltip="Wan 2.1 I2V: CLIP vision (clip_vision_h) output "
                                                               "source; optional."),
                    io.String.Input("negative_prompt", multiline=True, default="",
                                    tooltip="What to avoid (the negative prompt)."),
                    io.Int.Input("width", default=0, min=0, max=8192, step=16,
                                 tooltip="Video width; 0 = the image's, rounded to the model's multiple."),
                    io.Int.Input("height", default=0, min=0, max=8192, step=16,
                                 tooltip="Video height; 0 = the image's, rounded to the model's multiple."),
                    io.Int.Input("length", default=0, min=0, max=4096,
                                 tooltip="Frames (4k+1); 0 = the trajectory's, rounded to 4k+1."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                                 tooltip="Noise seed."),
                    io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Sampling steps."),
                    io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, tooltip="Guidance scale."),
                    io.Combo.Input("sampler_name", options=list(comfy.samplers.SAMPLER_NAMES), default="euler",
                                   tooltip="ComfyUI sampler."),
                    io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="simple",
                                   tooltip="ComfyUI scheduler."),
                    io.Float.Input("expert_switch", default=0.5, min=0.0, max=1.0, step=0.01,
                                   tooltip="With model_2: the fraction of steps the high-noise expert runs."),
                    *patch_inputs(),
                ]),
                *stage2_diffusers.optional_inputs(),
            ],
            outputs=[
                io.Image.Output("images", tooltip="The video frames [T, H, W, 3]."),
                io.Float.Output("fps", tooltip="The trajectory's frame rate, for Video Combine."),
            ],
        )

    @classmethod
    def validate_inputs(cls, backend=None, sampler_name=None, scheduler=None, clock_units=None) -> bool | str:
        for name, value, options in (("backend", backend, STAGE2_BACKENDS),
                                     ("sampler_name", sampler_name, comfy.samplers.SAMPLER_NAMES),
                                     ("scheduler", scheduler, comfy.samplers.SCHEDULER_NAMES),
                                     ("clock_units", clock_units, CLOCK_UNITS)):
            checked = check_combo(name, value, options)
            if checked is not True:
                return checked
        return True

    @classmethod
    def check_lazy_status(cls, backend=None, **inputs) -> list[str]:
        return stage2_diffusers.lazy_inputs(backend, inputs)

    @classmethod
    def execute(cls, image: torch.Tensor, trajectory, backend: str, feather: float, model=None, clip=None, vae=None,
                model_2=None, clip_vision=None, negative_prompt: str = "", width: int = 0, height: int = 0,
                length: int = 0, seed: int = 0, steps: int = 30, cfg: float = 5.0, sampler_name: str = "euler",
                scheduler: str = "simple", expert_switch: float = 0.5, masked_blocks: int = 0,
                self_strength: float = 1.0, cross_strength: float = 1.0, start_percent: float = 0.0,
                end_percent: float = 1.0, guidance: bool = True, object_clock: float = 0.3,
                background_clock: float = 0.1, clock_units: str = "steps", video_model=None,
                prompts=None) -> io.NodeOutput:
        if backend == "diffusers":
            return stage2_diffusers.run(
                cls.hidden.unique_id, image, trajectory, feather, video_model, prompts, negative_prompt, width, height,
                length, seed, steps, cfg, masked_blocks, self_strength, cross_strength, start_percent, end_percent,
                guidance, object_clock, background_clock, clock_units)
        if backend == "warp":
            frames = cut_and_drag(image[0], trajectory, feather, progress=progress_callback(cls.hidden.unique_id))
            return io.NodeOutput(frames, float(trajectory.fps))
        missing = [name for name, value in (("model", model), ("clip", clip), ("vae", vae)) if value is None]
        if missing:
            raise TTMInputError(missing[0], f"the comfy backend needs {', '.join(missing)}",
                                "connect Load Diffusion Model, Load CLIP and Load VAE outputs")
        settings = settings_from(masked_blocks, self_strength, cross_strength, start_percent, end_percent, guidance,
                                 object_clock, background_clock, clock_units)
        frames = comfy_stage2.render(model, clip, vae, image, trajectory, settings, negative_prompt, width, height,
                                     length, seed, steps, cfg, sampler_name, scheduler, model_2, expert_switch,
                                     clip_vision)
        return io.NodeOutput(frames, float(trajectory.fps))


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
    def validate_inputs(cls, format=None, filename_prefix=None) -> bool | str:  # noqa: A002 - input name
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
    def execute(cls, images: torch.Tensor, fps: float, format: str, quality: int,  # noqa: A002 - input name
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
