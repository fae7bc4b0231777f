"""`loom data frames`: the sampler's counts and picks, bad inputs, resume, shards and worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from videos import black, states, tutorial_video_frames, write_video

from loom.data.__main__ import main as data_main
from loom.data.construct.frames import FrameConfig, process_source
from loom.data.construct.sources import Source, blog_images


def _nearest_state(path: Path, candidates: list[np.ndarray]) -> int:
    x = np.asarray(Image.open(path).convert("RGB"), float)
    return int(np.argmin([np.abs(x - s).mean() for s in candidates]))


def test_sampler_skips_black_fades_holds_and_duplicates(tmp_path):
    frames, expected = tutorial_video_frames()
    video = write_video(tmp_path / "tut.mp4", frames)
    out = process_source(FrameConfig(str(tmp_path / "out")), Source("video", str(video)))
    assert out.reason is None
    # every frame class counted exactly: 47 frames = 5 black + 11 fade + 31 shown (6 states × 5 + 1 duplicate),
    # of which 31 − 6 = 25 repeat the frame before them
    assert out.counts == {"frames_decoded": 47, "frames_black": expected["black"], "frames_blank": 0,
                          "frames_fade": expected["fade"], "frames_near_duplicate": 25}
    (row,) = out.rows
    assert [_nearest_state(tmp_path / "out" / f, states()) for f in row["frames"]] == [0, 1, 2, 3, 4, 5]
    ts = row["meta"]["timestamps"]
    assert ts == sorted(ts) and row["meta"]["span"] == [2 / 8, 39 / 8]  # first / last shown frame (8 fps)
    assert len(row["meta"]["phash"]) == 6 and row["task"] == "tutorial" and row["plan"] == []


def test_num_frames_range_and_resampling(tmp_path):
    s = states(3)
    video = write_video(tmp_path / "three.mp4", [f for st in s for f in [st] * 6])
    cfg = FrameConfig(str(tmp_path / "out"), min_frames=4, max_frames=6)
    out = process_source(cfg, Source("video", str(video)))
    assert out.reason == "too_few_distinct_frames" and out.detail == "3 distinct usable frames < 4"
    out = process_source(FrameConfig(str(tmp_path / "out"), min_frames=3, max_frames=6), Source("video", str(video)))
    assert len(out.rows[0]["frames"]) == 3  # 6 targets, 3 distinct states: re-sampled, never repeated


@pytest.mark.parametrize("kind", ["blank_card", "all_black"])
def test_uniform_videos_are_empty_of_usable_frames(tmp_path, kind):
    frame = np.full((64, 64, 3), 200, np.uint8) if kind == "blank_card" else black()
    video = write_video(tmp_path / f"{kind}.mp4", [frame] * 10)
    out = process_source(FrameConfig(str(tmp_path / "out")), Source("video", str(video)))
    assert out.reason == "too_few_distinct_frames"
    key = "frames_blank" if kind == "blank_card" else "frames_black"
    assert out.counts[key] == 10


def test_image_folder_and_blog_page(tmp_path):
    folder = tmp_path / "steps"
    folder.mkdir()
    for k, st in enumerate(states(5), start=1):
        Image.fromarray(st).save(folder / f"step{k}.png")
    Image.fromarray(states(5)[1]).save(folder / "step2b.png")  # a duplicate
    (folder / "step10.png").write_bytes(b"not a png")  # unreadable, after step5 in natural order
    out = process_source(FrameConfig(str(tmp_path / "out")), Source("images", str(folder)))
    assert out.counts["unreadable_images"] == 1 and out.counts["frames_near_duplicate"] == 1
    assert out.rows[0]["meta"]["files"] == ["step1.png", "step2.png", "step3.png", "step4.png", "step5.png"]
    page = tmp_path / "blog" / "page.html"
    page.parent.mkdir()
    parts = ["<html><head><title>Shapes</title></head><body><h1>Shapes</h1>"]
    for k, st in enumerate(states(4), start=1):
        Image.fromarray(st).save(page.parent / f"{k}.png")
        parts.append(f"<p>Now draw part {k}.</p><img src='{k}.png' alt='part {k}'>")
    parts.append("<img src='http://example.com/a.png'><img src='../../etc/x.png'></body></html>")
    page.write_text("".join(parts))
    title, imgs = blog_images(page)
    assert title == "Shapes" and imgs[1].context == "Now draw part 2. part 2"
    out = process_source(FrameConfig(str(tmp_path / "out")), Source("blog", str(page)))
    assert out.counts["remote_images_skipped"] == 1 and out.counts["outside_images_skipped"] == 1
    assert out.rows[0]["meta"]["title"] == "Shapes" and len(out.rows[0]["frames"]) == 4


def _run(tmp_path: Path, *extra: str) -> int:
    return data_main(["frames", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--no-progress", *extra])


def _videos(tmp_path: Path, n: int = 4) -> None:
    frames, _ = tutorial_video_frames(hold=3)
    for k in range(n):
        write_video(tmp_path / "videos" / f"v{k}.mp4", frames[k:])  # distinct sources, same content


def test_rerun_resumes_and_settings_change_is_refused(tmp_path, capsys):
    _videos(tmp_path, 2)
    assert _run(tmp_path) == 0
    first = (tmp_path / "out" / "frames.jsonl").read_text()
    journal = next((tmp_path / "out" / "frames.jsonl.work").glob("journal-*.jsonl"))
    lines = journal.read_text().count("\n")
    assert _run(tmp_path) == 0  # nothing left to do: the journal answers
    assert journal.read_text().count("\n") == lines and (tmp_path / "out" / "frames.jsonl").read_text() == first
    assert _run(tmp_path, "--dup-distance", "3") == 2
    err = capsys.readouterr().err
    assert "settings changed" in err and "dup_distance" in err and "--restart" in err and err.count("\n") == 1
    assert _run(tmp_path, "--dup-distance", "3", "--restart") == 0


def test_shards_and_worker_processes_give_the_same_output(tmp_path, capsys):
    _videos(tmp_path, 4)
    assert _run(tmp_path, "--shard", "0/2") == 0
    assert not (tmp_path / "out" / "frames.jsonl").exists()  # half the items: nothing written yet
    assert "2 of 4 items done" in capsys.readouterr().out
    assert _run(tmp_path, "--shard", "1/2") == 0
    sharded = [json.loads(x) for x in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    out2 = tmp_path / "procs"
    assert data_main(["frames", str(tmp_path / "videos"), "--out", str(out2), "--workers", "2", "--no-progress"]) == 0
    procs = [json.loads(x) for x in (out2 / "frames.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sharded] == [r["id"] for r in procs] and len(procs) == 4
    assert [r["meta"]["phash"] for r in sharded] == [r["meta"]["phash"] for r in procs]
    assert [r["meta"]["source"] for r in procs] == [str(tmp_path / "videos" / f"v{k}.mp4") for k in range(4)]


def test_bad_inputs_are_named_in_the_report(tmp_path, capsys):
    v = tmp_path / "videos"
    v.mkdir()
    (v / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (v / "zero.mp4").write_bytes(b"")
    assert data_main(["frames", str(v), str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "out"),
                      "--no-progress"]) == 0
    rep = json.loads((tmp_path / "out" / "frames.jsonl.funnel.json").read_text())
    reasons = {Path(r["detail"].split(":")[0].split(" ")[0]).name: r["reason"] for r in rep["removed"]}
    assert reasons == {"corrupt.mp4": "unreadable", "zero.mp4": "empty", "nope.mp4": "not_found"}
    md = (tmp_path / "out" / "frames.jsonl.funnel.md").read_text()
    assert "| not_found | 1 | 2 |" in md and "| unreadable | 1 | 1 |" in md and "| empty | 1 | 0 |" in md
    assert data_main(["frames", str(v), "--out", str(tmp_path / "o2"), "--num-frames", "6-4"]) == 2
    assert "--num-frames 6-4" in capsys.readouterr().err


def test_the_output_folder_is_never_an_input(tmp_path):
    _videos(tmp_path, 1)
    assert data_main(["frames", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert data_main(["frames", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    rep = json.loads((tmp_path / "out" / "frames.jsonl.funnel.json").read_text())
    assert rep["num_in"] == 1 and rep["num_out"] == 1  # out/frames/<id>/ is not scanned as an image folder
