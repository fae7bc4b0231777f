"""Top-level galleries: a `--batch` root and an eval run list every item with its status and link to it."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from browser import assert_not_blank, page, publish, screenshot
from html_helpers import assert_refs_exist, parse
from infer_helpers import FIXTURE, TINY_ARGS, pattern_image
from PIL import Image

from loom.eval.benchmarks import BenchItem
from loom.eval.fakes import fake_tutorial_generator
from loom.eval.harness import run_generation
from loom.infer.__main__ import main
from loom.infer.gallery import gallery_view

ROWS = [{"id": "tut-1", "prompt": "How to draw a <b>fish</b> & its fins"},
        {"id": "t2i-1", "task": "t2i", "prompt": "a green circle"},
        {"id": "broken", "task": "edit", "prompt": "make it darker", "images": ["missing.png"]},
        {"id": "tut-2", "prompt": "Paint this", "images": ["a.png"]},
        {"id": "und-1", "task": "understand", "prompt": "What is in <image 1>?", "images": ["a.png"]}]


@pytest.fixture(scope="module")
def batch_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    pattern_image(4).save(tmp / "a.png")
    f = tmp / "prompts.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    plan = tmp / "plan.txt"
    plan.write_text("Step 1: outline the body\nStep 2: add the fins and colour them\n")
    root = tmp / "run"
    err = io.StringIO()
    # shard 0 of 2 renders items 0, 2, 4: one tutorial, one failure, one answer; items 1 and 3 stay pending
    with contextlib.redirect_stderr(err):
        rc = main(["tutorial", "--model", str(FIXTURE), "--batch", str(f), "--out", str(root), *TINY_ARGS,
                   "--planner", "fixed", "--plan-file", str(plan), "--shard", "0", "--num-shards", "2", "--gif",
                   "--max-answer-tokens", "8"])
    assert rc == 1  # one item failed
    assert "no animation" in err.getvalue()  # the answer has no frames: said, not an error
    return root


def test_batch_gallery_statuses_and_links(batch_root):
    root = batch_root
    html = (root / "index.html").read_text(encoding="utf-8")
    pg = parse(html)
    refs = assert_refs_exist(pg, root)
    trs = [e.attrs["id"] for e in pg.find("tr") if e.attrs.get("id", "").startswith("item-")]
    assert trs == [f"item-{r['id']}" for r in ROWS]  # every item, in batch-file order
    status = {r["id"]: [t for t in pg.text(f"item-{r['id']}") if t in ("done", "failed", "pending", "running")]
              for r in ROWS}
    assert status == {"tut-1": ["done"], "t2i-1": ["pending"], "broken": ["failed"], "tut-2": ["pending"],
                      "und-1": ["done"]}
    assert any("does not exist" in t for t in pg.text("item-broken"))  # the failure's reason is shown
    assert "tut-1/index.html" in refs and "und-1/index.html" in refs  # done items link to their storyboards
    assert [r for r in refs if r.startswith("tut-1/frame_")] == ["tut-1/frame_01.png", "tut-1/frame_02.png"]
    assert ROWS[0]["prompt"] in pg.text("item-tut-1") and "b" not in pg.tags  # escaped, verbatim
    assert "Paint this" in pg.text("item-tut-2")  # pending items show their prompt from the batch file
    assert "5 items" in " ".join(pg.text("summary"))


def test_batch_gif_per_item(batch_root):
    import av

    with av.open(str(batch_root / "tut-1" / "animation.gif")) as c:  # --gif works per batch item
        assert sum(1 for _ in c.decode(video=0)) == 3  # title card + 2 steps


def test_batch_gallery_in_chromium(batch_root, tmp_path, chromium):
    with page(chromium, 1000, 700) as p:
        p.goto((batch_root / "index.html").as_uri())
        shot = screenshot(p, tmp_path / "gallery.png")
    assert_not_blank(shot)
    publish(shot, "gallery-batch.png")


def test_eval_gallery_and_item_storyboards(tmp_path):
    items = [BenchItem(f"i{k}", "makeanything", f"Paint subject {k} <step by step>",
                       inputs=[Image.new("RGB", (16, 16), (40 * k, 90, 20))],
                       meta={"gt_panels": [Image.new("RGB", (16, 16), (k, 10 * j, 0)) for j in range(3)]})
             for k in range(3)]
    gen = fake_tutorial_generator(num_steps=3, size=16)

    def flaky(item, out_dir, seed):
        if item.item_id == "i1":
            raise RuntimeError("model crashed <badly>")
        return gen(item, out_dir, seed)

    run = tmp_path / "run"
    run_generation(items, flaky, run, model_label="M", generator_name="fake", log=lambda s: None)
    pg = parse((run / "index.html").read_text(encoding="utf-8"))
    refs = assert_refs_exist(pg, run)
    assert "items/i0/index.html" in refs and "items/i2/index.html" in refs
    assert [t for t in pg.text("item-i1") if t in ("done", "failed")] == ["failed"]
    assert any("model crashed <badly>" in t for t in pg.text("item-i1"))
    v = gallery_view(run, "eval")
    assert v["title"] == "makeanything · M" and v["counts"] == {"done": 2, "failed": 1, "running": 0, "pending": 0}
    # each finished item's storyboard shows its frames beside the ground-truth panels
    item = parse((run / "items/i0/index.html").read_text(encoding="utf-8"))
    refs = assert_refs_exist(item, run / "items/i0")
    assert [r for r in refs if r.startswith("gt/")] == [f"gt/gt_panels_{j:02d}.png" for j in (1, 2, 3)]
    assert "inputs/input_01.png" in refs
