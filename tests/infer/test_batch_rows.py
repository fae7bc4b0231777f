"""--batch rows: the training manifest's schema, strict types with the 1-based line and the key, checked before the
model loads; --overwrite honoured; a resume with other settings refused with what differs; Ctrl-C keeps work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infer_helpers import FIXTURE, TINY_ARGS, pattern_image

from loom.infer.__main__ import main
from loom.infer.batch import read_batch
from loom.infer.pipeline import LoomPipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def no_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the rows were checked")
    monkeypatch.setattr(LoomPipeline, "from_pretrained", classmethod(boom))


def _rows(tmp_path: Path, *rows: dict | str, name: str = "prompts.jsonl") -> Path:
    pattern_image(3).save(tmp_path / "a.png")
    f = tmp_path / name
    f.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return f


def _batch(f: Path, out: Path, *extra: str, task: str = "t2i") -> int:
    return main([task, "--model", str(FIXTURE), "--batch", str(f), "--out", str(out), *TINY_ARGS, *extra])


@pytest.mark.parametrize("bad, msg", [
    ({"id": "x", "prompt": "p", "num_plan_steps": "many"}, ":2: 'num_plan_steps' must be an integer, got 'many'"),
    ({"id": "x", "prompt": "p", "resolution": "big"}, ":2: 'resolution' must be 1024, \"WIDTHxHEIGHT\" or [W, H]"),
    ({"id": "x", "prompt": "p", "seed": 1.5}, ":2: 'seed' must be an integer, got 1.5"),
    ({"id": "x", "prompt": "p", "seed": True}, ":2: 'seed' must be an integer, got True"),
    ({"id": "x", "prompt": "p", "resolution": 30}, ":2: 'resolution' 30x30: width and height must be multiples"),
    ({"id": "x", "prompt": "p", "steps": 2}, ":2: unknown keys ['steps'] ('steps' is now 'num_plan_steps')"),
    ({"id": "x", "task": "edit", "prompt": "p"}, ":2: task 'edit' takes exactly 1 input image(s)"),
    ({"id": "x", "prompt": "p", "images": ["a.png"], "input_images": ["a.png"]}, ":2: give 'input_images' or"),
    ('{"id": "x", "prompt": }', ":2: not valid JSON"),
])
def test_bad_rows_name_line_and_key_before_loading(tmp_path, capsys, no_load, bad, msg):
    f = _rows(tmp_path, {"id": "ok", "prompt": "fine"}, bad)
    rc = _batch(f, tmp_path / "run")
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"loom generate: error: {f}{msg}"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_manifest_rows_are_batch_rows():
    """The shipped training manifest (input_images, plan/frames/targets/answer ground truth, meta) reads as-is."""
    items = read_batch(ROOT / "data" / "examples" / "manifest.jsonl", "tutorial")
    assert len(items) == 8 and {it.task for it in items} >= {"tutorial", "compose", "style", "t2i", "understand"}
    compose = next(it for it in items if it.task == "compose")
    assert len(compose.images) == 2 and all(Path(p).is_file() for p in compose.images)
    assert [it.line for it in items] == list(range(1, 9))


def test_overwrite_resume_mismatch_and_input_images(tmp_path, capsys):
    f = _rows(tmp_path, {"id": "e1", "task": "edit", "prompt": "make it darker", "input_images": ["a.png"]},
              {"id": "t1", "prompt": "a blue square", "seed": 5})
    out = tmp_path / "run"
    assert _batch(f, out, "--timesteps", "3") == 0
    rec = json.loads((out / "batch.json").read_text())
    assert rec["settings"]["num_timesteps"] == 3 and set(rec["items"]) == {"e1", "t1"}
    first = (out / "t1" / "frame_01.png").stat().st_mtime_ns
    capsys.readouterr()
    # other settings on resume: refused, saying what differs
    rc = _batch(f, out, "--timesteps", "2")
    err = capsys.readouterr().err
    assert rc == 2 and "resuming would mix them: num_timesteps: 3 → 2" in err and "--overwrite" in err, err
    # a changed row of a finished item is a difference too
    f2 = _rows(tmp_path, {"id": "e1", "task": "edit", "prompt": "make it lighter", "input_images": ["a.png"]},
               {"id": "t1", "prompt": "a blue square", "seed": 5}, name="edited.jsonl")
    assert _batch(f2, out, "--timesteps", "3") == 2 and "rows changed since they were generated: e1" in \
        capsys.readouterr().err
    # same settings: everything already finished is skipped
    assert _batch(f, out, "--timesteps", "3") == 0
    assert "0 done, 2 already finished" in capsys.readouterr().out
    # --overwrite: regenerated with the new settings (and recorded)
    assert _batch(f, out, "--timesteps", "2", "--overwrite") == 0
    assert "2 done, 0 already finished" in capsys.readouterr().out
    assert json.loads((out / "t1" / "result.json").read_text())["settings"]["num_timesteps"] == 2
    assert json.loads((out / "batch.json").read_text())["settings"]["num_timesteps"] == 2
    assert (out / "t1" / "frame_01.png").stat().st_mtime_ns != first


def test_missing_image_is_that_items_failure_with_its_line(tmp_path, capsys):
    f = _rows(tmp_path, {"id": "ok", "prompt": "fine"},
              {"id": "gone", "task": "edit", "prompt": "p", "input_images": ["missing.png"]})
    out = tmp_path / "run"
    assert _batch(f, out) == 1  # the batch went on; the exit status says something failed
    assert "1 done, 0 already finished, 1 failed" in capsys.readouterr().out
    fail = json.loads((out / "failures.shard0-of-1.jsonl").read_text().splitlines()[0])
    assert fail["id"] == "gone" and fail["line"] == 2 and "missing.png does not exist" in fail["error"]


def test_batch_into_unwritable_root(tmp_path, capsys, no_load):
    f = _rows(tmp_path, {"id": "a", "prompt": "p"})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _batch(f, blocker / "run") == 2
    err = capsys.readouterr().err
    assert f"cannot create --out {blocker / 'run'}: {blocker} is a file" in err and "Traceback" not in err


def test_ctrl_c_in_batch_keeps_finished_items(tmp_path, capsys, monkeypatch):
    plan = tmp_path / "plan.txt"
    plan.write_text("Step 1: a\nStep 2: b\nStep 3: c\n")
    f = _rows(tmp_path, {"id": "first", "prompt": "draw a fish"}, {"id": "second", "prompt": "draw a cat"})
    calls = {"n": 0}

    def progress(self, enabled, steps, label):
        def start(t, n, hist):
            calls["n"] += 1
            if calls["n"] == 5:  # item 2, frame 2
                raise KeyboardInterrupt
        return start
    monkeypatch.setattr(LoomPipeline, "_progress", progress)
    out = tmp_path / "run"
    rc = _batch(f, out, "--planner", "fixed", "--plan-file", str(plan), task="tutorial")
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted during item second" in err and "Traceback" not in err, err
    assert json.loads((out / "first" / "result.json").read_text())["status"] == "complete"
    part = json.loads((out / "second.partial" / "result.json").read_text())
    assert part["status"] == "interrupted" and [s["index"] for s in part["steps"]] == [1]
    assert not (out / "second").exists()
