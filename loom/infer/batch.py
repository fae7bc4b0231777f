"""`loom generate TASK --batch prompts.jsonl --out ROOT`: many items, resumable, sharded over processes.

prompts.jsonl, one JSON object per line — the training manifest's row schema (`loom.data.records`), so a
manifest (or its test split) can be generated from directly; image paths are relative to the file's folder:

    {"id": "crane", "prompt": "How to fold a paper crane"}
    {"id": "tryon-3", "task": "compose", "prompt": "The <model> of <image 1> wearing <image 2>", "input_images": ["a.png", "b.png"]}

Row keys: id, task (default: the CLI task), prompt, input_images (`images` is accepted as an alias), and the
per-item settings seed (an integer; overrides the derived one), num_plan_steps, num_outputs, resolution
(1024, "WxH" or [W, H]) and negative_prompt — the names of `configs/infer/*.yaml`. A manifest's ground truth
(plan, frames, targets, answer) and meta are ignored: the model writes its own. Every row's keys, types and
settings are checked before the model loads; an error names the file, the 1-based line and the key. Each item
goes to ROOT/<id>/.

- Resume: an item whose folder holds result.json is done and skipped; result.json is written last and
  atomically (`loom.infer.output`), so a killed run restarts at the first unfinished item. ROOT/batch.json
  records the model, the settings and every row (with its planner) the batch was started with; resuming with a
  different model or settings, or a changed row of a finished item, is refused with the list of differences
  (`--overwrite` regenerates every item instead).
- Sharding: item i goes to shard i mod num_shards (round-robin over file order). Under `accelerate launch` /
  torchrun the shard is the process rank (RANK / WORLD_SIZE); no process group is needed, shards never talk.
- Reproducibility: the seed of an item is derived from the base seed and the item id only
  (`item_seed`), never from the rank or the order, so 1 or k processes write identical outputs.
- A failing item is logged to ROOT/failures.shard<r>-of-<n>.jsonl and the batch goes on; the exit status is
  non-zero if anything failed. Ctrl-C keeps finished items and the current item's finished frames
  (ROOT/<id>.partial/).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..utils.io import atomic_write_json
from .loop import InputError
from .output import check_writable, partial_dir, write_result
from .pipeline import GenerationInterrupted, GenerationSettings, LoomPipeline, load_image_file
from .settings import TASKS, ModelLimits, check_inputs, flag, parse_resolution

BATCH_FORMAT = "loom.batch/1"
ROW_KEYS = ("id", "task", "prompt", "input_images")  # the manifest row fields a generation reads
ROW_ALIASES = {"images": "input_images"}
ROW_SETTINGS = ("seed", "num_plan_steps", "num_outputs", "resolution", "negative_prompt")
GROUND_TRUTH_KEYS = ("plan", "frames", "targets", "answer", "meta")  # manifest fields the model regenerates
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class BatchItem:
    item_id: str
    task: str
    prompt: str
    images: list[str]
    seed: int | None = None
    overrides: dict = field(default_factory=dict)  # GenerationSettings fields set by the row (not seed)
    line: int = 0  # 1-based line of prompts.jsonl
    where: str = ""  # "prompts.jsonl:LINE" for messages

    def row(self) -> dict:
        """The row as generated (what batch.json records per item)."""
        return {"task": self.task, "prompt": self.prompt, "input_images": self.images, "seed": self.seed,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.overrides.items())}}


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: str | None = None  # the item Ctrl-C stopped
    partial: Path | None = None  # where its finished frames went


def item_seed(base_seed: int, item_id: str) -> int:
    """Seed of one item from (base seed, item id) alone: stable across shards, orders and machines."""
    h = hashlib.sha256(f"{base_seed}:{item_id}".encode()).hexdigest()
    return int(h[:15], 16)


def _row_value(where: str, key: str, v):
    """A per-row setting, type-checked without coercion ("seed": 1.5 and "num_plan_steps": "many" are errors)."""
    from .settings import _check_type

    if key == "resolution":
        if isinstance(v, list) and len(v) == 2:
            v = tuple(v)
        elif isinstance(v, (int, str)) and not isinstance(v, bool):
            try:
                v = parse_resolution(v)
            except InputError:
                raise InputError(f"{where}: 'resolution' must be 1024, \"WIDTHxHEIGHT\" or [W, H], got {v!r}") from None
    _check_type(key, v, label=f"{where}: '{key}'")
    return v


def read_batch(path: str | Path, default_task: str) -> list[BatchItem]:
    """Parse and type-check prompts.jsonl (every error names the 1-based line and the key)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--batch file {path} does not exist")
    items, seen = [], {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read --batch file {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(d, dict):
            raise InputError(f"{where}: each line must be a JSON object")
        for alias, key in ROW_ALIASES.items():
            if alias in d:
                if key in d:
                    raise InputError(f"{where}: give '{key}' or its alias '{alias}', not both")
                d[key] = d.pop(alias)
        unknown = set(d) - set(ROW_KEYS) - set(ROW_SETTINGS) - set(GROUND_TRUTH_KEYS)
        if unknown:
            hint = " ('steps' is now 'num_plan_steps')" if "steps" in unknown else ""
            raise InputError(f"{where}: unknown keys {sorted(unknown)}{hint} (allowed: "
                             f"{', '.join([*ROW_KEYS, *ROW_SETTINGS])}; ignored: {', '.join(GROUND_TRUTH_KEYS)})")
        item_id = d.get("id", f"{n:06d}")
        if not isinstance(item_id, str) or not _ID_RE.match(item_id):
            raise InputError(f"{where}: 'id' {item_id!r} must be 1-128 characters of letters, digits, '.', '_', '-'")
        if item_id in seen:
            raise InputError(f"{where}: duplicate id {item_id!r} (first on line {seen[item_id]})")
        seen[item_id] = n
        task = d.get("task", default_task)
        if task not in TASKS:
            raise InputError(f"{where}: 'task' must be one of {', '.join(TASKS)}, got {task!r}")
        prompt = d.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: 'prompt' must be a non-empty string")
        images = d.get("input_images", [])
        if not isinstance(images, list) or not all(isinstance(x, str) and x for x in images):
            raise InputError(f"{where}: 'input_images' must be a list of image paths")
        images = [str(p if Path(p).is_absolute() else path.parent / p) for p in images]
        over = {k: _row_value(where, k, d[k]) for k in ROW_SETTINGS if k in d and d[k] is not None}
        seed = over.pop("seed", None)
        items.append(BatchItem(item_id, task, prompt, images, seed, over, n, where))
    if not items:
        raise InputError(f"--batch file {path} holds no items")
    return items


def check_batch(items: list[BatchItem], settings: GenerationSettings, limits: ModelLimits) -> None:
    """Everything about every row that can be known before loading the model: task, prompt, image count and
    settings. A missing or unreadable image is that item's failure at run time (logged with its line; the batch
    goes on)."""
    for it in items:
        s = replace(settings, **it.overrides, **({"seed": it.seed} if it.seed is not None else {}))
        try:
            check_inputs(it.task, it.prompt, it.images, limits.max_references)
            s.check(it.task, limits)
        except InputError as e:
            msg = str(e)
            for k in [*it.overrides, "seed"]:
                msg = msg.replace(flag(k), f"'{k}'")
            raise InputError(f"{it.where}: {msg}") from None


def planner_name(planner) -> str:
    if planner is None:
        return "model"
    if hasattr(planner, "base_url"):
        return f"external:{planner.model}@{planner.base_url}"
    return "fixed:" + hashlib.sha256(getattr(planner, "text", "").encode()).hexdigest()[:16]


def batch_record(items: list[BatchItem], settings: GenerationSettings, planner, model: str) -> dict:
    """What batch.json records: the model, the base settings, and per item its row and (tutorials) its planner."""
    return {"format": BATCH_FORMAT, "model": model, "settings": settings.to_json(),
            "items": {it.item_id: {**it.row(), "planner": planner_name(planner) if it.task == "tutorial" else None}
                      for it in items}}


def _read_record(root: Path) -> dict | None:
    f = root / "batch.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{f} is unreadable ({e}); remove it or pass --overwrite") from None


def check_resume(root: str | Path, record: dict, overwrite: bool = False) -> None:
    """Refuse to resume ROOT with a model, settings, or (for finished items) rows / planner other than those it
    was started with."""
    root = Path(root)
    old = None if overwrite else _read_record(root)
    if old is None:
        return
    diffs = [] if old.get("model") == record["model"] else [f"model: {old.get('model')!r} → {record['model']!r}"]
    a, b = old.get("settings", {}), record["settings"]
    diffs += [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    oi, ni = old.get("items", {}), record["items"]
    changed = [i for i in ni if i in oi and oi[i] != ni[i] and (root / i / "result.json").exists()]
    if changed:
        diffs.append(f"rows changed since they were generated: {', '.join(changed[:5])}"
                     + (" …" if len(changed) > 5 else ""))
    if diffs:
        raise InputError(f"{root} was started with other settings (batch.json); resuming would mix them: "
                         f"{'; '.join(diffs)}. Rerun with the same settings, pass --overwrite to regenerate "
                         "every item, or choose another --out")


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from accelerate launch / torchrun environment variables; (0, 1) otherwise."""
    rank = int(os.environ.get("RANK", os.environ.get("PROCESS_INDEX", 0)))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("NUM_PROCESSES", 1)))
    return rank, world


def run_batch(pipe: LoomPipeline, items: list[BatchItem], out_root: str | Path, settings: GenerationSettings,
              planner=None, shard: int = 0, num_shards: int = 1, progress: bool = False,
              log=print, overwrite: bool = False, model: str = "") -> BatchReport:
    if not 0 <= shard < num_shards:
        raise InputError(f"shard {shard} outside [0, {num_shards})")
    out_root = Path(out_root)
    check_writable(out_root)
    record = batch_record(items, settings, planner, model or str(pipe.model_info.get("path", "")))
    check_resume(out_root, record, overwrite)
    out_root.mkdir(parents=True, exist_ok=True)
    old = None if overwrite else _read_record(out_root)
    if old is not None:  # items of earlier calls (another shard, another subset) stay recorded
        record["items"] = {**old.get("items", {}), **record["items"]}
    atomic_write_json(out_root / "batch.json", record)
    report = BatchReport()
    fail_log = out_root / f"failures.shard{shard}-of-{num_shards}.jsonl"
    for it in items[shard::num_shards]:
        out = out_root / it.item_id
        if (out / "result.json").exists() and not overwrite:
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
            write_result(res, out, overwrite=True)
            report.done.append(it.item_id)
            log(f"[loom] {it.item_id}: done ({len(res.frames)} image(s))")
        except GenerationInterrupted as e:
            report.interrupted = it.item_id
            if e.result.frames:
                report.partial = partial_dir(out)
                write_result(e.result, report.partial, overwrite=True)
            return report
        except KeyboardInterrupt:
            report.interrupted = it.item_id
            return report
        except Exception as e:  # one bad item must not stop the batch
            msg = f"{type(e).__name__}: {e}"
            if getattr(e, "partial_output", None) is not None:
                msg += f" (its finished files are in {e.partial_output})"
            report.failed[it.item_id] = msg
            log(f"[loom] {it.item_id}: FAILED {msg}")
            try:
                with open(fail_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"id": it.item_id, "line": it.line, "error": msg,
                                        "traceback": traceback.format_exc(limit=5)}) + "\n")
            except OSError as le:
                print(f"[loom] warning: cannot append to {fail_log} ({le.strerror or le})", file=sys.stderr)
    return report
