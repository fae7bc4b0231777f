"""Generation harness with fake generators: resume, shards, failures, the loom CLI adapter, baselines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from loom.eval.benchmarks import BenchItem
from loom.eval.fakes import fake_tutorial_generator
from loom.eval.fsio import EvalInputError
from loom.eval.harness import (
    CommandStepRenderer,
    ExternalPlanGenerator,
    LoomCLIGenerator,
    load_plans,
    run_generation,
    shard_items,
)
from loom.eval.results import load_run


def _items(n=5, with_input=False):
    return [
        BenchItem(
            f"i{k}",
            "recipegen",
            f"Create a tutorial for making dish {k}.",
            inputs=[Image.new("RGB", (8, 8), (k, 0, 0))] if with_input else [],
            meta={"goal": f"d{k}"},
        )
        for k in range(n)
    ]


def _counting(gen):
    calls = []

    def wrapped(item, out_dir, seed):
        calls.append((item.item_id, seed))
        return gen(item, out_dir, seed)

    return wrapped, calls


def test_generate_then_resume(tmp_path):
    gen, calls = _counting(fake_tutorial_generator(num_steps=3))
    rep = run_generation(
        _items(), gen, tmp_path / "run", model_label="M", generator_name="fake", log=lambda s: None
    )
    assert rep.done == [f"i{k}" for k in range(5)] and calls[0] == ("i0", 42)
    res = load_run(tmp_path / "run")
    assert len(res) == 5 and len(res[0].steps) == 3 and res[0].raw["seed"] == 42
    assert res[0].raw["meta"] == {"goal": "d0"} and res[0].text_source == "model"
    # kill-and-resume: a half-written item (no result.json) is redone, finished ones are skipped
    (tmp_path / "run/items/i3/result.json").unlink()
    gen2, calls2 = _counting(fake_tutorial_generator(num_steps=3))
    rep2 = run_generation(
        _items(), gen2, tmp_path / "run", model_label="M", generator_name="fake", log=lambda s: None
    )
    assert [c[0] for c in calls2] == ["i3"] and len(rep2.skipped) == 4


def test_shards_are_disjoint_and_complete(tmp_path):
    items = _items(7)
    shards = [shard_items(items, s, 3) for s in range(3)]
    ids = [i.item_id for s in shards for i in s]
    assert sorted(ids) == sorted(i.item_id for i in items) and len(ids) == len(set(ids))
    for s in range(3):
        run_generation(
            items,
            fake_tutorial_generator(),
            tmp_path / "run",
            model_label="M",
            generator_name="fake",
            shard=s,
            num_shards=3,
            log=lambda s: None,
        )
    assert len(load_run(tmp_path / "run")) == 7
    with pytest.raises(EvalInputError):
        shard_items(items, 3, 3)


def test_failures_are_recorded_and_others_continue(tmp_path):
    good = fake_tutorial_generator()

    def flaky(item, out_dir, seed):
        if item.item_id == "i1":
            raise RuntimeError("CUDA OOM")
        if item.item_id == "i2":
            return {"prompt": "p", "steps": [{"index": 1, "text": "t", "image": "missing.png"}]}
        return good(item, out_dir, seed)

    rep = run_generation(
        _items(3), flaky, tmp_path / "run", model_label="M", generator_name="fake", log=lambda s: None
    )
    assert rep.done == ["i0"] and set(rep.failed) == {"i1", "i2"}
    assert "does not exist" in rep.failed["i2"]
    lines = (tmp_path / "run/failures.shard0-of-1.jsonl").read_text().splitlines()
    assert {json.loads(x)["item_id"] for x in lines} == {"i1", "i2"}


def test_run_settings_clash(tmp_path):
    run_generation(
        _items(1),
        fake_tutorial_generator(),
        tmp_path / "run",
        model_label="M",
        generator_name="fake",
        log=lambda s: None,
    )
    with pytest.raises(EvalInputError, match="different settings"):
        run_generation(
            _items(1),
            fake_tutorial_generator(),
            tmp_path / "run",
            model_label="M",
            generator_name="fake",
            seed=7,
            log=lambda s: None,
        )


FAKE_LOOM = r"""
import json, sys
from pathlib import Path
from PIL import Image
a = sys.argv[1:]
assert a[:2] == ["generate", "tutorial"], a
opts = {}
i = 2
images = []
while i < len(a):
    if a[i] == "--image":
        images.append(a[i + 1])
    else:
        opts[a[i]] = a[i + 1]
    i += 2
out = Path(opts["--out"])
if "fail" in opts["--prompt"]:
    sys.exit("model exploded")
steps = []
for k in (1, 2):
    Image.new("RGB", (8, 8)).save(out / f"frame_{k:02d}.png")
    steps.append({"index": k, "text": f"Step {k}: x", "image": f"frame_{k:02d}.png"})
json.dump({"prompt": opts["--prompt"], "plan": ["a", "b"], "steps": steps, "argv": a, "images": images},
          open(out / "result.json", "w"))
"""


def test_loom_cli_adapter(tmp_path):
    script = tmp_path / "fake_loom.py"
    script.write_text(FAKE_LOOM)
    gen = LoomCLIGenerator(
        Path("/models/loom"), executable=(sys.executable, str(script)), extra_args=("--steps", "50")
    )
    items = _items(2, with_input=True)
    items[1].prompt = "please fail"
    rep = run_generation(
        items,
        gen,
        tmp_path / "run",
        model_label="Loom",
        generator_name="loom-cli",
        seed=7,
        log=lambda s: None,
    )
    assert rep.done == ["i0"] and "model exploded" in rep.failed["i1"]
    (res,) = load_run(tmp_path / "run")
    argv = res.raw["argv"]
    assert argv[:8] == [
        "generate",
        "tutorial",
        "--model",
        "/models/loom",
        "--prompt",
        "Create a tutorial for making dish 0.",
        "--out",
        str(tmp_path / "run/items/i0"),
    ]
    assert argv[8:10] == ["--seed", "7"] and argv[-2:] == ["--steps", "50"]
    assert res.raw["images"] == [str(tmp_path / "run/items/i0/inputs/input_01.png")]
    assert res.inputs == [tmp_path / "run/items/i0/inputs/input_01.png"]


def test_external_plan_baseline_and_export_path(tmp_path):
    run_generation(
        _items(2),
        fake_tutorial_generator(num_steps=2),
        tmp_path / "loom",
        model_label="Loom",
        generator_name="fake",
        log=lambda s: None,
    )
    plans = load_plans(tmp_path / "loom")
    assert plans["i0"] == [
        "Step 1: do part 1 of Create a tutorial for making dish 0.",
        "Step 2: do part 2 of Create a tutorial for making dish 0.",
    ]
    seen = []

    def render(item, plan, step, history, out_png, seed):
        seen.append((item.item_id, step, [p.name for p in history]))
        Image.new("RGB", (8, 8), (step, 0, 0)).save(out_png)

    items = _items(2)
    items[0].export_path = "fullset/x/i0.png"
    run_generation(
        items,
        ExternalPlanGenerator(plans, render),
        tmp_path / "bagel",
        model_label="Bagel",
        generator_name="external-plan",
        log=lambda s: None,
    )
    assert seen[:2] == [("i0", 1, []), ("i0", 2, ["frame_01.png"])]  # multi-turn: earlier frames as history
    res = load_run(tmp_path / "bagel")
    assert res[0].text_source == "given" and res[0].steps[1].text == plans["i0"][1]
    assert Image.open(tmp_path / "bagel/fullset/x/i0.png").getpixel((0, 0)) == (
        2,
        0,
        0,
    )  # final frame exported


def test_command_step_renderer(tmp_path):
    script = tmp_path / "render.py"
    script.write_text(
        "import sys\nfrom PIL import Image\nImage.new('RGB', (4, 4), (int(sys.argv[2]), 0, 0))"
        ".save(sys.argv[1])\nopen(sys.argv[1] + '.txt', 'w').write(sys.argv[3])\n"
    )
    r = CommandStepRenderer(f"{sys.executable} {script} {{out}} {{seed}} {{prompt}}")
    out = tmp_path / "f.png"
    r(_items(1)[0], ["first step", "second"], 1, [], out, 9)
    assert (
        Image.open(out).getpixel((0, 0)) == (9, 0, 0) and Path(str(out) + ".txt").read_text() == "first step"
    )
