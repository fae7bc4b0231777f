"""RecipeGen → Loom tutorial manifest (data/README.md, task "tutorial").

Input: a RecipeGen-style folder with one JSON per recipe (or one JSONL with one recipe per line):
    {"id"/"recipe_id", "title"/"name"/"dish", "steps": [{"text"/"instruction"/"step", "image"/"image_path"}, …]}
image paths relative to the JSON file (or to --images). Following the paper (§3.4) recipes with fewer than
--min-steps (3) steps are dropped; plans longer than N_max are kept whole (the builders truncate to N_max = 6).
The prompt is the RecipeGen evaluation prompt, "Create a tutorial for making <dish>." (one template for training
and eval, `loom.data.construct.prompts`); "Step k:" labels are stripped from the step texts. Recipes on an
evaluation id list (--exclude-ids) are skipped and counted, so the test recipes never leak into training.

    python scripts/convert_recipegen.py RECIPEGEN_DIR OUT_DIR [--min-steps 3] [--copy-images] [--exclude-ids FILE]

Writes OUT_DIR/train.jsonl with image paths relative to OUT_DIR, and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from loom.data.construct.filter import held_out_ids
from loom.data.construct.prompts import recipe_prompt
from loom.eval.clip_score import strip_step_label
from loom.eval.fsio import EvalInputError
from loom.utils.io import atomic_write_jsonl

TEXT_KEYS = ("text", "instruction", "step", "description", "caption")
IMAGE_KEYS = ("image", "image_path", "img", "frame")


def _first(d: dict, keys: tuple[str, ...]):
    for k in keys:
        if d.get(k):
            return d[k]
    return None


def read_recipes(src: Path):
    files = sorted(src.rglob("*.json")) + sorted(src.rglob("*.jsonl")) if src.is_dir() else [src]
    for f in files:
        lines = f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()]
        for i, line in enumerate(x for x in lines if x.strip()):
            yield f, i, json.loads(line)


def convert(src: Path, out: Path, min_steps: int = 3, copy_images: bool = False, images: Path | None = None,
            exclude: set[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], {"held_out": 0, "too_few_steps": 0, "missing_image": 0, "missing_text": 0}
    for f, i, rec in read_recipes(src):
        rid = str(rec.get("id") or rec.get("recipe_id") or f"{f.stem}-{i}")
        if exclude and rid in exclude:
            skipped["held_out"] += 1
            continue
        steps = rec.get("steps") or rec.get("instructions") or []
        texts = [_first(s, TEXT_KEYS) if isinstance(s, dict) else None for s in steps]
        imgs = [_first(s, IMAGE_KEYS) if isinstance(s, dict) else None for s in steps]
        if len(steps) < min_steps:
            skipped["too_few_steps"] += 1
            continue
        if not all(texts):
            skipped["missing_text"] += 1
            continue
        base = images or f.parent
        paths = [base / p for p in imgs] if all(imgs) else []
        if not paths or not all(p.is_file() for p in paths):
            skipped["missing_image"] += 1
            continue
        frames = []
        for k, p in enumerate(paths):
            if copy_images:
                dst = out / "images" / rid / f"step{k + 1}{p.suffix}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dst)
                p = dst
            frames.append(os.path.relpath(p.resolve(), out.resolve()))
        title = rec.get("title") or rec.get("name") or rec.get("dish") or "this dish"
        rows.append({"id": f"recipegen-{rid}", "task": "tutorial", "prompt": recipe_prompt(str(title)),
                     "plan": [" ".join(strip_step_label(t).split()) for t in texts], "frames": frames, "input_images": [],
                     "meta": {"source": "RecipeGen", "file": str(f), "title": title}})
    atomic_write_jsonl(out / "train.jsonl", rows)
    return {"rows": len(rows), **skipped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--copy-images", action="store_true", help="copy frames under OUT/images (else reference them)")
    ap.add_argument("--images", type=Path, help="folder the step image paths are relative to")
    ap.add_argument("--exclude-ids", type=Path, help="evaluation id list, e.g. evals/recipegen/test_ids.txt")
    a = ap.parse_args(argv)
    try:
        exclude = held_out_ids(a.exclude_ids) if a.exclude_ids else None
        print(json.dumps(convert(a.src, a.out, a.min_steps, a.copy_images, a.images, exclude)))
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
