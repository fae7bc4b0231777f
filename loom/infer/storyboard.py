"""The storyboard (`index.html` of an output folder): result.json → a view model → `storyboard.html.j2`.

What a reader sees: the prompt and inputs, the plan beside a grid of cards (step text above its frame, the history
frames that conditioned it as small thumbnails, the entity mask beside the frame and as a hover overlay), the
answer, the settings. Frames are scaled to a readable size: small ones by an integer factor with nearest-neighbour
(`image-rendering: pixelated`, no blur), large ones down. Decomposition outputs are labelled with their entity.
Ground truth (eval items, demo reports) is shown beside each generated frame when the result carries it.

Every image is referenced by its path relative to the folder, as in result.json; nothing is copied or embedded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from PIL import Image

from ..utils.templates import render

TASK_TITLES = {"tutorial": "Tutorial", "decompose": "Decomposition", "compose": "Composition",
               "style": "Style transfer", "t2i": "Text to image", "edit": "Edit", "understand": "Answer"}
DISPLAY_MIN = 192  # px: frames whose long side is below this are upscaled by an integer factor (nearest)
DISPLAY_MAX = 360  # px: longer sides are shown scaled down to this (the file keeps its resolution)
THUMB = (32, 48)  # px: history thumbnails keep small frames as they are, larger ones go down to 48
_ENTITY_TAG = re.compile(r"<([a-z][a-z0-9_]*)>")  # entity tokens in a prompt (`<image k>` has a space: not matched)


def display_size(w: int, h: int, lo: int = DISPLAY_MIN, hi: int = DISPLAY_MAX) -> tuple[int, int, bool]:
    """(width, height, pixelated) to show a w×h frame at: integer nearest-neighbour upscale below `lo`, a smooth
    downscale above `hi`, else as is."""
    side = max(w, h, 1)
    if side < lo:
        f = math.ceil(lo / side)
        return w * f, h * f, True
    if side > hi:
        s = hi / side
        return max(1, round(w * s)), max(1, round(h * s)), False
    return w, h, False


def image_view(folder: Path | None, rel: str | None, lo: int = DISPLAY_MIN, hi: int = DISPLAY_MAX,
           fallback: tuple[int, int] | None = None) -> dict | None:
    """View of one image file: src (relative, as given), natural and display size; `exists` False when the
    folder is known and the file is not there (the card then says so instead of showing a broken image)."""
    if not rel:
        return None
    size, exists = fallback, True
    if folder is not None:
        p = folder / rel
        exists = p.is_file()
        if exists:
            with Image.open(p) as im:  # reads the header only
                size = im.size
    w, h = size or (hi, hi)
    dw, dh, pix = display_size(w, h, lo, hi)
    return {"src": rel, "width": w, "height": h, "display_width": dw, "display_height": dh, "pixelated": pix,
            "exists": exists}


def entity_labels(d: dict) -> list[str | None]:
    """Decomposition: output m isolates the m-th entity token of the prompt (the pipeline's rule, in order of
    first appearance), or the tokens its localised entity CFG followed when result.json records them."""
    tags = list(dict.fromkeys(f"<{m.group(1)}>" for m in _ENTITY_TAG.finditer(d.get("prompt", ""))))
    out: list[str | None] = []
    for m, st in enumerate(d.get("steps", []), 1):
        followed = (st.get("entity_cfg") or {}).get("tokens")
        out.append(" ".join(followed) if followed else (tags[m - 1] if m <= len(tags) else None))
    return out


def ground_truth(d: dict) -> tuple[list[str], list[str]]:
    """(images, texts) of the ground truth, relative to the folder: result.json's `ground_truth`
    {"images": […], "texts": […]}, else an eval item's meta (MakeAnything `gt_panels`, RecipeGen `gt_steps`)."""
    gt = d.get("ground_truth") or {}
    meta = d.get("meta") or {}
    images = gt.get("images") if "images" in gt else meta.get("gt_panels")
    texts = gt.get("texts") if "texts" in gt else meta.get("gt_steps")
    return _strings(images), _strings(texts)


def _strings(xs) -> list[str]:
    return [str(x) for x in xs] if isinstance(xs, list) else []


def storyboard_view(d: dict, folder: str | Path | None = None) -> dict:
    """The template's view model of one result.json dict (`folder`: where its relative paths live; given, image
    sizes are read from the files and missing files are flagged)."""
    folder = None if folder is None else Path(folder)
    task = d.get("task", "tutorial")
    size = tuple(d.get("settings", {}).get("output_size") or ()) or None
    steps = d.get("steps", [])
    by_index = {st.get("index"): st.get("image") for st in steps}
    labels = entity_labels(d) if task == "decompose" else [None] * len(steps)
    gt_images, gt_texts = ground_truth(d)
    cards = []
    for k in range(max(len(steps), len(gt_images), len(gt_texts))):
        st = steps[k] if k < len(steps) else {}
        index = st.get("index", k + 1)
        head = f"Step {index}" if task == "tutorial" else f"Output {index}"
        if labels[k] if k < len(labels) else None:
            head += f" · {labels[k]}"
        frame = image_view(folder, st.get("image"), fallback=size)
        ent = st.get("entity_cfg") or {}
        mask = image_view(folder, ent.get("mask_image"), fallback=size)
        if mask is not None and frame is not None:  # shown at the frame's size (overlay and beside)
            mask.update(display_width=frame["display_width"], display_height=frame["display_height"])
        hist = [{"index": j, **(image_view(folder, by_index.get(j), *THUMB, size) or {"src": None})}
                for j in st.get("history") or []]
        cards.append({
            "index": index, "head": head, "entity": labels[k] if k < len(labels) else None,
            "text": st.get("text") or "", "frame": frame, "history": hist, "has_history_field": "history" in st,
            "mask": mask,
            "mask_note": (f"entity mask ({ent.get('mask_source', '?')}"
                          + (f", {100 * ent['coverage']:.0f}% of the frame" if ent.get("coverage") is not None
                             else "") + "): white = guided at s_entity") if mask else "",
            "gt": image_view(folder, gt_images[k], fallback=size) if k < len(gt_images) else None,
            "gt_text": gt_texts[k] if k < len(gt_texts) else None,
            "meta": _step_meta(st),
        })
    s = d.get("settings", {})
    settings = [f"seed {s.get('seed')}", f"{s.get('num_timesteps')} timesteps",
                f"CFG text {s.get('cfg_text_scale')} / image {s.get('cfg_img_scale')}"]
    if size:
        settings.append(f"{size[0]}×{size[1]} px")
    if d.get("timings", {}).get("total_seconds") is not None:
        settings.append(f"{d['timings']['total_seconds']:.1f} s")
    model = (d.get("model") or {}).get("path") or d.get("model_label") or ""
    return {
        "title": TASK_TITLES.get(task, task), "task": task, "prompt": d.get("prompt", ""),
        "item_id": d.get("item_id"),
        "inputs": [image_view(folder, p, 96, 160) for p in d.get("inputs", [])],
        "plan": list(d.get("plan") or []), "plan_source": d.get("plan_source") or d.get("text_source") or "",
        "plan_problems": list(d.get("plan_problems") or []),
        "gt_plan": gt_texts, "has_gt_images": bool(gt_images),
        "cards": cards, "wide": any(c["mask"] or c["gt"] for c in cards), "answer": d.get("answer"), "notes": list(d.get("notes") or []),
        "settings": settings, "model": str(model),
        "animations": [p for p in ("animation.gif", "animation.mp4") if folder is not None and (folder / p).is_file()],
    }


def _step_meta(st: dict) -> str:
    parts = []
    if st.get("seed") is not None:
        parts.append(f"seed {st['seed']}")
    if st.get("seconds") is not None:
        parts.append(f"{st['seconds']:.1f} s")
    if st.get("context_tokens") is not None:
        parts.append(f"{st['context_tokens']} context tokens")
    return " · ".join(parts)


def render_storyboard(d: dict, folder: str | Path | None = None) -> str:
    """The storyboard HTML of one result.json dict."""
    return render("storyboard.html.j2", sb=storyboard_view(d, folder))


def write_storyboard(folder: str | Path, d: dict | None = None) -> Path:
    """(Re)write `folder/index.html` from `d` (default: the folder's result.json), atomically."""
    from ..utils.io import atomic_write_text

    folder = Path(folder)
    if d is None:
        d = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    path = folder / "index.html"
    atomic_write_text(path, render_storyboard(d, folder))
    return path
