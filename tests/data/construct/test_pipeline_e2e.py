"""End to end, issue 16: synthetic PyAV videos (holds, fades, duplicated and black frames), an image folder and a
blog page → `loom data frames` → `loom data caption` (fake VLM on 127.0.0.1) → `loom data filter` → `loom data
validate` → 3 steps of `python -m loom.train`. Every funnel count below is derived by hand from the inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from construct_helpers import KEY_ENV, caption_json, endpoint_args, is_reask, request_images
from PIL import Image
from videos import (
    black,
    dominant_color,
    states,
    tutorial_video_frames,
    write_empty_video,
    write_video,
)

from loom.data.__main__ import main as data_main
from loom.world.shapes import Element

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"


# Each source gets its own layout: pHash is a greyscale, low-frequency hash, so two pictures with shapes in the same
# cells are near-identical to it whatever their colours (which is right for photos of one scene).
LAYOUTS = {"blue": ["bottom", "left", "right", "top"], "green": ["center", "bottom right"],
           "yellow": ["left", "right", "bottom", "top", "center"], "purple": ["right", "top left", "bottom", "center"],
           "orange": ["top left", "bottom right", "top right", "bottom left"],
           "red": ["center", "top", "left", "bottom left"]}


def _elements(first: str, n: int) -> list[Element]:
    shapes = ["circle", "square", "triangle"]
    colors = [first] + [c for c in ("red", "green", "blue", "yellow", "purple", "orange") if c != first]
    return [Element(colors[k], shapes[k % 3], LAYOUTS[first][k]) for k in range(n)]


def _held(seq: list[np.ndarray], hold: int = 4) -> list[np.ndarray]:
    return [f for s in seq for f in [s] * hold]


def _png(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path.name


def _funnel(path: Path) -> dict[str, int]:
    rep = json.loads(Path(str(path) + ".funnel.json").read_text())
    return {r["step"]: r["removed"] for r in rep["funnel"]} | {"in": rep["num_in"], "kept": rep["num_out"],
                                                               "pending": rep["num_pending"]}


def _inputs(root: Path) -> None:
    videos = root / "videos"
    frames, _ = tutorial_video_frames()
    write_video(videos / "tut_a.mp4", frames)  # A: 6 distinct states
    write_video(videos / "tut_a_copy.mp4", frames)  # A2: the same tutorial again (near-duplicate)
    write_video(videos / "tut_b.mp4", _held(states(4, _elements("blue", 4))))  # B: 4 states (held out)
    write_video(videos / "two_steps.mp4", [black()] + _held(states(2, _elements("green", 2))))  # C: 2 states
    write_video(videos / "static.mp4", [states(1)[0]] * 20)  # D: one state only
    (videos / "broken.mp4").write_bytes(os.urandom(3000))  # E: corrupt
    write_empty_video(videos / "empty.mp4")  # F: zero-length
    (videos / "notes.txt").write_text("not a video")  # G: unsupported
    write_video(videos / "outage.mp4", _held(states(4, _elements("orange", 4))))  # J: endpoint outage
    folder = root / "photos" / "steps"  # H: an ordered image folder with a black and a duplicated image
    s = states(5, _elements("yellow", 5))
    _png(folder / "step0_black.png", black())
    for k, st in enumerate(s, 1):
        _png(folder / f"step{k}.png", st)
    _png(folder / "step2_dup.png", s[1])
    blog = root / "blog"  # I: a page with 4 local images and one remote
    s = states(4, _elements("purple", 4))
    md = ["# Drawing a purple picture", ""]
    for k, st in enumerate(s, 1):
        md += [f"Step {k}: add shape {k}.", f"![step {k}](img/p{k}.png)", ""]
        _png(blog / "img" / f"p{k}.png", st)
    md += ["Bonus:", "![remote](https://example.com/x.png)"]
    (blog / "page.md").write_text("\n".join(md))


def _extra_manifest(root: Path) -> Path:
    """Converter-style rows that exercise the remaining filters."""
    d = root / "extra"
    s = states(4, _elements("red", 4))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    names = [_png(d / f"x{k}.png", st) for k, st in enumerate(s)] + [_png(d / "noise.png", noise)]
    plan = ["Draw the first shape.", "Draw the second shape.", "Draw the third shape."]
    rows = [
        {"id": "x1", "task": "tutorial", "prompt": "Draw four shapes", "plan": plan + ["Draw the last shape."],
         "frames": names[:4]},  # kept
        {"id": "x2", "task": "tutorial", "prompt": "p", "plan": plan, "frames": [names[0], names[0], names[1]]},
        {"id": "x3", "task": "tutorial", "prompt": "p", "plan": plan, "frames": [names[0], "noise.png", names[2]]},
        {"id": "x4", "task": "tutorial", "prompt": "p", "plan": plan, "frames": names[:2]},  # 3 steps, 2 frames
        {"id": "x5", "task": "tutorial", "prompt": "p", "plan": plan, "frames": [names[0], "gone.png", names[2]]},
        {"id": "x1", "task": "tutorial", "prompt": "again", "plan": plan, "frames": names[1:4]},  # duplicate id
    ]
    (d / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "extra.jsonl"


def test_videos_to_training_manifest(tmp_path, fake_server, tiny_clip_dir, capsys):
    root = tmp_path / "data"
    _inputs(root)
    work = root / "work"
    # ---- frames --------------------------------------------------------------------------------------------
    assert data_main(["frames", str(root / "videos"), str(root / "photos"), str(root / "blog"), "--out", str(work),
                      "--num-frames", "2-6", "--no-progress"]) == 0
    f = _funnel(work / "frames.jsonl")
    assert f == {"in": 11, "not_found": 0, "unsupported_file": 1, "unreadable": 1, "empty": 1,
                 "too_few_distinct_frames": 1, "kept": 7, "pending": 0}
    rows = {r["meta"]["source"].split("/")[-1]: r for r in map(json.loads, (work / "frames.jsonl").open())}
    assert {k: len(r["frames"]) for k, r in rows.items()} == {
        "tut_a.mp4": 6, "tut_a_copy.mp4": 6, "tut_b.mp4": 4, "two_steps.mp4": 2, "outage.mp4": 4, "steps": 5,
        "page.md": 4}
    counts = json.loads((work / "frames.jsonl.funnel.json").read_text())["counts"]
    # black: 5 in each A video, 1 in C, 1 image in H; fades: 11 in each A video (tutorial_video_frames)
    assert counts["frames_black"] == 5 + 5 + 1 + 1 and counts["frames_fade"] == 11 + 11
    assert counts["remote_images_skipped"] == 1
    a_states = [np.asarray(Image.open(work / p).convert("RGB"), float) for p in rows["tut_a.mp4"]["frames"]]
    assert [int(np.argmin([np.abs(x - s).mean() for s in states()])) for x in a_states] == [0, 1, 2, 3, 4, 5]
    # ---- caption (fake VLM) --------------------------------------------------------------------------------
    outage = {"on": True}

    def vlm(body):
        imgs = request_images(body)
        color = dominant_color(imgs[0])
        if color == "blue" and not is_reask(body):  # wrong step count once, fixed on the re-ask
            return 200, caption_json(len(imgs) - 1, color), 0.0
        if color == "yellow":
            return 200, "Sure! First you draw a yellow shape, then more shapes.", 0.0
        if color == "purple":
            return 200, caption_json(len(imgs) + 1, color), 0.0
        if color == "orange" and outage["on"]:
            return 500, {"error": {"message": "overloaded"}}, 0.0
        return 200, caption_json(len(imgs), color), 0.0

    srv = fake_server(vlm)
    cap = ["caption", str(work / "frames.jsonl"), "--out", str(work / "captioned.jsonl"), "--workers", "3",
           *endpoint_args(srv, "vlm", tmp_path)]
    assert data_main(cap) == 1  # J is pending: the endpoint kept failing
    f = _funnel(work / "captioned.jsonl")
    assert f == {"in": 7, "no_frames": 0, "unreadable_image": 0, "no_plan": 0, "vlm_refused": 0,
                 "vlm_reply_not_json": 1, "vlm_wrong_step_count": 1, "vlm_reply_invalid": 0, "kept": 4,
                 "pending": 1}
    assert "rerun the same command" in capsys.readouterr().err
    asked = len(srv.requests)
    outage["on"] = False
    assert data_main(cap) == 0
    assert len(srv.requests) - asked == 1  # only J is asked again; finished items come from the journal
    f = _funnel(work / "captioned.jsonl")
    assert f["kept"] == 5 and f["pending"] == 0
    captioned = {r["meta"]["source"].split("/")[-1]: r for r in map(json.loads, (work / "captioned.jsonl").open())}
    assert captioned["tut_b.mp4"]["meta"]["caption"]["reasked"] is True
    assert captioned["tut_a.mp4"]["plan"] == [f"Draw shape {k} of the red picture." for k in range(1, 7)]
    # ---- filter ---------------------------------------------------------------------------------------------
    held = root / "eval_images"
    held.mkdir()
    shutil.copy(work / captioned["tut_b.mp4"]["frames"][-1], held / "b_final.png")
    extra = _extra_manifest(root)
    out = root / "train.jsonl"
    assert data_main(["filter", str(work / "captioned.jsonl"), str(extra), "--out", str(out), "--held-out",
                      str(held), "--clip-weights", str(tiny_clip_dir), "--clip-threshold", "-1", "--no-progress"]) == 0
    f = _funnel(out)
    assert f == {"in": 11, "invalid_row": 1, "unreadable_image": 1, "too_few_steps": 1, "no_visual_change": 1,
                 "scene_cut": 1, "low_clip_alignment": 0, "duplicate_id": 1, "overlaps_held_out": 1,
                 "near_duplicate": 1, "kept": 3, "pending": 0}
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in kept] == [captioned["outage.mp4"]["id"], captioned["tut_a.mp4"]["id"], "x1"]
    assert all(len(r["meta"]["filter"]["clip"]) == len(r["plan"]) for r in kept)
    removed = {r["reason"]: r["detail"] for r in json.loads(Path(str(out) + ".funnel.json").read_text())["removed"]}
    assert "≈" in removed["near_duplicate"] and "held-out" in removed["overlaps_held_out"]
    # ---- validate + train -----------------------------------------------------------------------------------
    overrides = [f"run.dir={tmp_path / 'run'}", "run.total_steps=3", f"model.tokenizer={FIXTURE}",
                 f"data.sources.examples.path={out}", "data.sources.synthetic.weight=0", "checkpoint.every=0",
                 "log.every=1", "data.max_tokens=4096", "data.max_tokens_per_sample=2048"]
    tiny = str(ROOT / "configs" / "train" / "tiny_cpu.yaml")
    assert data_main(["validate", str(out), "--train-config", tiny, *overrides]) == 0
    assert "3 rows (tutorial 3), 3 ok, 0 errors" in capsys.readouterr().out
    from loom.train.__main__ import main as train_main

    assert train_main([tiny, *overrides]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(np.isfinite(m["loss"]) for m in metrics)
    assert KEY_ENV in os.environ
