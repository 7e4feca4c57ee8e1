"""Training objectives per family: flow matching (Wan) and v-prediction with zero terminal SNR (CogVideoX).

Through-The-Mask trains its DiT with flow matching and its UNet with v-prediction + zero terminal
SNR (Sec. 4, "critically important"); here each base model keeps the objective it was pre-trained
with, so its sampler is unchanged at inference:

* ``FlowMatching`` (Wan): sigma = shift(u) = s u / (1 + (s - 1) u) for u ~ U(0, 1) (diffusers'
  FlowMatchEulerDiscreteScheduler's shift; s = the model folder's ``flow_shift``), x_t = (1 - sigma)
  x0 + sigma noise, timestep = 1000 sigma, target velocity = noise - x0 (what Wan predicts).
* ``VPrediction`` (CogVideoX): the model folder's CogVideoXDDIMScheduler (``rescale_betas_zero_snr``,
  ``snr_shift_scale``), t = floor(1000 u), x_t = ``add_noise``, target = ``get_velocity``
  = sqrt(abar) noise - sqrt(1 - abar) x0.

Randomness is not drawn here: the trainer passes the noise and u (from generators seeded by the
run's seed, the step and the clip's index), which makes runs and resumes reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import TTMInputError
from .config import ObjectiveConfig

logger = logging.getLogger(__name__)

Kind = Literal["flow", "v_prediction"]


@dataclass(frozen=True, eq=False)
class Noised:
    """One noised batch.

    Attributes:
        noisy: x_t, like x0 (float32).
        target: what the model should predict, like x0.
        timestep: float32 ``[B]`` timesteps the denoiser is called with (0..1000).
        weight: float32 ``[B]`` per-sample loss weights (1 unless weighted).
    """

    noisy: torch.Tensor
    target: torch.Tensor
    timestep: torch.Tensor
    weight: torch.Tensor


class FlowMatching:
    """Rectified-flow matching with a shifted sigma schedule (see the module docstring)."""

    kind: Kind = "flow"

    def __init__(self, shift: float, num_train_timesteps: int = 1000) -> None:
        if not shift > 0:
            raise ValueError(f"flow shift {shift} must be > 0")
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        """u in [0, 1] -> the shifted sigma in [1/N, 1] (the scheduler's training range)."""
        u = u.to(torch.float32)
        sigma = self.shift * u / (1.0 + (self.shift - 1.0) * u)
        return sigma.clamp(1.0 / self.num_train_timesteps, 1.0)

    def noise(self, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor) -> Noised:
        """x0, noise: ``[B, ...]`` float32; u: ``[B]`` in [0, 1)."""
        sigma = self.sigma(u).to(x0.device)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        noisy = (1.0 - s) * x0 + s * noise
        return Noised(noisy, noise - x0, sigma * self.num_train_timesteps, torch.ones_like(sigma))


class VPrediction:
    """v-prediction on a DDPM-style schedule (the model's own scheduler, zero terminal SNR when it says so)."""

    kind: Kind = "v_prediction"

    def __init__(self, scheduler: Any, weighting: str = "none", gamma: float = 5.0) -> None:
        if not (hasattr(scheduler, "add_noise") and hasattr(scheduler, "get_velocity")
                and hasattr(scheduler, "alphas_cumprod")):
            raise TTMInputError("model.path", f"the scheduler {type(scheduler).__name__} has no DDPM-style noise "
                                "schedule", "keep the model folder's own scheduler (CogVideoXDDIMScheduler)")
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.weighting = weighting
        self.gamma = gamma

    def noise(self, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor) -> Noised:
        t = (u.to(torch.float32) * self.num_train_timesteps).floor().long().clamp(0, self.num_train_timesteps - 1)
        t = t.to(x0.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        target = self.scheduler.get_velocity(x0, noise, t)
        weight = torch.ones(t.shape, dtype=torch.float32, device=x0.device)
        if self.weighting == "min_snr":
            abar = self.alphas_cumprod.to(x0.device)[t]
            snr = abar / (1.0 - abar).clamp_min(1e-8)
            weight = snr.clamp(max=self.gamma) / (snr + 1.0)  # min-SNR-gamma for v-prediction
        return Noised(noisy, target, t.to(torch.float32), weight)


Objective = FlowMatching | VPrediction


def default_kind(family_name: str) -> Kind:
    """The objective a family was pre-trained with."""
    return "v_prediction" if family_name == "cogvideox" else "flow"


def flow_shift_of(scheduler: Any) -> float:
    """The flow shift in a scheduler's config (UniPC ``flow_shift``, FlowMatchEuler ``shift``); 1.0 if none."""
    config = getattr(scheduler, "config", {})
    for name in ("flow_shift", "shift"):
        value = config.get(name) if hasattr(config, "get") else getattr(config, name, None)
        if value:
            return float(value)
    return 1.0


def make_objective(config: ObjectiveConfig, family_name: str, scheduler: Any) -> Objective:
    """The objective of a run from its config, the family and the model folder's scheduler."""
    kind = default_kind(family_name) if config.kind == "auto" else config.kind
    if kind != default_kind(family_name):
        logger.warning("objective %s on a %s model, which was pre-trained with %s: its sampler will not match",
                       kind, family_name, default_kind(family_name))
    if kind == "flow":
        if config.weighting != "none":
            raise TTMInputError("objective.weighting", f"{config.weighting} is for v-prediction",
                                "use weighting: none with flow matching")
        return FlowMatching(config.flow_shift or flow_shift_of(scheduler))
    return VPrediction(scheduler, config.weighting, config.min_snr_gamma)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample-weighted MSE, averaged over the elements ``mask`` keeps (all when None).

    Args:
        prediction, target: ``[B, C, F, H, W]``.
        weight: ``[B]``.
        mask: broadcastable to the prediction, 1 = counted (Wan TI2V: every latent frame but the first).
    Returns:
        a scalar float32.
    """
    error = (prediction.float() - target.float()) ** 2
    if mask is None:
        per_sample = error.flatten(1).mean(1)
    else:
        m = mask.to(error.dtype).expand_as(error)
        per_sample = (error * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return (per_sample * weight.to(per_sample.device)).mean()
