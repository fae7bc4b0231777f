"""Crash mid-save, SIGTERM, NaN steps and corrupt samples: nothing is lost and nothing disappears silently."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loom.data.loader import DataError, ListSource
from loom.train.checkpoint import list_checkpoints
from loom.train.trainer import Trainer, TrainingError

from .conftest import make_cfg, read_metrics, tiny_overrides, tiny_plan

ROOT = Path(__file__).resolve().parents[2]


def _run_cli(tmp_path: Path, run_dir: Path, *extra: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    y = tmp_path / "base.yaml"
    y.write_text("run: {total_steps: 1}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "loom.train", str(y), *tiny_overrides(run_dir, *extra)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    extra = ("run.total_steps=4", "checkpoint.every=2", "checkpoint.export_at_end=false")
    # the first save (step 2) completes; LOOM_FAULT kills the process with SIGKILL inside the save of step 4
    # — but only from the second save on, so we arm it after step 2 by running twice
    r = _run_cli(tmp_path, run, "run.total_steps=2", "checkpoint.every=2", "checkpoint.export_at_end=false")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run_cli(tmp_path, run, *extra, env_extra={"LOOM_FAULT": "save:after_shards"})
    assert r.returncode == -9, r.stderr[-2000:]
    ck = run / "checkpoints"
    assert (ck / "step-0000004.tmp").is_dir() and not (ck / "step-0000004").exists()
    assert [s for s, _ in list_checkpoints(ck)] == [2]
    # the previous checkpoint loads and training continues from it
    tr = Trainer(make_cfg(run, *extra))
    assert tr.step == 2
    assert not (ck / "step-0000004.tmp").exists()  # leftovers cleaned at start
    out = tr.run()
    assert out["step"] == 4 and [s for s, _ in list_checkpoints(ck)] == [2, 4]


def test_sigterm_saves_and_exits(tmp_path):
    run = tmp_path / "run"
    r = _run_cli(tmp_path, run, "run.total_steps=50", "checkpoint.every=0",
                 env_extra={"LOOM_FAULT": "sigterm:2"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "terminated at step 2" in r.stdout
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert not (run / "exports").exists()  # a terminated run is resumed, not exported


def test_keep_last_k(tmp_path):
    run = tmp_path / "run"
    Trainer(make_cfg(run, "run.total_steps=5", "checkpoint.every=1", "checkpoint.keep_last=2",
                     "checkpoint.export_at_end=false")).run()
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4, 5]


def _nan_plan(seed):
    p = tiny_plan(seed)
    p.items[-1].image[0, 0, 0] = float("nan")  # the noisy target → NaN MSE
    return p


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    plans = [tiny_plan(0), _nan_plan(1), tiny_plan(2), tiny_plan(3)]
    cfg = make_cfg(tmp_path / "r", "run.total_steps=4", "data.batch_size=1", "checkpoint.export_at_end=false",
                   "ema.decay=0.5")
    tr = Trainer(cfg, {"p": ListSource(plans)})
    tr.run()
    m = read_metrics(tmp_path / "r")
    assert [r["skipped_steps"] for r in m] == [0, 1, 1, 1]
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert all(torch.isfinite(t).all() for t in tr.ema.shadow.values())
    ev = [json.loads(x) for x in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    assert ev == [{"kind": "nonfinite_step", "step": 2, "sources": ["tiny:1"]}]


def test_too_many_nonfinite_steps_stop(tmp_path):
    cfg = make_cfg(tmp_path / "r", "run.total_steps=10", "data.batch_size=1", "robust.max_nonfinite_steps=2")
    with pytest.raises(TrainingError, match="NaN/inf"):
        Trainer(cfg, {"p": ListSource([_nan_plan(0)])}).run()


class _Flaky(ListSource):
    """Rows in `bad` fail like an undecodable image would."""

    def __init__(self, plans, bad):
        super().__init__(plans, "flaky")
        self.bad = set(bad)

    def plans(self, row: int, rng: random.Random):
        if row in self.bad:
            raise OSError(f"cannot identify image file 'img{row}.png'")
        return super().plans(row, rng)


def test_corrupt_samples_are_skipped_logged_counted(tmp_path):
    src = _Flaky([tiny_plan(i) for i in range(4)], bad=[1])
    cfg = make_cfg(tmp_path / "r", "run.total_steps=3", "data.batch_size=1", "checkpoint.export_at_end=false")
    Trainer(cfg, {"p": src}).run()
    ev = [json.loads(x) for x in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    assert ev == [{"kind": "corrupt", "source": "flaky:1", "error": "OSError: cannot identify image file "
                   "'img1.png'", "step": 2, "rank": 0}]
    assert [r["bad_samples"] for r in read_metrics(tmp_path / "r")] == [0, 1, 1]
    cfg = make_cfg(tmp_path / "r2", "run.total_steps=20", "data.batch_size=1", "data.max_bad_samples=2")
    with pytest.raises(DataError, match="corrupt samples"):
        Trainer(cfg, {"p": _Flaky([tiny_plan(i) for i in range(4)], bad=[0, 1, 2])}).run()


def test_bad_sample_threshold_writes_events_first(tmp_path):
    """The skips that cross data.max_bad_samples are in events.jsonl before the one-line stop (they were lost)."""
    run = tmp_path / "r"
    cfg = make_cfg(run, "run.total_steps=20", "data.batch_size=1", "data.max_bad_samples=2")
    with pytest.raises(DataError) as e:
        Trainer(cfg, {"p": _Flaky([tiny_plan(i) for i in range(4)], bad=[0, 1, 2])}).run()
    msg = str(e.value)
    assert "\n" not in msg and "3 corrupt samples" in msg and "data.max_bad_samples=2" in msg
    assert str(run / "events.jsonl") in msg
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [x["source"] for x in ev] == ["flaky:0", "flaky:1", "flaky:2"]


def test_cli_bad_data_stop_is_one_line_without_traceback(tmp_path):
    from tests.data.test_bad_inputs import bad_manifest

    path, _ = bad_manifest(tmp_path / "d")
    run = tmp_path / "run"
    src = (f"data.sources.m.path={path}", "data.max_tokens=2048", "data.max_tokens_per_sample=2048")
    y = tmp_path / "base.yaml"
    y.write_text("run: {total_steps: 1}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "loom.train", str(y),
                        *tiny_overrides(run, "run.total_steps=5", "data.max_bad_samples=6", sources=src)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("loom train: error:")]
    assert len(err) == 1 and "corrupt samples skipped" in err[0] and "data.max_bad_samples=6" in err[0]
    assert str(run / "events.jsonl") in err[0]
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert len(ev) > 6 and all(e["kind"] == "corrupt" for e in ev)
    bomb = [e for e in ev if "DecompressionBombError" in e["error"]]
    assert bomb and bomb[0]["source"] == f"{path}:7:bomb"  # manifest:line:id


class _Buggy(ListSource):
    def plans(self, row: int, rng: random.Random):
        if row == 1:
            raise TypeError("'NoneType' object is not subscriptable")  # a bug, not bad data
        return super().plans(row, rng)


def test_programming_error_stops_the_run_with_its_traceback(tmp_path):
    cfg = make_cfg(tmp_path / "r", "run.total_steps=3", "data.batch_size=1", "checkpoint.export_at_end=false")
    with pytest.raises(TypeError, match="not subscriptable"):
        Trainer(cfg, {"p": _Buggy([tiny_plan(i) for i in range(3)])}).run()
    assert not (tmp_path / "r" / "events.jsonl").exists()  # not counted as a corrupt sample


def test_too_long_samples_count_against_a_threshold_and_are_named(tmp_path):
    plans = [tiny_plan(0), tiny_plan(1, text_len=600, source="long:1"), tiny_plan(2), tiny_plan(3, text_len=600,
                                                                                              source="long:3")]
    cfg = make_cfg(tmp_path / "r", "run.total_steps=3", "data.batch_size=1", "checkpoint.export_at_end=false")
    Trainer(cfg, {"p": ListSource(plans)}).run()
    log = (tmp_path / "r" / "logs" / "train-rank00000.log").read_text()
    assert "2 too long samples skipped this run: long:1, long:3" in log
    assert [r["too_long"] for r in read_metrics(tmp_path / "r")] == [0, 1, 2]
    cfg = make_cfg(tmp_path / "r2", "run.total_steps=5", "data.batch_size=1", "data.max_too_long_samples=1")
    with pytest.raises(DataError, match=r"2 too long samples skipped on all ranks > data.max_too_long_samples=1"):
        Trainer(cfg, {"p": ListSource(plans)}).run()
