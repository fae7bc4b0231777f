"""Deterministic shapes-world dataset writers, one manifest folder per (task, split).

Split disjointness: every item has a canonical key, its element set in reading order (the target picture for
compose/style, the finished picture for tutorials and decomposition). A hash of the key alone picks train or
test, so an element set, and with it every prompt and picture derived from it, lives in exactly one split, for
every seed and every task.

Worlds (`--world`): "basic" (the default, above) and "mechanisms" (loom/world/program.py): its tutorials are step
programs with past-referring steps and a hidden per-tutorial appearance; their key is the program (step texts in
order; image->tutorials draw in reading order, so their program is their element set). Its compose / style /
decompose items are the basic world's. Tutorial rows of the mechanisms world carry meta `states` (element set after
each step), `past` (which steps refer to the past) and `appearance` (the hidden paper tint and offset).

    python -m loom.world.generate --out DIR --task tutorial --n 200 --split train --seed 0 --size 64 [--world NAME]
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from loom.world.manifest import MANIFEST_NAME, write_jsonl, write_png
from loom.world.program import (
    Step,
    program_key,
    program_prompt,
    program_step_text,
    run_program,
    sample_appearance,
    sample_program,
)
from loom.world.shapes import (
    COLORS,
    DEFAULT_SIZE,
    Appearance,
    Element,
    reading_order,
    render,
    render_swatch,
    sample_elements,
)
from loom.world.text import (
    DECOMPOSE_PROMPT,
    IMAGE_TO_TUTORIAL_PROMPT,
    STYLE_PROMPT,
    compose_prompt,
    step_text,
    tutorial_prompt,
)

TASKS: tuple[str, ...] = ("tutorial", "image_tutorial", "compose", "decompose", "style")
WORLDS: tuple[str, ...] = ("basic", "mechanisms")
PROGRAM_TASKS = ("tutorial", "image_tutorial")  # the tasks the mechanisms world changes
SPLITS: tuple[str, ...] = ("train", "test")
TEST_FRACTION = 0.2
MIN_SIZE = 24  # 5 px shapes; the judge is checked at 32 and 64
NUM_ELEMENTS: dict[str, tuple[int, int]] = {  # inclusive ranges
    "tutorial": (2, 6),
    "image_tutorial": (2, 6),
    "compose": (2, 3),
    "decompose": (2, 3),
    "style": (1, 3),
}


def canonical_key(elements: Iterable[Element]) -> str:
    """Order-free identity of an element set: the same set always gives the same key."""
    return "|".join(f"{e.cell}:{e.color}:{e.shape}" for e in reading_order(set(elements)))


def split_of(elements: Iterable[Element], test_fraction: float = TEST_FRACTION) -> str:
    """Train or test from a stable hash of the canonical key (sha256, not Python's salted hash())."""
    return split_of_key(canonical_key(elements), test_fraction)


def split_of_key(key: str, test_fraction: float = TEST_FRACTION) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


class _Writer:
    """Writes one item's images under the output folder and returns their manifest-relative paths."""

    def __init__(self, out_dir: Path, item_id: str) -> None:
        self.out_dir, self.item_id = out_dir, item_id

    def __call__(self, folder: str, suffix: str, image: np.ndarray) -> str:
        rel = f"{folder}/{self.item_id}_{suffix}.png"
        write_png(self.out_dir / rel, image)
        return rel


def _elements_meta(elements: Sequence[Element]) -> list[dict[str, str]]:
    return [e.to_dict() for e in elements]


def _tutorial_row(elements: list[Element], write: _Writer, size: int, from_image: bool) -> dict:
    # The prompt lists elements in sampling order; the plan always draws them top-left first.
    plan = reading_order(elements)
    frames = [write("frames", str(k), render(plan[:k], size)) for k in range(1, len(plan) + 1)]
    inputs = [write("inputs", "ref", render(plan, size))] if from_image else []
    return {
        "task": "tutorial",
        "prompt": IMAGE_TO_TUTORIAL_PROMPT if from_image else tutorial_prompt(elements),
        "plan": [step_text(e) for e in plan],
        "frames": frames,
        "input_images": inputs,
        "meta": {"elements": _elements_meta(plan)},
    }


def _compose_row(elements: list[Element], write: _Writer, size: int) -> dict:
    refs = [
        write("inputs", f"in{j}", render([e.moved_to("center")], size)) for j, e in enumerate(elements, 1)
    ]
    return {
        "task": "compose",
        "prompt": compose_prompt([e.cell for e in elements]),
        "input_images": refs,
        "targets": [write("targets", "out1", render(elements, size))],
        "meta": {"elements": _elements_meta(elements)},  # element k comes from <image k>
    }


def _decompose_row(elements: list[Element], write: _Writer, size: int) -> dict:
    parts = reading_order(elements)
    targets = [
        write("targets", f"out{j}", render([e.moved_to("center")], size)) for j, e in enumerate(parts, 1)
    ]
    return {
        "task": "decompose",
        "prompt": DECOMPOSE_PROMPT,
        "input_images": [write("inputs", "in1", render(parts, size))],
        "targets": targets,
        "meta": {"elements": _elements_meta(parts)},  # target k is element k, centred
    }


def _style_row(elements: list[Element], write: _Writer, size: int) -> dict:
    color = elements[0].color  # _sample made every element this colour
    parts = reading_order(elements)
    style = write("inputs", "style", render_swatch(color, size))
    content = write("inputs", "content", render(parts, size, outlined=True))
    return {
        "task": "style",
        "prompt": STYLE_PROMPT,
        "input_images": [style, content],
        "targets": [write("targets", "out1", render(parts, size))],
        "meta": {"color": color, "elements": _elements_meta(parts)},
    }


def _program_row(item: tuple[list[Step], Appearance], write: _Writer, size: int, from_image: bool) -> dict:
    """A mechanisms tutorial: frame k is the world state after step k, drawn in the tutorial's appearance."""
    steps, look = item
    states = run_program(steps)
    frames = [write("frames", str(k), render(st, size, appearance=look)) for k, st in enumerate(states, 1)]
    final = reading_order(states[-1])
    return {
        "task": "tutorial",
        "prompt": IMAGE_TO_TUTORIAL_PROMPT if from_image else program_prompt(steps),
        "plan": [program_step_text(s) for s in steps],
        "frames": frames,
        "input_images": [write("inputs", "ref", render(final, size, appearance=look))] if from_image else [],
        "meta": {"elements": _elements_meta(final), "states": [_elements_meta(reading_order(st)) for st in states],
                 "past": [s.refers_to_past for s in steps], "appearance": look.to_dict()},
    }


_ROW_BUILDERS: dict[str, Callable[[list[Element], _Writer, int], dict]] = {
    "tutorial": lambda els, w, s: _tutorial_row(els, w, s, from_image=False),
    "image_tutorial": lambda els, w, s: _tutorial_row(els, w, s, from_image=True),
    "compose": _compose_row,
    "decompose": _decompose_row,
    "style": _style_row,
}


def _sample(task: str, rng: np.random.Generator) -> list[Element]:
    low, high = NUM_ELEMENTS[task]
    elements = sample_elements(rng, int(rng.integers(low, high + 1)))
    if task == "style":  # one swatch colour recolours every outlined shape
        color = COLORS[int(rng.integers(len(COLORS)))]
        elements = [Element(color, e.shape, e.cell) for e in elements]
    return elements


def _sample_program_item(task: str, rng: np.random.Generator) -> tuple[list[Step], Appearance]:
    if task == "tutorial":
        steps = sample_program(rng)
    else:  # image->tutorial: the picture's shapes in reading order
        steps = [Step("draw", e) for e in reading_order(_sample(task, rng))]
    return steps, sample_appearance(rng)


def item_key(task: str, item, world: str = "basic") -> str:
    """The canonical key an item's split is hashed from: its program (mechanisms tutorials) or element set."""
    if world == "mechanisms" and task in PROGRAM_TASKS:
        return program_key(item[0])
    return canonical_key(item)


def sample_items(task: str, n: int, split: str, seed: int, world: str = "basic") -> list:
    """n items of this split with distinct canonical keys, by rejection sampling from a seeded stream: element
    lists, or for mechanisms tutorials (steps, appearance) pairs.

    The stream is seeded by (seed, task, split[, world]) so train and test of one seed are different streams, and
    the rejection on the key's hash makes them disjoint regardless of seed."""
    if task not in TASKS or split not in SPLITS or world not in WORLDS:
        raise ValueError(f"task must be one of {TASKS}, split one of {SPLITS} and world one of {WORLDS}, got "
                         f"{task!r}, {split!r}, {world!r}")
    programs = world == "mechanisms" and task in PROGRAM_TASKS
    stream = [seed, TASKS.index(task), SPLITS.index(split)] + ([WORLDS.index(world)] if programs else [])
    rng = np.random.default_rng(stream)
    items, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(items) == n:
            break
        item = _sample_program_item(task, rng) if programs else _sample(task, rng)
        key = item_key(task, item, world)
        if key in seen or split_of_key(key) != split:
            continue
        seen.add(key)
        items.append(item)
    if len(items) < n:
        raise RuntimeError(f"only found {len(items)} distinct {split} items for {task!r}, asked for {n}")
    return items


def write_dataset(
    out_dir: str | Path, task: str, n: int, split: str = "train", seed: int = 0, size: int = DEFAULT_SIZE,
    world: str = "basic",
) -> Path:
    """Write n items of one task and split (PNGs, then manifest.jsonl last) and return the manifest path."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px so shapes stay distinguishable, got {size}")
    out = Path(out_dir)
    rows = []
    programs = world == "mechanisms" and task in PROGRAM_TASKS
    for i, item in enumerate(sample_items(task, n, split, seed, world)):
        item_id = f"{task}-{split}-s{seed}-{i:05d}"
        write = _Writer(out, item_id)
        row = {"id": item_id, **(_program_row(item, write, size, task == "image_tutorial") if programs
                                 else _ROW_BUILDERS[task](item, write, size))}
        row["meta"].update(split=split, key=item_key(task, item, world), size=size)
        if world != "basic":
            row["meta"]["world"] = world
        rows.append(row)
    # The manifest goes last, so a folder with a manifest always has all its images.
    path = out / MANIFEST_NAME
    write_jsonl(path, rows)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a shapes-world dataset (manifest.jsonl + PNGs).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--n", type=int, default=200, help="number of items")
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="canvas side in pixels (32 or 64)")
    parser.add_argument("--world", default="basic", choices=WORLDS,
                        help="basic (default) or mechanisms: step programs, past-referring steps, hidden appearance")
    args = parser.parse_args(argv)
    path = write_dataset(args.out, args.task, args.n, args.split, args.seed, args.size, args.world)
    print(f"wrote {args.n} {args.task} items ({args.split}, {args.world} world) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
