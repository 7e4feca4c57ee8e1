"""TTM_PatchModel: Through-The-Mask Stage 2 as a MODEL -> MODEL patch for native Wan."""

from __future__ import annotations

from comfy_api.latest import io

from ..native.patch import patch_wan
from ..ttm_core.stage2.guidance import CLOCK_UNITS
from ._common import CATEGORY, Trajectory, check_combo, progress_callback
from ._stage2 import guidance_inputs, masking_inputs, stage2_settings


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
                                                "Wan 2.2 TI2V-5B model (Load Diffusion Model; fp8 and LoRAs are "
                                                "fine)."),
                io.Clip.Input("clip", tooltip="The Wan text encoder (umT5), to encode each object's local prompt."),
                Trajectory.Input("trajectory", tooltip="The mask trajectory; its objects carry the local prompts."),
                *masking_inputs(),
                *guidance_inputs(),
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
                io.Model.Output("patched_model_2",
                                tooltip="The patched second expert (the first patched model if none is given)."),
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
        settings = stage2_settings(masked_blocks, self_strength, cross_strength, start_percent, end_percent, guidance,
                                   object_clock, background_clock, clock_units)
        patched, patched_2, _ = patch_wan(model, clip, trajectory, settings, vae,
                                          image[0] if image is not None else None,
                                          latent["samples"] if latent is not None else None, model_2,
                                          progress=progress_callback(cls.hidden.unique_id))
        return io.NodeOutput(patched, patched_2 if patched_2 is not None else patched)
