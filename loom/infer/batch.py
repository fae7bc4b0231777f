"""`loom generate TASK --batch prompts.jsonl --out ROOT`: many items, resumable, sharded over processes.

prompts.jsonl, one JSON object per line (image paths relative to the file's folder, or absolute):

    {"id": "crane", "prompt": "How to fold a paper crane"}
    {"id": "tryon-3", "task": "compose", "prompt": "The <model> of <image 1> wearing <image 2>", "images": ["a.png", "b.png"]}

Optional per-item keys: task (default: the CLI task), images, seed (overrides the derived one), steps,
num_outputs, resolution ("WxH"). Each item goes to ROOT/<id>/ (frames, result.json, index.html).

- Resume: an item whose folder holds result.json is done and skipped; result.json is written last and
  atomically (`loom.infer.output`), so a killed run restarts at the first unfinished item.
- Sharding: item i goes to shard i mod num_shards (round-robin over file order). Under `accelerate launch` /
  torchrun the shard is the process rank (RANK / WORLD_SIZE); no process group is needed, shards never talk.
- Reproducibility: the seed of an item is derived from the base seed and the item id only
  (`item_seed`), never from the rank or the order, so 1 or k processes write identical outputs.
- A failing item is logged to ROOT/failures.shard<r>-of-<n>.jsonl and the batch goes on; the exit status is
  non-zero if anything failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from .loop import InputError
from .output import write_result
from .pipeline import GenerationSettings, Pipeline, load_image_file, parse_resolution

ITEM_KEYS = {"id", "task", "prompt", "images", "seed", "steps", "num_outputs", "resolution"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class BatchItem:
    item_id: str
    task: str
    prompt: str
    images: list[str]
    seed: int | None = None
    overrides: dict = field(default_factory=dict)


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def item_seed(base_seed: int, item_id: str) -> int:
    """Seed of one item from (base seed, item id) alone: stable across shards, orders and machines."""
    h = hashlib.sha256(f"{base_seed}:{item_id}".encode()).hexdigest()
    return int(h[:15], 16)


def read_batch(path: str | Path, default_task: str) -> list[BatchItem]:
    """Parse and validate prompts.jsonl (every error names the line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--batch file {path} does not exist")
    items, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise InputError(f"{where}: each line must be a JSON object")
        unknown = set(d) - ITEM_KEYS
        if unknown:
            raise InputError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(ITEM_KEYS)})")
        item_id = str(d.get("id", f"{n:06d}"))
        if not _ID_RE.match(item_id):
            raise InputError(f"{where}: id {item_id!r} must be 1-128 characters of letters, digits, '.', '_', '-'")
        if item_id in seen:
            raise InputError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        images = d.get("images", [])
        if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise InputError(f"{where}: 'images' must be a list of paths")
        images = [str(p if Path(p).is_absolute() else path.parent / p) for p in images]
        over = {}
        if "steps" in d:
            over["num_steps"] = int(d["steps"])
        if "num_outputs" in d:
            over["num_outputs"] = int(d["num_outputs"])
        if "resolution" in d:
            over["resolution"] = parse_resolution(str(d["resolution"]))
        seed = int(d["seed"]) if "seed" in d else None
        items.append(BatchItem(item_id, str(d.get("task", default_task)), str(d.get("prompt", "")), images, seed,
                               over))
    if not items:
        raise InputError(f"--batch file {path} holds no items")
    return items


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from accelerate launch / torchrun environment variables; (0, 1) otherwise."""
    rank = int(os.environ.get("RANK", os.environ.get("PROCESS_INDEX", 0)))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("NUM_PROCESSES", 1)))
    return rank, world


def run_batch(pipe: Pipeline, items: list[BatchItem], out_root: str | Path, settings: GenerationSettings,
              planner=None, shard: int = 0, num_shards: int = 1, progress: bool = False,
              log=print) -> BatchReport:
    if not 0 <= shard < num_shards:
        raise InputError(f"shard {shard} outside [0, {num_shards})")
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    report = BatchReport()
    mine = items[shard::num_shards]
    fail_log = out_root / f"failures.shard{shard}-of-{num_shards}.jsonl"
    for it in mine:
        out = out_root / it.item_id
        if (out / "result.json").exists():
            report.skipped.append(it.item_id)
            continue
        seed = it.seed if it.seed is not None else item_seed(settings.seed, it.item_id)
        s = replace(settings, seed=seed, **it.overrides)
        try:
            images = [load_image_file(p) for p in it.images]
            res = pipe.run(it.task, it.prompt, images, s, planner=planner if it.task == "tutorial" else None,
                           progress=progress, input_paths=it.images)
            res.notes.append(f"batch item {it.item_id}: seed derived from base seed {settings.seed}"
                             if it.seed is None else f"batch item {it.item_id}: explicit seed")
            write_result(res, out)
            report.done.append(it.item_id)
            log(f"[loom] {it.item_id}: done ({len(res.frames)} image(s))")
        except Exception as e:  # one bad item must not stop the batch
            msg = f"{type(e).__name__}: {e}"
            report.failed[it.item_id] = msg
            log(f"[loom] {it.item_id}: FAILED {msg}")
            with open(fail_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"id": it.item_id, "error": msg,
                                    "traceback": traceback.format_exc(limit=5)}) + "\n")
    return report
