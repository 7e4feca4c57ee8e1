"""The ``diffusers`` backend of TTM_MaskedMotionToVideo: ComfyUI inputs -> ttm_core.stage2.generate.

Thin: it checks what only the node can know (a model is connected, the prompts fit the
trajectory), builds the settings (which validate themselves), lets ComfyUI load the components
(``LoadedVideoModel.prepare``), drives the progress bar per denoising step (whose callback raises
ComfyUI's interrupt; ttm_core restores the model in ``finally``) and returns IMAGE frames.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui
from server import PromptServer

from ..ttm_core.errors import TTMInputError
from ..ttm_core.guidance import CLOCK_UNITS, DualClock
from ..ttm_core.stage2 import Stage2Settings, generate
from ..ttm_core.types import Prompts, Trajectory
from ._common import Prompts as PromptsSocket
from ._common import check_combo, progress_callback
from .model_nodes import LoadedVideoModel, VideoModelSocket

logger = logging.getLogger(__name__)

DEFAULTS = DualClock()


def optional_inputs() -> list[io.Input]:
    """The node inputs the diffusers backend reads (all optional; the warp backend ignores them)."""
    return [
        VideoModelSocket.Input("video_model", optional=True, lazy=True,
                               tooltip="diffusers backend: the model from Video Model Loader (Through-The-Mask). "
                                       "Loaded only when the backend is diffusers."),
        PromptsSocket.Input("prompts", optional=True,
                            tooltip="diffusers backend: prompts replacing the trajectory's own (same objects, in "
                                    "order). Prompts with no object lines give plain image-to-video sampling."),
        io.String.Input("negative_prompt", multiline=True, default="", optional=True,
                        tooltip="diffusers backend: what the video should not show (used when cfg > 1)."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True,
                     tooltip="diffusers backend: the noise seed; the same seed and inputs give the same video."),
        io.Int.Input("steps", default=0, min=0, max=1000, optional=True,
                     tooltip="diffusers backend: denoising steps; 0 = the model's recommended count (CogVideoX 50, "
                             "Wan 2.1 / 2.2-A14B 40, Wan 2.2 TI2V 50, I2VGen-XL 50)."),
        io.Float.Input("cfg", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                       tooltip="diffusers backend: classifier-free guidance scale; 0 = the model's recommended "
                               "scale (CogVideoX 6, Wan 2.1 5, Wan 2.2 A14B 3.5, TI2V 5, I2VGen-XL 9); 1 = off."),
        io.Int.Input("width", default=0, min=0, max=4096, step=8, optional=True,
                     tooltip="diffusers backend: video width; 0 = automatic (the image's aspect ratio at the "
                             "model's trained size). Rounded down to the model's grid; said so when changed."),
        io.Int.Input("height", default=0, min=0, max=4096, step=8, optional=True,
                     tooltip="diffusers backend: video height; 0 = automatic (see width)."),
        io.Int.Input("num_frames", default=0, min=0, max=100000, optional=True,
                     tooltip="diffusers backend: frames to generate; 0 = the trajectory's count. Made legal for "
                             "the model (1 + 4k for CogVideoX / Wan, 49 for CogVideoX 1.0); the trajectory is "
                             "resampled and the fps keeps its duration."),
        io.Float.Input("self_strength", default=1.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip="diffusers backend: masked self-attention strength (0 = stock attention, 1 = each "
                               "token attends only to its own object)."),
        io.Float.Input("cross_strength", default=1.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip="diffusers backend: masked cross-attention strength (each object's local prompt "
                               "inside its box; 0 = off)."),
        io.Int.Input("num_blocks", default=-1, min=-1, max=200, optional=True,
                     tooltip="diffusers backend: K, the masked blocks from the input side; -1 = the model's "
                             "default (DiTs a quarter of the blocks, the paper's 10 of 40; I2VGen-XL the "
                             "encoder's spatial blocks); 0 = no masked attention."),
        io.Float.Input("object_end", default=DEFAULTS.object_end, min=0.0, max=1000.0, step=0.01, optional=True,
                       tooltip="diffusers backend: object clock - objects follow the cut-and-drag reference until "
                               "this fraction of the steps (units steps) or while the noise level is above it "
                               "(units sigma). Raise it when objects drift from their masks."),
        io.Float.Input("background_end", default=DEFAULTS.background_end, min=0.0, max=1000.0, step=0.01,
                       optional=True,
                       tooltip="diffusers backend: background clock, the same for the background (ends no later "
                               "than the object clock). 0 and object_end 0 = no trajectory guidance."),
        io.Combo.Input("clock_units", options=list(CLOCK_UNITS), default=DEFAULTS.units, optional=True,
                       tooltip="diffusers backend: steps = fractions of the denoising steps; sigma = noise levels "
                               "(flow sigma for Wan, sqrt(1 - alpha_bar) for CogVideoX / I2VGen-XL, both 0..1)."),
    ]


def own_options(options: dict) -> dict:
    """The node's optional inputs this backend reads (other backends add inputs of their own)."""
    names = {spec.id for spec in optional_inputs()}
    return {name: value for name, value in options.items() if name in names}


def lazy_inputs(backend: object, inputs: dict) -> list[str]:
    """check_lazy_status: the model is loaded only when this backend runs (a connected loader costs
    nothing while the node renders with warp). Unconnected inputs are absent from ``inputs``."""
    if backend == "diffusers" and "video_model" in inputs and inputs["video_model"] is None:
        return ["video_model"]
    return []


def validate(clock_units: object) -> bool | str:
    return check_combo("clock_units", clock_units, CLOCK_UNITS)


def _prompts_for(trajectory: Trajectory, prompts: Prompts | None) -> Prompts:
    if prompts is None:
        return trajectory.objects.prompts
    if prompts.objects and len(prompts.objects) != trajectory.objects.count:
        raise TTMInputError("prompts", f"the prompts name {len(prompts.objects)} objects but the trajectory has "
                            f"{trajectory.objects.count} ({', '.join(trajectory.objects.prompts.names)})",
                            "connect prompts with one object line per trajectory object, in the same order, or "
                            "with no object lines for plain sampling")
    return prompts


def run(node_id: str | None, image: torch.Tensor, trajectory: Trajectory, feather: float,
        video_model: LoadedVideoModel | None = None, prompts: Prompts | None = None, negative_prompt: str = "",
        seed: int = 0, steps: int = 0, cfg: float = 0.0, width: int = 0, height: int = 0, num_frames: int = 0,
        self_strength: float = 1.0, cross_strength: float = 1.0, num_blocks: int = -1,
        object_end: float = DEFAULTS.object_end, background_end: float = DEFAULTS.background_end,
        clock_units: str = DEFAULTS.units) -> io.NodeOutput:
    """Generate with the diffusers backend; returns (IMAGE frames, fps) plus the notes as UI text."""
    if video_model is None:
        raise TTMInputError("video_model", "the diffusers backend needs a model",
                            "connect Video Model Loader (Through-The-Mask) to video_model")
    if not isinstance(video_model, LoadedVideoModel):
        raise TTMInputError("video_model", f"got a {type(video_model).__name__}, not a loaded video model",
                            "connect Video Model Loader (Through-The-Mask)")
    chosen = _prompts_for(trajectory, prompts)
    settings = Stage2Settings(seed=seed, steps=steps, cfg=cfg, negative_prompt=negative_prompt, width=width,
                              height=height, num_frames=num_frames, self_strength=self_strength,
                              cross_strength=cross_strength, num_blocks=None if num_blocks < 0 else num_blocks,
                              clock=DualClock(object_end, background_end, clock_units), feather=feather)
    result = generate(video_model.model, image[0], trajectory, chosen, settings,
                      progress=progress_callback(node_id), prepare=video_model.prepare)
    summary = (f"{video_model.model.family.label}: {result.plan.width}x{result.plan.height}, "
               f"{result.plan.num_frames} frames at {result.fps:.4g} fps")
    text = "\n".join([summary, *result.notes])
    if node_id is not None:  # shown on the node in the frontend; the same text is in /history as UI text
        PromptServer.instance.send_progress_text(text, node_id)
    return io.NodeOutput(result.frames, float(result.fps), ui=ui.PreviewText(text))
