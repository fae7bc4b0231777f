"""OmniContext-style sample folders → Loom composition / style manifest, with entity tokens (paper §3.3).

Input: one folder per sample holding the condition images `input_1.png`, `input_2.png`, … (any of
png/jpg/webp; sorted by their number), the target `output.*` (or `target.*`), and the instruction in
`instruction.txt` / `prompt.txt` or `meta.json` {"instruction" | "prompt", "task"?, "entities"?}. Placeholders
`<image k>` in the instruction refer to input k; without them the images are placed before the text.

Entity tokens: each input's category — `meta.json` "entities" (one category or token per input, e.g.
["character", "object"]) or a file-name suffix (`input_1_character.png`) — becomes its token (`character` →
`<character>`, `garment` → `<garment>`, … `loom.data.construct.prompts.CATEGORY_TOKENS`), inserted right before
the input's `<image k>` placeholder ("Put <character> <image 1> next to <object> <image 2>"). For `decompose`
the entities name the outputs, in order, and are appended to the instruction.

    python scripts/convert_omnicontext.py SAMPLES_DIR OUT_DIR [--task compose|style|decompose]

For `decompose` the roles flip: the single `input_1` is the scene and every `output_*` is a target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from loom.data.construct.prompts import category_token, insert_entity_tokens
from loom.utils.io import atomic_write_jsonl

EXTS = (".png", ".jpg", ".jpeg", ".webp")
NUM_RE = re.compile(r"_(\d+)(?:_([a-z]+))?$")


def _numbered(folder: Path, prefix: str) -> list[Path]:
    found = [p for p in folder.iterdir() if p.suffix.lower() in EXTS and p.stem.startswith(prefix)]
    return sorted(found, key=lambda p: int(m[1]) if (m := NUM_RE.search(p.stem)) else 0)


def read_instruction(folder: Path) -> tuple[str, str | None, list[str]]:
    """(instruction, task or None, entity categories from meta.json or [])."""
    meta = folder / "meta.json"
    if meta.exists():
        d = json.loads(meta.read_text())
        return str(d.get("instruction") or d.get("prompt") or ""), d.get("task"), list(d.get("entities") or [])
    for name in ("instruction.txt", "prompt.txt"):
        if (folder / name).exists():
            return (folder / name).read_text().strip(), None, []
    return "", None, []


def entity_tokens(files: list[Path], declared: list[str]) -> dict[int, str]:
    """1-based position → token, from the declared list or the `_<category>` file-name suffixes."""
    cats = declared or [(m[2] if (m := NUM_RE.search(p.stem)) and m[2] else "") for p in files]
    return {k: c if c.startswith("<") else category_token(c) for k, c in enumerate(cats, start=1) if c}


def convert(src: Path, out: Path, task: str = "compose") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], {"no_instruction": 0, "no_images": 0, "bad_entities": 0}
    rel = lambda p: os.path.relpath(p.resolve(), out.resolve())  # noqa: E731
    for d in sorted(x for x in src.iterdir() if x.is_dir()):
        text, own_task, declared = read_instruction(d)
        t = own_task or task
        inputs = _numbered(d, "input")
        outputs = _numbered(d, "output") or _numbered(d, "target")
        if not text:
            skipped["no_instruction"] += 1
            continue
        if not inputs or not outputs:
            skipped["no_images"] += 1
            continue
        try:
            tokens = entity_tokens(outputs if t == "decompose" else inputs, declared)
        except ValueError as e:
            print(f"{d}: {e}", file=sys.stderr)
            skipped["bad_entities"] += 1
            continue
        if t == "decompose" and tokens:
            text = f"{text.rstrip()} Output order: " + ", ".join(f"the {tokens[k]}" for k in sorted(tokens)) + "."
        elif tokens:
            text = insert_entity_tokens(text, tokens)
        row = {"id": f"omnicontext-{d.name}", "task": t, "prompt": text, "input_images": [rel(p) for p in inputs],
               "targets": [rel(p) for p in outputs] if t == "decompose" else [rel(outputs[0])],
               "meta": {"source": "OmniContext-style", "folder": d.name}}
        rows.append(row)
    atomic_write_jsonl(out / "train.jsonl", rows)
    return {"rows": len(rows), **skipped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--task", default="compose", choices=("compose", "style", "decompose"))
    a = ap.parse_args(argv)
    print(json.dumps(convert(a.src, a.out, a.task)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
