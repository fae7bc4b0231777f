"""MakeAnything grids → Loom tutorial manifest: every grid image is split into its step panels.

Input folder: `<name>.png|jpg` (a rows×cols grid of equal panels, read row by row) with a caption next to it:
`<name>.json` {"prompt", "steps": [...]} or `<name>.txt` whose first line is the prompt and the following
lines the step captions (optionally prefixed "Step k:"). The grid shape is --grid RxC, or inferred from the
number of steps (4 → 2×2, 9 → 3×3, 6 → 2×3, n → 1×n otherwise). Panels are trimmed by --gutter pixels.

    python scripts/convert_makeanything.py GRIDS_DIR OUT_DIR [--grid 3x3] [--gutter 0]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from PIL import Image

from loom.utils.io import atomic_write_jsonl

SHAPES = {4: (2, 2), 9: (3, 3), 6: (2, 3), 8: (2, 4), 12: (3, 4), 16: (4, 4)}
STEP_RE = re.compile(r"^\s*step\s*\d+\s*[:.)-]\s*", re.I)


def read_caption(img: Path) -> tuple[str, list[str]] | None:
    j, t = img.with_suffix(".json"), img.with_suffix(".txt")
    if j.exists():
        d = json.loads(j.read_text())
        return d.get("prompt", ""), [str(s) for s in d.get("steps", [])]
    if t.exists():
        lines = [x.strip() for x in t.read_text().splitlines() if x.strip()]
        return (lines[0], [STEP_RE.sub("", x) for x in lines[1:]]) if lines else None
    return None


def split_grid(img: Image.Image, rows: int, cols: int, gutter: int = 0) -> list[Image.Image]:
    w, h = img.size
    pw, ph = w // cols, h // rows
    out = []
    for r in range(rows):
        for c in range(cols):
            box = (c * pw + gutter, r * ph + gutter, (c + 1) * pw - gutter, (r + 1) * ph - gutter)
            out.append(img.crop(box))
    return out


def convert(src: Path, out: Path, grid: tuple[int, int] | None = None, gutter: int = 0) -> dict:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, skipped = [], {"no_caption": 0, "shape_mismatch": 0}
    for p in sorted(x for x in src.iterdir() if x.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")):
        cap = read_caption(p)
        if cap is None or not cap[1]:
            skipped["no_caption"] += 1
            continue
        prompt, steps = cap
        r, c = grid or SHAPES.get(len(steps), (1, len(steps)))
        if r * c != len(steps):
            skipped["shape_mismatch"] += 1
            continue
        with Image.open(p) as im:
            panels = split_grid(im.convert("RGB"), r, c, gutter)
        frames = []
        for k, panel in enumerate(panels):
            rel = Path("images") / p.stem / f"step{k + 1}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            panel.save(out / rel)
            frames.append(rel.as_posix())
        rows.append({"id": f"makeanything-{p.stem}", "task": "tutorial", "prompt": prompt or f"Make {p.stem}",
                     "plan": steps, "frames": frames, "input_images": [],
                     "meta": {"source": "MakeAnything", "grid": f"{r}x{c}", "file": p.name}})
    atomic_write_jsonl(out / "train.jsonl", rows)
    return {"rows": len(rows), **skipped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--grid", help="RxC panel layout (default: inferred from the step count)")
    ap.add_argument("--gutter", type=int, default=0, help="pixels trimmed from every panel edge")
    a = ap.parse_args(argv)
    grid = tuple(int(x) for x in a.grid.lower().split("x")) if a.grid else None
    print(json.dumps(convert(a.src, a.out, grid, a.gutter)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
