"""Stage 2 nodes: the video from the first frame and the mask trajectory, one node per engine.

* ``TTM_WarpMotionToVideo``: the model-free cut-and-drag animation (``ttm_core.motion.cut_and_drag``).
* ``TTM_WanMotionToVideo``: the user's native ComfyUI Wan model, patched and sampled (``native.render``).
* ``TTM_DiffusersMotionToVideo``: a diffusers-format model from Video Model Loader
  (``ttm_core.stage2.diffusers.run.generate``).
* ``TTM_MaskedMotionToVideo``: the earlier all-in-one node (one ``backend`` combo, 30 inputs),
  deprecated and kept so that saved workflows load and render exactly as before; it calls the
  same three engines.

Each node shows only the inputs its engine reads.
"""

from __future__ import annotations

from typing import ClassVar

import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..native.render import NativeSampling, render
from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.cut_and_drag import cut_and_drag
from ..ttm_core.stage2.diffusers.run import generate
from ..ttm_core.stage2.guidance import CLOCK_UNITS
from ..ttm_core.stage2.settings import Sampling, Stage2Settings
from ..ttm_core.stage2.trained import TrainedWeights
from ..ttm_core.types import Prompts, Trajectory
from ._common import CATEGORY, check_combo, progress_callback
from ._common import Prompts as PromptsSocket
from ._common import Trajectory as TrajectorySocket
from ._stage2 import guidance_inputs, masking_inputs, prompts_for, sampling, sampling_inputs, show_text, stage2_settings
from .model_nodes import LoadedVideoModel, VideoModelSocket
from .trained_nodes import TrainedSocket

STAGE2_BACKENDS = ("warp", "comfy", "diffusers")
FEATHER_TOOLTIP = "Soft-edge width (Gaussian sigma, pixels) of the moved objects; 0 = hard."
OUTPUTS = [io.Image.Output("images", tooltip="The video frames [T, H, W, 3]."),
           io.Float.Output("fps", tooltip="The video's frame rate, for Video Combine.")]


def _image_input() -> io.Input:
    return io.Image.Input("image", tooltip="The first frame x(0); the first image of a batch is used.")


def _trajectory_input() -> io.Input:
    return TrajectorySocket.Input("trajectory", tooltip="The mask trajectory from Image To Motion.")


def _native_inputs() -> list[io.Input]:
    return [
        io.Model.Input("model", tooltip="Wan 2.1 I2V, Wan 2.2 TI2V-5B, or the A14B high-noise expert."),
        io.Clip.Input("clip", tooltip="The Wan text encoder (umT5)."),
        io.Vae.Input("vae", tooltip="The Wan VAE (2.1 VAE for Wan 2.1 / A14B, 2.2 VAE for TI2V)."),
        io.Model.Input("model_2", tooltip="Wan 2.2 A14B: the low-noise expert."),
        io.ClipVision.Input("clip_vision", tooltip="Wan 2.1 I2V: CLIP vision (clip_vision_h) output source; optional."),
    ]


def _sampler_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("sampler_name", options=list(comfy.samplers.SAMPLER_NAMES), default="euler",
                       tooltip="ComfyUI sampler."),
        io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="simple",
                       tooltip="ComfyUI scheduler."),
        io.Float.Input("expert_switch", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="With model_2: the fraction of steps the high-noise expert runs."),
    ]


def _trained_input() -> io.Input:
    return TrainedSocket.Input("trained", optional=True,
                               tooltip="A trained Stage 2 checkpoint from Trained Checkpoint Loader (Through-The-Mask) "
                                       "for this base model: its masked layers run in its K blocks and the "
                                       "trajectory conditions the input channels. Unconnected: training-free.")


def _check_combos(**values: object) -> bool | str:
    options = {"backend": STAGE2_BACKENDS, "sampler_name": comfy.samplers.SAMPLER_NAMES,
               "scheduler": comfy.samplers.SCHEDULER_NAMES, "clock_units": CLOCK_UNITS}
    for name, value in values.items():
        checked = check_combo(name, value, options[name])
        if checked is not True:
            return checked
    return True


# ------------------------------------------------------------------------------------ the engines
def run_warp(node_id: str | None, image: torch.Tensor, trajectory: Trajectory, feather: float) -> io.NodeOutput:
    frames = cut_and_drag(image[0], trajectory, feather, progress=progress_callback(node_id))
    return io.NodeOutput(frames, float(trajectory.fps))


def run_native(node_id: str | None, image: torch.Tensor, trajectory: Trajectory, settings: Stage2Settings,
               native: NativeSampling, model, clip, vae, model_2=None, clip_vision=None,
               trained: TrainedWeights | None = None) -> io.NodeOutput:
    missing = [name for name, value in (("model", model), ("clip", clip), ("vae", vae)) if value is None]
    if missing:
        raise TTMInputError(missing[0], f"the Wan engine needs {', '.join(missing)}",
                            "connect Load Diffusion Model, Load CLIP and Load VAE outputs")
    frames = render(model, clip, vae, image, trajectory, settings, native, model_2, clip_vision, trained)
    return io.NodeOutput(frames, float(trajectory.fps))


def run_diffusers(node_id: str | None, image: torch.Tensor, trajectory: Trajectory, settings: Stage2Settings,
                  sampled: Sampling, video_model: LoadedVideoModel | None, prompts: Prompts | None,
                  trained: TrainedWeights | None = None) -> io.NodeOutput:
    """Generate with a diffusers model; returns (IMAGE frames, fps) plus the notes as UI text."""
    if video_model is None:
        raise TTMInputError("video_model", "the diffusers engine needs a model",
                            "connect Video Model Loader (Through-The-Mask) to video_model")
    if not isinstance(video_model, LoadedVideoModel):
        raise TTMInputError("video_model", f"got a {type(video_model).__name__}, not a loaded video model",
                            "connect Video Model Loader (Through-The-Mask)")
    chosen = prompts_for(trajectory, prompts)
    result = generate(video_model.model, image[0], trajectory, chosen, settings, sampled,
                      progress=progress_callback(node_id), prepare=video_model.prepare, trained=trained)
    summary = (f"{video_model.model.variant.label}: {result.plan.width}x{result.plan.height}, "
               f"{result.plan.num_frames} frames at {result.fps:.4g} fps")
    text = "\n".join([summary, *result.notes])
    show_text(node_id, text)  # shown on the node in the frontend; the same text is in /history as UI text
    return io.NodeOutput(result.frames, float(result.fps), ui=ui.PreviewText(text))


# -------------------------------------------------------------------------------------- the nodes
class WarpMotionToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_WarpMotionToVideo",
            display_name="Motion To Video · Warp (Through-The-Mask)",
            category=CATEGORY,
            description="Stage 2 without a model: the cut-and-drag animation. Every object's pixels move along the "
                        "trajectory, composited back to front with soft edges over the image whose revealed "
                        "background is inpainted. Also the reference the diffusion engines start from.",
            inputs=[_image_input(), _trajectory_input(),
                    io.Float.Input("feather", default=1.0, min=0.0, max=32.0, step=0.1, tooltip=FEATHER_TOOLTIP)],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, trajectory: Trajectory, feather: float) -> io.NodeOutput:
        return run_warp(cls.hidden.unique_id, image, trajectory, feather)


class WanMotionToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        native = _native_inputs()
        for item in native[3:]:  # model_2, clip_vision
            item.optional = True
        return io.Schema(
            node_id="TTM_WanMotionToVideo",
            display_name="Motion To Video · Wan native (Through-The-Mask)",
            category=CATEGORY,
            description="Stage 2 on your own ComfyUI Wan 2.1 / 2.2 model: masked self- and cross-attention in the "
                        "first K blocks and dual-clock trajectory guidance, sampled with ComfyUI's KSampler.",
            inputs=[_image_input(), _trajectory_input(), *native,
                    *sampling_inputs(steps=30, cfg=5.0, zero_means_default=False), *_sampler_inputs(),
                    *masking_inputs(), *guidance_inputs(),
                    io.Float.Input("feather", default=1.0, min=0.0, max=32.0, step=0.1,
                                   tooltip="Soft-edge width (px) of the objects in the guidance reference."),
                    _trained_input()],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None, scheduler=None, clock_units=None) -> bool | str:
        return _check_combos(sampler_name=sampler_name, scheduler=scheduler, clock_units=clock_units)

    @classmethod
    def execute(cls, image: torch.Tensor, trajectory: Trajectory, model, clip, vae, negative_prompt: str, width: int,
                height: int, length: int, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                expert_switch: float, masked_blocks: int, self_strength: float, cross_strength: float,
                start_percent: float, end_percent: float, guidance: bool, object_clock: float,
                background_clock: float, clock_units: str, feather: float, model_2=None,
                clip_vision=None, trained=None) -> io.NodeOutput:
        settings = stage2_settings(masked_blocks, self_strength, cross_strength, start_percent, end_percent, guidance,
                                   object_clock, background_clock, clock_units, feather)
        native = NativeSampling(sampling(seed, steps, cfg, negative_prompt, width, height, length), sampler_name,
                                scheduler, expert_switch)
        return run_native(cls.hidden.unique_id, image, trajectory, settings, native, model, clip, vae, model_2,
                          clip_vision, trained)


class DiffusersMotionToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_DiffusersMotionToVideo",
            display_name="Motion To Video · diffusers (Through-The-Mask)",
            category=CATEGORY,
            description="Stage 2 on a diffusers-format model (CogVideoX 1.0/1.5 I2V, I2VGen-XL, Wan 2.1 / 2.2) from "
                        "Video Model Loader: masked self- and cross-attention and dual-clock trajectory guidance.",
            inputs=[_image_input(), _trajectory_input(),
                    VideoModelSocket.Input("video_model", tooltip="The model from Video Model Loader "
                                                                  "(Through-The-Mask)."),
                    PromptsSocket.Input("prompts", optional=True,
                                        tooltip="Prompts replacing the trajectory's own (same objects, in order). "
                                                "Prompts with no object lines give plain image-to-video sampling."),
                    *sampling_inputs(steps=0, cfg=0.0, zero_means_default=True),
                    *masking_inputs(), *guidance_inputs(),
                    io.Float.Input("feather", default=1.0, min=0.0, max=32.0, step=0.1,
                                   tooltip="Soft-edge width (px) of the objects in the guidance reference."),
                    _trained_input()],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, clock_units=None) -> bool | str:
        return _check_combos(clock_units=clock_units)

    @classmethod
    def execute(cls, image: torch.Tensor, trajectory: Trajectory, video_model, negative_prompt: str, width: int,
                height: int, length: int, seed: int, steps: int, cfg: float, masked_blocks: int, self_strength: float,
                cross_strength: float, start_percent: float, end_percent: float, guidance: bool, object_clock: float,
                background_clock: float, clock_units: str, feather: float, prompts=None,
                trained=None) -> io.NodeOutput:
        settings = stage2_settings(masked_blocks, self_strength, cross_strength, start_percent, end_percent, guidance,
                                   object_clock, background_clock, clock_units, feather)
        return run_diffusers(cls.hidden.unique_id, image, trajectory, settings,
                             sampling(seed, steps, cfg, negative_prompt, width, height, length), video_model, prompts,
                             trained)


class MaskedMotionToVideo(io.ComfyNode):
    """Deprecated all-in-one node: its schema is kept exactly (saved workflows store widget values by
    position), its backends call the same engines as the nodes above."""

    BACKEND_NOTE: ClassVar[dict[str, str]] = {"comfy": "comfy backend: ", "both": "comfy and diffusers backends: "}

    @classmethod
    def define_schema(cls) -> io.Schema:
        shared = {"negative_prompt", "width", "height", "length", "seed", "steps", "cfg"} | {
            i.id for i in masking_inputs() + guidance_inputs()}
        optional = [*_native_inputs(), *sampling_inputs(steps=30, cfg=5.0, zero_means_default=False),
                    *_sampler_inputs(), *masking_inputs(), *guidance_inputs()]
        for item in optional:
            item.optional = True
            prefix = cls.BACKEND_NOTE["both"] if item.id in shared else cls.BACKEND_NOTE["comfy"]
            item.tooltip = prefix + (item.tooltip or "")
        return io.Schema(
            node_id="TTM_MaskedMotionToVideo",
            display_name="Masked Motion To Video (Through-The-Mask, deprecated)",
            category=CATEGORY,
            description="Deprecated: use Motion To Video · Warp, · Wan native or · diffusers, which show only the "
                        "inputs their engine reads. This node still renders saved workflows exactly as before.",
            inputs=[
                _image_input(), _trajectory_input(),
                io.Combo.Input("backend", options=list(STAGE2_BACKENDS), default="warp",
                               tooltip="warp: cut-and-drag animation. comfy: your native Wan model (model, clip, "
                                       "vae). diffusers: a model from Video Model Loader (video_model)."),
                io.Float.Input("feather", default=1.0, min=0.0, max=32.0, step=0.1, tooltip=FEATHER_TOOLTIP),
                *optional,
                VideoModelSocket.Input("video_model", optional=True, lazy=True,
                                       tooltip="diffusers backend: the model from Video Model Loader "
                                               "(Through-The-Mask). Loaded only when the backend is diffusers."),
                PromptsSocket.Input("prompts", optional=True,
                                    tooltip="diffusers backend: prompts replacing the trajectory's own (same objects, "
                                            "in order). Prompts with no object lines give plain sampling."),
            ],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id],
            is_deprecated=True,
        )

    @classmethod
    def validate_inputs(cls, backend=None, sampler_name=None, scheduler=None, clock_units=None) -> bool | str:
        return _check_combos(backend=backend, sampler_name=sampler_name, scheduler=scheduler, clock_units=clock_units)

    @classmethod
    def check_lazy_status(cls, backend=None, **inputs) -> list[str]:
        """The model is loaded only for the diffusers backend (unconnected inputs are absent from ``inputs``)."""
        if backend == "diffusers" and "video_model" in inputs and inputs["video_model"] is None:
            return ["video_model"]
        return []

    @classmethod
    def execute(cls, image: torch.Tensor, trajectory, backend: str, feather: float, model=None, clip=None, vae=None,
                model_2=None, clip_vision=None, negative_prompt: str = "", width: int = 0, height: int = 0,
                length: int = 0, seed: int = 0, steps: int = 30, cfg: float = 5.0, sampler_name: str = "euler",
                scheduler: str = "simple", expert_switch: float = 0.5, masked_blocks: int = 0,
                self_strength: float = 1.0, cross_strength: float = 1.0, start_percent: float = 0.0,
                end_percent: float = 1.0, guidance: bool = True, object_clock: float = 0.3,
                background_clock: float = 0.1, clock_units: str = "steps", video_model=None,
                prompts=None) -> io.NodeOutput:
        node_id = cls.hidden.unique_id
        if backend == "warp":
            return run_warp(node_id, image, trajectory, feather)
        masking = (masked_blocks, self_strength, cross_strength, start_percent, end_percent, guidance, object_clock,
                   background_clock, clock_units)
        sampled = sampling(seed, steps, cfg, negative_prompt, width, height, length)
        if backend == "diffusers":
            return run_diffusers(node_id, image, trajectory, stage2_settings(*masking, feather), sampled, video_model,
                                 prompts)
        # The comfy backend always built its guidance reference with the default feather (1 px).
        return run_native(node_id, image, trajectory, stage2_settings(*masking),
                          NativeSampling(sampled, sampler_name, scheduler, expert_switch), model, clip, vae, model_2,
                          clip_vision)
