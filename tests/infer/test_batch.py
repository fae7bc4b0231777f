"""--batch: per-item folders, resume, failures logged, and 2 processes == 1 process (byte-identical)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from infer_helpers import FIXTURE, TINY_ARGS, pattern_image

from loom.infer.batch import item_seed, read_batch, run_batch
from loom.infer.pipeline import Pipeline
from loom.infer.planner import FixedPlanner

PLAN = "Step 1: outline\nStep 2: colour\n"


def _write_batch(tmp_path: Path) -> Path:
    pattern_image(21).save(tmp_path / "a.png")
    rows = [{"id": "tut-1", "prompt": "Draw a fish"},
            {"id": "t2i-1", "task": "t2i", "prompt": "a green circle"},
            {"id": "tut-2", "prompt": "Paint this", "images": ["a.png"], "num_plan_steps": 1},
            {"id": "edit-1", "task": "edit", "prompt": "make it darker", "images": ["a.png"]},
            {"id": "t2i-2", "task": "t2i", "prompt": "a blue square", "seed": 5}]
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def _stable(d: dict) -> dict:
    d = {k: v for k, v in d.items() if k not in ("timings", "created", "model")}
    d["steps"] = [{k: v for k, v in s.items() if k != "seconds"} for s in d["steps"]]
    return d


def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix == ".png":
            out[str(p.relative_to(root))] = p.read_bytes()
        elif p.name == "result.json":
            out[str(p.relative_to(root))] = _stable(json.loads(p.read_text()))
    return out


def test_resume_and_failures(pipe, tiny_settings, tmp_path):
    f = _write_batch(tmp_path)
    with open(f, "a") as fh:
        fh.write(json.dumps({"id": "broken", "task": "edit", "prompt": "x", "images": ["missing.png"]}) + "\n")
    items = read_batch(f, "tutorial")
    root = tmp_path / "run"
    rep = run_batch(pipe, items, root, tiny_settings(seed=9), FixedPlanner(PLAN), log=lambda *a: None)
    assert rep.done == ["tut-1", "t2i-1", "tut-2", "edit-1", "t2i-2"] and list(rep.failed) == ["broken"]
    fails = [json.loads(x) for x in (root / "failures.shard0-of-1.jsonl").read_text().splitlines()]
    assert fails[0]["id"] == "broken" and "does not exist" in fails[0]["error"]
    assert not (root / "broken").exists()
    d = json.loads((root / "tut-1" / "result.json").read_text())
    assert d["seeds"]["base"] == item_seed(9, "tut-1") and len(d["steps"]) == 2
    assert len(json.loads((root / "tut-2" / "result.json").read_text())["steps"]) == 1  # per-item "num_plan_steps": 1
    assert json.loads((root / "t2i-2" / "result.json").read_text())["seeds"]["base"] == 5
    before = _snapshot(root)
    # an interrupted item: its result.json never got written → only it is redone, identically
    (root / "t2i-1" / "result.json").unlink()
    rep2 = run_batch(pipe, items, root, tiny_settings(seed=9), FixedPlanner(PLAN), log=lambda *a: None)
    assert rep2.done == ["t2i-1"] and rep2.skipped == ["tut-1", "tut-2", "edit-1", "t2i-2"]
    assert _snapshot(root) == before


def test_two_processes_equal_one(tiny_settings, tmp_path):
    pipe = Pipeline.from_pretrained(FIXTURE, device="cpu", verbose=False)  # as the CLI loads it (no test tweaks)
    f = _write_batch(tmp_path)
    plan = tmp_path / "plan.txt"
    plan.write_text(PLAN)
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shard processes run with --threads 1: same kernels, same bits
    try:
        run_batch(pipe, read_batch(f, "tutorial"), one, tiny_settings(seed=9), FixedPlanner(PLAN),
                  log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "loom.infer", "tutorial", "--model", str(FIXTURE), "--batch", str(f), "--out",
           str(two), "--seed", "9", "--planner", "fixed", "--plan-file", str(plan), "--threads", "1", *TINY_ARGS]
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(Path(__file__).parents[2])}
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    assert "shard 0/2: 3 done" in outs[0][0] and "shard 1/2: 2 done" in outs[1][0]
    a, b = _snapshot(one), _snapshot(two)
    assert sorted(a) == sorted(b) and len([k for k in a if "frame_" in k]) == 6
    for k in a:
        assert a[k] == b[k], k
