"""`loom data frames`: 4–6 frames sampled uniformly over the usable span of each video, image folder or blog page
(paper Fig. 3a), rejecting black / blank frames, fades and near-duplicates and re-sampling around them.

Per source, pass 1 decodes every frame (PyAV) to a 128 px grey thumbnail: mean and std of the luminance for every
frame, a thumbnail for up to `max_candidates` evenly spaced candidates (stride doubling, so memory stays bounded for
any length). A frame is *black* if its mean luminance ≤ `black_level`, *blank* if its std ≤ `blank_std` (a uniform
card of any colour), part of a *fade* if its mean luminance moves by ≥ `fade_delta` against **both** neighbouring
decoded frames (a held frame next to a fade moves on one side only; motion in a normal shot barely moves the
global mean). The usable span runs from the first to the last good candidate; targets are spread uniformly over it
(both ends included) and each target takes the nearest good candidate later than the previous pick whose pHash is
farther than `dup_distance` from every pick — so holds, duplicated frames and revisited states are skipped and the
sampler moves on to the next distinct state. Fewer than `min_frames` distinct picks reject the source. Pass 2
decodes again and writes the picks at ≤ `max_side` px. Image folders and pages follow the same rules without the
fade test (their neighbours are different photos, not consecutive video frames).
"""

from __future__ import annotations

import functools
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from loom.utils.io import atomic_write_bytes

from .hashing import DUP_DISTANCE, distance, phash
from .sources import Source, blog_images, discover, folder_images, open_blog_image, source_id
from .stage import Outcome, Stage, need

STEPS = ("not_found", "unsupported_file", "unreadable", "empty", "too_few_distinct_frames")


@dataclass(frozen=True)
class FrameConfig:
    out: str  # output folder; frames go to <out>/frames/<source id>/NN.png
    min_frames: int = 4
    max_frames: int = 6
    max_candidates: int = 240
    black_level: float = 16.0
    blank_std: float = 4.0
    fade_delta: float = 2.0
    dup_distance: int = DUP_DISTANCE
    max_side: int = 1024
    thumb: int = 128


@dataclass
class Candidate:
    index: int  # decoded frame number (video) or position in the folder / page
    t: float  # seconds (video) or position
    thumb: np.ndarray  # [thumb, thumb] uint8 luminance
    status: str = "ok"
    hash: str = ""


@dataclass
class Scan:
    candidates: list[Candidate] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""  # a decode error that ended the video early (the frames before it are used)


def classify(means: list[float], stds: list[float], cfg: FrameConfig, fades: bool) -> list[str]:
    out = []
    for i, (m, s) in enumerate(zip(means, stds)):
        if m <= cfg.black_level:
            out.append("black")
        elif s <= cfg.blank_std:
            out.append("blank")
        elif fades and len(means) > 1:
            moves = [abs(m - means[j]) for j in (i - 1, i + 1) if 0 <= j < len(means)]
            out.append("fade" if min(moves) >= cfg.fade_delta else "ok")
        else:
            out.append("ok")
    return out


def _gray(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(image).convert("L").resize((size, size), Image.BILINEAR))


def scan_video(path: Path, cfg: FrameConfig) -> Scan:
    av = need("av")
    scan, means, stds, kept, stride = Scan(), [], [], [], 1
    with av.open(str(path)) as container:
        if not container.streams.video:
            return scan
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 25)
        try:
            for i, frame in enumerate(container.decode(stream)):
                g = frame.reformat(width=cfg.thumb, height=cfg.thumb, format="gray").to_ndarray()
                means.append(float(g.mean()))
                stds.append(float(g.std()))
                if i % stride == 0:
                    kept.append(Candidate(i, float(frame.time if frame.time is not None else i / rate), g))
                    if len(kept) >= 2 * cfg.max_candidates:  # keep every other: still uniform, bounded memory
                        kept, stride = kept[::2], stride * 2
        except av.error.FFmpegError as e:  # a corrupt tail: keep what decoded, say so in the row and report
            scan.counts["decode_errors"] = 1
            scan.error = f"decoding stopped after frame {len(means)}: {type(e).__name__}: {e}"
    status = classify(means, stds, cfg, fades=True)
    for c in kept:
        c.status = status[c.index]
    scan.candidates = kept
    scan.counts["frames_decoded"] = len(means)
    for s in ("black", "blank", "fade"):
        scan.counts[f"frames_{s}"] = status.count(s)
    return scan


def _scan_images(opened: list[tuple[int, Image.Image]], cfg: FrameConfig, counts: dict[str, int]) -> Scan:
    thumbs = [(i, _gray(im, cfg.thumb)) for i, im in opened]
    status = classify([float(t.mean()) for _, t in thumbs], [float(t.std()) for _, t in thumbs], cfg, fades=False)
    stride = max(1, -(-len(thumbs) // cfg.max_candidates))
    cands = [Candidate(i, float(i), t, st) for (i, t), st in zip(thumbs, status)][::stride]
    counts.update({"frames_decoded": len(thumbs), "frames_black": status.count("black"),
                   "frames_blank": status.count("blank"), "frames_fade": 0})
    return Scan(cands, counts)


def select(cands: list[Candidate], cfg: FrameConfig) -> tuple[list[Candidate], int]:
    """Greedy uniform picks (module docstring); returns the picks and how many good candidates were near-duplicates
    of the good candidate before them (holds and duplicated frames)."""
    good = [c for c in cands if c.status == "ok"]
    for c in good:
        c.hash = phash(Image.fromarray(c.thumb))
    dups = sum(distance(a.hash, b.hash) <= cfg.dup_distance for a, b in zip(good, good[1:]))
    if not good:
        return [], dups
    s, e, k = good[0].t, good[-1].t, cfg.max_frames
    targets = [s + (e - s) * i / (k - 1) for i in range(k)] if k > 1 else [s]
    picks: list[Candidate] = []
    for target in targets:
        options = [c for c in good if (not picks or c.index > picks[-1].index)
                   and all(distance(c.hash, p.hash) > cfg.dup_distance for p in picks)]
        if not options:
            break
        picks.append(min(options, key=lambda c: (abs(c.t - target), c.index)))
    return picks, dups


def _save(image: Image.Image, cfg: FrameConfig, rel: str) -> str:
    image = ImageOps.exif_transpose(image).convert("RGB")
    if max(image.size) > cfg.max_side:
        image.thumbnail((cfg.max_side, cfg.max_side), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(Path(cfg.out) / rel, buf.getvalue())
    return phash(image)


def _write_video_picks(path: Path, picks: list[Candidate], cfg: FrameConfig, sid: str) -> tuple[list[str], list[str]]:
    av = need("av")
    want = {c.index: k for k, c in enumerate(picks)}
    rels, hashes = [""] * len(picks), [""] * len(picks)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in want:
                k = want[i]
                rels[k] = f"frames/{sid}/{k + 1:02d}.png"
                hashes[k] = _save(frame.to_image(), cfg, rels[k])
            if i >= max(want):
                break
    return rels, hashes


def process_source(cfg: FrameConfig, source: Source) -> Outcome:
    path = Path(source.path)
    if source.kind == "missing":
        return Outcome.reject("not_found", f"{path} does not exist")
    if source.kind == "unsupported":
        return Outcome.reject("unsupported_file", f"{path.suffix or 'no extension'}: not a video, image folder "
                              "or .html/.md page")
    sid = source_id(source.path)
    meta: dict[str, Any] = {"source": source.path, "kind": source.kind}
    counts: dict[str, int] = {}
    opened: list[tuple[int, Image.Image]] = []
    if source.kind == "video":
        av = need("av")
        if path.stat().st_size == 0:
            return Outcome.reject("empty", f"{path}: 0-byte file")
        try:
            scan = scan_video(path, cfg)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            return Outcome.reject("unreadable", f"{path}: {type(e).__name__}: {e}")
        if not scan.counts.get("frames_decoded"):
            return Outcome.reject("empty", f"{path}: zero-length video (no decodable frames)", **scan.counts)
    else:
        if source.kind == "blog":
            title, refs = blog_images(path)
            meta["title"] = title
            items = [(r.ref, r.context) for r in refs]
            loader = functools.partial(open_blog_image, path)
        else:
            items = [(str(p), "") for p in folder_images(path)]
            loader = Image.open
        contexts = []
        for i, (ref, ctx) in enumerate(items):
            try:
                im = loader(ref)
                im.load()
            except ValueError as e:
                key = "remote_images_skipped" if "remote" in str(e) else "outside_images_skipped"
                counts[key] = counts.get(key, 0) + 1
                continue
            except OSError:
                counts["unreadable_images"] = counts.get("unreadable_images", 0) + 1
                continue
            opened.append((i, im))
            contexts.append(ctx)
        if not opened:
            return Outcome.reject("empty", f"{path}: no readable local images", **counts)
        scan = _scan_images(opened, cfg, counts)
    picks, dups = select(scan.candidates, cfg)
    scan.counts["frames_near_duplicate"] = dups
    if len(picks) < cfg.min_frames:
        return Outcome.reject("too_few_distinct_frames", f"{len(picks)} distinct usable frames < {cfg.min_frames}",
                              **scan.counts)
    if source.kind == "video":
        rels, hashes = _write_video_picks(path, picks, cfg, sid)
        meta["timestamps"] = [round(c.t, 4) for c in picks]
    else:
        images = dict(opened)
        rels = [f"frames/{sid}/{k + 1:02d}.png" for k in range(len(picks))]
        hashes = [_save(images[c.index], cfg, rel) for c, rel in zip(picks, rels)]
        meta["positions"] = [c.index for c in picks]
        if source.kind == "blog":
            meta["context"] = [items[c.index][1] for c in picks]
        else:
            meta["files"] = [Path(items[c.index][0]).name for c in picks]
    meta["phash"] = hashes
    if scan.error:
        meta["decode_error"] = scan.error
    good = [c for c in scan.candidates if c.status == "ok"]
    meta["span"] = [round(good[0].t, 4), round(good[-1].t, 4)]  # the usable span the picks are spread over
    row = {"id": sid, "task": "tutorial", "prompt": "", "plan": [], "frames": rels, "input_images": [], "meta": meta}
    return Outcome.keep([row], **scan.counts)


def stage(cfg: FrameConfig) -> Stage:
    return Stage("frames", STEPS, functools.partial(process_source, cfg), executor="process")


def run(args) -> int:
    from .stage import finish_stage, run_kwargs, run_stage, work_dir_for

    lo, _, hi = str(args.num_frames).partition("-")
    cfg = FrameConfig(str(args.out), int(lo), int(hi or lo), args.max_candidates, args.black_level, args.blank_std,
                      args.fade_delta, args.dup_distance, args.max_side)
    if not 1 <= cfg.min_frames <= cfg.max_frames:
        raise ValueError(f"--num-frames {args.num_frames}: expected MIN-MAX with 1 <= MIN <= MAX, e.g. 4-6")
    sources = discover([Path(p) for p in args.inputs], exclude=Path(args.out))
    items = [(source_id(s.path), s) for s in sources]
    output = Path(args.out) / "frames.jsonl"
    settings = asdict(cfg)
    st = stage(cfg)
    kw = run_kwargs(args)
    result = run_stage(st, items, work_dir_for(output), settings, **kw)
    return finish_stage(st, items, result, [str(p) for p in args.inputs], output, settings, kw["shard"])

