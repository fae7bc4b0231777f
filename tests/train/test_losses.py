"""The loss normalisation of bagel-spec §4.1, computed by hand."""

import math

import torch

from loom.train.losses import LossConfig, StepCounts, local_counts, micro_loss, reported


def test_global_per_token_means_by_hand():
    cfg = LossConfig(ce_weight=0.25, mse_weight=1.0)
    # two ranks × two micro-batches: per-token CE and per-token MSE (already channel means)
    ce = {(0, 0): [1.0, 2.0], (0, 1): [3.0], (1, 0): [4.0, 5.0, 6.0], (1, 1): []}
    mse = {(0, 0): [0.5], (0, 1): [0.25, 0.75], (1, 0): [], (1, 1): [1.0, 2.0, 3.0]}
    n_ce = sum(len(v) for v in ce.values())  # 6 CE tokens in the whole step
    n_mse = sum(len(v) for v in mse.values())  # 6 MSE tokens
    counts = [local_counts(torch.ones(len(ce[k])), len(mse[k]), cfg) for k in ce]
    assert (sum(c for c, _ in counts), sum(m for _, m in counts)) == (n_ce, n_mse)
    step = StepCounts(n_ce, n_mse)
    world = 2
    grads = 0.0
    ce_tot = mse_tot = 0.0
    for k in ce:
        c, m = torch.tensor(ce[k]), torch.tensor(mse[k])
        loss, cs, ms = micro_loss(c, m, torch.ones(len(ce[k])), step, cfg, world)
        expect = world * (0.25 * sum(ce[k]) / 6 + 1.0 * sum(mse[k]) / 6)
        assert math.isclose(float(loss), expect, rel_tol=1e-6)
        grads += float(loss) / world  # FSDP averages the ranks' gradients
        ce_tot, mse_tot = ce_tot + cs, mse_tot + ms
    hand_ce = (1 + 2 + 3 + 4 + 5 + 6) / 6  # 3.5
    hand_mse = (0.5 + 0.25 + 0.75 + 1 + 2 + 3) / 6  # 1.25
    rep = reported(ce_tot, mse_tot, step, cfg)
    assert math.isclose(rep["ce"], hand_ce) and math.isclose(rep["mse"], hand_mse)
    assert math.isclose(rep["loss"], 0.25 * 3.5 + 1.25)
    # the averaged per-rank objectives sum to exactly the global loss (so the gradient is ∇loss)
    assert math.isclose(grads, rep["loss"], rel_tol=1e-6)


def test_ce_reweighting_uses_weight_sums():
    cfg = LossConfig(ce_weight=1.0, mse_weight=0.0, ce_reweighting=True)
    w = torch.tensor([0.5, 0.5, 1.0])
    c, _ = local_counts(w, 0, cfg)
    assert c == 2.0
    loss, cs, _ = micro_loss(torch.tensor([2.0, 4.0, 1.0]), torch.zeros(0), w, StepCounts(c, 0), cfg, 1)
    assert math.isclose(float(loss), (0.5 * 2 + 0.5 * 4 + 1.0) / 2.0)
    assert math.isclose(cs, 4.0)


def test_empty_terms_contribute_zero():
    cfg = LossConfig()
    loss, _, _ = micro_loss(torch.zeros(0), torch.tensor([2.0]), torch.zeros(0), StepCounts(0, 1), cfg, 1)
    assert float(loss) == 2.0
    assert reported(0.0, 2.0, StepCounts(0, 1), cfg) == {"loss": 2.0, "ce": 0.0, "mse": 2.0}
