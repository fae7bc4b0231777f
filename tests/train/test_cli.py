"""`python -m loom.train` set-up errors are one line with exit status 2 and leave no run folder; config paths
work from any directory; Ctrl-C saves like SIGTERM; --log-level; rank-0-only messages print once."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loom.train.__main__ import main
from loom.train.checkpoint import CheckpointManager, list_checkpoints

from .conftest import read_metrics, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "train"


def _one_line_error(capsys, rc, code=2, after_logs=False) -> str:
    """The error is one line; with `after_logs` the trainer's INFO start-up lines may precede it."""
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if after_logs:
        assert all(" INFO " in ln for ln in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("loom train: error: "), err
    return lines[0]


def test_missing_config_file(tmp_path, capsys):
    err = _one_line_error(capsys, main([str(tmp_path / "nope.yaml")]))
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in err


def test_unset_bagel_dir_is_named_and_no_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BAGEL_DIR", raising=False)
    monkeypatch.delenv("LOOM_DATA", raising=False)
    run = tmp_path / "run"
    err = _one_line_error(capsys, main([str(CONFIGS / "style.yaml"), f"run.dir={run}"]))
    assert "model.init=bagel:" in err and "BAGEL_DIR is not set" in err and "export BAGEL_DIR=" in err
    assert "data.sources.style.path=" in err and "LOOM_DATA is not set" in err
    assert not run.exists()


def test_setup_error_after_start_leaves_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    err = _one_line_error(capsys, main([str(CONFIGS / "tiny_cpu.yaml"), f"run.dir={run}",
                                        "optim.lora.enabled=true", "optim.lora.target_modules=nomatch"]),
                          after_logs=True)
    assert "Target modules nomatch not found" in err and "no run folder left behind" in err
    assert not run.exists()


def test_override_typo_is_reported_as_an_override(tmp_path, capsys):
    err = _one_line_error(capsys, main([str(CONFIGS / "tiny_cpu.yaml"), f"run.dir={tmp_path}", "optim.lrr=1"]))
    assert "invalid command-line override 'optim.lrr=1'" in err and "Did you mean: 'lr'" in err
    assert "tiny_cpu.yaml" not in err
    y = tmp_path / "typo.yaml"
    y.write_text("optim: {lrr: 1}\n")
    err = _one_line_error(capsys, main([str(y), f"run.dir={tmp_path}"]))
    assert f"invalid config in {y}" in err and "lrr" in err


def test_shipped_config_paths_work_from_any_directory(tmp_path, monkeypatch):
    from loom.train.config import load_train_config
    from loom.train.preflight import preflight

    monkeypatch.chdir(tmp_path)  # outside the checkout
    cfg = load_train_config(CONFIGS / "tiny_cpu.yaml")
    assert Path(cfg.model.tokenizer).is_dir() and Path(cfg.data.sources["examples"].path).is_file()
    preflight(cfg, CONFIGS / "tiny_cpu.yaml")
    y = tmp_path / "mine.yaml"  # ${config_dir:} anchors a user's own paths at their YAML
    (tmp_path / "manifests").mkdir()
    y.write_text("data: {sources: {a: {path: '${config_dir:}/manifests/a.jsonl'}}}\n")
    assert load_train_config(y, tiny_overrides(tmp_path / "r")).data.sources["a"].path == \
        str(tmp_path / "manifests" / "a.jsonl")


def test_rank_nonzero_prints_no_setup_error_and_no_warnings(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == ""  # rank 0 says it once
    from loom.train.trainer import _setup_logging

    _setup_logging(tmp_path, rank=1)
    logging.getLogger("loom.train").warning("non-finite loss on every rank")
    assert "non-finite" not in capsys.readouterr().err
    assert "non-finite" in (tmp_path / "logs" / "train-rank00001.log").read_text()  # still in its log file
    _setup_logging(tmp_path, rank=0)
    logging.getLogger("loom.train").warning("said once")
    assert "said once" in capsys.readouterr().err


def test_second_ctrl_c_during_save_and_log_level(tmp_path, capsys, monkeypatch):
    """Ctrl-C twice, the second inside a save: the unfinished step-N.tmp is removed, one line, exit 130.
    --log-level warning keeps INFO off the console but in the log file."""
    def interrupted_save(self, step, *a, **k):
        (self.root / f"step-{step:07d}.tmp").mkdir(parents=True)
        raise KeyboardInterrupt
    monkeypatch.setattr(CheckpointManager, "save", interrupted_save)
    run = tmp_path / "run"
    y = tmp_path / "base.yaml"
    y.write_text("run: {total_steps: 1}\n")
    rc = main([str(y), *tiny_overrides(run, "run.total_steps=1", "checkpoint.export_at_end=false"),
               "--log-level", "warning"])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip().splitlines()[-1] == ("loom train: error: stopped without saving at step 1; "
                                                         "rerun the same command to resume from the last checkpoint")
    assert not list((run / "checkpoints").glob("*.tmp")) and "Traceback" not in err
    assert " INFO " not in err and " INFO " in (run / "logs" / "train-rank00000.log").read_text()


def test_ctrl_c_finishes_the_step_saves_and_exits_130(tmp_path):
    run = tmp_path / "run"
    y = tmp_path / "base.yaml"
    y.write_text("run: {total_steps: 1}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "loom.train", str(y),
                          *tiny_overrides(run, "run.total_steps=100000", "checkpoint.every=0")],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if (run / "metrics.jsonl").exists() and read_metrics(run):
            break
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()[1][-3000:]
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 130, err[-3000:]
    steps = [s for s, _ in list_checkpoints(run / "checkpoints")]
    assert len(steps) == 1 and steps[0] >= 1 and "Traceback" not in err
    assert f"saved a checkpoint at step {steps[0]}" in err and f"training terminated at step {steps[0]}" in out
    assert not list((run / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("level", ["loud"])
def test_bad_log_level_is_a_usage_error(tmp_path, capsys, level):
    with pytest.raises(SystemExit) as e:
        main([str(CONFIGS / "tiny_cpu.yaml"), "--log-level", level])
    assert e.value.code == 2 and "invalid choice: 'loud'" in capsys.readouterr().err


def test_data_validate_names_unset_bagel_dir(capsys, monkeypatch):
    from loom.data.__main__ import main as data_main

    monkeypatch.delenv("BAGEL_DIR", raising=False)
    rc = data_main(["validate", str(ROOT / "data/examples/manifest.jsonl"), "--train-config",
                    str(CONFIGS / "style.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("loom data validate: error: model.init=bagel:") and "BAGEL_DIR is not set" in err
    assert len(err.strip().splitlines()) == 1 and "LOOM_DATA" not in err  # its own manifest, not the config's data
