"""The top-level `index.html` of a many-item run: every item with its status, thumbnails and a link.

Two layouts, read from the files alone (so the gallery is right after a resume, a crash or on a sharded run):

    --batch ROOT    ROOT/<id>/result.json …        failures in ROOT/failures.shard*.jsonl ({"id", "error"})
    eval RUN        RUN/items/<id>/result.json …   failures in RUN/failures.shard*.jsonl ({"item_id", "error"})

An item is *done* when its result.json exists (written last, atomically), *failed* when a failure log names it
and it is not done, *running* when its folder exists without either (a live or killed run), *pending* when only
the expected items (`expected`) name it. Items link to their storyboard (`index.html`), else to result.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.io import atomic_write_text
from ..utils.templates import render
from .storyboard import TASK_TITLES, image_view

THUMBS = 6  # frames shown per item
THUMB = 72  # px, long side


def _failures(root: Path) -> dict[str, str]:
    """item id → last error text, from every shard's failure log (torn or foreign lines are skipped)."""
    out: dict[str, str] = {}
    for f in sorted(root.glob("failures.shard*.jsonl")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and (rec.get("id") or rec.get("item_id")):
                out[str(rec.get("id") or rec.get("item_id"))] = str(rec.get("error", ""))
    return out


def _item(root: Path, item_dir: Path, item_id: str, failed: dict[str, str]) -> dict:
    rel = item_dir.relative_to(root).as_posix()
    view = {"id": item_id, "href": None, "status": "pending", "task": "", "prompt": "", "thumbs": [],
            "num_frames": 0, "error": "", "seconds": None, "answer": None}
    rj = item_dir / "result.json"
    if rj.is_file():
        try:
            d = json.loads(rj.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            return {**view, "status": "failed", "href": f"{rel}/result.json", "error": f"unreadable result.json: {e}"}
        steps = d.get("steps") or []
        thumbs = []
        for st in steps[:THUMBS]:
            v = image_view(item_dir, st.get("image"), THUMB, THUMB)
            if v is not None:
                thumbs.append({**v, "src": f"{rel}/{v['src']}", "text": st.get("text") or ""})
        seconds = (d.get("timings") or {}).get("total_seconds", d.get("gen_seconds"))
        view.update(status="done", task=TASK_TITLES.get(d.get("task", ""), d.get("task", "")),
                    prompt=str(d.get("prompt", "")), thumbs=thumbs, num_frames=len(steps), seconds=seconds,
                    answer=d.get("answer"),
                    href=f"{rel}/index.html" if (item_dir / "index.html").is_file() else f"{rel}/result.json")
    elif item_id in failed:
        view.update(status="failed", error=failed[item_id])
    elif item_dir.is_dir():
        view["status"] = "running"
    return view


def gallery_view(root: str | Path, layout: str = "batch", expected: dict[str, str] | None = None,
                 title: str | None = None) -> dict:
    """The template's view model. `expected`: item id → prompt of the items the run should produce, in order
    (a batch file's, a benchmark's): pending ones are listed with their prompt; items found on disk that it does
    not name are appended, sorted."""
    root = Path(root)
    if layout not in ("batch", "eval"):
        raise ValueError(f"layout must be 'batch' or 'eval', got {layout!r}")
    base = root / "items" if layout == "eval" else root
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() \
        else []
    failed = _failures(root)
    expected = expected or {}
    order = list(dict.fromkeys([*expected, *found, *sorted(failed)]))
    items = [_item(root, base / i, i, failed) for i in order]
    for it in items:
        it["prompt"] = it["prompt"] or expected.get(it["id"], "")
    counts = {s: sum(it["status"] == s for it in items) for s in ("done", "failed", "running", "pending")}
    meta = {}
    if layout == "eval" and (root / "run.json").is_file():
        meta = json.loads((root / "run.json").read_text(encoding="utf-8"))
    if title is None:
        title = f"{meta.get('bench')} · {meta.get('model')}" if meta else f"Batch {root.name}"
    return {"title": title, "layout": layout, "rows": items, "counts": counts, "total": len(items),
            "run": {k: meta[k] for k in ("bench", "model", "generator", "seed") if k in meta}}


def write_gallery(root: str | Path, layout: str = "batch", expected: dict[str, str] | None = None,
                  title: str | None = None) -> Path:
    """Write `root/index.html` atomically and return its path."""
    path = Path(root) / "index.html"
    atomic_write_text(path, render("gallery.html.j2", g=gallery_view(root, layout, expected, title)))
    return path
