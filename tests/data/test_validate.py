"""Whole-manifest validation: every malformed row is named, good rows pass, lengths are measured."""

import json

import pytest
from PIL import Image

from loom.data.builders import BuildConfig
from loom.data.entities import register_entity_tokens
from loom.data.packing import PackGeometry
from loom.data.records import SampleError
from loom.data.tokenizer import load_tokenizer
from loom.data.validate import validate_manifest

GEOM = PackGeometry(latent_grid=16)


@pytest.fixture(scope="module")
def tok():
    t = load_tokenizer("tests/fixtures/bagel-tiny")
    register_entity_tokens(t)
    return t


def write_manifest(folder, rows):
    for i in range(6):
        Image.new("RGB", (64, 64), (40 * i, 90, 10)).save(folder / f"f{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"id": "good", "task": "tutorial", "prompt": "Draw it.", "plan": ["a.", "b.", "c."],
        "frames": ["f1.png", "f2.png", "f3.png"], "input_images": []}
ROWS = [
    GOOD,
    {**GOOD, "id": "more-steps", "plan": ["a.", "b.", "c.", "d."]},
    {**GOOD, "id": "missing-file", "frames": ["f1.png", "gone.png", "f3.png"]},
    {**GOOD, "id": "unparsable", "plan": "no markers here"},
    {**GOOD, "id": "corrupt", "frames": ["f1.png", "broken.png", "f3.png"]},
    {"id": "bad-task", "task": "dance", "prompt": "x"},
    {"id": "compose-ok", "task": "compose",
     "prompt": "Put the <object> from <image 1> on the <scene> of <image 2>.",
     "input_images": ["f1.png", "f2.png"], "targets": ["f3.png"]},
    {"id": "typo", "task": "compose", "prompt": "Put the <objekt> from <image 1> left.",
     "input_images": ["f1.png"], "targets": ["f3.png"]},
    {**GOOD, "id": "long", "plan": [f"s{k}." for k in range(1, 9)], "frames": ["f1.png"] * 8},
]


def test_report_names_each_bad_sample(tmp_path, tok):
    path = write_manifest(tmp_path, ROWS)
    rep = validate_manifest(path, tok, BuildConfig(), GEOM)
    by_id = {}
    for issue in rep.errors:
        by_id.setdefault(issue.source.rsplit(":", 1)[1], []).append(issue.message)
    assert set(by_id) == {"more-steps", "missing-file", "unparsable", "corrupt", "bad-task"}
    assert rep.errors[0].source == f"{path}:2:more-steps"  # line 2 of the file
    assert "more steps than images: 4 plan steps but 3 frames" in by_id["more-steps"][0]
    assert "gone.png" in by_id["missing-file"][0]
    assert "plan unparsable" in by_id["unparsable"][0]
    assert "broken.png" in by_id["corrupt"][0]
    warn = {w.source.rsplit(":", 1)[1]: w.message for w in rep.warnings}
    assert "<objekt>" in warn["typo"] and "truncated to N_max = 6" in warn["long"]
    assert rep.num_records == 9 and rep.num_ok == 4 and not rep.ok
    assert rep.num_instances == 3 + 1 + 1 + 6  # good: one per frame; long: truncated to 6
    assert rep.tasks["tutorial"] == 6 and "4 ok, 5 with errors; issues: 5 errors, 2 warnings" in rep.summary()
    with pytest.raises(SampleError, match="more-steps"):
        rep.raise_if_errors()


def test_token_budget_and_schema_only_mode(tmp_path, tok):
    path = write_manifest(tmp_path, [GOOD])
    rep = validate_manifest(path, tok, BuildConfig(), GEOM)
    assert rep.ok and rep.max_tokens > 0
    capped = validate_manifest(path, tok, BuildConfig(), GEOM, max_tokens_per_sample=rep.max_tokens - 1)
    assert len(capped.errors) == 1 and "frame3 has" in capped.errors[0].message
    schema_only = validate_manifest(write_manifest(tmp_path, ROWS), tokenizer=None)
    assert schema_only.num_instances == 0 and len(schema_only.errors) == 5


def test_unregistered_entity_token_warns(tmp_path):
    plain = load_tokenizer("tests/fixtures/bagel-tiny")
    path = write_manifest(tmp_path, [ROWS[6]])
    rep = validate_manifest(path, plain, BuildConfig(), GEOM)
    assert rep.ok and any("<object> is not registered" in w.message for w in rep.warnings)


def test_cli_registers_entity_tokens(tmp_path, tok):
    """`loom data validate` registers the build config's entity tokens first: `<object>` / `<scene>` count as one
    token each and do not warn (the trainer registers them the same way)."""
    from loom.data.__main__ import main
    from loom.model.configs import preset

    path = write_manifest(tmp_path, [ROWS[6]])
    out = tmp_path / "report.json"
    assert main(["validate", str(path), "--tokenizer", "tests/fixtures/bagel-tiny", "--preset", "loom-tiny",
                 "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["errors"] == [] and d["warnings"] == [] and d["num_instances"] == 1
    geom = PackGeometry.from_config(preset("loom-tiny"))
    registered = validate_manifest(path, tok, BuildConfig(), geom)
    plain = validate_manifest(path, load_tokenizer("tests/fixtures/bagel-tiny"), BuildConfig(), geom)
    assert d["max_tokens"] == registered.max_tokens
    pieces = sum(len(load_tokenizer("tests/fixtures/bagel-tiny").encode(t, add_special_tokens=False)) - 1
                 for t in ("<object>", "<scene>"))
    assert pieces > 0 and plain.max_tokens - d["max_tokens"] == pieces


def test_duplicate_ids_escaping_paths_numeric_ids_and_counts(tmp_path, tok):
    Image.new("RGB", (64, 64)).save(tmp_path / "outside.png")
    data = tmp_path / "data"
    data.mkdir()
    t2i = {"task": "t2i", "prompt": "a square", "targets": ["f1.png"]}
    rows = [{**t2i, "id": "a"}, {**t2i, "id": "a"},  # duplicate
            {**t2i, "id": "b", "targets": ["../outside.png"]},  # escapes the data root
            {**t2i, "id": "c", "targets": [str(tmp_path / "outside.png")]},  # absolute
            {**t2i, "id": 5},  # numeric id
            {**t2i, "id": "d", "targets": ["../outside.png", "gone.png"]}]  # three errors, one row
    path = write_manifest(data, rows)
    rep = validate_manifest(path, tok, BuildConfig(), GEOM)
    errs = {(i.source, i.message) for i in rep.errors}
    assert (f"{path}:2:a", f"duplicate id 'a' (first used at {path}:1:a)") in errs
    assert any(s == f"{path}:3:b" and "leaves the data root" in m for s, m in errs)
    assert any(s == f"{path}:4:c" and "is absolute" in m for s, m in errs)
    assert any(s == f"{path}:5:5" and "'id' is the number 5" in m for s, m in errs)
    assert rep.num_records == 6 and rep.num_ok == 1 and len(rep.errors) == 7  # rows and issues counted apart
    assert "6 rows (t2i 6): 1 ok, 5 with errors; issues: 7 errors, 0 warnings" in rep.summary()
    # explicit opt-ins: a wider root, absolute paths
    lenient = validate_manifest(path, tok, BuildConfig(), GEOM, root=tmp_path, allow_absolute_paths=True)
    assert {i.source for i in lenient.errors} == {f"{path}:2:a", f"{path}:5:5", f"{path}:6:d"}


def test_cli_prints_1_based_lines_and_each_source_once(tmp_path):
    from loom.data.__main__ import main

    path = write_manifest(tmp_path, [GOOD, {**GOOD, "id": "two"}])
    with open(path, "a") as f:
        f.write("\n{not json\n")  # a blank line (line 3), then invalid JSON on line 4
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["validate", str(path)]) == 1
    out = buf.getvalue()
    bad = [ln for ln in out.splitlines() if ln.strip().startswith("error:")]
    assert len(bad) == 1 and bad[0].strip().startswith(f"error: {path}:4: invalid JSON"), out
    assert bad[0].count(str(path)) == 1  # the file prefix once per message
    assert "3 rows" in out and "2 ok, 1 with errors" in out
