"""SIGKILL at every stage of a save, before and after the first complete checkpoint: the run always finishes
with the weights of an uninterrupted run, and metrics.jsonl / events.jsonl log each step exactly once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from loom.train.checkpoint import SAVE_STAGES, list_checkpoints
from loom.train.trainer import Trainer

from .conftest import example_manifest, make_cfg, manifest_sources, read_metrics, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
# a bad row (missing image) makes skip events, so events.jsonl has lines to duplicate
ROWS = ["t2i-0", "cmp-0", "missing", "edit-0", "sty-0", "und-0"]
COMMON = ("run.total_steps=4", "checkpoint.every=2", "checkpoint.export_weights=raw", "data.vae_cond_dropout=0.3")


def _manifest(folder: Path) -> Path:
    path = example_manifest(folder, [r if r != "missing" else "t2i-0" for r in ROWS])
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[2] = {**rows[2], "id": "missing", "targets": ["images/gone.png"]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(tmp_path: Path, run: Path, src: tuple[str, ...], fault: str = "") -> subprocess.CompletedProcess:
    y = tmp_path / "base.yaml"
    y.write_text("run: {total_steps: 1}\n")
    # the same intra-op thread count as the in-process straight run (two_threads): bit-exact comparisons
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOM_FAULT": fault, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "loom.train", str(y), *tiny_overrides(run, *COMMON, sources=src)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_sigkill_at_every_save_stage_and_logs_once(tmp_path, two_threads):
    src = manifest_sources(_manifest(tmp_path / "data"))
    straight = tmp_path / "straight"
    Trainer(make_cfg(straight, *COMMON, sources=src)).run()

    run, survived = tmp_path / "run", []
    # first kill before any complete checkpoint (the save of step 2), then one kill per stage of the save of step 4
    kills = [("save:after_shards", 2), *((stage, 4) for stage in SAVE_STAGES)]
    for stage, step in kills:
        r = _cli(tmp_path, run, src, f"{stage}@{step}")
        assert r.returncode == -9, (stage, r.stderr[-2000:])
        done = [s for s, _ in list_checkpoints(run / "checkpoints")]
        assert done == ([] if step == 2 else [2, 4] if stage == "save:after_rename" else [2]), (stage, done)
        survived.append(f"{stage}@{step}")
    r = _cli(tmp_path, run, src)
    assert r.returncode == 0, r.stderr[-2000:]
    print(f"\n[figure] SIGKILLs survived (one per stage, then a clean finish): {', '.join(survived)}")

    wa = load_file(str(straight / "exports" / "step-0000004" / "ema.safetensors"))
    wb = load_file(str(run / "exports" / "step-0000004" / "ema.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    keys = ("step", "loss", "grad_norm", "bad_samples")
    ma, mb = read_metrics(straight), read_metrics(run)
    assert [r["step"] for r in mb] == [1, 2, 3, 4]  # each step once, in order
    assert [[r[k] for k in keys] for r in ma] == [[r[k] for k in keys] for r in mb]
    ea, eb = _lines(straight / "events.jsonl"), _lines(run / "events.jsonl")
    assert ea and ea == eb  # the skip events of each step exactly once, as in the uninterrupted run
    assert all(e["source"].endswith(":3:missing") for e in eb)


def test_crash_before_first_checkpoint_then_rerun_logs_each_step_once(tmp_path, monkeypatch):
    """In-process and quick: a run dies in its first save (no checkpoint); the rerun starts at step 0 and must not
    append to the dead run's lines (was: metrics steps [1, 2, 1, 2], events twice)."""
    src = manifest_sources(_manifest(tmp_path / "data"))
    run = tmp_path / "run"
    extra = ("run.total_steps=2", "checkpoint.every=2", "checkpoint.export_at_end=false")

    def die(self):
        raise KeyboardInterrupt("killed in the first save")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "save", die)
        try:
            Trainer(make_cfg(run, *extra, sources=src)).run()
        except KeyboardInterrupt:
            pass
    assert [r["step"] for r in read_metrics(run)] == [1, 2] and list_checkpoints(run / "checkpoints") == []
    first = _lines(run / "events.jsonl")
    Trainer(make_cfg(run, *extra, sources=src)).run()
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert first and _lines(run / "events.jsonl") == first
