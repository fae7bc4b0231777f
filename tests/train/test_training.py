"""Tiny CPU runs: overfitting, exact resume, accumulation equivalence, EMA."""

import pytest
import torch
from safetensors.torch import load_file

from loom.data.loader import ListSource
from loom.train.trainer import Trainer

from .conftest import make_cfg, read_metrics, tiny_plan


def _weights(run_dir, step):
    return load_file(str(run_dir / "exports" / f"step-{step:07d}" / "ema.safetensors"))


def test_overfits_a_fixed_batch(tmp_path):
    plans = [tiny_plan(0), tiny_plan(1)]
    cfg = make_cfg(tmp_path / "r", "run.total_steps=30", "data.batch_size=2", "optim.lr=3e-3",
                   "checkpoint.export_at_end=false")
    Trainer(cfg, sources={"fixed": ListSource(plans)}).run()
    m = read_metrics(tmp_path / "r")
    assert len(m) == 30
    first = sum(r["loss"] for r in m[:5]) / 5
    last = sum(r["loss"] for r in m[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert m[-1]["ce"] < 0.5 * m[0]["ce"]
    assert all(r["ce_tokens"] == 2 * 9 and r["mse_tokens"] == 2 * 16 for r in m)  # 2 samples × (8+1), 2 × 4×4


def test_resume_is_bit_exact(tmp_path):
    extra = ("checkpoint.export_weights=raw", "data.text_cond_dropout=0.3", "data.vit_cond_dropout=0.3",
             "data.vae_cond_dropout=0.3", "data.sources.syn.num_rows=5", "data.batch_size=2")
    a, b = tmp_path / "straight", tmp_path / "resumed"
    Trainer(make_cfg(a, "run.total_steps=6", *extra)).run()
    Trainer(make_cfg(b, "run.total_steps=3", *extra)).run()  # saves step 3 at the end
    assert (b / "checkpoints" / "step-0000003" / "trainer_state.json").exists()
    out = Trainer(make_cfg(b, "run.total_steps=6", *extra)).run()  # auto-resumes from step 3
    assert out["step"] == 6
    la = [(r["step"], r["loss"], r["ce"], r["mse"], r["grad_norm"]) for r in read_metrics(a)]
    lb = [(r["step"], r["loss"], r["ce"], r["mse"], r["grad_norm"]) for r in read_metrics(b)]
    assert [s for s, *_ in la] == [1, 2, 3, 4, 5, 6]
    assert la == lb  # exact float equality, including the steps after the resume
    wa, wb = _weights(a, 6), _weights(b, 6)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # and training actually changed the weights
    w3 = _weights(b, 3)
    assert not torch.equal(w3["language_model.lm_head.weight"], wb["language_model.lm_head.weight"])


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    plans = [tiny_plan(i, text_len=4 + 3 * i) for i in range(4)]  # unequal token counts per micro-batch
    # eps=1e-6: the ViT k_proj bias has a mathematically zero gradient (softmax shift invariance); with BAGEL's
    # eps=1e-15 Adam turns its float noise (~1e-12, summation-order dependent) into full lr-sized steps.
    common = ("run.total_steps=2", "checkpoint.export_weights=raw", "ema.enabled=false", "optim.eps=1e-6")
    Trainer(make_cfg(tmp_path / "big", *common, "data.batch_size=2"), {"p": ListSource(plans)}).run()
    Trainer(make_cfg(tmp_path / "acc", *common, "data.batch_size=1", "optim.grad_accum=2"),
            {"p": ListSource(plans)}).run()
    mb, ma = read_metrics(tmp_path / "big"), read_metrics(tmp_path / "acc")
    for x, y in zip(mb, ma):
        assert x["ce_tokens"] == y["ce_tokens"] and x["mse_tokens"] == y["mse_tokens"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    wb, wa = _weights(tmp_path / "big", 2), _weights(tmp_path / "acc", 2)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_ema_tracks_live_weights(tmp_path):
    cfg = make_cfg(tmp_path / "r", "run.total_steps=2", "ema.decay=0.5", "checkpoint.export_at_end=false")
    tr = Trainer(cfg)
    start = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    tr.run()
    live = dict(tr.model.named_parameters())
    k = "language_model.lm_head.weight"
    # after 2 steps: ema = 0.25·w0 + 0.25·w1 + 0.5·w2 — strictly between start and live, not equal to either
    ema = tr.ema.shadow[k]
    assert not torch.equal(ema, live[k]) and not torch.equal(ema, start[k])
    assert (ema - live[k]).abs().max() < (start[k] - live[k]).abs().max()
