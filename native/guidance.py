"""Dual-clock trajectory guidance on ComfyUI's samplers (``ttm_core.stage2.guidance`` does the maths).

Two wrappers, both per sampler call, nothing carried from one call to the next:

* SAMPLER_SAMPLE: at the start of every sampler call, makes a ``_Run`` (this call's noise and
  sigmas) and hands it to the model calls of THIS call through the call's own model options;
* APPLY_MODEL: before each model call at sigma, replaces the latent by the reference noised to
  sigma inside the objects while the object clock runs (outside them while the background clock
  runs), and pins the prediction there to the reference, as ComfyUI's KSamplerX0Inpaint does.

Not ``noise_mask``/``denoise_mask``: Wan reuses the denoise mask for other purposes (see
shared COMFY_NATIVE.md). A second expert pass (KSamplerAdvanced with add_noise off) is given no
noise by ComfyUI; its latent is the first pass's output, so the first pass's noise is found by
that latent's content (``_Passes``): a sampler call whose latent does not come from a guided pass
is not guided, and the log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.cut_and_drag import check_first_frame, cut_and_drag
from ..ttm_core.motion.fit import crop_image, fit_trajectory, resample_video
from ..ttm_core.stage2.attention.grids import VideoGeometry
from ..ttm_core.stage2.families.wan import WAN22_TI2V
from ..ttm_core.stage2.guidance import DualClock, latent_foreground, noise_to, pin, step_index
from ..ttm_core.types import ProgressFn, Trajectory

LOG = logging.getLogger(__name__)
RUN_KEY = "through_the_mask.guidance_run"
"""Where a sampler call's ``_Run`` travels in that call's transformer_options."""


@dataclass(frozen=True, eq=False)
class Reference:
    """The VAE-encoded cut-and-drag reference for one latent shape.

    Attributes:
        latent: ``[1, C, T, h, w]`` in the model's latent space (process_latent_in applied), on the CPU.
        foreground: ``[T, h, w]`` in 0..1, the objects' share of each latent cell.
        frame_weight: ``[T]`` in 0..1; 0 leaves a latent frame alone (TI2V's start frame, pinned by ComfyUI).
    """

    latent: torch.Tensor
    foreground: torch.Tensor
    frame_weight: torch.Tensor


def build_reference(model: Any, vae: Any, image: torch.Tensor, trajectory: Trajectory, latent: torch.Tensor,
                    geometry: VideoGeometry, feather: float = 1.0, progress: ProgressFn | None = None) -> Reference:
    """The cut-and-drag reference for the sampler's latent (``[B, C, T, h, w]``, for its sizes)."""
    frames, lat_h, lat_w = latent.shape[2], latent.shape[3], latent.shape[4]
    ratio = geometry.spatial_ratio
    height, width, num_frames = lat_h * ratio, lat_w * ratio, 4 * (frames - 1) + 1
    check_first_frame(image, trajectory)
    fitted = fit_trajectory(trajectory, height, width, num_frames)
    video = cut_and_drag(crop_image(image, height, width), fitted, feather, progress=progress)
    video = resample_video(video, height, width, num_frames)
    encoded = vae.encode(video[..., :3])
    reference = model.model.process_latent_in(encoded.float()).cpu()
    if tuple(reference.shape[1:]) != tuple(latent.shape[1:]):
        raise TTMInputError("vae", f"the VAE makes a {tuple(reference.shape[1:])} latent but the sampler's is "
                            f"{tuple(latent.shape[1:])}", "use the VAE that belongs to this Wan model")
    foreground = latent_foreground(fitted, geometry, num_frames, height, width)
    weight = torch.ones(frames)
    if geometry is WAN22_TI2V:
        weight[0] = 0.0  # TI2V's first latent frame is the start image, pinned by ComfyUI itself
    return Reference(reference, foreground, weight)


@dataclass(frozen=True, eq=False)
class _Run:
    """One sampler call: the noise its latent was noised with and the schedule its steps count in."""

    noise: torch.Tensor
    schedule: torch.Tensor  # float64 [n + 1] on the CPU


class _Passes:
    """The outputs of recent guided sampler calls and the noise each was made from, so that a
    continuing pass with no noise of its own (the second A14B expert) finds its noise by its latent."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._done: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(self, output: torch.Tensor, noise: torch.Tensor) -> None:
        self._done = [*self._done, (output.detach().to("cpu", torch.float32), noise)][-self.keep:]

    def noise_of(self, latent: torch.Tensor) -> torch.Tensor | None:
        start = latent.detach().to("cpu", torch.float32)
        for output, noise in reversed(self._done):
            if output.shape == start.shape and torch.allclose(output, start, rtol=1e-4, atol=1e-4):
                return noise
        return None


class DualClockGuide:
    """The dual clock of one patch, for ComfyUI's samplers (see the module docstring).

    Args:
        reference: the encoded reference.
        clock: when each clock stops.
        schedule: the full schedule when one generation runs as several sampler calls (the one-node
            path runs the A14B experts as two passes); None = each call's own sigmas.
    """

    def __init__(self, reference: Reference, clock: DualClock, schedule: torch.Tensor | None = None) -> None:
        self.reference = reference
        self.clock = clock
        self.schedule = schedule.detach().to("cpu", torch.float64) if schedule is not None else None
        self._passes = _Passes()
        self._noted: set[str] = set()

    def __deepcopy__(self, memo: dict) -> DualClockGuide:
        return self  # shared by the patched clones (ComfyUI 0.3.75 deep-copies model options)

    def _note(self, why: str) -> None:
        if why not in self._noted:
            self._noted.add(why)
            LOG.warning("Through-The-Mask: dual-clock guidance skipped: %s", why)

    def sampler_sample_wrapper(self, executor: Callable, guider: Any, sigmas: torch.Tensor, extra_args: dict,
                               callback: Any, noise: torch.Tensor, latent_image: Any = None, denoise_mask: Any = None,
                               disable_pbar: bool = False) -> torch.Tensor:
        if bool(noise.abs().amax() > 0):
            used: torch.Tensor | None = noise.detach()
        elif latent_image is not None:
            used = self._passes.noise_of(latent_image)
            if used is None:
                self._note("this sampler adds no noise (add_noise off) and its latent is not the output of a guided "
                           "pass, so the noise to pin with is unknown")
        else:
            used = None
        if used is None:
            return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        schedule = self.schedule if self.schedule is not None else sigmas.detach().to("cpu", torch.float64)
        model_options = dict(extra_args.get("model_options", {}))
        options = dict(model_options.get("transformer_options", {}))
        options[RUN_KEY] = _Run(used, schedule)
        model_options["transformer_options"] = options
        extra_args = {**extra_args, "model_options": model_options}
        samples = executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        self._passes.record(samples, used)
        return samples

    def apply_model_wrapper(self, executor: Callable, x: torch.Tensor, t: torch.Tensor, c_concat: Any = None,
                            c_crossattn: Any = None, control: Any = None, transformer_options: dict | None = None,
                            **kwargs: Any) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        run: _Run | None = options.get(RUN_KEY)
        if run is None:
            return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        sigma = float(t.max())
        pin_objects, pin_background = self.clock.pins(step_index(run.schedule, sigma), run.schedule.numel() - 1, sigma)
        if not (pin_objects or pin_background):
            return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        reference = self.reference
        if tuple(reference.latent.shape[1:]) != tuple(x.shape[1:]):
            raise TTMInputError("latent", f"the patch was made for a {tuple(reference.latent.shape[1:])} latent but "
                                f"the sampler runs a {tuple(x.shape[1:])} one",
                                "connect the same latent to Patch Model as to the sampler")
        chunks = max(1, x.shape[0] // run.noise.shape[0])
        noise = run.noise.to(device=x.device, dtype=x.dtype).repeat(chunks, 1, 1, 1, 1)[:x.shape[0]]
        latent = reference.latent.to(device=x.device, dtype=x.dtype)
        x = pin(x, noise_to(latent, noise, sigma), reference.foreground, pin_objects, pin_background,
                reference.frame_weight)
        denoised = executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        # As KSamplerX0Inpaint does: the pinned part of the prediction is the reference itself.
        return pin(denoised, latent.expand_as(denoised), reference.foreground, pin_objects, pin_background,
                   reference.frame_weight)
