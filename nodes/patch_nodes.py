"""TTM_PatchModel: Through-The-Mask Stage 2 as a MODEL -> MODEL patch for native Wan."""

from __future__ import annotations

from comfy_api.latest import io

from ..ttm_core.guidance import CLOCK_UNITS, DualClock
from ._common import CATEGORY, Trajectory, check_combo, progress_callback
from .native_wan import PatchSettings, patch_wan


def patch_inputs() -> list[io.Input]:
    """The patch's settings, shared by Patch Model and the comfy backend of Masked Motion To Video."""
    return [
        io.Int.Input("masked_blocks", default=0, min=0, max=256,
                     tooltip="K: masked attention in the first K transformer blocks (the paper: 10 of 40). "
                             "0 = a quarter of the model's blocks."),
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
        io.Boolean.Input("guidance", default=True,
                         tooltip="Dual-clock trajectory guidance: start from the cut-and-drag reference (needs "
                                 "vae, image and latent). Off = masked attention only."),
        io.Float.Input("object_clock", default=0.3, min=0.0, max=1000.0, step=0.01,
                       tooltip="Inside the objects the latent follows the reference until here: a fraction of "
                               "the steps (units 'steps') or a sigma (units 'sigma'). Later than background_clock."),
        io.Float.Input("background_clock", default=0.1, min=0.0, max=1000.0, step=0.01,
                       tooltip="Outside the objects the latent follows the reference until here (same units)."),
        io.Combo.Input("clock_units", options=list(CLOCK_UNITS), default="steps",
                       tooltip="steps: fractions of each sampler call's steps (for two KSamplerAdvanced passes, "
                               "use sigma); sigma: the noise level where each clock stops."),
    ]


def settings_from(masked_blocks: int, self_strength: float, cross_strength: float, start_percent: float,
                  end_percent: float, guidance: bool, object_clock: float, background_clock: float,
                  clock_units: str) -> PatchSettings:
    clock = DualClock(object_clock, background_clock, clock_units) if guidance else None
    return PatchSettings(masked_blocks, self_strength, cross_strength, start_percent, end_percent, clock)


class PatchModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_PatchModel",
            display_name="Patch Model (Through-The-Mask)",
            category=CATEGORY,
            description="Stage 2 on your own Wan 2.1 / 2.2 model: masked self- and cross-attention in the first "
                        "K blocks and dual-clock trajectory guidance, as a patched MODEL for KSampler.",
            inputs=[
                io.Model.Input("model", tooltip="A native Wan 2.1 I2V, Wan 2.2 I2V-A14B (high-noise expert) or "
                                                "Wan 2.2 TI2V-5B model (Load Diffusion Model; fp8 and LoRAs are fine)."),
                io.Clip.Input("clip", tooltip="The Wan text encoder (umT5), to encode each object's local prompt."),
                Trajectory.Input("trajectory", tooltip="The mask trajectory; its objects carry the local prompts."),
                *patch_inputs(),
                io.Vae.Input("vae", optional=True, tooltip="The Wan VAE, to encode the guidance reference."),
                io.Image.Input("image", optional=True, tooltip="The start image (the one the trajectory was made "
                                                                "on), for the guidance reference."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The latent you sample (from WanImageToVideo / Wan22ImageToVideoLatent): "
                                        "gives the video size and frame count for the guidance reference."),
                io.Model.Input("model_2", optional=True,
                               tooltip="Wan 2.2 A14B: the low-noise expert, patched with the same state."),
            ],
            outputs=[
                io.Model.Output("patched_model", tooltip="The patched model (a clone; the input stays untouched)."),
                io.Model.Output("patched_model_2", tooltip="The patched second expert (the first patched model if none is given)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, clock_units=None) -> bool | str:
        return check_combo("clock_units", clock_units, CLOCK_UNITS)

    @classmethod
    def execute(cls, model, clip, trajectory, masked_blocks: int, self_strength: float, cross_strength: float,
                start_percent: float, end_percent: float, guidance: bool, object_clock: float,
                background_clock: float, clock_units: str, vae=None, image=None, latent=None,
                model_2=None) -> io.NodeOutput:
        settings = settings_from(masked_blocks, self_strength, cross_strength, start_percent, end_percent, guidance,
                                 object_clock, background_clock, clock_units)
        patched, patched_2, _ = patch_wan(model, clip, trajectory, settings, vae,
                                          image[0] if image is not None else None,
                                          latent["samples"] if latent is not None else None, model_2,
                                          progress=progress_callback(cls.hidden.unique_id))
        return io.NodeOutput(patched, patched_2 if patched_2 is not None else patched)
