"""Benchmark loaders and the fixed-subset selection rule."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

from loom.eval import benchmarks as B
from loom.eval.fsio import EvalInputError, read_id_list


def _recipes(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_recipegen_jsonl_prompt_and_ids(tmp_path):
    src = _recipes(
        tmp_path / "r.jsonl",
        [
            {"id": "7", "goal": "Avocado Pasta", "steps": ["a", "b", "c", "d"]},
            {"id": "8", "goal": "Tea", "steps": [{"text": "boil"}, {"text": "pour"}]},
        ],
    )
    items = B.load_recipegen(src)
    assert items[0].prompt == "Create a tutorial for making Avocado Pasta."
    assert items[1].meta["gt_steps"] == ["boil", "pour"]
    assert B.recipegen_eligible(items) == ["7"]
    assert [i.item_id for i in B.load_recipegen(src, ids=["8"])] == ["8"]
    with pytest.raises(EvalInputError, match="not in"):
        B.load_recipegen(src, ids=["9"])


def test_recipegen_unknown_columns_name_the_fix(tmp_path):
    src = _recipes(tmp_path / "r.jsonl", [{"rid": "1", "dish": "x", "steps": ["a"]}])
    with pytest.raises(EvalInputError, match=r"row 0: no id column .* --id-field"):
        B.load_recipegen(src)
    assert B.load_recipegen(src, fields={"id": "rid"})[0].item_id == "1"


def test_recipegen_from_parquet_and_saved_dataset(tmp_path):
    import datasets

    rows = {"id": ["a", "b"], "goal": ["X", "Y"], "steps": [["1", "2"], ["3"]]}
    ds = datasets.Dataset.from_dict(rows)
    ds.to_parquet(str(tmp_path / "r.parquet"))
    assert [i.item_id for i in B.load_recipegen(tmp_path / "r.parquet")] == ["a", "b"]
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    assert len(B.load_recipegen(tmp_path / "saved")) == 2
    with pytest.raises(EvalInputError, match="no split 'validation'"):
        B.load_recipegen(tmp_path / "saved", split="validation")


def test_select_ids_is_deterministic_and_order_free():
    ids = [f"id{i}" for i in range(100)]
    a = B.select_ids(ids, 10, seed=0)
    assert a == B.select_ids(list(reversed(ids)), 10, seed=0) and len(set(a)) == 10
    assert a != B.select_ids(ids, 10, seed=1)
    assert B.select_ids(ids, 11, seed=0)[:10] == a  # growing n keeps the earlier picks
    with pytest.raises(EvalInputError):
        B.select_ids(ids, 101, seed=0)


def _grid(colors, size=64):
    im = Image.new("RGB", (size, size))
    h = size // 2
    for k, c in enumerate(colors):
        r, col = divmod(k, 2)
        im.paste(c, (col * h, r * h, (col + 1) * h, (r + 1) * h))
    return im


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]


def test_makeanything_folder_split_filter(tmp_path):
    _grid(COLORS).save(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("2*2 of 4 sub-images, step-by-step oil painting process, a red fox")
    _grid(COLORS).save(tmp_path / "b.png")
    (tmp_path / "b.caption").write_text("2*2 of 4 sub-images, step-by-step LEGO building process, a car")
    Image.new("RGB", (96, 96)).save(tmp_path / "c.png")
    (tmp_path / "c.caption").write_text("3*3 of 9 sub-images, step-by-step sketch process, a tree")
    items = B.load_makeanything(tmp_path)
    assert [i.item_id for i in items] == ["a"]  # LEGO is not painting; 3×3 is not 4 panels
    it = items[0]
    assert (
        it.prompt
        == "Create a 4-step tutorial that ends at the given image: step-by-step oil painting process, a red fox."
    )
    assert [p.getpixel((5, 5)) for p in it.meta["gt_panels"]] == COLORS  # row-major reading order
    assert it.inputs[0].getpixel((5, 5)) == (9, 9, 9)  # condition = final panel
    assert it.meta["domain"] == "oil painting"


def test_makeanything_webdataset_tar(tmp_path):
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tf:
        for name, data in (("s1.jpg", None), ("s1.caption", b"step-by-step pencil sketch process, an owl")):
            if data is None:
                buf = io.BytesIO()
                _grid(COLORS, 1024).save(buf, format="JPEG")
                data = buf.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (it,) = B.load_makeanything(tmp_path)
    assert it.item_id == "s1" and it.meta["grid"] == [2, 2]  # layout from the 1024² canvas


def test_grid_shape_errors():
    with pytest.raises(EvalInputError, match="grid layout"):
        B.grid_shape("a painting", (500, 500))


def test_omnicontext_jsonl_and_saved_dataset(tmp_path):
    Image.new("RGB", (20, 10), (1, 2, 3)).save(tmp_path / "in.png")
    rows = [
        {
            "key": "k1",
            "task_type": "multi_object",
            "instruction": "x",
            "instruction_language": "en",
            "input_images": ["in.png"],
        },
        {
            "key": "k2",
            "task_type": "single_object",
            "instruction": "y",
            "instruction_language": "zh",
            "input_images": ["in.png"],
        },
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = B.load_omnicontext(tmp_path / "items.jsonl")
    assert [(i.key, i.language) for i in items] == [("k1", "en"), ("k2", "zh")]
    assert items[0].input_images[0].getpixel((0, 0)) == (1, 2, 3)
    bench = B.omnicontext_bench_items(items)
    assert bench[0].item_id == "multi_object__k1" and bench[0].export_path == "fullset/multi_object/k1.png"

    import datasets

    feats = datasets.Features(
        {
            "key": datasets.Value("string"),
            "task_type": datasets.Value("string"),
            "instruction": datasets.Value("string"),
            "instruction_language": datasets.Value("string"),
            "input_images": datasets.Sequence(datasets.Image()),
        }
    )
    ds = datasets.Dataset.from_dict(
        {k: [r[k] for r in rows] for k in ("key", "task_type", "instruction", "instruction_language")}
        | {"input_images": [[Image.open(tmp_path / "in.png")]] * 2},
        features=feats,
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    items = B.load_omnicontext(tmp_path / "hf")
    assert len(items) == 2 and items[1].input_images[0].size == (20, 10)


def test_committed_id_lists_are_well_formed():
    """Each list is either still pending (header says how to draw it) or holds exactly the paper's case count."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "evals"
    for rel, n in (
        ("recipegen/test_ids.txt", 50),
        ("makeanything/test_ids.txt", 20),
        ("recipegen/human_subset_ids.txt", 20),
    ):
        text = (root / rel).read_text()
        body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not body:
            assert "PENDING" in text and "python -m loom.eval select" in text
            with pytest.raises(EvalInputError, match="no ids yet"):
                read_id_list(root / rel)
        else:
            assert len(read_id_list(root / rel)) == n


def test_empty_id_list_is_an_error(tmp_path):
    (tmp_path / "ids.txt").write_text("# only a header\n")
    with pytest.raises(EvalInputError, match="no ids yet"):
        read_id_list(tmp_path / "ids.txt")
    (tmp_path / "ids.txt").write_text("a\nb # comment\na\n")
    with pytest.raises(EvalInputError, match="repeats ids"):
        read_id_list(tmp_path / "ids.txt")
