"""The shapes-world demo as a recipe over the real pieces, in miniature: world data → `loom.train` (real loader,
checkpoints, export) → generation from the export through the batch path → judge → report; and an interrupted
training stage that resumes when the demo is rerun."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from browser import assert_not_blank, page, publish, screenshot

from loom.data.tokenizer import encode
from loom.world.demo import (
    GENERATION,
    THRESHOLDS,
    DemoConfig,
    demo_scaffold,
    run_demo,
    tutorial_prompt_example,
)
from loom.world.generate import sample_items
from loom.world.shapes import reading_order
from loom.world.text import compose_prompt, format_plan, step_text, tutorial_prompt
from loom.world.vocab import build_world_tokenizer

SCAFFOLD = demo_scaffold()
# a 2-layer width-64 model on a handful of items: the pipeline, not the scores, is under test here
TINY = ["model.overrides.llm.hidden_size=64", "model.overrides.llm.intermediate_size=128",
        "model.overrides.llm.num_hidden_layers=2", "model.overrides.llm.num_attention_heads=4",
        "data.max_tokens=768", "data.max_tokens_per_sample=768", "optim.warmup_steps=5", "log.every=5",
        "checkpoint.every=10", "log.progress=false"]


def tiny_cfg(steps: int, **kw) -> DemoConfig:
    return DemoConfig(train_steps=steps, overrides=list(TINY), threads=1,
                      n_train={"tutorial": 24, "image_tutorial": 6, "compose": 6, "style": 6},
                      n_test={"tutorial": 2, "image_tutorial": 1, "compose": 1, "style": 1},
                      generation={"num_timesteps": 3}, **kw)


def test_world_tokenizer_round_trips_every_text(tmp_path):
    tok = build_world_tokenizer(tmp_path / "tok", SCAFFOLD)
    again = build_world_tokenizer(tmp_path / "tok2", SCAFFOLD)
    assert tok.get_vocab() == again.get_vocab()  # deterministic
    assert len(tok) < 128  # the loom-shapes preset has 128 vocabulary rows
    for els in sample_items("tutorial", 20, "train", 3):
        for text in (tutorial_prompt(els), format_plan([step_text(e) for e in reading_order(els)]),
                     compose_prompt([e.cell for e in els]), SCAFFOLD.format(prompt=tutorial_prompt(els))):
            ids = encode(tok, text)
            assert tok.unk_token_id not in ids, text
            assert tok.decode(ids) == text


def test_world_tokenizer_keeps_cell_names_whole(tmp_path):
    """Two-word cells are one token each (the plan sorts by cell; "top" alone stays its own token)."""
    from loom.world.shapes import CELLS

    tok = build_world_tokenizer(tmp_path / "tok", SCAFFOLD)
    for cell in CELLS:
        ids = encode(tok, f" in the {cell}.")
        assert len(ids) == 4, (cell, tok.convert_ids_to_tokens(ids))
    assert encode(tok, " top left")[0] != encode(tok, " top")[0]


def test_demo_recipe_end_to_end(tmp_path, chromium):
    lines: list[str] = []
    out = tmp_path / "demo"
    metrics = run_demo(tiny_cfg(30), out, log=lines.append)
    # [1/5] data: manifests of every task and split, the tokenizer folder
    for split, task in [("train", "tutorial"), ("train", "compose"), ("test", "tutorial"), ("test", "style")]:
        assert (out / "data" / split / task / "manifest.jsonl").exists()
    assert (out / "tokenizer" / "tokenizer.json").exists()
    # [2/5] training through loom.train: its metrics, checkpoints and export
    train = out / "train"
    rows = [json.loads(x) for x in (train / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (train / "config.yaml").exists() and (train / "checkpoints" / "step-0000030").is_dir()
    # [3/5] the export, published as <out>/model: loads like any loom export
    for name in ("loom_config.json", "llm_config.json", "tokenizer.json"):
        assert (out / "model" / name).exists(), name
    # [4/5] generation through the batch path, one folder per held-out item
    for task, n in {"tutorial": 2, "image_tutorial": 1, "compose": 1, "style": 1}.items():
        judged = out / "judged" / task
        scored = [json.loads(x) for x in (judged / "scores.jsonl").read_text().splitlines()]
        assert len(scored) == n
    done = list((out / "generations").glob("*/*/result.json"))
    failures = list((out / "generations").glob("*/failures*.jsonl"))
    assert len(done) + sum(len(f.read_text().splitlines()) for f in failures) == 5
    # [5/5] metrics.json + report.html
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["thresholds"] == THRESHOLDS and on_disk["headline"] == metrics["headline"]
    assert set(on_disk["scores"]) == {"tutorial", "image_tutorial", "compose", "style"}
    axes = set(on_disk["scores"]["tutorial"])
    assert {"plan_accuracy", "plan_step_accuracy", "instruction_following", "frame_jaccard", "temporal_coherence",
            "clean_frame_rate"} <= axes
    assert on_disk["train"]["steps"] == 30 and on_disk["train"]["loss_last"] < on_disk["train"]["loss_first"]
    html = (out / "report.html").read_text()
    assert "ground truth" in html and "data:image/png;base64," in html
    stages = [ln[:5] for ln in lines if ln.startswith("[")]
    assert stages == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    with page(chromium) as p:  # what a reader sees: every image decoded, drawn, no horizontal scrolling
        p.goto((out / "report.html").as_uri())
        shot = screenshot(p, tmp_path / "report.png")
        broken = p.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
        overflow = p.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert broken == [] and overflow <= 0
    assert_not_blank(shot)
    publish(shot, "demo-report.png")


def test_demo_model_works_with_loom_generate(tmp_path):
    """The README's follow-up command on the demo's export: `loom generate tutorial --model runs/demo/model …`."""
    from loom.infer.__main__ import main as generate

    out = tmp_path / "demo"
    run_demo(tiny_cfg(10), out, log=lambda _: None, stages=("data", "train"))
    gen_cfg = yaml.safe_load((out / "generation.yaml").read_text())  # the demo's sampler, as a --config file
    assert gen_cfg == {**GENERATION, "num_timesteps": 3}
    code = generate(["tutorial", "--model", str(out / "model"), "--config", str(out / "generation.yaml"),
                     "--prompt", tutorial_prompt_example(), "--out", str(tmp_path / "gen"), "--no-progress",
                     "--strict-plan"])
    # a 10-step model rarely writes a usable plan: either a finished storyboard or the one-line plan error
    if code == 0:
        d = json.loads((tmp_path / "gen" / "result.json").read_text())
        assert d["task"] == "tutorial" and (tmp_path / "gen" / "index.html").exists()
    else:
        assert not (tmp_path / "gen" / "result.json").exists()


def test_interrupted_demo_training_resumes(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setenv("LOOM_FAULT", "sigterm:12")  # SIGTERM after step 12: finish the step, save, stop
    res = run_demo(tiny_cfg(20), out, log=lambda _: None)
    assert res == {"status": "terminated", "step": 12}
    assert (out / "train" / "checkpoints" / "step-0000012").is_dir() and not (out / "model").exists()
    monkeypatch.delenv("LOOM_FAULT")
    lines: list[str] = []
    metrics = run_demo(tiny_cfg(20), out, log=lines.append)
    log = (out / "train" / "logs" / "train-rank00000.log").read_text()
    assert "resumed from" in log and "step-0000012" in log
    rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]  # each step logged once across the restart
    assert metrics["train"]["steps"] == 20 and (out / "model" / "loom_config.json").exists()
    assert os.path.isdir(out / "generations")


def test_demo_runs_on_the_mechanisms_world(tmp_path):
    """`python -m loom.demo --world mechanisms` in miniature: its data, N_max = 12 in the trained export, longer
    plan budget, and the world's judge axes in metrics.json and the report."""
    from loom.demo import main

    out = tmp_path / "demo"
    metrics = run_demo(tiny_cfg(10, world="mechanisms"), out, log=lambda _: None)
    row = json.loads((out / "data" / "train" / "tutorial" / "manifest.jsonl").read_text().splitlines()[0])
    assert row["meta"]["world"] == "mechanisms" and "states" in row["meta"]
    build = json.loads((out / "model" / "loom_config.json").read_text())["build"]
    assert build["n_max"] == 12 and build["max_frames"] == 12
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["world"] == "mechanisms" and on_disk["generation"]["max_plan_tokens"] == 200
    assert on_disk["generation"]["num_timesteps"] == 3  # the run's own settings still win
    assert yaml.safe_load((out / "generation.yaml").read_text()) == on_disk["generation"]  # the follow-up's sampler
    assert {"appearance_consistency", "past_step_following", "instruction_following"} <= set(
        on_disk["scores"]["tutorial"])
    assert "appearance_consistency" in on_disk["scores"]["image_tutorial"]
    assert on_disk["headline"] == metrics["headline"]
    assert "appearance_consistency" in (out / "report.html").read_text()
    # the CLI names the same world; an unknown one is refused by argparse
    with pytest.raises(SystemExit) as e:
        main(["--world", "nope"])
    assert e.value.code == 2
