"""Storyboards (index.html of an output folder) from templates: structure, escaping, scaling, masks, labels, and
what headless Chromium shows (not blank, long text wrapped inside the page)."""

from __future__ import annotations

import json
import re

import pytest
from browser import assert_not_blank, page, publish, screenshot
from html_helpers import assert_refs_exist, parse
from infer_helpers import TINY, pattern_image

from loom.infer.output import write_result
from loom.infer.pipeline import GenerationSettings
from loom.infer.planner import FixedPlanner
from loom.infer.storyboard import display_size, render_storyboard, storyboard_view

LONG_URL = "https://example.org/" + "/".join(f"reference-sheet-{k}" for k in range(12))  # one unbreakable token
STEPS = ["Sketch a red circle in the middle of the page with a light pencil <script>alert('x')</script>",
         f"Add a blue square to the left of the circle; keep its edges straight (see {LONG_URL})",
         "Ink the outlines & erase the <b>pencil</b> guides"]
PROMPT = "How to draw simple shapes & ink them <b>step by step</b>"


@pytest.fixture(scope="module")
def module_pipe(loaded):
    from loom.infer.engine import Engine
    from loom.infer.pipeline import Pipeline

    return Pipeline(Engine(loaded.model, loaded.vae, loaded.tokenizer), loaded.build, loaded.describe())


@pytest.fixture(scope="module")
def tutorial_dir(tmp_path_factory, module_pipe):
    res = module_pipe.run("tutorial", PROMPT, [], GenerationSettings(**TINY),
                          planner=FixedPlanner("\n".join(f"Step {k}: {s}" for k, s in enumerate(STEPS, 1))))
    out = tmp_path_factory.mktemp("story") / "tut"
    write_result(res, out)
    return out


@pytest.fixture(scope="module")
def decompose_dir(tmp_path_factory, module_pipe):
    """A decomposition with localised entity CFG: one entity mask per output."""
    res = module_pipe.run("decompose", "Extract the <upper> and the <lower> from <image 1>", [pattern_image(3)],
                          GenerationSettings(**TINY, entity_scale=6.0, entity_top_fraction=0.4))
    out = tmp_path_factory.mktemp("story") / "dec"
    write_result(res, out)
    return out


def _card(html: str, k: int) -> str:
    """The HTML of card k (from its id to the next card)."""
    m = re.search(rf'id="step-{k}".*?(?=id="step-{k + 1}"|</section>)', html, re.S)
    assert m, f"no card step-{k}"
    return m.group(0)


def test_tutorial_storyboard_structure(tutorial_dir):
    html = (tutorial_dir / "index.html").read_text(encoding="utf-8")
    pg = parse(html)
    refs = assert_refs_exist(pg, tutorial_dir)  # every image the page references exists
    assert {"frame_01.png", "frame_02.png", "frame_03.png"} <= set(refs)
    # escaping: model/user text never becomes markup, and every text is there verbatim
    assert "script" not in pg.tags and "b" not in pg.tags
    assert PROMPT in pg.text()
    for k, s in enumerate(STEPS, 1):
        assert s in pg.text(f"step-{k}"), f"step {k} text missing from its card"
        assert s in pg.text("plan"), f"step {k} missing from the plan"
    assert len(pg.find("li", within="plan")) == 3
    # frames: 32 px frames shown at an integer nearest-neighbour scale ≥ 192 px
    frames = [e for e in pg.find("img", within="frames") if e.attrs["src"].startswith("frame_")
              and e.attrs.get("alt", "").startswith("Step")]
    assert [e.attrs["src"] for e in frames] == ["frame_01.png", "frame_02.png", "frame_03.png"]
    for e in frames:
        assert int(e.attrs["width"]) == 192 and "px" in e.attrs["class"].split()
    # history thumbnails: frame t shows the frames that conditioned it (K_max ≥ 2 here: all earlier ones)
    d = json.loads((tutorial_dir / "result.json").read_text())
    assert [st["history"] for st in d["steps"]] == [[], [1], [1, 2]]
    for k, hist in enumerate([[], [1], [1, 2]], 1):
        card = _card(html, k)
        thumbs = re.findall(r'<span title="frame (\d+)"><img src="(frame_\d+\.png)"', card)
        assert [int(i) for i, _ in thumbs] == hist
        assert all(src == f"frame_{int(i):02d}.png" for i, src in thumbs)
        assert ("no earlier frames in context" in card) == (not hist)


def test_view_sizes_and_missing_frames(tmp_path):
    assert display_size(32, 32) == (192, 192, True)  # ×6, nearest
    assert display_size(100, 50) == (200, 100, True)  # ×2
    assert display_size(256, 256) == (256, 256, False)
    assert display_size(1024, 768) == (360, 270, False)  # shrunk, smooth
    pattern_image(1).save(tmp_path / "frame_01.png")
    d = {"task": "tutorial", "prompt": "p", "plan": ["a", "b"],
         "steps": [{"index": 1, "text": "a", "image": "frame_01.png", "history": []},
                   {"index": 2, "text": "b", "image": "frame_02.png", "history": [1]}]}
    html = render_storyboard(d, tmp_path)
    pg = parse(html)
    assert [e.attrs["src"] for e in pg.find("img")] == ["frame_01.png", "frame_01.png"]  # frame 1 + thumbnail
    assert "missing: frame_02.png" in pg.text("step-2")  # a missing file is said, not a broken <img>


def test_decomposition_labels_and_entity_masks(decompose_dir):
    out = decompose_dir
    html = (out / "index.html").read_text(encoding="utf-8")
    pg = parse(html)
    refs = assert_refs_exist(pg, out)
    heads = [t for t in pg.text() if t.startswith("Output")]
    assert heads == ["Output 1 · <upper>", "Output 2 · <lower>"]  # labelled with the entity each isolates
    for k in (1, 2):
        mask = f"entity_mask_{k:02d}.png"
        assert (out / mask).is_file() and refs.count(mask) == 2  # beside the frame and as its hover overlay
        overlay = [e for e in pg.find("img", within=f"step-{k}") if "overlay" in e.attrs.get("class", "")]
        assert [e.attrs["src"] for e in overlay] == [mask]
        cov = json.loads((out / "result.json").read_text())["steps"][k - 1]["entity_cfg"]["coverage"]
        assert any(f"({'attention'}, {100 * cov:.0f}% of the frame)" in t for t in pg.text(f"step-{k}"))
    assert "<image 1>" in " ".join(pg.text("inputs"))


def test_ground_truth_beside_frames(tmp_path):
    for k in (1, 2):
        pattern_image(k).save(tmp_path / f"frame_{k:02d}.png")
    (tmp_path / "gt").mkdir()
    for k in (1, 2, 3):
        pattern_image(10 + k).save(tmp_path / "gt" / f"gt_panels_{k:02d}.png")
    d = {"task": "tutorial", "prompt": "p", "plan": ["a", "b"], "item_id": "x1",
         "steps": [{"index": 1, "text": "a", "image": "frame_01.png"}, {"index": 2, "text": "b", "image": "frame_02.png"}],
         "meta": {"gt_panels": [f"gt/gt_panels_{k:02d}.png" for k in (1, 2, 3)], "gt_steps": ["A", "B", "C"]}}
    v = storyboard_view(d, tmp_path)
    assert [c["gt"]["src"] for c in v["cards"]] == [f"gt/gt_panels_{k:02d}.png" for k in (1, 2, 3)]
    assert v["cards"][2]["frame"] is None  # more ground truth than generated: the card says "not generated"
    pg = parse(render_storyboard(d, tmp_path))
    assert_refs_exist(pg, tmp_path)
    assert "not generated" in pg.text("step-3")
    assert [t for t in pg.text("plan") if t in ("A", "B", "C")] == ["A", "B", "C"]  # ground-truth steps listed
    assert [t for t in pg.text() if t.startswith("ground truth: ")] == [f"ground truth: {t}" for t in "ABC"]


def test_storyboard_in_chromium(tutorial_dir, tmp_path, chromium):
    """What a reader sees: drawn (not blank), every image decoded, the long unbreakable URL wrapped inside the
    viewport (no horizontal scrolling)."""
    with page(chromium) as p:
        p.goto((tutorial_dir / "index.html").as_uri())
        shot = screenshot(p, tmp_path / "tutorial.png")
        broken = p.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
        overflow = p.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert broken == [] and overflow <= 0
    assert_not_blank(shot)
    publish(shot, "storyboard-tutorial.png")


def test_decomposition_in_chromium(decompose_dir, tmp_path, chromium):
    with page(chromium) as p:
        p.goto((decompose_dir / "index.html").as_uri())
        shot = screenshot(p, tmp_path / "decompose.png")
        broken = p.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
    assert broken == []
    assert_not_blank(shot)
    publish(shot, "storyboard-decompose.png")
