"""`loom data filter`: the CLIP step filter with a backend whose cosines are known, held-out prompts, the
containment rule and the tiny CLIP through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from loom.data.__main__ import main as data_main
from loom.data.construct import filter as filt
from loom.data.construct.filter import FilterConfig, process_row

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColorClip:
    """CLIP stand-in with exact cosines: an image is the one-hot of the strongest channel of its saturated pixels,
    a text the one-hot of the colour word it names, so a matching step scores 1.0 and a mismatched one 0.0."""

    name, image_size = "color", 32

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        spread = pixels.amax(1, keepdim=True) - pixels.amin(1, keepdim=True)  # ~0.2 on white, ~3.7 on red
        colour = (pixels * (spread > 1)).sum((2, 3))
        return torch.nn.functional.one_hot(colour.argmax(1), 3).float()

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.eye(3)[next(i for i, c in enumerate(COLORS) if c in t)] for t in texts])


def _row(root: Path, rid: str, colors: list[str], texts: list[str]) -> dict:
    frames = []
    for k, c in enumerate(colors):  # one coloured square per frame (the pHash filters are off in these tests)
        p = root / rid / f"{k}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        img.paste(COLORS[c], (6 * k, 6 * k, 6 * k + 16, 6 * k + 16))
        img.save(p)
        frames.append(f"{rid}/{k}.png")
    return {"id": rid, "task": "tutorial", "prompt": f"Paint {rid}", "plan": texts, "frames": frames}


def test_clip_step_filter_uses_the_scorer_cosines(tmp_path, monkeypatch):
    monkeypatch.setitem(filt._BACKEND, "clip", ColorClip())
    cfg = FilterConfig(clip_threshold=0.5, dup_distance=-1, cut_distance=257)
    good = _row(tmp_path, "good", ["red", "green", "blue"], ["Paint red.", "Add green.", "Add blue."])
    bad = _row(tmp_path, "bad", ["red", "green", "blue"], ["Paint red.", "Add blue.", "Add blue."])
    item = {"base": str(tmp_path), "out_base": str(tmp_path), "key": "k"}
    out = process_row(cfg, {**item, "row": good})
    assert out.reason is None and out.rows[0]["meta"]["filter"]["clip"] == [1.0, 1.0, 1.0]
    out = process_row(cfg, {**item, "row": bad})
    assert out.reason == "low_clip_alignment" and out.detail == "step 2: cosine 0.000 < 0.5"
    out = process_row(FilterConfig(dup_distance=-1, cut_distance=257), {**item, "row": bad})  # no CLIP filter
    assert out.reason is None and "clip" not in out.rows[0]["meta"]["filter"]


def test_cli_held_out_prompts_containment_and_tiny_clip(tmp_path, tiny_clip_dir, capsys):
    data = tmp_path / "data"
    rows = [_row(data, "a", ["red", "green", "blue"], ["Paint red.", "Add green.", "Add blue."]),
            _row(data, "b", ["blue", "green", "red"], ["Paint blue.", "Add green.", "Add red."])]
    rows[1]["prompt"] = "  PAINT   the held-out picture! "
    (data / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"id": "e", "task": "t2i", "prompt": "paint the held-out picture",
                                                     "targets": []}) + "\n")
    assert data_main(["filter", str(data / "m.jsonl"), "--out", str(tmp_path / "other" / "x.jsonl")]) == 2
    assert "stay inside the manifest's folder" in capsys.readouterr().err
    out = tmp_path / "train.jsonl"
    assert data_main(["filter", str(data / "m.jsonl"), "--out", str(out), "--held-out", str(tmp_path / "eval.jsonl"),
                      "--clip-weights", str(tiny_clip_dir), "--clip-threshold", "-1", "--no-progress",
                      "--dup-distance", "-1", "--cut-distance", "257"]) == 0
    (kept,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert kept["id"] == "a" and kept["frames"][0] == "data/a/0.png"  # relative to the output manifest
    assert all(-1 <= c <= 1 for c in kept["meta"]["filter"]["clip"]) and len(kept["meta"]["filter"]["clip"]) == 3
    rep = json.loads((tmp_path / "train.jsonl.funnel.json").read_text())
    assert [(r["reason"], r["detail"][:6]) for r in rep["removed"]] == [("overlaps_held_out", "prompt")]
