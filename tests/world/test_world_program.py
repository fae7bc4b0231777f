"""The mechanisms world (loom/world/program.py): step programs and their texts, hidden appearance, generator
determinism and split disjointness, and the basic world left as it was."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from loom.data.tokenizer import encode
from loom.world.generate import item_key, main, sample_items, split_of_key, write_dataset
from loom.world.manifest import read_image, read_jsonl
from loom.world.perceive import perceive, perceive_appearance, perceive_paper
from loom.world.program import (
    DIRECTIONS,
    NUM_STEPS,
    Step,
    parse_step,
    program_prompt,
    program_step_text,
    run_program,
    sample_program,
)
from loom.world.shapes import OFFSETS, PAPERS, Appearance, Element, render, sample_elements
from loom.world.text import format_plan, split_steps

RED = Element("red", "circle", "top left")


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under the folder by relative path: equal dicts = byte-identical datasets."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_every_step_text_round_trips_through_the_parser() -> None:
    steps = [Step("move", direction=d) for d in DIRECTIONS] + [Step("copy", direction=d) for d in DIRECTIONS]
    steps += [Step("recolour", color=c) for c in ("red", "blue", "purple")] + [Step("draw", RED)]
    for s in steps:
        assert parse_step(program_step_text(s)) == s, program_step_text(s)
    assert program_step_text(Step("move", direction="right")) == "Move the last shape one cell right."
    assert program_step_text(Step("recolour", color="blue")) == "Recolour the last shape blue."
    assert program_step_text(Step("copy", direction="down")) == "Draw another one like it one cell down."
    assert parse_step("Recolor the previous shape Blue") == Step("recolour", color="blue")  # tolerant reading
    assert parse_step("Move it somewhere nice.") is None
    # whole sampled programs: plan text -> steps -> the same program
    rng = np.random.default_rng(0)
    for _ in range(50):
        prog = sample_program(rng)
        plan = format_plan([program_step_text(s) for s in prog])
        assert [parse_step(s) for s in split_steps(plan)] == prog


def test_program_semantics_resolve_the_last_shape() -> None:
    prog = [Step("draw", RED), Step("draw", Element("blue", "square", "bottom right")),
            Step("move", direction="up"), Step("recolour", color="green"), Step("copy", direction="left"),
            Step("move", direction="up")]
    states = run_program(prog)
    assert states[2] == {RED, Element("blue", "square", "right")}  # the last shape is the blue one, not the red
    assert states[3] == {RED, Element("green", "square", "right")}
    assert states[4] == {RED, Element("green", "square", "right"), Element("green", "square", "center")}
    assert states[5] == {RED, Element("green", "square", "right"), Element("green", "square", "top")}  # the copy
    # impossible steps end the program: off the grid, into an occupied cell, nothing drawn yet
    assert run_program([Step("draw", RED), Step("move", direction="up"), Step("draw", RED)])[1:] == [None, None]
    assert run_program([Step("move", direction="up")]) == [None]
    assert run_program([Step("draw", RED), Step("draw", Element("red", "square", "top")),
                        Step("copy", direction="left")])[2] is None


def test_sampled_programs_are_long_valid_and_refer_to_the_past() -> None:
    rng = np.random.default_rng(1)
    progs = [sample_program(rng) for _ in range(300)]
    lengths = [len(p) for p in progs]
    assert min(lengths) == NUM_STEPS[0] and max(lengths) == NUM_STEPS[1]
    assert np.mean([n > 9 for n in lengths]) > 0.2  # N exceeds the 9 cells; K_max = 4 skips frames
    for p in progs:
        assert p[0].op == "draw" and sum(s.refers_to_past for s in p) >= 2
        assert None not in run_program(p)
    assert {s.op for p in progs for s in p} == {"draw", "move", "recolour", "copy"}


@pytest.mark.parametrize("size", [32, 64])
def test_hidden_appearance_is_perceived_and_does_not_change_the_elements(size: int) -> None:
    rng = np.random.default_rng(size)
    for paper in PAPERS:
        for offset in OFFSETS:
            look = Appearance(paper, offset)
            els = sample_elements(rng, int(rng.integers(1, 7)))
            img = render(els, size, appearance=look)
            assert perceive_appearance(img) == (look, frozenset(els))
            soft = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float64)
            soft = np.clip(soft + rng.normal(0, 15, soft.shape), 0, 255).astype(np.uint8)
            assert perceive_appearance(soft)[0] == look, (paper, offset)
    # the default look is the basic world's: white, centred, same bytes
    assert np.array_equal(render([RED], size), render([RED], size, appearance=Appearance()))
    assert perceive_paper(render([RED], size)) == "white"


def test_generator_is_deterministic_and_splits_are_disjoint(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", "tutorial", 8, "train", seed=2, size=32, world="mechanisms").parent
    b = write_dataset(tmp_path / "b", "tutorial", 8, "train", seed=2, size=32, world="mechanisms").parent
    c = write_dataset(tmp_path / "c", "tutorial", 8, "train", seed=3, size=32, world="mechanisms").parent
    assert _files(a) == _files(b) and _files(a) != _files(c)
    for task in ("tutorial", "image_tutorial"):
        train = {item_key(task, it, "mechanisms") for it in sample_items(task, 300, "train", 0, "mechanisms")}
        test = {item_key(task, it, "mechanisms") for it in sample_items(task, 80, "test", 0, "mechanisms")}
        assert len(train) == 300 and len(test) == 80 and not train & test
        assert all(split_of_key(k) == "test" for k in test)
        assert all(k.startswith("program|") for k in train)  # the key is the step program
    # the key includes the step program: two programs with the same final picture are different items
    same_end = [[Step("draw", RED)], [Step("draw", RED.moved_to("top")), Step("move", direction="left")]]
    assert run_program(same_end[0])[-1] == run_program(same_end[1])[-1]
    assert len({item_key("tutorial", (p, Appearance()), "mechanisms") for p in same_end}) == 2


def test_rows_hold_the_world_state_after_each_step(tmp_path: Path) -> None:
    man = write_dataset(tmp_path / "t", "tutorial", 6, "test", seed=0, size=32, world="mechanisms")
    for row in read_jsonl(man):
        steps = [parse_step(s) for s in row["plan"]]
        assert row["prompt"] == program_prompt(steps)
        assert row["meta"]["world"] == "mechanisms" and row["meta"]["split"] == "test"
        assert row["meta"]["past"] == [s.refers_to_past for s in steps]
        look = Appearance.from_dict(row["meta"]["appearance"])
        assert look.offset != "centred"
        for k, (rel, state) in enumerate(zip(row["frames"], run_program(steps))):
            img = read_image(man.parent / rel)
            assert frozenset(Element.from_dict(d) for d in row["meta"]["states"][k]) == state
            assert perceive_appearance(img) == (look, state)
    man = write_dataset(tmp_path / "i", "image_tutorial", 4, "train", seed=0, size=32, world="mechanisms")
    for row in read_jsonl(man):
        ref = read_image(man.parent / row["input_images"][0])
        assert perceive_appearance(ref)[0] == Appearance.from_dict(row["meta"]["appearance"])
        assert not any(row["meta"]["past"])


def test_compose_and_style_stay_basic_and_basic_is_the_default(tmp_path: Path) -> None:
    for task in ("compose", "style"):
        basic = write_dataset(tmp_path / f"{task}-b", task, 4, "train", seed=1, size=32).parent
        mech = write_dataset(tmp_path / f"{task}-m", task, 4, "train", seed=1, size=32, world="mechanisms").parent
        assert [r["input_images"] for r in read_jsonl(basic / "manifest.jsonl")] == \
            [r["input_images"] for r in read_jsonl(mech / "manifest.jsonl")]
        assert {k: v for k, v in _files(basic).items() if k.endswith(".png")} == \
            {k: v for k, v in _files(mech).items() if k.endswith(".png")}
    a = write_dataset(tmp_path / "d", "tutorial", 3, "train", seed=1, size=32).parent
    b = write_dataset(tmp_path / "e", "tutorial", 3, "train", seed=1, size=32, world="basic").parent
    assert _files(a) == _files(b)
    assert "world" not in read_jsonl(a / "manifest.jsonl")[0]["meta"]
    assert perceive(render([RED], 32)) == {RED}


def test_generate_cli_writes_the_world(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--task", "tutorial", "--n", "3", "--size", "32", "--world",
                 "mechanisms"]) == 0
    assert "mechanisms world" in capsys.readouterr().out
    assert all(r["meta"]["world"] == "mechanisms" for r in read_jsonl(tmp_path / "manifest.jsonl"))
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--task", "tutorial", "--world", "nope"])


def test_world_tokenizer_covers_the_mechanisms_world(tmp_path: Path) -> None:
    from loom.world.demo import demo_scaffold
    from loom.world.vocab import build_world_tokenizer

    scaffold = demo_scaffold()
    tok = build_world_tokenizer(tmp_path / "tok", scaffold, n_max=12, world="mechanisms")
    basic = build_world_tokenizer(tmp_path / "basic", scaffold)
    assert len(basic) < len(tok) < 128  # the loom-shapes preset has 128 vocabulary rows
    assert basic.unk_token_id in encode(basic, " Move")  # the basic world's vocabulary is left as it was
    for word in (" Move", " last", " shape", " Recolour", " another", " 12"):
        assert len(encode(tok, word)) == 1, word  # one token per word, as for the basic world
    rng = np.random.default_rng(5)
    for _ in range(20):
        prog = sample_program(rng)
        for text in (scaffold.format(prompt=program_prompt(prog)), format_plan([program_step_text(s) for s in prog])):
            ids = encode(tok, text)
            assert tok.unk_token_id not in ids and tok.decode(ids) == text


def test_the_demo_recipe_fits_the_longest_mechanisms_tutorials(tmp_path: Path) -> None:
    """N_max, the plan-token budget and the per-sample token cap of the demo recipe hold the world's longest items
    (figures in loom/world/demo.py WORLD_RECIPES)."""
    import random

    from loom.data.builders import build_plans
    from loom.data.builders.base import BuildContext, plan_num_tokens
    from loom.data.manifest import build_config
    from loom.data.packing import PackGeometry
    from loom.data.plan import format_step
    from loom.model.configs import preset
    from loom.train.config import load_train_config
    from loom.world.demo import TRAIN_CONFIG, WORLD_RECIPES
    from loom.world.shapes import CELLS, COLORS, SHAPES
    from loom.world.vocab import build_world_tokenizer

    recipe = WORLD_RECIPES["mechanisms"]
    tcfg = load_train_config(TRAIN_CONFIG, recipe["overrides"])
    n_max = tcfg.data.build["n_max"]
    assert n_max == NUM_STEPS[1]
    tok = build_world_tokenizer(tmp_path / "tok", tcfg.data.build["scaffold"], n_max=n_max, world="mechanisms")
    texts = [program_step_text(Step("draw", Element(c, s, cell))) for c in COLORS for s in SHAPES for cell in CELLS]
    texts += [program_step_text(Step(op, direction=d)) for op in ("move", "copy") for d in DIRECTIONS]
    texts += [program_step_text(Step("recolour", color=c)) for c in COLORS]
    longest_line = max(len(encode(tok, format_step(n_max, t) + "\n")) for t in texts)
    assert longest_line == 13 and n_max * longest_line <= recipe["generation"]["max_plan_tokens"]
    man = write_dataset(tmp_path / "d", "tutorial", 40, "train", seed=0, size=32, world="mechanisms")
    rows = sorted(read_jsonl(man), key=lambda r: -len(r["prompt"]))[:3]
    model = preset(tcfg.model.preset)
    model.max_frames = n_max
    geo = PackGeometry.from_config(model)
    ctx = BuildContext.from_manifest(man, tok, build_config({**dict(tcfg.data.build), "frames_per_visit": None},
                                                            (n_max, model.max_references)), geo)
    lengths = [plan_num_tokens(p, geo) for r in rows for p in build_plans(r, ctx, random.Random(0))]
    assert len(lengths) == sum(len(r["plan"]) for r in rows)  # every frame instance, none refused
    assert max(lengths) <= tcfg.data.max_tokens_per_sample
