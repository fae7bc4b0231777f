"""scripts/ablation_shapes.py end to end in miniature: two variants trained in two worker processes, judged with the
model's plan and with the ground-truth plan, the markdown table written; finished runs are not retrained."""

import importlib.util
import json
from pathlib import Path

import pytest

from loom.world.manifest import read_jsonl
from loom.world.text import format_plan

ROOT = Path(__file__).resolve().parents[2]

TINY = ["--steps", "4", "--seeds", "0", "--n-test", "2", "--n-test-image", "1", "--n-train", "16", "--width", "64",
        "--layers", "2", "--heads", "4", "--max-tokens", "768", "--set", "vit_width=32", "--set", "num_timesteps=3",
        "--set", 'n_train={"tutorial": 16, "image_tutorial": 4, "compose": 4, "style": 4}']


def _script():
    spec = importlib.util.spec_from_file_location("ablation_shapes", ROOT / "scripts" / "ablation_shapes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_runs_end_to_end_in_workers(tmp_path):
    out, table = tmp_path / "abl", tmp_path / "table.md"
    args = [*TINY, "--variants", "full", "no_reference", "--jobs", "2", "--out", str(out), "--table", str(table)]
    assert _script().main(args) == 0
    md = table.read_text()
    for title in ("text→tutorials (the model writes its plan)", "image→tutorials", "ground-truth plan"):
        assert title in md
    assert md.count("| Loom (full) | 1 |") == 3 and md.count("| w/o Reference Sampling (K_max = 0) | 1 |") == 3
    results = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["steps"]) for r in results] == [("full", 4), ("no_reference", 4)]
    assert (out / "full-s0" / "train.log").read_text().count("step") >= 2  # each worker logs its own run
    # the renderer-only evaluation really renders from the ground-truth plan
    rows = read_jsonl(out / "data-s0" / "test" / "tutorial" / "manifest.jsonl")[:2]
    preds = read_jsonl(out / "full-s0" / "predictions_gt_plan" / "tutorial" / "predictions.jsonl")
    assert [p["text"] for p in preds] == [format_plan(r["plan"]) for r in rows]
    assert all(len(p["images"]) == len(r["plan"]) for p, r in zip(preds, rows))
    assert results[0]["scores_gt_plan"]["tutorial"]["n"] == 2
    # resumable: a finished run is read back, not retrained
    stamp = (out / "full-s0" / "result.json").stat().st_mtime_ns
    assert _script().main([*TINY, "--variants", "full", "--out", str(out)]) == 0
    assert (out / "full-s0" / "result.json").stat().st_mtime_ns == stamp


def test_ablation_rejects_an_unknown_override(tmp_path):
    with pytest.raises(SystemExit, match="no_such_field"):
        _script().main([*TINY, "--set", "no_such_field=1", "--out", str(tmp_path)])
