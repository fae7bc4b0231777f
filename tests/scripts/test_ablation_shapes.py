"""scripts/ablation_shapes.py end to end in miniature: two variants trained through `loom.train` in two worker
processes, judged from their exports with the model's plan and with the ground-truth plan, the table (with paired
differences) written; finished runs are not retrained; a bad override is refused."""

import importlib.util
import json
from pathlib import Path

from loom.world.manifest import read_jsonl
from loom.world.text import format_plan

ROOT = Path(__file__).resolve().parents[2]

TINY = ["--train-steps", "4", "--seeds", "0", "--n-test", "2", "--n-test-image", "1",
        "--n-train", "tutorial=16", "--n-train", "image_tutorial=4", "--n-train", "compose=4", "--n-train", "style=4",
        "--set", "model.overrides.llm.hidden_size=64", "--set", "model.overrides.llm.intermediate_size=128",
        "--set", "model.overrides.llm.num_hidden_layers=2", "--set", "model.overrides.llm.num_attention_heads=4",
        "--set", "data.max_tokens=768", "--set", "data.max_tokens_per_sample=768", "--set", "log.progress=false",
        "--set", "optim.warmup_steps=2"]


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
    assert md.count("| w/o Reference Sampling (K_max = 0) − full | 1 |") == 3  # paired differences
    results = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["train_steps"]) for r in results] == [("full", 4), ("no_reference", 4)]
    # each run trained through loom.train and recorded what it changed
    for v in ("full", "no_reference"):
        metrics = (out / f"{v}-s0" / "train" / "metrics.jsonl").read_text()
        assert '"step": 4' in metrics
    loom_cfg = json.loads((out / "no_reference-s0" / "model" / "loom_config.json").read_text())
    assert loom_cfg["build"]["k_max"] == 0
    # the renderer-only evaluation really renders from the ground-truth plan
    rows = read_jsonl(out / "data-s0" / "data" / "test" / "tutorial" / "manifest.jsonl")[:2]
    preds = read_jsonl(out / "full-s0" / "gt_plan" / "judged" / "tutorial" / "predictions.jsonl")
    assert [p["text"] for p in preds] == [format_plan(r["plan"]) for r in rows]
    assert all(len(p["images"]) == len(r["plan"]) for p, r in zip(preds, rows))
    assert results[0]["scores_gt_plan"]["tutorial"]["n"] == 2
    # resumable: a finished run is read back, not retrained
    stamp = (out / "full-s0" / "result.json").stat().st_mtime_ns
    assert _script().main([*TINY, "--variants", "full", "--out", str(out)]) == 0
    assert (out / "full-s0" / "result.json").stat().st_mtime_ns == stamp


def test_paired_interval_is_a_t_interval():
    mod = _script()
    assert mod.paired([0.1, 0.2, 0.3]) == "+0.200 [-0.048, +0.448]"  # 0.2 ± 4.303 · 0.1 / √3
    assert mod.paired([0.5]) == "+0.500"


def test_ablation_rejects_an_unknown_override(tmp_path, capsys):
    assert _script().main([*TINY, "--set", "run.no_such_field=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_field" in err and "Traceback" not in err


def test_ablation_on_the_mechanisms_world(tmp_path):
    """`--world mechanisms`: every run trains and is judged on that world; the table has its axes."""
    out = tmp_path / "abl"
    assert _script().main([*TINY, "--world", "mechanisms", "--variants", "full", "--out", str(out)]) == 0
    md = (out / "ablation.md").read_text()
    assert md.startswith("## Table 4 on the shapes world (mechanisms)")
    assert "appearance_consistency" in md and "past_step_following" in md
    results = json.loads((out / "results.json").read_text())
    assert results[0]["world"] == "mechanisms"
    row = read_jsonl(out / "data-s0" / "data" / "test" / "tutorial" / "manifest.jsonl")[0]
    assert row["meta"]["world"] == "mechanisms"
