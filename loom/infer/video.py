"""A generation as an animation: every frame with its step text in a caption strip, as GIF and/or MP4.

    loom export-video out/crane                 # → out/crane/animation.gif
    loom export-video out/crane --mp4 --gif     # both
    loom export-video runs/tut --mp4            # every finished item of a --batch root or an eval run
    loom generate tutorial … --gif --mp4        # the same, right after generating

The video opens with a title card (task, prompt, inputs) unless --no-title, then one video frame per step, each
shown --seconds-per-frame. Small frames are enlarged by an integer factor with nearest-neighbour (a 32 px frame
stays sharp), large ones are shrunk; the caption strip is as tall as the longest wrapped caption needs, so every
video frame has the same size. MP4 is H.264 (yuv420p, even sides) through PyAV; GIF is written by Pillow, whose
per-frame adaptive palette keeps colours that ffmpeg's GIF encoder would need a palettegen filter graph for.
Files are written atomically (`loom.utils.io`). Exit status: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..utils.io import atomic_write_bytes
from .storyboard import TASK_TITLES, entity_labels

FORMATS = ("gif", "mp4")
SECONDS_PER_FRAME = 1.5
MIN_WIDTH = 256  # px: narrower frames are enlarged by an integer factor (nearest neighbour)
MAX_WIDTH = 768  # px: wider frames are shrunk
MAX_CAPTION_LINES = 6
BACKGROUND, INK, MUTED = (255, 255, 255), (31, 35, 40), (106, 115, 125)


class VideoError(ValueError):
    """Nothing to animate / unreadable result (a user error: exit status 2)."""


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no system fonts needed


def wrap(text: str, font, width: int, draw: ImageDraw.ImageDraw, max_lines: int = MAX_CAPTION_LINES) -> list[str]:
    """Greedy word wrap to `width` pixels (over-long words are cut by characters); at most `max_lines`, the last
    one ending in '…' when text was dropped."""
    lines: list[str] = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split():
            cand = f"{line} {word}".strip()
            if draw.textlength(cand, font=font) <= width:
                line = cand
                continue
            if line:
                lines.append(line)
            while draw.textlength(word, font=font) > width and len(word) > 1:
                cut = max(1, next(i for i in range(len(word), 0, -1)
                                  if draw.textlength(word[:i], font=font) <= width))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + " …", font=font) > width:
            last = last[:-1]
        lines[-1] = last + " …"
    return lines


def scaled(im: Image.Image, width: int) -> Image.Image:
    """`im` at `width` px wide: nearest-neighbour when enlarging by an integer factor, Lanczos otherwise."""
    im = im.convert("RGB")
    if im.width == width:
        return im
    h = max(1, round(im.height * width / im.width))
    integer = width % im.width == 0 and width > im.width
    return im.resize((width, h), Image.NEAREST if integer else Image.LANCZOS)


def target_width(w: int) -> int:
    if w < MIN_WIDTH:
        return w * math.ceil(MIN_WIDTH / w)
    return min(w, MAX_WIDTH)


def captioned_frames(d: dict, folder: str | Path, title: bool = True) -> list[Image.Image]:
    """The video frames of one result.json dict: an optional title card, then each step's frame over its
    caption strip, all the same (even) size."""
    folder = Path(folder)
    steps = [st for st in d.get("steps", []) if st.get("image")]
    if not steps:
        raise VideoError(f"{folder}: result.json has no frames to animate (task {d.get('task')!r})")
    frames = []
    for st in steps:
        p = folder / st["image"]
        if not p.is_file():
            raise VideoError(f"{folder}: frame {st['image']} listed in result.json does not exist")
        with Image.open(p) as im:
            frames.append(im.convert("RGB"))
    task = d.get("task", "tutorial")
    labels = entity_labels(d) if task == "decompose" else [None] * len(steps)
    captions = []
    for k, st in enumerate(steps):
        if task == "tutorial":
            head = f"Step {st.get('index', k + 1)}/{len(steps)}"
        else:
            head = f"Output {st.get('index', k + 1)}" + (f" · {labels[k]}" if labels[k] else "")
        captions.append(f"{head}: {st['text']}" if st.get("text") else head)
    width = target_width(max(f.width for f in frames))
    width += width % 2
    shown = [scaled(f, width) for f in frames]
    img_h = max(f.height for f in shown)
    font = _font(max(12, width // 26))
    pad = font.size // 2
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [wrap(c, font, width - 2 * pad, probe) for c in captions]
    line_h = round(font.size * 1.25)
    strip_h = 2 * pad + line_h * max(len(w) for w in wrapped)
    height = img_h + strip_h
    height += height % 2  # yuv420p needs even sides
    out = []
    if title:
        inputs = []
        for rel in d.get("inputs", []):
            if (folder / rel).is_file():
                with Image.open(folder / rel) as im:
                    inputs.append(im.convert("RGB"))
        out.append(_title_card(d, inputs, width, height, font, pad))
    for im, lines in zip(shown, wrapped):
        canvas = Image.new("RGB", (width, height), BACKGROUND)
        canvas.paste(im, (0, (img_h - im.height) // 2))
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(lines):
            draw.text((pad, img_h + pad + i * line_h), line, fill=INK, font=font)
        out.append(canvas)
    return out


def _title_card(d: dict, inputs: list[Image.Image], width: int, height: int, font, pad: int) -> Image.Image:
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    big = _font(round(font.size * 1.3))
    draw.text((pad, pad), TASK_TITLES.get(d.get("task", ""), str(d.get("task", ""))), fill=INK, font=big)
    y = pad + round(big.size * 1.6)
    line_h = round(font.size * 1.25)
    for line in wrap(d.get("prompt", ""), font, width - 2 * pad, draw, max_lines=8):
        draw.text((pad, y), line, fill=MUTED, font=font)
        y += line_h
    y += pad
    if inputs and y < height - 16:
        side = min(height - y - pad, (width - pad * (len(inputs) + 1)) // len(inputs))
        x = pad
        for im in inputs:
            th = im.copy()
            th.thumbnail((side, side), Image.NEAREST if max(im.size) < side else Image.LANCZOS)
            canvas.paste(th, (x, y))
            x += th.width + pad
    return canvas


def write_gif(frames: list[Image.Image], path: str | Path, seconds: float = SECONDS_PER_FRAME) -> Path:
    """Looping GIF, `seconds` per frame. (Pillow merges *identical* consecutive frames into one longer frame.)"""
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=max(20, round(seconds * 1000)),
                   loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_mp4(frames: list[Image.Image], path: str | Path, seconds: float = SECONDS_PER_FRAME) -> Path:
    """H.264 MP4 (yuv420p), one video frame per image shown `seconds` each."""
    try:
        import av
    except ImportError:
        raise VideoError("MP4 export needs PyAV: pip install -e '.[video]' (GIF needs nothing extra)") from None

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(1000, max(1, round(seconds * 1000))))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for im in frames:
            for packet in stream.encode(av.VideoFrame.from_image(im)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def export_video(folder: str | Path, formats: tuple[str, ...] | list[str] = ("gif",),
                 seconds: float = SECONDS_PER_FRAME, title: bool = True, out: str | Path | None = None
                 ) -> list[Path]:
    """Write `folder/animation.<fmt>` (or `out`, one format) for one output folder; return the paths."""
    folder = Path(folder)
    rj = folder / "result.json"
    if not rj.is_file():
        raise VideoError(f"{folder} holds no result.json (not a finished `loom generate` output folder)")
    try:
        d = json.loads(rj.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VideoError(f"{rj}: unreadable ({e})") from None
    if seconds <= 0:
        raise VideoError(f"--seconds-per-frame must be > 0, got {seconds}")
    frames = captioned_frames(d, folder, title)
    writers = {"gif": write_gif, "mp4": write_mp4}
    paths = [writers[f](frames, Path(out) if out else folder / f"animation.{f}", seconds) for f in formats]
    if (folder / "index.html").is_file():  # the storyboard links the animation
        from .storyboard import write_storyboard

        write_storyboard(folder, d)
    return paths


def export_for_cli(folders: list[Path], gif: bool, mp4: bool) -> None:
    """`loom generate … --gif/--mp4`: animate each finished folder (a task without frames says so, no error)."""
    formats = [f for f, on in (("gif", gif), ("mp4", mp4)) if on]
    for folder in folders if formats else []:
        try:
            for path in export_video(folder, formats):
                print(f"[loom] wrote {path}")
        except VideoError as e:
            print(f"[loom] no animation: {e}", file=sys.stderr)


def output_folders(run_dir: str | Path) -> list[Path]:
    """One output folder, or the finished items of a --batch root (ROOT/<id>/) or an eval run (RUN/items/<id>/)."""
    run_dir = Path(run_dir)
    if (run_dir / "result.json").is_file():
        return [run_dir]
    found = sorted(p.parent for p in [*run_dir.glob("*/result.json"), *run_dir.glob("items/*/result.json")])
    if not found:
        raise VideoError(f"{run_dir}: no result.json here, in */ or in items/*/ (expected a `loom generate` output "
                         "folder, a --batch root or an eval run)")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loom export-video", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="an output folder, a --batch root or an eval run folder")
    p.add_argument("--gif", action="store_true", help="write animation.gif (the default when no format is given)")
    p.add_argument("--mp4", action="store_true", help="write animation.mp4 (H.264)")
    p.add_argument("--out", help="output file (one folder and one format only; default FOLDER/animation.FMT)")
    p.add_argument("--seconds-per-frame", type=float, default=SECONDS_PER_FRAME)
    p.add_argument("--no-title", action="store_true", help="no title card before the first frame")
    args = p.parse_args(argv)
    formats = [f for f in FORMATS if getattr(args, f)] or ["gif"]
    try:
        folders = output_folders(args.run_dir)
        if args.out and (len(folders) > 1 or len(formats) > 1):
            raise VideoError("--out names one file: use it with one output folder and one of --gif / --mp4")
        if args.out and Path(args.out).suffix.lower() != f".{formats[0]}":
            raise VideoError(f"--out {args.out}: the file name must end in .{formats[0]}")
        for folder in folders:
            for path in export_video(folder, formats, args.seconds_per_frame, not args.no_title, args.out):
                print(f"[loom] wrote {path}")
    except VideoError as e:
        print(f"loom export-video: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
