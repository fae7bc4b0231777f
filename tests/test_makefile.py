"""`make setup` installs torch first; TORCH_INDEX_URL (documented) picks the index of that one pip call."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dry(tmp_path, *extra: str) -> list[str]:
    r = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'v'}", *extra], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [ln for ln in r.stdout.splitlines() if "pip install" in ln and "torch==" in ln]


def test_torch_index_url(tmp_path):
    assert _dry(tmp_path) == [f"{tmp_path / 'v'}/bin/pip install -q torch==2.13.0"]  # unset: unchanged
    url = "https://download.pytorch.org/whl/cpu"
    assert _dry(tmp_path, f"TORCH_INDEX_URL={url}") == [
        f"{tmp_path / 'v'}/bin/pip install -q --index-url {url} torch==2.13.0"]
    assert "TORCH_INDEX_URL" in (ROOT / "README.md").read_text()
