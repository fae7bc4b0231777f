import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from loom.world.generate import TASKS, canonical_key, main, sample_items, split_of, write_dataset
from loom.world.judge import judge_folder
from loom.world.manifest import read_image, read_jsonl
from loom.world.perceive import perceive
from loom.world.shapes import Element, reading_order, render, sample_elements
from loom.world.text import parse_plan


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", "image_tutorial", 6, "train", seed=5, size=32).parent
    b = write_dataset(tmp_path / "b", "image_tutorial", 6, "train", seed=5, size=32).parent
    c = write_dataset(tmp_path / "c", "image_tutorial", 6, "train", seed=6, size=32).parent
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert not list(a.rglob("*.tmp"))  # atomic writes leave no temp files behind


def test_canonical_key_ignores_order_and_split_is_stable() -> None:
    els = sample_elements(np.random.default_rng(0), 4)
    assert canonical_key(els) == canonical_key(list(reversed(els)))
    assert split_of(els) == split_of(reading_order(els))
    rng = np.random.default_rng(1)
    test_share = np.mean([split_of(sample_elements(rng, 3)) == "test" for _ in range(2000)])
    assert 0.17 < test_share < 0.23  # TEST_FRACTION = 0.2


@pytest.mark.parametrize("task", TASKS)
def test_train_and_test_never_share_a_prompt_or_picture(task: str) -> None:
    # Same seed for both splits on purpose: disjointness must not rely on different seeds.
    train = {canonical_key(e) for e in sample_items(task, 300, "train", seed=0)}
    test = {canonical_key(e) for e in sample_items(task, 100, "test", seed=0)}
    assert len(train) == 300 and len(test) == 100  # no duplicates inside a split either
    assert train.isdisjoint(test)


def test_split_disjointness_on_written_prompts(tmp_path: Path) -> None:
    train = read_jsonl(write_dataset(tmp_path / "tr", "tutorial", 40, "train", seed=0, size=32))
    test = read_jsonl(write_dataset(tmp_path / "te", "tutorial", 40, "test", seed=0, size=32))
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test})
    assert all(r["meta"]["split"] == "train" for r in train) and all(
        r["meta"]["split"] == "test" for r in test
    )


def test_tutorial_rows_follow_the_manifest_format(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, "tutorial", 8, "train", seed=2, size=64)
    for row in read_jsonl(path):
        assert set(row) == {"id", "task", "prompt", "plan", "frames", "input_images", "meta"}
        assert row["task"] == "tutorial" and row["input_images"] == []
        els = [Element.from_dict(d) for d in row["meta"]["elements"]]
        assert 2 <= len(els) <= 6 and els == reading_order(els)
        assert row["prompt"].startswith("Create a tutorial for drawing in the ")
        assert all(not s.startswith("Step") and s.startswith("In the ") for s in row["plan"])
        assert parse_plan(row["plan"]) == els and len(row["frames"]) == len(els)
        for k, rel in enumerate(row["frames"], start=1):
            assert rel.startswith("frames/")
            assert np.array_equal(read_image(tmp_path / rel), render(els[:k], 64))  # frame k = first k steps


@pytest.mark.parametrize("size", [32, 64])
def test_input_task_rows(tmp_path: Path, size: int) -> None:
    rows = {}
    for task in ("image_tutorial", "compose", "decompose", "style"):
        rows[task] = read_jsonl(write_dataset(tmp_path / task, task, 5, "test", seed=1, size=size))
    for row in rows["image_tutorial"]:
        assert row["prompt"] == "Create a step-by-step tutorial for drawing this picture."
        ref = read_image(tmp_path / "image_tutorial" / row["input_images"][0])
        assert np.array_equal(ref, read_image(tmp_path / "image_tutorial" / row["frames"][-1]))
    for row in rows["compose"]:
        els = [Element.from_dict(d) for d in row["meta"]["elements"]]
        assert len(row["input_images"]) == len(els) in (2, 3) and len(row["targets"]) == 1
        for k, (e, rel) in enumerate(zip(els, row["input_images"]), start=1):
            assert f"<object> from <image {k}> in the {e.cell}" in row["prompt"]
            assert perceive(read_image(tmp_path / "compose" / rel)) == {e.moved_to("center")}
    for row in rows["decompose"]:
        els = [Element.from_dict(d) for d in row["meta"]["elements"]]
        assert row["prompt"] == "Decompose <image 1> into its <object> elements, one per image."
        assert perceive(read_image(tmp_path / "decompose" / row["input_images"][0])) == set(els)
        assert [perceive(read_image(tmp_path / "decompose" / t)) for t in row["targets"]] == [
            {e.moved_to("center")} for e in reading_order(els)
        ]
    for row in rows["style"]:
        assert row["prompt"] == "Apply the <style> of <image 1> to <image 2>."
        swatch = read_image(tmp_path / "style" / row["input_images"][0])
        assert tuple(swatch[size // 2, size // 2]) in {
            (220, 40, 40),
            (40, 170, 60),
            (40, 80, 220),
            (230, 200, 30),
            (150, 60, 190),
            (240, 130, 30),
        }
        content = read_image(tmp_path / "style" / row["input_images"][1])
        assert perceive(content) == frozenset() and (content == 0).all(axis=-1).any()  # black outlines only
        assert {e.color for e in perceive(read_image(tmp_path / "style" / row["targets"][0]))} == {
            row["meta"]["color"]
        }


@pytest.mark.parametrize("size", [32, 64])
def test_judge_scores_ground_truth_as_one(tmp_path: Path, size: int) -> None:
    for task in TASKS:
        summary = judge_folder(write_dataset(tmp_path / task, task, 12, "test", seed=3, size=size).parent)
        (kind,) = summary
        assert kind == task and summary[kind]["n"] == 12 and summary[kind]["missing"] == 0
        axes = {k: v for k, v in summary[kind].items() if k not in ("n", "missing")}
        assert axes and all(v == 1.0 for v in axes.values()), (task, axes)


def test_cli_writes_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "--out",
            str(tmp_path),
            "--task",
            "compose",
            "--n",
            "3",
            "--split",
            "test",
            "--seed",
            "0",
            "--size",
            "32",
        ]
    )
    assert rc == 0 and "wrote 3 compose items" in capsys.readouterr().out
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"compose-test-s0-{i:05d}" for i in range(3)]
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "x", "compose", 1, "train", 0, size=16)
