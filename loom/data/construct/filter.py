"""`loom data filter`: manifests in, one filtered manifest and a funnel report out (paper §3.4: tutorials with ≥ 3
steps "where visual state changes strictly follow textual instructions"; "strict overlap checks to remove
redundancy").

Per row (sharded over worker processes), in funnel order:
  invalid_row          the row fails the schema checks `loom data validate` applies (`records.check_record`)
  unreadable_image     an image is missing or does not decode
  too_few_steps        a tutorial with fewer than --min-steps steps (3)
  no_visual_change     two consecutive frames are near-identical (pHash distance ≤ --dup-distance of 256 bits)
  scene_cut            two consecutive frames are unrelated (distance ≥ --cut-distance): not one tutorial
  low_clip_alignment   a step's text–image CLIP cosine (the project's scorer, `loom.eval.clip_score`, label
                       "Step k:" removed) is below --clip-threshold (skipped when no threshold is given)
Then over the whole dataset, in input order (the first occurrence is kept):
  duplicate_id         an id already kept from an earlier row or manifest
  overlaps_held_out    an image near-identical to a held-out image, or the same prompt (case and spacing
                       ignored) as a held-out row (--held-out: manifests or image folders of eval data)
  near_duplicate       the row's key image (a tutorial's last frame, else its first target) is near-identical to
                       the key image of a row already kept
Kept rows get `meta.filter` (frame hashes, CLIP cosines) and paths relative to the output manifest.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .hashing import CUT_DISTANCE, DUP_DISTANCE, HashIndex, distance, phash
from .stage import Funnel, Outcome, Stage, StageError, file_digest

STEPS = ("invalid_row", "unreadable_image", "too_few_steps", "no_visual_change", "scene_cut", "low_clip_alignment",
         "duplicate_id", "overlaps_held_out", "near_duplicate")
IMAGE_FIELDS = ("frames", "input_images", "targets")
_BACKEND: dict[str, Any] = {}


@dataclass(frozen=True)
class FilterConfig:
    min_steps: int = 3
    dup_distance: int = DUP_DISTANCE
    cut_distance: int = CUT_DISTANCE
    clip_threshold: float | None = None
    clip_backend: str = "transformers"
    clip_weights: str | None = None


def load_clip(cfg: FilterConfig) -> None:
    """Worker initialiser: one CLIP per process."""
    if cfg.clip_threshold is not None and "clip" not in _BACKEND:
        from loom.eval.clip_score import load_backend

        _BACKEND["clip"] = load_backend(cfg.clip_backend, cfg.clip_weights)


def _rel(path: Path, out_base: Path) -> str:
    return os.path.relpath(path, out_base)


def process_row(cfg: FilterConfig, item: dict[str, Any]) -> Outcome:
    from PIL import Image

    from ..records import check_record, tutorial_steps

    row, base, out_base = item["row"], Path(item["base"]), Path(item["out_base"])
    errors, _ = check_record(row, n_max=10**6)
    refs = {f: row.get(f) or [] for f in IMAGE_FIELDS}
    if not errors and not all(isinstance(r, str) for rs in refs.values() for r in rs):
        errors = ["image references must be paths (the filter reads and writes JSONL manifests)"]
    if errors:
        return Outcome.reject("invalid_row", errors[0])
    hashes: dict[str, list[str]] = {}
    for f, rs in refs.items():
        hashes[f] = []
        for r in rs:
            try:
                with Image.open(base / r) as im:
                    hashes[f].append(phash(im))
            except (OSError, ValueError) as e:
                return Outcome.reject("unreadable_image", f"{f} {r!r}: {type(e).__name__}: {e}")
    meta_filter: dict[str, Any] = {"phash": hashes}
    if row["task"] == "tutorial":
        steps, _ = tutorial_steps(row)
        if len(steps) < cfg.min_steps:
            return Outcome.reject("too_few_steps", f"{len(steps)} steps < {cfg.min_steps}")
        fr = hashes["frames"]
        for k in range(1, len(fr)):
            d = distance(fr[k - 1], fr[k])
            if d <= cfg.dup_distance:
                return Outcome.reject("no_visual_change", f"frames {k}→{k + 1} differ by {d} of 256 bits "
                                      f"(≤ {cfg.dup_distance})")
            if d >= cfg.cut_distance:
                return Outcome.reject("scene_cut", f"frames {k}→{k + 1} differ by {d} of 256 bits "
                                      f"(≥ {cfg.cut_distance})")
        if cfg.clip_threshold is not None:
            from loom.eval.clip_score import cosine_pairs, strip_step_label

            load_clip(cfg)
            cos = cosine_pairs(_BACKEND["clip"], [base / r for r in refs["frames"]],
                               [strip_step_label(s) for s in steps])
            meta_filter["clip"] = [round(c, 4) for c in cos]
            low = [(k, c) for k, c in enumerate(cos, 1) if c < cfg.clip_threshold]
            if low:
                k, c = low[0]
                return Outcome.reject("low_clip_alignment", f"step {k}: cosine {c:.3f} < {cfg.clip_threshold}")
    new = {k: v for k, v in row.items() if not k.startswith("_")}
    for f, rs in refs.items():
        if f in row:
            new[f] = [_rel(base / r, out_base) for r in rs]
    new["meta"] = {**(row.get("meta") or {}), "filter": meta_filter}
    new["_key"] = item["key"]
    return Outcome.keep([new])


def key_hash(row: dict) -> str | None:
    h = row["meta"]["filter"]["phash"]
    if row["task"] == "tutorial" and h["frames"]:
        return h["frames"][-1]
    return (h["targets"] or h["input_images"] or [None])[0]


def held_out_ids(path: Path) -> set[str]:
    """Ids of an evaluation id list (`evals/<bench>/test_ids.txt`) for the converters' --exclude-ids. A list that
    has no ids yet (drawn only once the benchmark data is at hand) excludes nothing, and says so loudly."""
    import sys

    from loom.eval.fsio import EvalInputError, read_id_list

    if not Path(path).is_file():
        raise EvalInputError(f"--exclude-ids {path}: no such file")
    try:
        return set(read_id_list(Path(path)))
    except EvalInputError as e:
        if "has no ids yet" not in str(e):
            raise
        print(f"warning: {path} has no ids yet, so nothing is excluded; draw the evaluation ids first "
              "(the command is in the file's header) and rerun", file=sys.stderr)
        return set()


def normalize_prompt(text: str) -> str:
    return " ".join(re.sub(r"[^\w<>]+", " ", text.lower()).split())


def held_out_index(paths: list[Path]) -> tuple[HashIndex, set[str]]:
    """Hashes of every held-out image and the normalised held-out prompts."""
    from PIL import Image

    from ..manifest import Manifest, image_refs
    from .sources import IMAGE_EXTS

    index, prompts = HashIndex(), set()
    for p in paths:
        if not p.exists():
            raise StageError(f"--held-out {p} does not exist")
        keys, hexes = [], []
        if p.is_dir() and not any(p.glob("*.parquet")) and not (p / "dataset_info.json").exists():
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() in IMAGE_EXTS:
                    with Image.open(f) as im:
                        keys.append(str(f))
                        hexes.append(phash(im))
        else:
            man = Manifest(p)
            for i in range(len(man)):
                row = man.row(i)
                if isinstance(row.get("prompt"), str):
                    prompts.add(normalize_prompt(row["prompt"]))
                for j, ref in enumerate(image_refs(row)):
                    keys.append(f"{man.source(i)}:{row.get('id', '?')}:{j}")
                    hexes.append(phash(man.load_image(ref)))
        index.add_many(keys, hexes)
    prompts.discard("")
    return index, prompts


def dataset_pass(rows: list[dict], funnel: Funnel, cfg: FilterConfig, held: tuple[HashIndex, set[str]]) -> list[dict]:
    """duplicate_id, overlaps_held_out and near_duplicate, in input order; updates the funnel."""
    index, prompts = held
    kept: list[dict] = []
    ids: set[str] = set()
    seen = HashIndex()

    def drop(row: dict, reason: str, detail: str) -> None:
        funnel.removed.append({"key": row["_key"], "reason": reason, "detail": detail})
        funnel.num_out -= 1

    for row in rows:
        if row["id"] in ids:
            drop(row, "duplicate_id", f"id {row['id']!r} already kept")
            continue
        near = [index.nearest(h) for hs in row["meta"]["filter"]["phash"].values() for h in hs]
        hit = next(((other, d) for other, d in near if d <= cfg.dup_distance), None)
        if hit is not None:
            drop(row, "overlaps_held_out", f"image ≈ held-out {hit[0]} ({hit[1]} bits)")
            continue
        if isinstance(row.get("prompt"), str) and normalize_prompt(row["prompt"]) in prompts:
            drop(row, "overlaps_held_out", f"prompt {row['prompt'][:60]!r} is a held-out prompt")
            continue
        kh = key_hash(row)
        if kh is not None:
            other, d = seen.nearest(kh)
            if d <= cfg.dup_distance:
                drop(row, "near_duplicate", f"key image ≈ {other} ({d} bits)")
                continue
            seen.add_many([row["id"]], [kh])
        ids.add(row["id"])
        kept.append({k: v for k, v in row.items() if k != "_key"})
    return kept


def run(args) -> int:
    from ..manifest import Manifest
    from .stage import finish_stage, out_base, run_kwargs, run_stage, work_dir_for

    cfg = FilterConfig(args.min_steps, args.dup_distance, args.cut_distance, args.clip_threshold,
                       args.clip_backend, args.clip_weights)
    out = Path(args.out)
    base = out_base(out, *[Path(p) for p in args.manifests])
    items = []
    for path in args.manifests:
        man = Manifest(path, "jsonl")
        for i in range(len(man)):
            key = f"{path}:{i}:{man.row(i).get('id', '?')}"  # the validator's manifest:row:id
            items.append((key, {"row": man.row(i), "base": str(man.base.resolve()), "out_base": str(base),
                                "key": key}))
    held = held_out_index([Path(p) for p in args.held_out])
    settings = {**asdict(cfg), "held_out": [str(p) for p in args.held_out],
                "inputs_sha256": {str(p): file_digest(Path(p)) for p in args.manifests}}
    st = Stage("filter", STEPS, functools.partial(process_row, cfg), init=functools.partial(load_clip, cfg))
    kw = run_kwargs(args)
    result = run_stage(st, items, work_dir_for(out), settings, **kw)
    return finish_stage(st, items, result, [str(p) for p in args.manifests], out, settings, kw["shard"],
                        post=lambda rows, funnel: dataset_pass(rows, funnel, cfg, held))

