"""MakeAnything grids → Loom image→tutorial manifest, the task Tables 2 and 4 evaluate.

Each grid is split into its step panels (row by row). The row's input image is the **final panel** and its prompt
is the evaluation prompt, "Create a 4-step tutorial that ends at the given image: <subject>." (one template for
training and eval, `loom.data.construct.prompts`), never the raw "2*2 of 4 sub-images" caption; the frames are all
panels, the plan their step captions.

Input (the eval loader's reader, `loom.eval.benchmarks.makeanything_samples`): a folder of grid images with a
`<name>.caption` / `<name>.txt` next to each, or WebDataset `.tar` shards. The first caption line is the
MakeAnything caption; further lines, if any, are step captions ("Step k: …"); `<name>.json`
{"steps": [...]} overrides them. The grid layout comes from the caption prefix or the canvas size (eval rule),
else --grid RxC, else the number of step captions.

Grids without step captions go to OUT/frames.jsonl (prompt set, plan empty): caption them with
`loom data caption OUT/frames.jsonl --out OUT/captioned.jsonl …`; refine existing captions for causal consistency
(the paper's GPT-4o pass) with `loom data caption OUT/train.jsonl --recaption --out OUT/refined.jsonl …`.

    python scripts/convert_makeanything.py GRIDS_DIR OUT_DIR [--grid 2x2] [--gutter 0] [--exclude-ids FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loom.data.construct.filter import held_out_ids
from loom.data.construct.prompts import painting_prompt
from loom.eval.benchmarks import caption_subject, grid_shape, makeanything_samples, split_grid
from loom.eval.clip_score import strip_step_label
from loom.eval.fsio import EvalInputError
from loom.utils.io import atomic_write_jsonl

SHAPES = {4: (2, 2), 9: (3, 3), 6: (2, 3), 8: (2, 4), 12: (3, 4), 16: (4, 4)}


def step_captions(src: Path, stem: str, text: str) -> list[str]:
    sidecar = src / f"{stem}.json"
    if sidecar.is_file():
        return [" ".join(str(s).split()) for s in json.loads(sidecar.read_text()).get("steps", [])]
    return [" ".join(strip_step_label(x).split()) for x in text.splitlines()[1:] if x.strip()]


def layout(caption: str, size: tuple[int, int], n_steps: int, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    if grid:
        return grid
    try:
        return grid_shape(caption, size)
    except EvalInputError:
        return SHAPES.get(n_steps) if n_steps else None


def convert(src: Path, out: Path, grid: tuple[int, int] | None = None, gutter: int = 0,
            exclude: set[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows, uncaptioned = [], []
    skipped = {"no_caption": 0, "held_out": 0, "unknown_layout": 0, "step_count_mismatch": 0}
    seen = 0
    for stem, image, text in makeanything_samples(src):
        seen += 1
        if exclude and stem in exclude:
            skipped["held_out"] += 1
            continue
        caption = text.splitlines()[0] if text else ""
        steps = step_captions(src, stem, text)
        shape = layout(caption, image.size, len(steps), grid)
        if shape is None:
            skipped["unknown_layout"] += 1
            continue
        n = shape[0] * shape[1]
        if steps and len(steps) != n:
            skipped["step_count_mismatch"] += 1
            continue
        frames = []
        for k, panel in enumerate(split_grid(image, *shape)):
            if gutter:
                panel = panel.crop((gutter, gutter, panel.width - gutter, panel.height - gutter))
            rel = Path("images") / stem / f"step{k + 1}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            panel.save(out / rel)
            frames.append(rel.as_posix())
        subject = caption_subject(caption) or stem
        row = {"id": f"makeanything-{stem}", "task": "tutorial", "prompt": painting_prompt(n, subject),
               "plan": steps, "frames": frames, "input_images": [frames[-1]],
               "meta": {"source": "MakeAnything", "grid": f"{shape[0]}x{shape[1]}", "caption": caption}}
        (rows if steps else uncaptioned).append(row)
    if src.is_dir() and not any(src.glob("*.tar")):  # the reader skips images without a caption: count them
        skipped["no_caption"] = sum(p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") for p in src.iterdir()) - seen
    atomic_write_jsonl(out / "train.jsonl", rows)
    if uncaptioned:
        atomic_write_jsonl(out / "frames.jsonl", uncaptioned)
    return {"rows": len(rows), "needs_captions": len(uncaptioned), **skipped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="folder of grids + captions, or of WebDataset .tar shards")
    ap.add_argument("out", type=Path)
    ap.add_argument("--grid", help="RxC panel layout (default: caption prefix, canvas size, step count)")
    ap.add_argument("--gutter", type=int, default=0, help="pixels trimmed from every panel edge")
    ap.add_argument("--exclude-ids", type=Path, help="id list of held-out grids, e.g. evals/makeanything/test_ids.txt")
    a = ap.parse_args(argv)
    grid = tuple(int(x) for x in a.grid.lower().split("x")) if a.grid else None
    try:
        exclude = held_out_ids(a.exclude_ids) if a.exclude_ids else None
        print(json.dumps(convert(a.src, a.out, grid, a.gutter, exclude)))
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
