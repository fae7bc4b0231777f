"""Benchmark loaders: RecipeGen (Table 1), MakeAnything painting grids (Tables 2, 4), OmniContext (Table 3).

Every loader reads a local path (file, folder, saved `datasets` folder, parquet, WebDataset tars) or a dataset name
resolved through the `datasets` cache; nothing is downloaded here that `datasets` would not fetch itself. The fixed
evaluation subsets are id lists committed under `evals/<bench>/`; `select_ids` is the rule that produced them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from loom.data.construct.prompts import painting_prompt, recipe_prompt  # shared with the training converters
from loom.eval.fsio import EvalInputError
from loom.eval.omnicontext import TASKS, OmniItem

PAINTING_DOMAINS = ("oil painting", "ink painting", "pencil sketch", "line draw", "painting", "sketch")


@dataclass
class BenchItem:
    item_id: str
    bench: str
    prompt: str
    inputs: list[Image.Image] = field(default_factory=list)  # conditioning images, in order
    meta: dict[str, Any] = field(default_factory=dict)  # ground truth and bookkeeping, copied to result.json
    export_path: str | None = (
        None  # run-relative path where the final frame is also copied (official layouts)
    )


def select_ids(ids: list[str], n: int, seed: int) -> list[str]:
    """Order by sha256(f"{seed}:{id}") and take n: independent of the source's row order and of Python's RNG."""
    if n > len(ids):
        raise EvalInputError(f"asked for {n} ids but only {len(ids)} eligible items exist")
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())[:n]


# ---- generic record reading ------------------------------------------------------------------------------------
def read_records(source: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """Rows from a .jsonl/.json/.parquet file, a folder of those, a `save_to_disk` folder, or a dataset name."""
    p = Path(source)
    if p.is_file():
        return _read_file(p)
    if p.is_dir():
        if (
            (p / "dataset_info.json").is_file()
            or (p / "state.json").is_file()
            or (p / "dataset_dict.json").is_file()
        ):
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise EvalInputError(f"{p}: no split {split!r}; available: {list(ds)} (use --split)")
                ds = ds[split]
            return list(ds)
        files = sorted([*p.glob("*.jsonl"), *p.glob("*.json"), *p.glob("*.parquet")])
        if not files:
            raise EvalInputError(f"{p}: no .jsonl/.json/.parquet files and not a saved dataset folder")
        return [r for f in files for r in _read_file(f)]
    import datasets  # a hub name: resolved through the local datasets cache (HF_DATASETS_OFFLINE=1 works)

    try:
        return list(datasets.load_dataset(str(source), split=split))
    except Exception as e:  # datasets raises many types; the message names the fix
        raise EvalInputError(
            f"cannot load dataset {source!r} split {split!r}: {e}. Pass a local path or make sure "
            "the dataset is in the datasets cache"
        ) from e


def _read_file(p: Path) -> list[dict[str, Any]]:
    if p.suffix == ".jsonl":
        from loom.eval.fsio import read_jsonl

        return read_jsonl(p, "benchmark file")
    if p.suffix == ".json":
        obj = json.loads(p.read_text(encoding="utf-8"))
        return obj if isinstance(obj, list) else list(obj.get("data", obj.get("items", [])))
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    raise EvalInputError(f"{p}: unsupported file type {p.suffix!r} (use .jsonl, .json or .parquet)")


def _pick(row: dict[str, Any], names: tuple[str, ...], what: str, override: str | None, where: str) -> Any:
    if override:
        if override not in row:
            raise EvalInputError(
                f"{where}: column {override!r} (from the {what} override) not in {sorted(row)}"
            )
        return row[override]
    for n in names:
        if n in row:
            return row[n]
    raise EvalInputError(
        f"{where}: no {what} column among {names}; columns are {sorted(row)}. "
        f"Pass the right name with --{what}-field"
    )


# ---- RecipeGen -------------------------------------------------------------------------------------------------
def _step_texts(v: Any) -> list[str]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            v = [s for s in v.split("\n") if s.strip()]
    return [str(s["text"] if isinstance(s, dict) and "text" in s else s) for s in v]


def load_recipegen(
    source: str | Path,
    ids: list[str] | None = None,
    split: str = "test",
    fields: dict[str, str] | None = None,
) -> list[BenchItem]:
    """Recipes as text-only tutorial prompts. `fields` may override the id/goal/steps column names."""
    fields = fields or {}
    items = []
    for n, row in enumerate(read_records(source, split)):
        where = f"{source} row {n}"
        rid = str(_pick(row, ("id", "recipe_id", "key", "uid"), "id", fields.get("id"), where))
        goal = str(
            _pick(row, ("goal", "dish", "title", "name", "recipe_name"), "goal", fields.get("goal"), where)
        )
        steps = _step_texts(
            _pick(row, ("steps", "step_texts", "instructions"), "steps", fields.get("steps"), where)
        )
        items.append(
            BenchItem(
                rid,
                "recipegen",
                recipe_prompt(goal),
                meta={"goal": goal, "gt_steps": steps},
            )
        )
    return _restrict(items, ids, source)


def recipegen_eligible(items: list[BenchItem], num_steps: int = 4) -> list[str]:
    """eval-protocols §2.1: exactly 4 steps (the Fig. 7 template and the released script assume 4)."""
    return [it.item_id for it in items if len(it.meta["gt_steps"]) == num_steps]


def _restrict(items: list[BenchItem], ids: list[str] | None, source: Any) -> list[BenchItem]:
    if ids is None:
        return items
    by_id = {it.item_id: it for it in items}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise EvalInputError(
            f"{len(missing)} ids of the id list are not in {source} (first: {missing[:3]}); "
            "check --data/--split or the id list"
        )
    return [by_id[i] for i in ids]


# ---- MakeAnything ----------------------------------------------------------------------------------------------
_GRID = re.compile(r"^\s*(\d+)\s*\*\s*(\d+)\s+of\s+(\d+)\s+sub-images\s*,?\s*", re.IGNORECASE)


def grid_shape(caption: str, size: tuple[int, int]) -> tuple[int, int]:
    """Rows × cols from the caption prefix ("2*2 of 4 sub-images, …"), else from the canvas (1024→2×2, 1056→3×3)."""
    m = _GRID.match(caption)
    if m:
        return int(m.group(1)), int(m.group(2))
    if size == (1024, 1024):
        return 2, 2
    if size == (1056, 1056):
        return 3, 3
    raise EvalInputError(f"cannot tell the grid layout of a {size} image with caption {caption[:60]!r}")


def split_grid(image: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    """Row-major panels (reading order = step order in MakeAnything grids)."""
    w, h = image.size
    pw, ph = w // cols, h // rows
    return [
        image.crop((c * pw, r * ph, (c + 1) * pw, (r + 1) * ph)) for r in range(rows) for c in range(cols)
    ]


def makeanything_samples(source: Path) -> Iterator[tuple[str, Image.Image, str]]:
    """(stem, grid image, caption) from a folder of image + .caption/.txt pairs or from WebDataset .tar shards."""
    if not source.exists():
        raise EvalInputError(f"MakeAnything source not found: {source}")
    tars = [source] if source.suffix == ".tar" else sorted(source.glob("*.tar"))
    for t in tars:
        with tarfile.open(t) as tf:
            groups: dict[str, dict[str, bytes]] = {}
            for m in tf.getmembers():
                if m.isfile():
                    stem, _, ext = m.name.partition(".")
                    groups.setdefault(stem, {})[ext] = tf.extractfile(m).read()  # type: ignore[union-attr]
        for stem, g in sorted(groups.items()):
            img = next((g[e] for e in ("jpg", "jpeg", "png", "webp") if e in g), None)
            cap = g.get("caption", g.get("txt"))
            if img is not None and cap is not None:
                yield Path(stem).name, Image.open(io.BytesIO(img)).convert("RGB"), cap.decode("utf-8").strip()
    if not tars:
        for p in sorted(source.iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
                cap = next(
                    (p.with_suffix(s) for s in (".caption", ".txt") if p.with_suffix(s).is_file()), None
                )
                if cap is not None:
                    with Image.open(p) as im:
                        yield p.stem, im.convert("RGB"), cap.read_text(encoding="utf-8").strip()


def caption_subject(caption: str) -> str:
    """"2*2 of 4 sub-images, step-by-step oil painting of a cat." → "step-by-step oil painting of a cat" (the
    first line: later lines of a caption file may hold step captions, see scripts/convert_makeanything.py)."""
    return _GRID.sub("", caption.strip().split("\n", 1)[0]).strip().rstrip(".")


def painting_domain(caption: str) -> str | None:
    low = caption.lower()
    return next((d for d in PAINTING_DOMAINS if d in low), None)


def load_makeanything(
    source: str | Path, ids: list[str] | None = None, num_panels: int = 4
) -> list[BenchItem]:
    """Painting-type grids with `num_panels` panels; the condition is the final panel (eval-protocols §3)."""
    items = []
    for stem, grid, caption in makeanything_samples(Path(source)):
        if ids is not None and stem not in ids:
            continue
        rows, cols = grid_shape(caption, grid.size)
        if rows * cols != num_panels or painting_domain(caption) is None:
            continue
        panels = split_grid(grid, rows, cols)
        subject = caption_subject(caption)
        items.append(
            BenchItem(
                stem,
                "makeanything",
                painting_prompt(num_panels, subject),
                inputs=[panels[-1]],
                meta={
                    "caption": caption,
                    "domain": painting_domain(caption),
                    "grid": [rows, cols],
                    "gt_panels": panels,
                },
            )
        )
    return _restrict(items, ids, source)


# ---- OmniContext -----------------------------------------------------------------------------------------------
def load_omnicontext(
    source: str | Path = "OmniGen2/OmniContext", split: str = "train", tasks: tuple[str, ...] = TASKS
) -> list[OmniItem]:
    """Rows need key, task_type, instruction, instruction_language, input_images (PIL images, or paths relative
    to a local JSONL file)."""
    base = Path(source).parent if Path(source).is_file() else Path(source)
    items = []
    for n, row in enumerate(read_records(source, split)):
        where = f"{source} row {n}"
        for k in ("key", "task_type", "instruction", "input_images"):
            if k not in row:
                raise EvalInputError(
                    f"{where}: missing column {k!r}; OmniContext rows need key, task_type, "
                    "instruction, instruction_language, input_images"
                )
        if row["task_type"] not in tasks:
            continue
        imgs = []
        for im in row["input_images"]:
            if isinstance(im, Image.Image):
                imgs.append(im)
            elif isinstance(im, dict) and im.get("bytes"):
                imgs.append(Image.open(io.BytesIO(im["bytes"])))
            else:
                with Image.open(base / str(im)) as f:
                    imgs.append(f.copy())
        items.append(
            OmniItem(
                str(row["key"]),
                row["task_type"],
                row["instruction"],
                row.get("instruction_language", "en"),
                imgs,
            )
        )
    return items


def omnicontext_bench_items(items: list[OmniItem]) -> list[BenchItem]:
    return [
        BenchItem(
            f"{it.task_type}__{it.key}",
            "omnicontext",
            it.instruction,
            list(it.input_images),
            meta={"key": it.key, "task_type": it.task_type, "instruction_language": it.language},
            export_path=f"fullset/{it.task_type}/{it.key}.png",
        )
        for it in items
    ]
