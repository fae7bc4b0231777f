"""Rectified-flow math as pure functions (bagel-spec §4). Convention: t ∈ [0, 1], t = 1 is pure noise,
x_t = (1 − t)·x0 + t·ε, velocity target v = ε − x0, and the sampler integrates from t = 1 down to 0."""

from __future__ import annotations

import torch
from torch import Tensor


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """SD3-style shift t ← s·t / (1 + (s − 1)·t); s = 1 is the identity, s > 1 spends more time near noise."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def sample_timestep_logits(num: int, generator: torch.Generator | None = None) -> Tensor:
    """Logit-normal(0, 1) draws: one per noisy target (BAGEL draws once per image/split)."""
    return torch.randn(num, generator=generator)


def timesteps_from_logits(logits: Tensor, shift: float = 1.0) -> Tensor:
    """t = shift(sigmoid(logit)); a logit of −inf (clean conditioning image) gives t = 0 exactly."""
    return shift_timesteps(torch.sigmoid(logits.float()), shift)


def noisy_latents(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 − t)·x0 + t·ε with t broadcast per token ([N] against [N, Dl])."""
    t = t.to(x0.dtype).unsqueeze(-1)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """dx_t/dt = ε − x0."""
    return noise - x0


def inference_timesteps(num_timesteps: int, shift: float) -> Tensor:
    """Shifted grid t_i over τ = linspace(1, 0, N) in float32; N − 1 model evaluations (bagel-spec §4.3)."""
    tau = torch.linspace(1, 0, num_timesteps, dtype=torch.float32)
    return shift_timesteps(tau, shift)


def euler_step(x: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float) -> Tensor:
    """x ← x − v·(t − t_next): one step from t towards the data end."""
    dt = t - t_next
    return x - v.to(x.dtype) * dt
