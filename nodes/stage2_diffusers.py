"""The ``diffusers`` backend of TTM_MaskedMotionToVideo: ComfyUI inputs -> ttm_core.stage2.generate.

Thin: it checks what only the node can know (a model is connected, the prompts fit the
trajectory), builds the settings (which validate themselves), lets ComfyUI load the components
(``LoadedVideoModel.prepare``), drives the progress bar per denoising step (whose callback raises
ComfyUI's interrupt; ttm_core restores the model in ``finally``) and returns IMAGE frames.

The node's sampling and patch inputs (seed, steps, cfg, sizes, strengths, K, the attention window
and the clocks) are shared with the ``comfy`` backend (``SHARED_INPUTS``) and mean the same here;
``video_model`` and ``prompts`` are this backend's own.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..ttm_core.errors import TTMInputError
from ..ttm_core.guidance import DualClock
from ..ttm_core.stage2 import Stage2Settings, generate
from ..ttm_core.types import Prompts, Trajectory
from ._common import Prompts as PromptsSocket
from ._common import progress_callback
from .model_nodes import LoadedVideoModel, VideoModelSocket

logger = logging.getLogger(__name__)

SHARED_INPUTS = frozenset({
    "negative_prompt", "width", "height", "length", "seed", "steps", "cfg", "masked_blocks", "self_strength",
    "cross_strength", "start_percent", "end_percent", "guidance", "object_clock", "background_clock", "clock_units"})
"""Masked Motion To Video inputs that the comfy and the diffusers backends both read."""


def optional_inputs() -> list[io.Input]:
    """The node inputs only this backend reads (all optional; the other backends ignore them)."""
    return [
        VideoModelSocket.Input("video_model", optional=True, lazy=True,
                               tooltip="diffusers backend: the model from Video Model Loader (Through-The-Mask). "
                                       "Loaded only when the backend is diffusers."),
        PromptsSocket.Input("prompts", optional=True,
                            tooltip="diffusers backend: prompts replacing the trajectory's own (same objects, in "
                                    "order). Prompts with no object lines give plain image-to-video sampling."),
    ]


def lazy_inputs(backend: object, inputs: dict) -> list[str]:
    """check_lazy_status: the model is loaded only when this backend runs (a connected loader costs
    nothing while the node renders with another backend). Unconnected inputs are absent from ``inputs``."""
    if backend == "diffusers" and "video_model" in inputs and inputs["video_model"] is None:
        return ["video_model"]
    return []


def _prompts_for(trajectory: Trajectory, prompts: Prompts | None) -> Prompts:
    if prompts is None:
        return trajectory.objects.prompts
    if prompts.objects and len(prompts.objects) != trajectory.objects.count:
        raise TTMInputError("prompts", f"the prompts name {len(prompts.objects)} objects but the trajectory has "
                            f"{trajectory.objects.count} ({', '.join(trajectory.objects.prompts.names)})",
                            "connect prompts with one object line per trajectory object, in the same order, or "
                            "with no object lines for plain sampling")
    return prompts


def settings_from(feather: float, negative_prompt: str, width: int, height: int, length: int, seed: int, steps: int,
                  cfg: float, masked_blocks: int, self_strength: float, cross_strength: float, start_percent: float,
                  end_percent: float, guidance: bool, object_clock: float, background_clock: float,
                  clock_units: str) -> Stage2Settings:
    """The node's widget values as ttm_core settings (masked_blocks 0 = the model's default K)."""
    try:
        clock = DualClock(object_clock, background_clock, clock_units) if guidance else None
    except TTMInputError as err:  # name the node's inputs, not the library's fields
        names = {"object_end": "object_clock", "background_end": "background_clock"}
        raise TTMInputError(names.get(err.input_name, err.input_name), err.problem, err.fix) from err
    return Stage2Settings(seed=seed, steps=steps, cfg=cfg, negative_prompt=negative_prompt, width=width,
                          height=height, num_frames=length, self_strength=self_strength,
                          cross_strength=cross_strength, num_blocks=masked_blocks or None,
                          attention_window=(start_percent, end_percent), clock=clock, feather=feather)


def run(node_id: str | None, image: torch.Tensor, trajectory: Trajectory, feather: float,
        video_model: LoadedVideoModel | None, prompts: Prompts | None, negative_prompt: str, width: int, height: int,
        length: int, seed: int, steps: int, cfg: float, masked_blocks: int, self_strength: float,
        cross_strength: float, start_percent: float, end_percent: float, guidance: bool, object_clock: float,
        background_clock: float, clock_units: str) -> io.NodeOutput:
    """Generate with the diffusers backend; returns (IMAGE frames, fps) plus the notes as UI text."""
    if video_model is None:
        raise TTMInputError("video_model", "the diffusers backend needs a model",
                            "connect Video Model Loader (Through-The-Mask) to video_model")
    if not isinstance(video_model, LoadedVideoModel):
        raise TTMInputError("video_model", f"got a {type(video_model).__name__}, not a loaded video model",
                            "connect Video Model Loader (Through-The-Mask)")
    chosen = _prompts_for(trajectory, prompts)
    settings = settings_from(feather, negative_prompt, width, height, length, seed, steps, cfg, masked_blocks,
                             self_strength, cross_strength, start_percent, end_percent, guidance, object_clock,
                             background_clock, clock_units)
    result = generate(video_model.model, image[0], trajectory, chosen, settings,
                      progress=progress_callback(node_id), prepare=video_model.prepare)
    summary = (f"{video_model.model.family.label}: {result.plan.width}x{result.plan.height}, "
               f"{result.plan.num_frames} frames at {result.fps:.4g} fps")
    text = "\n".join([summary, *result.notes])
    if node_id is not None:  # shown on the node in the frontend; the same text is in /history as UI text
        from server import PromptServer  # here, not at import: the pack must also load outside a running server

        PromptServer.instance.send_progress_text(text, node_id)
    return io.NodeOutput(result.frames, float(result.fps), ui=ui.PreviewText(text))
