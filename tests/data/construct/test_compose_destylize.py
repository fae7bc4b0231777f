"""`loom data compose-pairs` and `loom data destylize`: entity tokens, combination counts, overlap checks, the
image endpoint behind the shared client (fake server on 127.0.0.1), and rows that validate."""

from __future__ import annotations

import io
import json
from pathlib import Path

from construct_helpers import endpoint_args
from PIL import Image

from loom.data.__main__ import main as data_main
from loom.data.validate import validate_manifest
from loom.eval.fakes import default_image_handler, png_bytes

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "bagel-tiny"


def _subject(path: Path, color, box=(8, 8, 24, 24), text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (32, 32), (255, 255, 255))
    img.paste(color, box)
    img.save(path)
    if text:
        path.with_suffix(".txt").write_text(text + "\n")


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_compose_pairs_collage(tmp_path):
    subj = tmp_path / "data" / "subjects"
    _subject(subj / "models" / "m1.png", (200, 30, 30), text="woman in a casual pose")
    _subject(subj / "models" / "m2.png", (30, 30, 200), box=(2, 2, 12, 30))
    _subject(subj / "models" / "m2_copy.png", (30, 30, 200), box=(2, 2, 12, 30))  # a duplicate subject
    _subject(subj / "garments" / "g1.png", (30, 200, 30), box=(16, 0, 32, 16), text="red floral dress")
    _subject(subj / "garments" / "g2.png", (90, 90, 90), box=(0, 20, 32, 28))
    (subj / "garments" / "broken.png").write_bytes(b"nope")  # unreadable
    out = tmp_path / "data" / "compose.jsonl"
    assert data_main(["compose-pairs", str(subj), "--out", str(out), "--num-entities", "2", "--no-progress"]) == 0
    rows = _rows(out)
    assert len(rows) == 8  # 2 models × 2 garments = 4 combinations, each forward + reverse
    assert [r["task"] for r in rows] == ["compose", "decompose"] * 4
    fwd = next(r for r in rows if r["task"] == "compose" and any("m1" in p for p in r["input_images"]))
    assert "the <model> woman in a casual pose from <image" in fwd["prompt"]
    assert "the <garment> " in fwd["prompt"] and fwd["prompt"].startswith("Combine ")
    k = 1 + [("m1" in p) for p in fwd["input_images"]].index(True)
    assert f"the <model> woman in a casual pose from <image {k}>" in fwd["prompt"]  # token ↔ image order
    rev = next(r for r in rows if r["id"] == fwd["id"].replace("compose-", "decompose-"))
    assert rev["input_images"] == fwd["targets"] and rev["targets"] == fwd["input_images"]
    assert rev["prompt"].startswith("Decompose <image 1> into the ")
    composite = Image.open(out.parent / fwd["targets"][0])
    assert composite.size == (16 + 2 * (512 + 16), 512 + 32)  # two 512 px subjects side by side on white
    rep = json.loads((tmp_path / "data" / "compose.jsonl.funnel.json").read_text())
    assert sorted((Path(r["path"]).name, r["reason"]) for r in rep["rejected_inputs"]) == [
        ("broken.png", "unreadable_image"), ("m2_copy.png", "duplicate_subject")]
    from loom.data.entities import register_entity_tokens
    from loom.data.tokenizer import load_tokenizer

    tok = load_tokenizer(FIXTURE)
    register_entity_tokens(tok)
    rep = validate_manifest(out, tok, max_tokens_per_sample=None)
    assert rep.num_records == 8 and not rep.errors and not [w for w in rep.warnings if "tag" in w.message]


def test_compose_pairs_through_the_image_endpoint(tmp_path, fake_server):
    subj = tmp_path / "data" / "subjects"
    _subject(subj / "products" / "p1.png", (200, 30, 30))
    _subject(subj / "scenes" / "s1.png", (30, 200, 30), box=(0, 16, 32, 32))
    _subject(subj / "scenes" / "s2.png", (30, 30, 200), box=(0, 0, 10, 32))

    def image_handler(req):
        images = [Image.open(io.BytesIO(b)) for b in req["images"]]
        if any(im.getpixel((0, 0)) == (30, 30, 200) for im in images):  # returns an input unchanged
            return 200, req["images"][0], 0.0
        return default_image_handler(req)  # the inputs side by side

    srv = fake_server(image_handler=image_handler)
    out = tmp_path / "data" / "compose.jsonl"
    assert data_main(["compose-pairs", str(subj), "--out", str(out), *endpoint_args(srv, "image", tmp_path)]) == 0
    (edit1, edit2) = srv.requests
    assert {edit1["path"], edit2["path"]} == {"/v1/images/edits"} and len(edit1["images"]) == 2
    assert "<object>" in edit1["prompt"] and "<scene>" in edit1["prompt"] and edit1["model"] == "fake-image"
    rows = _rows(out)
    assert len(rows) == 2 and rows[0]["meta"]["composite"] == "fake-image"
    assert Image.open(out.parent / rows[0]["targets"][0]).size == (64, 32)  # what the endpoint returned
    rep = json.loads((tmp_path / "data" / "compose.jsonl.funnel.json").read_text())
    assert [r["reason"] for r in rep["removed"]] == ["composite_unchanged"]


def test_destylize_triplets(tmp_path, fake_server):
    styles = tmp_path / "data" / "styles"
    for k in range(3):
        _subject(styles / "ink" / f"i{k}.png", (20 * k, 20 * k, 20 * k), box=(4 * k, 0, 4 * k + 10, 32))
    _subject(styles / "lonely" / "only.png", (200, 0, 0))
    unchanged = {"i2"}
    outage = {"on": True}

    def image_handler(req):
        img = Image.open(io.BytesIO(req["images"][0])).convert("RGB")
        if img.getpixel((8, 16)) == (40, 40, 40) and unchanged:  # i2: the model did nothing
            return 200, req["images"][0], 0.0
        if img.getpixel((4, 16)) == (20, 20, 20) and outage["on"]:  # i1: the endpoint is down
            return 503, {"error": {"message": "down"}}, 0.0
        flipped = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).rotate(90)
        return 200, png_bytes(flipped), 0.0

    srv = fake_server(image_handler=image_handler)
    out = tmp_path / "data" / "style.jsonl"
    cmd = ["destylize", str(styles), "--out", str(out), *endpoint_args(srv, "image", tmp_path)]
    assert data_main(cmd) == 1  # i1 pending
    rep = json.loads((tmp_path / "data" / "style.jsonl.funnel.json").read_text())
    assert {r["key"]: r["reason"] for r in rep["removed"]} == {"ink/i2.png": "destylize_unchanged",
                                                               "lonely/only.png": "single_image_style"}
    assert [p["key"] for p in rep["pending"]] == ["ink/i1.png"]
    outage["on"] = False
    assert data_main(cmd) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["style-ink-i0", "style-ink-i1"]
    r0 = rows[0]
    assert r0["prompt"] == "Apply the <style> of <image 1> to <image 2>." and r0["task"] == "style"
    assert r0["input_images"] == ["styles/ink/i1.png", "content/ink/i0.png"]  # another reference of the style
    assert r0["targets"] == ["styles/ink/i0.png"]
    assert "realistic, natural photograph" in srv.requests[0]["prompt"]
    assert not validate_manifest(out).errors


def test_compose_pairs_needs_enough_categories(tmp_path, capsys):
    subj = tmp_path / "data" / "subjects"
    _subject(subj / "models" / "m1.png", (200, 30, 30))
    _subject(subj / "shoes" / "s1.png", (30, 200, 30), box=(0, 20, 32, 30))  # another silhouette (pHash is grey)
    out = str(tmp_path / "data" / "c.jsonl")
    assert data_main(["compose-pairs", str(subj), "--out", out]) == 2
    assert "--entity shoes=<token>" in capsys.readouterr().err  # an unknown category names the fix
    assert data_main(["compose-pairs", str(subj), "--out", out, "--entity", "shoes=<object>", "--num-entities",
                      "3"]) == 2
    assert "no combinations — 2 usable categories" in capsys.readouterr().err
