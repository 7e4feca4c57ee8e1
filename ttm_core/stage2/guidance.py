"""Dual-clock trajectory guidance, shared by every diffusion Stage 2 backend.

The training-free Stage 2 denoises from the cut-and-drag reference (``ttm_core.warp``): while
the sampler is early in its schedule, the latent is replaced by the reference noised to the
current noise level. Inside the object masks this lasts longer (the *object clock*) than
outside them (the *background clock*), so objects follow the trajectory closely while the
background and the objects' appearance are free to be re-imagined (Time-to-Move's
"dual-clock" denoising; KSamplerX0Inpaint in ComfyUI pins a region the same way).

Per denoising step i of n, before the model is called::

    m = fg * [i < object_end * n] + (1 - fg) * [i < background_end * n]
    x = x * (1 - m) + noise_to(reference, sigma_i) * m

``fg`` is the trajectory's foreground share of each latent cell (``latent_foreground``), so a
latent cell half covered by an object is half pinned while only the object clock runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import TTMInputError
from ..types import Trajectory
from .attention.grids import VideoGeometry, token_grid_from_labels

CLOCK_UNITS = ("steps", "sigma")
NOISING = ("flow", "ve", "vp")


@dataclass(frozen=True)
class DualClock:
    """When the reference stops being imposed, inside and outside the objects.

    Attributes:
        object_end: with ``units="steps"``, the fraction of the sampling steps (0..1) during
            which object regions follow the reference; with ``units="sigma"``, the noise level
            down to which they do (pinned while sigma > object_end).
        background_end: the same for the background. The object clock runs later: with steps
            ``object_end >= background_end``, with sigmas ``object_end <= background_end``.
        units: "steps" (portable across schedules) or "sigma" (exact noise levels).

    Defaults (objects for the first 30 % of the steps, background for the first 10 %) keep the
    motion of the trajectory while leaving most of the schedule to the model; raise
    ``object_end`` when objects drift from their masks, lower it when they look pasted.
    """

    object_end: float = 0.3
    background_end: float = 0.1
    units: str = "steps"

    def __post_init__(self) -> None:
        if self.units not in CLOCK_UNITS:
            raise TTMInputError("clock_units", f"unknown units {self.units!r}", f"use one of {', '.join(CLOCK_UNITS)}")
        for name, value in (("object_end", self.object_end), ("background_end", self.background_end)):
            if not math.isfinite(value) or value < 0 or (self.units == "steps" and value > 1):
                limit = "0..1 (a fraction of the steps)" if self.units == "steps" else "a sigma >= 0"
                raise TTMInputError(name, f"{value} is not {limit}", f"give {name} as {limit}")
        later = self.object_end >= self.background_end if self.units == "steps" else \
            self.object_end <= self.background_end
        if not later:
            raise TTMInputError("object_end", f"the object clock ({self.object_end}) ends before the background clock "
                                f"({self.background_end})", "let objects follow the reference at least as long as "
                                "the background")

    def pins(self, step: int, num_steps: int, sigma: float) -> tuple[bool, bool]:
        """(pin objects, pin background) before denoising step ``step`` (0-based) of ``num_steps``."""
        if self.units == "steps":
            return step < round(self.object_end * num_steps), step < round(self.background_end * num_steps)
        return sigma > self.object_end, sigma > self.background_end


def step_index(sigmas: torch.Tensor, sigma: float) -> int:
    """The step whose starting sigma is ``sigma`` (nearest), for samplers that only pass sigmas.

    Args:
        sigmas: the sampler's schedule, ``[n + 1]``, decreasing, ending at 0.
        sigma: the noise level the model is being called at.
    """
    return int(torch.argmin((sigmas[:-1].to(torch.float64) - float(sigma)).abs()))


def latent_foreground(trajectory: Trajectory, geometry: VideoGeometry, num_frames: int, height: int,
                      width: int) -> torch.Tensor:
    """float32 ``[F_lat, H_lat, W_lat]`` in 0..1: the share of each latent cell covered by objects.

    Uses the family's VAE mapping (causal 1 + 4k frames, spatial ratio) without the patch
    embedding: the same frame and area mapping as the token grids, one level finer.
    """
    return labels_foreground(trajectory.labels, trajectory.objects.ids, geometry, num_frames, height, width,
                             trajectory.depth_order)


def labels_foreground(labels: torch.Tensor, object_ids: tuple[int, ...], geometry: VideoGeometry, num_frames: int,
                      height: int, width: int, depth_order: tuple[int, ...] = ()) -> torch.Tensor:
    """``latent_foreground`` of a bare label video (e.g. a trajectory cropped to another aspect ratio).

    Args:
        labels: uint8 ``[T, H0, W0]`` (0 = background), resampled to the video like the token grids.
        object_ids: the objects' label values.
    Returns:
        float32 ``[F_lat, H_lat, W_lat]`` in 0..1.
    """
    latent = VideoGeometry(f"{geometry.name} latent", geometry.temporal_ratio, geometry.causal,
                           geometry.spatial_ratio, (1, 1, 1), False, False)
    grid = token_grid_from_labels(labels, object_ids, latent, num_frames, height, width, depth_order)
    return (1.0 - grid.fractions[0]).clamp(0.0, 1.0)


def noise_to(reference: torch.Tensor, noise: torch.Tensor, sigma: float, kind: str = "flow") -> torch.Tensor:
    """The reference latent at noise level ``sigma``.

    ``flow`` (rectified flow: Wan, ComfyUI's CONST models): sigma * noise + (1 - sigma) * x0;
    ``ve`` (k-diffusion / EDM sigmas): x0 + sigma * noise;
    ``vp`` (DDPM / DDIM schedulers: CogVideoX, I2VGen-XL), with sigma the noise's standard deviation
    sqrt(1 - alpha_bar) in 0..1: sqrt(1 - sigma^2) * x0 + sigma * noise (defined at zero terminal
    SNR too, where sigma = 1).
    """
    if kind == "flow":
        return noise * sigma + reference * (1.0 - sigma)
    if kind == "ve":
        return reference + noise * sigma
    if kind == "vp":
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"a vp noise level is a standard deviation in 0..1, got {sigma}")
        return noise * sigma + reference * math.sqrt(1.0 - sigma * sigma)
    raise ValueError(f"unknown noising {kind!r}; use one of {NOISING}")


def pin(x: torch.Tensor, noised_reference: torch.Tensor, foreground: torch.Tensor, pin_objects: bool,
        pin_background: bool, frame_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Replace the pinned parts of ``x`` by the noised reference.

    Args:
        x, noised_reference: ``[B, C, F, H, W]`` latents.
        foreground: ``[F, H, W]`` in 0..1 (broadcast over batch and channels).
        pin_objects, pin_background: which clocks are still running.
        frame_weight: optional ``[F]`` in 0..1 scaling the pin per latent frame (0 leaves a
            frame alone, e.g. a start-image frame the sampler already pins).
    Returns:
        ``x`` itself when nothing is pinned, else x * (1 - m) + noised_reference * m.
    """
    if not pin_objects and not pin_background:
        return x
    fg = foreground.to(device=x.device, dtype=x.dtype)
    m = fg * float(pin_objects) + (1.0 - fg) * float(pin_background)
    if frame_weight is not None:
        m = m * frame_weight.to(device=x.device, dtype=x.dtype)[:, None, None]
    return x * (1.0 - m) + noised_reference * m
