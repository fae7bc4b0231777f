"""Manifest readers (JSONL / parquet / HF datasets), image references, the training source and
`loom data validate`."""

import io
import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from loom.data.manifest import Manifest, ManifestSource, build_config, image_refs, load_image
from loom.data.records import ImageError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "data" / "examples"
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"


def _png(color=(200, 10, 10), size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_jsonl_rows_and_relative_images():
    m = Manifest(EXAMPLES / "manifest.jsonl")
    assert m.format == "jsonl" and len(m) == 8
    rec = m.row(0)
    assert rec["task"] == "tutorial" and len(rec["plan"]) == len(rec["frames"]) == 4
    img = m.load_image(rec["frames"][0])
    assert img.size == (48, 48)
    assert image_refs(m.row(2)) == ["images/red_circle.png", "images/blue_square.png", "images/red_and_blue.png"]
    assert m.source(3).endswith("manifest.jsonl:4")  # row index 3 is line 4: sources are 1-based lines


def test_parquet_with_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"t{i}", "task": "t2i", "prompt": f"p{i}", "targets": [_png((i * 40, 0, 0))]} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet", row_group_size=2)
    m = Manifest(tmp_path / "m.parquet")
    assert m.format == "parquet" and len(m) == 5
    assert [m.row(i)["id"] for i in (4, 0, 3)] == ["t4", "t0", "t3"]  # random access across row groups
    assert m.load_image(m.row(3)["targets"][0]).getpixel((0, 0)) == (120, 0, 0)


def test_hf_datasets_folder(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"task": ["t2i", "t2i"], "prompt": ["a", "b"],
                                     "targets": [[{"bytes": _png(), "path": None}], [{"bytes": _png(), "path": None}]]})
    ds.save_to_disk(str(tmp_path / "hf"))
    m = Manifest(tmp_path / "hf")
    assert m.format == "hf" and len(m) == 2 and m.row(1)["prompt"] == "b"
    assert m.load_image(m.row(0)["targets"][0]).size == (20, 12)


def test_image_reference_forms(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    assert load_image("a.png", tmp_path).size == (20, 12)
    assert load_image(_png()).size == (20, 12)
    assert load_image({"bytes": None, "path": "a.png"}, tmp_path).size == (20, 12)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="'bad.png' cannot be decoded"):
        load_image("bad.png", tmp_path)
    with pytest.raises(ImageError, match="missing.png"):
        load_image("missing.png", tmp_path)


def test_build_config_is_strict_and_follows_model_slots():
    from loom.config import ConfigError

    c = build_config({"vae_transform": [32, 16, 16]}, (6, 3))
    assert c.vae_transform == (32, 16, 16) and (c.max_frames, c.max_references) == (6, 3)
    with pytest.raises(ConfigError, match="k_maxx"):
        build_config({"k_maxx": 2})


def test_manifest_source_builds_every_task():
    from loom.data.packing import PackGeometry
    from loom.data.tokenizer import SpecialTokens, load_tokenizer
    from loom.model.configs import preset

    tok = load_tokenizer(FIXTURE)
    geo = PackGeometry.from_config(preset("loom-tiny"))
    src = ManifestSource(EXAMPLES / "manifest.jsonl", "auto", "train", tok, SpecialTokens.from_tokenizer(tok), {},
                         geo, (8, 4))
    counts = [len(src.plans(i, random.Random(0))) for i in range(len(src))]
    assert counts == [4, 3, 1, 1, 1, 1, 1, 1]  # a tutorial gives one instance per target frame
    plan = src.plans(6, random.Random(0))[0]  # edit
    assert plan.source.endswith("manifest.jsonl:7:edit-0")  # manifest:line:id, line 1-based
    assert [it.type for it in plan.items if it.loss] == ["vae_image"]


def _validate(*args) -> tuple[int, str]:
    import contextlib

    from loom.data.__main__ import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["validate", *map(str, args)])
    return rc, buf.getvalue()


def test_validate_cli_ok_and_errors(tmp_path):
    rc, out = _validate(EXAMPLES / "manifest.jsonl", "--train-config", ROOT / "configs/train/tiny_cpu.yaml")
    assert rc == 0 and "8 rows" in out and "8 ok, 0 with errors; issues: 0 errors" in out and "13 instances" in out
    # break the copy: a missing frame, an undecodable image, a plan/frame mismatch, a too-long budget
    d = tmp_path / "m"
    shutil.copytree(EXAMPLES, d)
    rows = [json.loads(x) for x in (d / "manifest.jsonl").read_text().splitlines()]
    rows[0]["frames"][1] = "images/nope.png"
    (d / "images" / "green_triangle.png").write_bytes(b"garbage")
    rows[1]["plan"] = rows[1]["plan"][:2]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out = _validate(d / "manifest.jsonl", "--tokenizer", FIXTURE, "--preset", "loom-tiny",
                        "--max-tokens", "400", "--json", tmp_path / "r.json")
    assert rc == 1
    rep = json.loads((tmp_path / "r.json").read_text())
    by_row = {}
    for e in rep["errors"]:
        by_row.setdefault(e["source"].split(":")[-2], []).append(e["message"])
    assert "nope.png" in " ".join(by_row["1"])  # 1-based lines
    assert "2" in by_row  # 2 plan steps for 3 frames
    assert any("green_triangle" in m for m in by_row["6"]) and any("green_triangle" in m for m in by_row["8"])
    assert any("max_tokens_per_sample = 400" in m for m in by_row["4"])
    assert rep["num_records"] == 8 and rep["num_ok"] == 8 - len(by_row)
