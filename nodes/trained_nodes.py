"""TTM_TrainedCheckpointLoader: a trained Stage 2 checkpoint (``ttm-train``) from ComfyUI's models/ttm.

The checkpoint travels as ``ttm_core.stage2.trained.TrainedWeights`` on a ``TTM_TRAINED`` socket to
Motion To Video · diffusers and · Wan native, which check it against their base model (family,
variant, shape, K) and run it. Nothing is downloaded; the file is read once per change.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..ttm_core.errors import TTMInputError
from ..ttm_core.stage2.trained import TrainedWeights, load_trained
from ._common import CATEGORY
from ._models import TRAINED_FOLDER, check_entry, list_entries, resolve, roots
from ._stage2 import show_text

TrainedSocket = io.Custom("TTM_TRAINED")
"""ttm_core.stage2.trained.TrainedWeights: a loaded trained checkpoint (config + tensors)."""


def trained_entries() -> list[str]:
    """The ``.safetensors`` files under models/ttm (and extra_model_paths' ttm folders)."""
    return list_entries(roots(TRAINED_FOLDER), suffixes=(".safetensors",))


def describe(weights: TrainedWeights) -> str:
    """What the loader shows: stage, base model, K, condition channels, step, trained groups."""
    config = weights.config
    return "\n".join([
        f"Stage {config.stage} checkpoint for {config.variant}, step {config.step}",
        f"base: {config.base.describe()}",
        f"K = {config.num_blocks} masked blocks, +{config.condition_channels} input channels "
        f"(palette {config.palette}), trained: {', '.join(config.groups)}",
    ])


class TrainedCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_TrainedCheckpointLoader",
            display_name="Trained Checkpoint Loader (Through-The-Mask)",
            category=CATEGORY,
            description="Load a trained Stage 2 checkpoint written by ttm-train (models/ttm/*.safetensors) for "
                        "Motion To Video · diffusers or · Wan native. The checkpoint holds only the trained "
                        "tensors; the base model (Wan 2.1 I2V, Wan 2.2 TI2V-5B or CogVideoX I2V) is loaded as usual.",
            inputs=[io.Combo.Input("checkpoint", options=trained_entries(),
                                   tooltip="A .safetensors file in models/ttm written by ttm-train.")],
            outputs=[TrainedSocket.Output("trained", tooltip="The trained checkpoint (TTM_TRAINED).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, checkpoint=None) -> bool | str:
        return check_entry("checkpoint", checkpoint, trained_entries(), TRAINED_FOLDER)

    @classmethod
    def fingerprint_inputs(cls, checkpoint=None) -> str:
        """Reload when the file changes (a newer checkpoint written over the old name)."""
        try:
            stat = resolve(TRAINED_FOLDER, checkpoint, "checkpoint").stat()
        except (TTMInputError, OSError):  # reported by validate_inputs / execute
            return f"{checkpoint}:missing"
        return f"{checkpoint}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, checkpoint: str) -> io.NodeOutput:
        weights = load_trained(resolve(TRAINED_FOLDER, checkpoint, "checkpoint"), "checkpoint")
        text = describe(weights)
        show_text(cls.hidden.unique_id, text)
        return io.NodeOutput(weights, ui=ui.PreviewText(text))
