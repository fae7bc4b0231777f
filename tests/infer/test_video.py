"""GIF / MP4 export: decoded back with PyAV, frames counted, timing, captions and sizes checked."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from infer_helpers import FIXTURE, TINY_ARGS, pattern_image
from PIL import Image

from loom.__main__ import main as loom_main
from loom.infer.__main__ import main as generate
from loom.infer.video import captioned_frames, wrap

STEPS = ["Outline the body with a thin pencil line", "Add the fins",
         "Colour everything in bright blue and orange, then add a long description of the scales that needs "
         "several caption lines"]


def decode(path):
    with av.open(str(path)) as c:
        return [(f.to_ndarray(format="rgb24"), f.time) for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def tut(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video")
    plan = tmp / "plan.txt"
    plan.write_text("".join(f"Step {k}: {s}\n" for k, s in enumerate(STEPS, 1)))
    out = tmp / "fish"
    assert generate(["tutorial", "--model", str(FIXTURE), "--prompt", "How to draw a fish", "--out", str(out),
                     *TINY_ARGS, "--planner", "fixed", "--plan-file", str(plan), "--gif", "--mp4"]) == 0
    return out


def test_generate_writes_gif_and_mp4(tut):
    gif, mp4 = decode(tut / "animation.gif"), decode(tut / "animation.mp4")
    assert len(gif) == len(mp4) == 1 + len(STEPS)  # title card + one frame per step
    sizes = {a.shape for a, _ in gif + mp4}
    assert len(sizes) == 1
    h, w, _ = sizes.pop()
    assert w == 256 and h % 2 == 0 and w % 2 == 0  # 32 px frames ×8, even sides for yuv420p
    with av.open(str(tut / "animation.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert [round(t, 3) for _, t in mp4] == [0.0, 1.5, 3.0, 4.5]  # 1.5 s per frame
    html = (tut / "index.html").read_text()
    assert 'href="animation.gif"' in html and 'href="animation.mp4"' in html  # the storyboard links them


def test_frames_are_nearest_upscaled_and_captioned(tut):
    (arr, _), = [decode(tut / "animation.gif")[1]]
    frame = np.asarray(Image.open(tut / "frame_01.png").convert("RGB").resize((256, 256), Image.NEAREST))
    img = arr[:256].astype(int)
    assert np.abs(img - frame.astype(int)).mean() < 12  # the GIF's 256-colour palette: near, not exact
    blocks = img.reshape(32, 8, 32, 8, 3)
    spread = blocks.max(axis=(1, 3)) - blocks.min(axis=(1, 3))
    assert (spread == 0).all()  # nearest neighbour: every source pixel is a flat 8×8 block (no blur)
    strip = arr[256:]
    assert (strip.min(axis=2) < 100).mean() > 0.01  # dark caption text on the white strip
    d = json.loads((tut / "result.json").read_text())
    frames = captioned_frames(d, tut, title=False)
    assert len(frames) == 3 and frames[2].height == arr.shape[0]  # the strip fits the longest caption


def test_export_video_cli(tut, tmp_path, capsys):
    out = tmp_path / "short.mp4"
    rc = loom_main(["export-video", str(tut), "--mp4", "--no-title", "--seconds-per-frame", "0.5", "--out", str(out)])
    assert rc == 0
    got = decode(out)
    assert len(got) == 3 and [round(t, 3) for _, t in got] == [0.0, 0.5, 1.0]
    # errors: one line, exit status 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert loom_main(["export-video", str(empty)]) == 2
    assert "no result.json here" in capsys.readouterr().err
    assert loom_main(["export-video", str(tut), "--gif", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "must end in .gif" in capsys.readouterr().err


def test_batch_root_and_decomposition_labels(tmp_path):
    root = tmp_path / "run"
    for name, task, prompt in (("a", "decompose", "Split <image 1> into the <upper> and <lower>"),
                               ("b", "compose", "The <model> of <image 1>")):
        (root / name).mkdir(parents=True)
        steps = []
        for k in (1, 2) if task == "decompose" else (1,):
            pattern_image(k, (48, 32)).save(root / name / f"frame_{k:02d}.png")
            steps.append({"index": k, "text": "", "image": f"frame_{k:02d}.png"})
        (root / name / "result.json").write_text(json.dumps({"task": task, "prompt": prompt, "steps": steps}))
    assert loom_main(["export-video", str(root), "--gif"]) == 0
    assert len(decode(root / "a" / "animation.gif")) == 3 and len(decode(root / "b" / "animation.gif")) == 2
    frames = captioned_frames(json.loads((root / "a/result.json").read_text()), root / "a", title=False)
    assert frames[0].width == 288  # 48 px ×6 ≥ 256


def test_wrap_cuts_long_words_and_caps_lines():
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = wrap("x" * 500, font, 100, draw, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(draw.textlength(x, font=font) <= 100 for x in lines)
    assert wrap("two words", font, 400, draw) == ["two words"]
