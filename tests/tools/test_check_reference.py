"""The reference checker is a contract: one line per case, then `N passed, M failed`; exit 0 only if all pass."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from loom.tools.check_reference import check
from loom.tools.fixture import Fixture, compare

CASES = ["train_forward", "vit_features", "vae", "infer_t2i", "infer_edit", "infer_text", "kv_consistency"]


@pytest.mark.parametrize("case", CASES)
def test_fixture_case_passes(fixture_dir, case):
    out = io.StringIO()
    passed, failed, skipped = check(str(fixture_dir), only=[case], stream=out)
    assert (passed, failed, skipped) == (1, 0, 0), out.getvalue()
    line = out.getvalue().splitlines()[0]
    err = float(re.search(r"max_err\s+(\S+)", line).group(1))
    # float cases sit far below the 1e-4 tolerance; uint8 images may be one level off
    assert err < (1.0 + 1e-9 if case.startswith("infer_") and case != "infer_text" else 5e-5), line


def test_cli_output_format_and_exit_status(fixture_dir):
    r = subprocess.run([sys.executable, "-m", "loom.tools.check_reference", str(fixture_dir)],
                       capture_output=True, text=True, timeout=300)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines[-1] == f"{len(lines) - 1} passed, 0 failed"
    for line in lines[:-1]:
        assert re.match(r"^\S+\s+max_err\s+\S+\s+(PASS|FAIL|SKIP)", line), line
    assert {ln.split()[0] for ln in lines[:-1]} >= set(CASES)


def test_perturbed_weights_fail(tmp_path, fixture_dir):
    """A real bug must show: scaling one MLP weight by 1.01 fails train_forward and exits non-zero."""
    dst = tmp_path / "fx"
    shutil.copytree(fixture_dir, dst)
    sd = load_file(str(dst / "ema.safetensors"))
    key = "language_model.model.layers.0.mlp_moe_gen.down_proj.weight"
    sd[key] = sd[key] * 1.01
    save_file(sd, str(dst / "ema.safetensors"))
    out = io.StringIO()
    passed, failed, _ = check(str(dst), only=["train_forward", "vit_features"], stream=out)
    text = out.getvalue()
    assert failed == 1 and passed == 1, text
    assert re.search(r"train_forward .* FAIL", text)
    r = subprocess.run([sys.executable, "-m", "loom.tools.check_reference", str(dst), "--case", "train_forward"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stdout.strip().endswith("0 passed, 1 failed")


def test_compare_tolerances():
    ref = torch.tensor([1.0, -float("inf"), 100.0])
    assert compare(ref + torch.tensor([5e-5, 0, 5e-3]), ref, {"atol": 1e-4, "rtol": 1e-4})[1]
    assert not compare(ref + torch.tensor([2e-4, 0, 0]), ref, {"atol": 1e-4, "rtol": 1e-4})[1]
    u8 = torch.zeros(10, 10, 3, dtype=torch.uint8)
    one_off = u8.clone()
    one_off[0, 0, 0] = 1
    assert compare(one_off, u8, {"max_abs_diff": 1, "max_mismatch_fraction": 0.01})[1]
    one_off[0, :, :] = 1  # 10% of values differ
    assert not compare(one_off, u8, {"max_abs_diff": 1, "max_mismatch_fraction": 0.01})[1]
    assert not compare(torch.tensor([1, 2]), torch.tensor([1, 3]), {"exact": True})[1]


def test_fixture_metadata_loads(fixture_dir):
    fx = Fixture.load(fixture_dir)
    assert set(CASES) <= set(fx.cases)
    assert fx.tolerance("infer_t2i/image_uint8")["max_abs_diff"] == 1
