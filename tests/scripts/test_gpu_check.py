"""scripts/gpu_check.py runs every stage at tiny scale on CPU (so the H200 script cannot rot) and records a
stage that fails or runs over its time box instead of stopping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_every_stage(tmp_path):
    out = tmp_path / "g.json"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    d = json.loads(out.read_text())
    st = d["stages"]
    assert list(st) == ["parity", "train", "t2i", "tutorial", "offload"]
    assert all(s["status"] == "ok" for s in st.values()), {k: s.get("reason") for k, s in st.items()}
    assert st["parity"]["result"]["sdpa/float32"]["ok"] and st["parity"]["result"]["sdpa/bfloat16"]["ok"]
    for key in ("small/no_ac", "large/no_ac", "small/ac", "large/ac"):
        r = st["train"]["result"][key]
        assert r["tokens_per_s"] > 0 and r["model_tflops"] > 0 and r["mfu"] is None  # no peak on CPU
    assert st["t2i"]["result"]["forwards_per_denoising_step"] == 1.0  # 3 CFG branches, one forward
    kv = st["tutorial"]["result"]["kv_bytes_held_after_frame"]
    assert len(kv) == 2 and 0 < kv[0] < kv[1]
    assert st["offload"]["result"]["forwards_per_denoising_step"] == 1.0
    md = out.with_suffix(".md").read_text()
    assert "## train: ok" in md and "989.4 TFLOPS" in md


def test_stage_over_its_time_box_is_skipped(tmp_path):
    out = tmp_path / "g.json"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out),
                          "--stages", "t2i,tutorial", "--budget-s", "6"], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    st = json.loads(out.read_text())["stages"]
    # 6 s of budget: t2i gets a 6 s box (it may finish or be cut), and whatever is left is too little for tutorial
    reason = st["tutorial"]["reason"]
    assert st["tutorial"]["status"] == "skipped" and ("budget" in reason or "time box" in reason)
    assert st["t2i"]["status"] in ("ok", "skipped")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the real check")
def test_refuses_without_cuda_unless_tiny(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert res.returncode == 2 and "--tiny" in res.stderr and not (tmp_path / "x.json").exists()
