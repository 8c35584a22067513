"""Rectified-flow conventions, in one place (docs/design.md §3).

Noising is ``x_sigma = (1 - sigma) * x0 + sigma * eps`` with ``sigma`` in [0, 1] and the
network timestep ``t = 1000 * sigma``. A model predicts either the velocity ``v = eps - x0``
(Wan, minWM) or the clean latent ``x0`` (small models on wide pixel latents); samplers and
losses convert between the two only through the functions below.
"""

from __future__ import annotations

from typing import Sequence

import torch

PREDICTION_TYPES = ("v", "x0")
NUM_TRAIN_TIMESTEPS = 1000


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Wan's timestep shift: ``s * sigma / (1 + (s - 1) * sigma)``; s > 1 spends more steps at high noise."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def euler_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """A shifted uniform grid from 1 to 0 with ``num_steps + 1`` points (float64)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


def timesteps_to_sigmas(timesteps: Sequence[float], shift: float) -> torch.Tensor:
    """Few-step schedules are lists of timesteps in [0, 1000]; returns their shifted sigmas."""
    if len(timesteps) == 0:
        raise ValueError("the timestep list is empty")
    sigmas = torch.tensor([float(t) for t in timesteps], dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
    if (sigmas <= 0).any() or (sigmas > 1).any():
        raise ValueError(f"timesteps must lie in (0, 1000], got {list(timesteps)}")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError(f"timesteps must decrease strictly, got {list(timesteps)}")
    return shift_sigma(sigmas, shift)


def expand_sigma(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar, per-sample (B,) or per-frame (B, F) sigma against a (B, C, F, H, W) latent."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=like.device)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim == 1:
        return sigma.view(-1, 1, 1, 1, 1)
    if sigma.ndim == 2:
        return sigma[:, None, :, None, None]
    raise ValueError(f"sigma must be a scalar, (B,) or (B, F); got shape {tuple(sigma.shape)}")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    s = expand_sigma(sigma, x0)
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)


def to_x0(prediction: torch.Tensor, x_t: torch.Tensor, sigma, prediction_type: str) -> torch.Tensor:
    """The clean-latent estimate implied by a model output."""
    if prediction_type == "x0":
        return prediction
    check_prediction_type(prediction_type)
    s = expand_sigma(sigma, x_t)
    return (x_t.float() - s * prediction.float()).to(x_t.dtype)


def to_velocity(prediction: torch.Tensor, x_t: torch.Tensor, sigma, prediction_type: str) -> torch.Tensor:
    """The velocity ``eps - x0`` implied by a model output (x0 outputs need sigma > 0)."""
    if prediction_type == "v":
        return prediction
    check_prediction_type(prediction_type)
    s = expand_sigma(sigma, x_t)
    if (s <= 0).any():
        raise ValueError("an x0 prediction has no defined velocity at sigma = 0")
    return ((x_t.float() - prediction.float()) / s).to(x_t.dtype)


def training_target(x0: torch.Tensor, noise: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the network regresses for a given prediction type."""
    check_prediction_type(prediction_type)
    return noise - x0 if prediction_type == "v" else x0
