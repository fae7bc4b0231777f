"""Rectified-flow identities and the shifted schedule."""

from __future__ import annotations

import math

import torch

from loom.model.flow import (
    euler_step,
    inference_timesteps,
    noisy_latents,
    shift_timesteps,
    timesteps_from_logits,
    velocity_target,
)


def test_xt_and_velocity_identities():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    xt = noisy_latents(x0, eps, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[-1], eps[-1])
    # d x_t / d t = eps − x0 along the straight path
    h = 1e-3
    d = (noisy_latents(x0, eps, t + h) - xt) / h
    assert torch.allclose(d, velocity_target(x0, eps), atol=1e-3)


def test_logit_normal_and_shift():
    t = timesteps_from_logits(torch.tensor([0.0, -math.inf, 0.206325]), shift=1.0)
    assert t[0] == 0.5 and t[1] == 0.0 and abs(float(t[2]) - 0.551399) < 1e-5
    assert torch.allclose(shift_timesteps(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))


def test_inference_schedule_matches_fixture_values():
    ts = inference_timesteps(6, 3.0)
    ref = torch.tensor([1.0, 0.9230769872665405, 0.8181818127632141, 0.6666666865348816, 0.4285714626312256, 0.0])
    assert torch.equal(ts, ref)


def test_euler_integrates_the_straight_flow_exactly():
    """On the ideal velocity field v = eps − x0 the sampler lands on x0 for any schedule."""
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    ts = inference_timesteps(7, 3.0)
    x = eps.clone()
    for i in range(len(ts) - 1):
        x = euler_step(x, velocity_target(x0, eps), ts[i], ts[i + 1])
    assert torch.allclose(x, x0, atol=1e-5)
