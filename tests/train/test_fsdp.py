"""A 2-process FSDP2 run on CPU (gloo) equals the 1-process run on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loom.train.trainer import Trainer

from .conftest import make_cfg, read_metrics, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
# eps=1e-6: see test_grad_accumulation_matches_bigger_batch (zero-gradient ViT k bias + Adam eps 1e-15)
COMMON = ("run.total_steps=3", "checkpoint.export_weights=ema", "ema.decay=0.5", "optim.eps=1e-6",
          "parallel.activation_checkpointing=true", "data.text_cond_dropout=0.5", "data.vae_cond_dropout=0.5")


def test_two_process_fsdp_matches_single_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    Trainer(make_cfg(one, *COMMON, "data.batch_size=2")).run()

    y = tmp_path / "base.yaml"
    y.write_text("run: {total_steps: 1}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "loom.train", str(y), *tiny_overrides(two, *COMMON, "data.batch_size=1", "parallel.shard=full")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("[loom] training finished at step 3") == 1  # rank-0-only messages print once

    m1, m2 = read_metrics(one), read_metrics(two)
    assert len(m1) == len(m2) == 3
    for i, (a, b) in enumerate(zip(m1, m2)):
        # same samples per step (rank r takes rows r, r+2, …; the single process packs both)
        assert a["ce_tokens"] == b["ce_tokens"] and a["mse_tokens"] == b["mse_tokens"] and b["samples"] == 2 * (i + 1)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    w1 = load_file(str(one / "exports" / "step-0000003" / "ema.safetensors"))
    w2 = load_file(str(two / "exports" / "step-0000003" / "ema.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    # the sharded resume state was written by both ranks
    ck = two / "checkpoints" / "step-0000003"
    assert (ck / "rng-rank00000.pt").exists() and (ck / "rng-rank00001.pt").exists()
    assert len(list((ck / "state").glob("*.distcp"))) == 2
