"""Samplers: multi-step Euler with classifier-free guidance, and few-step "predict x0, re-noise".

A sampler knows nothing about models, caches or chunks. It calls ``predict(x_t, sigma,
with_uncond)`` which returns the model's raw output for the conditional branch and, when
``with_uncond`` is true, for the unconditional one; the sampler applies the guidance and
converts with :mod:`minwm_env.flow`. The same sampler denoises a whole clip bidirectionally
or a single chunk inside the autoregressive loop (:mod:`minwm_env.generator`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from . import flow

Predict = Callable[[torch.Tensor, float, bool], "tuple[torch.Tensor, Optional[torch.Tensor]]"]


def row_generators(seed: int | Sequence[int] | None, batch_size: int) -> list[torch.Generator]:
    """One noise generator per batch row: an int seed s seeds rows s, s + 1, ...; a sequence
    gives each row's seed; None draws a random one."""
    if seed is None:
        seed = secrets.randbits(62)
    seeds = [seed + i for i in range(batch_size)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != batch_size:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch_size}")
    return [torch.Generator().manual_seed(s) for s in seeds]


def randn_rows(shape: Sequence[int], generators: Sequence[torch.Generator], device, dtype) -> torch.Tensor:
    """Standard normal noise with row ``i`` drawn from ``generators[i]`` (on the CPU, so results
    do not depend on the device); batched rollouts then equal single ones seeded alike."""
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch row: {len(generators)} for batch {shape[0]}")
    rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def _guided(predict: Predict, x: torch.Tensor, sigma: float, guidance_scale: float) -> torch.Tensor:
    cond, uncond = predict(x, sigma, guidance_scale != 1.0)
    if guidance_scale == 1.0:
        return cond
    # Guidance is linear in the output, so it is the same in v- and x0-space at fixed (x_t, sigma).
    return uncond + guidance_scale * (cond - uncond)


@dataclass
class EulerSampler:
    """Deterministic Euler on a shifted sigma grid (Wan's 50-step baseline)."""

    num_steps: int = 50
    """number of model evaluations (doubled by guidance)"""
    shift: float = 5.0
    """timestep shift s (docs/design.md §3)"""
    guidance_scale: float = 5.0
    """classifier-free guidance; 1 disables the unconditional branch"""

    def sigmas(self) -> torch.Tensor:
        return flow.euler_sigmas(self.num_steps, self.shift)

    def sample(self, predict: Predict, noise: torch.Tensor, prediction_type: str,
               generators: Sequence[torch.Generator] | None = None,
               on_step: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
        """``on_step(i, sigma, x)`` sees the state before each step i (ODE pairs, stage 2a)."""
        flow.check_prediction_type(prediction_type)
        sigmas = self.sigmas().tolist()
        x = noise
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            if on_step is not None:
                on_step(i, sigma, x)
            out = _guided(predict, x, sigma, self.guidance_scale)
            if sigma_next == 0.0:
                # The last step lands on sigma = 0, where the Euler update is the x0 estimate itself.
                return flow.to_x0(out, x, sigma, prediction_type)
            velocity = flow.to_velocity(out, x, sigma, prediction_type)
            x = (x.float() + (sigma_next - sigma) * velocity.float()).to(x.dtype)
        return x


@dataclass
class FewStepSampler:
    """Distilled few-step sampling: predict x0 at each timestep, re-noise it with fresh noise
    to the next one; the last prediction is the output (DMD / Self-Forcing convention)."""

    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    """timesteps in (0, 1000] before the shift, strictly decreasing"""
    shift: float = 5.0
    """timestep shift s (docs/design.md §3)"""
    guidance_scale: float = 1.0
    """classifier-free guidance; distilled students run without it"""

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def sigmas(self) -> torch.Tensor:
        return flow.timesteps_to_sigmas(self.timesteps, self.shift)

    def sample(self, predict: Predict, noise: torch.Tensor, prediction_type: str,
               generators: Sequence[torch.Generator] | None = None,
               on_step: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
        flow.check_prediction_type(prediction_type)
        sigmas = self.sigmas().tolist()
        if sigmas[0] < 1.0 - 1e-9:
            raise ValueError(f"the first few-step timestep must be 1000 (pure noise), got {self.timesteps[0]}")
        x = noise
        for i, sigma in enumerate(sigmas):
            if on_step is not None:
                on_step(i, sigma, x)
            x0 = flow.to_x0(_guided(predict, x, sigma, self.guidance_scale), x, sigma, prediction_type)
            if i == len(sigmas) - 1:
                return x0
            if generators is None:
                fresh = torch.randn_like(x0, dtype=torch.float32).to(x0.dtype)
            else:
                fresh = randn_rows(x0.shape, generators, x0.device, x0.dtype)
            x = flow.add_noise(x0, fresh, sigmas[i + 1])
        raise AssertionError("unreachable")


Sampler = EulerSampler | FewStepSampler
