"""The training objective (Loom Eq. 2 with BAGEL's normalisation, bagel-spec §4.1):

    loss = ce_weight · CE + mse_weight · MSE,
    CE  = Σ_{all CE tokens of the optimizer step, all ranks} ce_i  / N_ce        (N_ce: global CE token count)
    MSE = Σ_{all noisy latent tokens of the step, all ranks} mse_i / N_mse       (mse_i: mean over Dl channels)

i.e. global per-token means. With `ce_reweighting` CE becomes Σ w_i·ce_i / Σ w_i (w = 1/√len per text item,
BAGEL's "square" mode). Each rank back-propagates world_size · (its local sums / global counts): FSDP averages
gradients over ranks, so the applied gradient is exactly ∇loss. Counts are taken over every micro-batch of the
optimizer step, so accumulating 2 micro-batches of b samples gives the same update as one batch of 2b (BAGEL
normalises each micro-batch separately and divides by the accumulation steps; with one micro-batch per step the
two definitions coincide). Loom's weights are CE:MSE = 0.25:1 (paper §4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LossConfig:
    ce_weight: float = 0.25  # Loom §4.1 (BAGEL default 1.0)
    mse_weight: float = 1.0
    ce_reweighting: bool = False  # BAGEL's ce_loss_reweighting (1/sqrt(len) per text item)
    timestep_shift: float = 1.0  # train-time shift of t = sigmoid(n) (BAGEL default 1.0)


@dataclass
class StepCounts:
    """Global denominators of one optimizer step (summed over micro-batches and ranks)."""

    ce: float  # Σ CE weights (token count without reweighting)
    mse: float  # number of noisy latent tokens


def local_counts(ce_weights: Tensor, num_mse: int, cfg: LossConfig) -> tuple[float, float]:
    """This micro-batch's contribution to the step's denominators."""
    ce = float(ce_weights.double().sum()) if cfg.ce_reweighting else float(ce_weights.numel())
    return ce, float(num_mse)


def micro_loss(ce: Tensor, mse: Tensor, ce_weights: Tensor, counts: StepCounts, cfg: LossConfig,
               world_size: int, unused: Tensor | float = 0.0) -> tuple[Tensor, float, float]:
    """(loss to back-propagate on this rank, local Σce·w, local Σmse) for one micro-batch.

    ce [N_ce] per-token cross-entropy, mse [N_mse] per-token MSE (unreduced, from `LoomOutput`); `unused` is
    `LoomOutput.unused` (an exact 0 that gives the parameters this pack did not use a zero gradient)."""
    w = ce_weights.to(ce.device, ce.dtype) if cfg.ce_reweighting else torch.ones_like(ce)
    ce_sum = (ce * w).sum()
    mse_sum = mse.sum()
    loss = ce.new_zeros(())
    if counts.ce > 0:
        loss = loss + cfg.ce_weight * ce_sum / counts.ce
    if counts.mse > 0:
        loss = loss + cfg.mse_weight * mse_sum.to(loss.dtype) / counts.mse
    return loss * world_size + unused, float(ce_sum.detach()), float(mse_sum.detach())


def reported(ce_sum: float, mse_sum: float, counts: StepCounts, cfg: LossConfig) -> dict[str, float]:
    """Global CE, MSE and total loss of a step from the all-reduced sums."""
    ce = ce_sum / counts.ce if counts.ce > 0 else 0.0
    mse = mse_sum / counts.mse if counts.mse > 0 else 0.0
    return {"loss": cfg.ce_weight * ce + cfg.mse_weight * mse, "ce": ce, "mse": mse}
