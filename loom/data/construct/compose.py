"""`loom data compose-pairs`: entity-level permutation and combination of isolated subjects across categories
(models, garments, products, scenes, …) into paired bi-directional rows (paper §3.3, §3.4, Fig. 3b): a forward
`compose` row (the subjects → one composite) and a reverse `decompose` row (the composite → the subjects), both
with entity tokens followed by the subject's description ("the <model> woman in a casual pose from <image 1>").

Input: `SUBJECTS/<category>/<image>` (one clean subject per image), an optional `<image>.txt` one-line
description next to each. The category folder names the entity token (`models` → `<model>`, `garments` →
`<garment>`, `products` → `<object>`, `scenes` → `<scene>`; `--entity NAME=<token>` for others). Every combination
takes k categories (`--num-entities 2-3`) and one subject from each; combinations are sampled deterministically
(`--seed`) up to `--max-combos`, each subject set once (overlap check), in a random entity order (the
permutation). Near-identical subject images are dropped before combining (pHash), so no composite repeats.
The composite comes from an image-edit endpoint (`--image-model …`, all subject images + the forward instruction)
or, without one, a side-by-side collage on white (a layout composite that needs no model).
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import random
from pathlib import Path
from typing import Any

from PIL import Image

from loom.utils.io import atomic_write_bytes
from loom.utils.openai_client import CallFailed, EndpointError

from . import endpoint
from .hashing import HashIndex, distance, phash
from .prompts import category_token, compose_prompt, decompose_prompt, unregistered
from .sources import description, grouped_images
from .stage import Outcome, Stage, StageError

STEPS = ("image_refused", "composite_unchanged")


def collage(images: list[Image.Image], height: int = 512, gap: int = 16) -> Image.Image:
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.BICUBIC)
              for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) + 1), height + 2 * gap),
                       (255, 255, 255))
    x = gap
    for im in scaled:
        canvas.paste(im, (x, gap))
        x += im.width + gap
    return canvas


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def process_combo(cfg: dict[str, Any], item: dict[str, Any]) -> Outcome:
    out_base, key = Path(item["out_base"]), item["key"]
    subjects = item["subjects"]  # [{"path", "token", "description", "category"}] in prompt order
    entities = [(s["token"], s["description"]) for s in subjects]
    forward = compose_prompt(entities)
    images = [Image.open(s["path"]).convert("RGB") for s in subjects]
    if cfg["endpoint"]:
        try:
            raw = endpoint.client("image").edit_image([_png(im) for im in images], forward, cfg["size"])
        except CallFailed as e:
            if e.kind == "refused":
                return Outcome.reject("image_refused", str(e))
            return Outcome.retry_later("image_endpoint_unavailable", str(e))
        composite = Image.open(io.BytesIO(raw)).convert("RGB")
        h = phash(composite)
        same = [s["path"] for s in subjects if distance(h, phash(Image.open(s["path"]))) <= cfg["dup_distance"]]
        if same:
            return Outcome.reject("composite_unchanged", f"the composite is {Path(same[0]).name} unchanged")
    else:
        composite = collage(images)
    rel_comp = f"composites/{key}.png"
    atomic_write_bytes(out_base / rel_comp, _png(composite))
    paths = [os.path.relpath(s["path"], out_base) for s in subjects]
    meta = {"source": "compose-pairs", "composite": cfg["endpoint"] or "collage",
            "entities": [{"category": s["category"], "token": s["token"], "description": s["description"]}
                         for s in subjects]}
    rows = [{"id": f"compose-{key}", "task": "compose", "prompt": forward, "input_images": paths,
             "targets": [rel_comp], "meta": meta}]
    if cfg["reverse"]:
        rows.append({"id": f"decompose-{key}", "task": "decompose", "prompt": decompose_prompt(entities),
                     "input_images": [rel_comp], "targets": paths, "meta": meta})
    return Outcome.keep(rows)


def dedupe_subjects(groups: dict[str, list[Path]], dup: int) -> tuple[dict[str, list[Path]], list[dict]]:
    index, kept, rejected = HashIndex(), {}, []
    for cat, paths in groups.items():
        for p in paths:
            with Image.open(p) as im:
                h = phash(im)
            other, d = index.nearest(h)
            if d <= dup:
                rejected.append({"path": str(p), "reason": "duplicate_subject", "detail": f"≈ {other} ({d} bits)"})
                continue
            index.add_many([str(p)], [h])
            kept.setdefault(cat, []).append(p)
    return kept, rejected


def combinations(groups: dict[str, list[Path]], sizes: range, max_combos: int, seed: int) -> list[list[Path]]:
    """Up to max_combos distinct subject sets (one subject per chosen category), each in a random order."""
    rng = random.Random(seed)
    cats = sorted(groups)
    sizes = range(max(sizes.start, 1), min(sizes.stop, len(cats) + 1))
    total = sum(functools.reduce(lambda a, c: a * len(groups[c]), cs, 1)
                for k in sizes for cs in itertools.combinations(cats, k))
    if total <= max_combos:
        sets = [list(p) for k in sizes for cs in itertools.combinations(cats, k)
                for p in itertools.product(*(groups[c] for c in cs))]
    else:
        seen: set[frozenset] = set()
        sets = []
        for _ in range(50 * max_combos):
            if len(sets) == max_combos:
                break
            cs = rng.sample(cats, rng.choice(list(sizes)))
            combo = [rng.choice(groups[c]) for c in cs]
            if frozenset(combo) not in seen:
                seen.add(frozenset(combo))
                sets.append(combo)
    for combo in sets:
        rng.shuffle(combo)  # the permutation: entity order varies across rows
    return sets


def run(args) -> int:
    from .stage import finish_stage, out_base, run_kwargs, run_stage, work_dir_for

    root, out = Path(args.subjects), Path(args.out)
    base = out_base(out, root)
    lo, _, hi = str(args.num_entities).partition("-")
    sizes = range(int(lo), int(hi or lo) + 1)
    overrides = dict(kv.split("=", 1) for kv in args.entity)
    groups, rejected = grouped_images(root)
    tokens = {cat: category_token(cat, overrides) for cat in groups}
    if unregistered(list(tokens.values())):
        print(f"note: entity tokens {unregistered(list(tokens.values()))} are not in the default vocabulary; add "
              "them to data.build.entity_tokens of the training config")
    groups, dups = dedupe_subjects(groups, args.dup_distance)
    api = endpoint.endpoint_config(args, "image", json_mode=False)
    items = []
    for combo in combinations(groups, sizes, args.max_combos, args.seed):
        key = hashlib.sha1("|".join(sorted(str(p.resolve()) for p in combo)).encode()).hexdigest()[:12]
        subjects = [{"path": str(p.resolve()), "category": p.parent.name, "token": tokens[p.parent.name],
                     "description": description(p)} for p in combo]
        items.append((key, {"key": key, "out_base": str(base), "subjects": subjects}))
    if not items:
        raise StageError(f"{root}: no combinations — {len(groups)} usable categories ({', '.join(groups) or 'none'}) "
                         f"but --num-entities {args.num_entities}; add category folders or lower --num-entities")
    cfg = {"endpoint": api.model if api else None, "size": args.size, "reverse": not args.no_reverse,
           "dup_distance": args.dup_distance}
    settings = {**cfg, "tokens": tokens, "num_entities": args.num_entities, "max_combos": args.max_combos,
                "seed": args.seed, "endpoint": endpoint.settings(api)}
    init = functools.partial(endpoint.open_client, "image", api) if api else None
    st = Stage("compose-pairs", STEPS, functools.partial(process_combo, cfg), init=init,
               executor="thread" if api else "process", fatal=(EndpointError,))
    if init is not None:
        init()  # a missing key fails here, before any work
    kw = run_kwargs(args)
    result = run_stage(st, items, work_dir_for(out), settings, **kw)
    return finish_stage(st, items, result, [str(root)], out, settings, kw["shard"], rejected_inputs=rejected + dups)

