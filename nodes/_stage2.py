"""Inputs and settings the Stage 2 nodes share (Patch Model and the Motion To Video nodes).

One place for the widgets of masked attention, dual-clock guidance and sampling, and for turning
their values into ``ttm_core.stage2.settings`` objects (which validate themselves; errors name
these inputs). ``masked_blocks`` 0 means "the model's default K" on the node, ``None`` in the library.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.stage2.guidance import CLOCK_UNITS, DualClock
from ..ttm_core.stage2.settings import MaskedAttention, Sampling, Stage2Settings
from ..ttm_core.types import Prompts, Trajectory

LOG = logging.getLogger(__name__)


def masking_inputs() -> list[io.Input]:
    """K, the two strengths and the schedule window of masked attention."""
    return [
        io.Int.Input("masked_blocks", default=0, min=0, max=256,
                     tooltip="K: masked attention in the first K transformer blocks (the paper: 10 of 40). "
                             "0 = the model's default (a quarter of a DiT's blocks, a UNet's encoder blocks)."),
        io.Float.Input("self_strength", default=1.0, min=0.0, max=1.0, step=0.05,
                       tooltip="Masked self-attention (each object attends only to itself, over all frames): "
                               "0 = stock attention, 1 = fully masked."),
        io.Float.Input("cross_strength", default=1.0, min=0.0, max=1.0, step=0.05,
                       tooltip="Masked cross-attention (each object's local prompt inside its box): 0 = stock, "
                               "1 = fully masked. Applies to the positive prompt only."),
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Masked attention is on from this point of the schedule (0 = first step)."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="... up to this point (1 = last step)."),
    ]


def guidance_inputs() -> list[io.Input]:
    """Dual-clock trajectory guidance."""
    return [
        io.Boolean.Input("guidance", default=True,
                         tooltip="Dual-clock trajectory guidance: start from the cut-and-drag reference. "
                                 "Off = masked attention only."),
        io.Float.Input("object_clock", default=0.3, min=0.0, max=1000.0, step=0.01,
                       tooltip="Inside the objects the latent follows the reference until here: a fraction of "
                               "the steps (units 'steps') or a sigma (units 'sigma'). Later than background_clock."),
        io.Float.Input("background_clock", default=0.1, min=0.0, max=1000.0, step=0.01,
                       tooltip="Outside the objects the latent follows the reference until here (same units)."),
        io.Combo.Input("clock_units", options=list(CLOCK_UNITS), default="steps",
                       tooltip="steps: fractions of each sampler call's steps (for two KSamplerAdvanced passes, "
                               "use sigma); sigma: the noise level where each clock stops."),
    ]


def sampling_inputs(steps: int, cfg: float, zero_means_default: bool) -> list[io.Input]:
    """Seed, steps, cfg, negative prompt, size and length (0 = from the image / trajectory)."""
    auto = " 0 = the model's recommended value." if zero_means_default else ""
    return [
        io.String.Input("negative_prompt", multiline=True, default="", tooltip="What to avoid (the negative prompt)."),
        io.Int.Input("width", default=0, min=0, max=8192, step=16,
                     tooltip="Video width; 0 = the image's, rounded to the model's multiple."),
        io.Int.Input("height", default=0, min=0, max=8192, step=16,
                     tooltip="Video height; 0 = the image's, rounded to the model's multiple."),
        io.Int.Input("length", default=0, min=0, max=4096,
                     tooltip="Frames (4k+1 for Wan and CogVideoX); 0 = the trajectory's, rounded to what the model "
                             "takes."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed."),
        io.Int.Input("steps", default=steps, min=0 if zero_means_default else 1, max=1000,
                     tooltip="Sampling steps." + auto),
        io.Float.Input("cfg", default=cfg, min=0.0, max=100.0, step=0.1, tooltip="Guidance scale." + auto),
    ]


def stage2_settings(masked_blocks: int, self_strength: float, cross_strength: float, start_percent: float,
                    end_percent: float, guidance: bool, object_clock: float, background_clock: float,
                    clock_units: str, feather: float = 1.0) -> Stage2Settings:
    """The widgets' values as ``Stage2Settings`` (``masked_blocks`` 0 = the model's default K)."""
    try:
        clock = DualClock(object_clock, background_clock, clock_units) if guidance else None
    except TTMInputError as err:  # name the node's inputs, not the library's fields
        names = {"object_end": "object_clock", "background_end": "background_clock", "units": "clock_units"}
        raise TTMInputError(names.get(err.input_name, err.input_name), err.problem, err.fix) from err
    masking = MaskedAttention(num_blocks=masked_blocks or None, self_strength=self_strength,
                              cross_strength=cross_strength, window=(start_percent, end_percent))
    return Stage2Settings(masking, clock, feather)


def sampling(seed: int, steps: int, cfg: float, negative_prompt: str, width: int, height: int,
             length: int) -> Sampling:
    return Sampling(seed=seed, steps=steps, cfg=cfg, negative_prompt=negative_prompt, width=width, height=height,
                    num_frames=length)


def prompts_for(trajectory: Trajectory, prompts: Prompts | None) -> Prompts:
    """The prompts to render with: the trajectory's own, or connected ones for the same objects."""
    if prompts is None:
        return trajectory.objects.prompts
    if prompts.objects and len(prompts.objects) != trajectory.objects.count:
        raise TTMInputError("prompts", f"the prompts name {len(prompts.objects)} objects but the trajectory has "
                            f"{trajectory.objects.count} ({', '.join(trajectory.objects.prompts.names)})",
                            "connect prompts with one object line per trajectory object, in the same order, or "
                            "with no object lines for plain sampling")
    return prompts


def show_text(node_id: str | None, text: str) -> None:
    """Show ``text`` on the node in the frontend while it runs (ComfyUI's progress text)."""
    if node_id is None:
        return
    from server import PromptServer  # here, not at import: the pack must also load outside a running server

    PromptServer.instance.send_progress_text(text, node_id)
