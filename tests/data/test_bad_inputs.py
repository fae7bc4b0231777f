"""Bad inputs in a training manifest: every class is a counted, named skip (`manifest:line:id` and the reason),
never a crash; a bug in a source is not a skip; too-long samples are counted against their own threshold."""

import io
import json
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from loom.data.loader import DataConfig, ListSource, PlanStream, ResumableLoader, SourceConfig
from loom.data.manifest import ManifestSource
from loom.data.packing import PackGeometry
from loom.data.tokenizer import SpecialTokens, load_tokenizer
from loom.data.types import PlanItem, SequencePlan
from loom.model.configs import preset

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bagel-tiny"
GOOD = {"task": "t2i", "prompt": "a red square", "targets": ["ok.png"]}


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 20, 20)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A valid PNG header announcing 40000 × 40000 pixels: PIL's DecompressionBombError."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(  # noqa: E731
        ">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def bad_manifest(folder: Path) -> tuple[Path, dict[str, str]]:
    """One good row, then one row per bad-input class; returns (manifest, {class: expected text})."""
    data = folder / "data"
    data.mkdir(parents=True)
    (data / "ok.png").write_bytes(_png())
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="JPEG")
    files = {"empty.png": b"", "garbage.png": b"not an image", "trunc.png": _png()[:60],
             "trunc.jpg": buf.getvalue()[:300], "bomb.png": _bomb()}
    for name, content in files.items():
        (data / name).write_bytes(content)
    (folder / "outside.png").write_bytes(_png())
    rows = [  # (class, line written, expected text in the skip record)
        ("good", json.dumps({**GOOD, "id": "good"}), None),
        ("missing file", json.dumps({**GOOD, "id": "missing", "targets": ["gone.png"]}), "not found"),
        ("empty file", json.dumps({**GOOD, "id": "empty", "targets": ["empty.png"]}), "cannot be decoded"),
        ("not an image", json.dumps({**GOOD, "id": "garbage", "targets": ["garbage.png"]}), "cannot be decoded"),
        ("truncated PNG", json.dumps({**GOOD, "id": "trunc-png", "targets": ["trunc.png"]}), "cannot be decoded"),
        ("truncated JPEG", json.dumps({**GOOD, "id": "trunc-jpg", "targets": ["trunc.jpg"]}), "cannot be decoded"),
        ("decompression bomb", json.dumps({**GOOD, "id": "bomb", "targets": ["bomb.png"]}),
         "DecompressionBombError"),
        ("path outside the root", json.dumps({**GOOD, "id": "escape", "targets": ["../outside.png"]}),
         "leaves the data root"),
        ("absolute path", json.dumps({**GOOD, "id": "absolute", "targets": [str(folder / "outside.png")]}),
         "is absolute"),
        ("invalid JSON", '{"id": "broken", "task": ', "invalid JSON"),
        ("row not an object", "[1, 2, 3]", "must be a JSON object"),
        ("unknown task", json.dumps({**GOOD, "id": "dance", "task": "dance"}), "unknown task"),
        ("numeric id", json.dumps({**GOOD, "id": 17}), "'id' is the number 17"),
        ("plan/frames mismatch", json.dumps({"id": "steps", "task": "tutorial", "prompt": "Draw", "plan": ["a.", "b."],
                                             "frames": ["ok.png"]}), "more steps than images"),
        ("placeholder without image", json.dumps({"id": "ph", "task": "edit", "prompt": "move <image 3>",
                                                  "input_images": ["ok.png"], "targets": ["ok.png"]}),
         "<image 3>"),
        ("missing prompt", json.dumps({"id": "noprompt", "task": "t2i", "targets": ["ok.png"]}), "prompt"),
    ]
    path = data / "m.jsonl"
    path.write_text("".join(line + "\n" for _, line, _ in rows))
    return path, {cls: (text, line) for cls, line, text in rows[1:]}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(FIXTURE)


def test_every_bad_input_class_is_a_named_counted_skip(tmp_path, tok):
    path, classes = bad_manifest(tmp_path)
    geo = PackGeometry.from_config(preset("loom-tiny"))
    src = ManifestSource(path, "auto", "train", tok, SpecialTokens.from_tokenizer(tok), {}, geo, (8, 4))
    stream = PlanStream({"m": src}, {"m": 1.0}, seed=0, shard=0, num_shards=1, shuffle=False)
    plan, _ = stream.next()
    assert plan.source == f"{path}:1:good"
    plan, _ = stream.next()  # the next good row is the first one again: every bad row was skipped on the way
    assert plan.source == f"{path}:1:good" and stream.num_bad == len(classes)
    by_line = {int(e["source"][len(str(path)) + 1:].split(":")[0]): e for e in stream.events}
    caught = []
    for line_no, (cls, (text, _)) in enumerate(classes.items(), start=2):
        e = by_line[line_no]
        assert e["kind"] == "corrupt" and text in e["error"], (cls, e)
        rid = {"invalid JSON": None, "row not an object": None, "numeric id": "17"}.get(cls, "")
        if rid is None:  # the row did not parse: manifest:line
            assert e["source"] == f"{path}:{line_no}", (cls, e)
        else:  # manifest:line:id
            assert e["source"].startswith(f"{path}:{line_no}:") and e["source"].rsplit(":", 1)[1], (cls, e)
        assert not e["error"].startswith(str(path)), (cls, e)  # the source is not repeated in the reason
        caught.append(cls)
    print(f"\n[figure] bad-input classes caught as named skips: {len(caught)} of {len(classes)} tried: "
          + ", ".join(caught))


def test_absolute_paths_and_other_roots_are_explicit_opt_ins(tmp_path, tok):
    path, _ = bad_manifest(tmp_path)
    geo = PackGeometry.from_config(preset("loom-tiny"))
    tokens = SpecialTokens.from_tokenizer(tok)
    rng = random.Random(0)
    lenient = ManifestSource(path, "auto", "train", tok, tokens, {}, geo, (8, 4), root=tmp_path,
                             allow_absolute_paths=True)
    assert len(lenient.plans(7, rng)) == 1 and len(lenient.plans(8, rng)) == 1  # ../outside.png, absolute
    strict = ManifestSource(path, "auto", "train", tok, tokens, {}, geo, (8, 4))
    for row in (7, 8):
        with pytest.raises(ValueError, match="data root|absolute"):
            strict.plans(row, rng)


class _Buggy(ListSource):
    def plans(self, row, rng):
        if row == 1:
            return {}["no such key"]  # a programming error, not bad data
        return super().plans(row, rng)


def test_a_bug_in_a_source_is_not_counted_as_a_bad_sample(tok):
    tokens = SpecialTokens.from_tokenizer(tok)
    plan = SequencePlan([PlanItem("text", text_ids=[11, 12, 13], loss=True)], "p")
    cfg = DataConfig(sources={"a": SourceConfig(path="-")}, batch_size=1, max_tokens=400, shuffle=False)
    ld = ResumableLoader({"a": _Buggy([plan] * 3, "a")}, cfg, tokens, PackGeometry())
    next(ld)
    with pytest.raises(KeyError, match="no such key"):
        next(ld)
