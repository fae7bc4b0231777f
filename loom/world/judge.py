"""Programmatic judge for the shapes world: the paper's evaluation axes as scores in [0, 1].

Images are read back into element sets by `perceive`; plans by `parse_plan`. Every axis is 1.0 on ground truth
and each one is built to fall under a different corruption (see tests/world/test_world_judge.py). Names say what
is measured: an axis named like the paper's (or "*_accuracy") is EXACT — an item or frame counts only when it is
entirely right; partial credit has its own name ("*_step_accuracy", "*_jaccard", "*_fraction").

Tutorials (`steps` = the model's own plan, or the ground-truth plan when rendering from it):
- plan_accuracy: the whole plan is right — every step names the right element, in order, and no extra step.
  plan_step_accuracy: share of positions whose step names the right element (partial credit).
- instruction_following: frame k shows EXACTLY the elements of ground-truth steps 1..k (per frame, exact).
  frame_jaccard: per-frame Jaccard overlap with those elements (partial credit).
- temporal_coherence: frame k keeps every element of frame k-1 unchanged (same colour, shape, cell) and adds
  exactly the element of step k of `steps` (frame 0 is blank).
- reference_faithfulness: the last frame shows exactly the reference picture's elements;
  reference_jaccard: Jaccard overlap (partial credit).
- text_image_alignment: the element that frame k adds includes the one step k of `steps` names.
Mechanisms-world tutorials (rows with meta `states`, loom/world/program.py): plan axes compare parsed steps
(draw / move / recolour / copy); instruction_following and frame_jaccard compare frame k with the ground-truth
world state after step k; temporal_coherence: the change from frame k-1 to frame k (removed and added elements) is
the change step k of `steps` makes when `steps` is replayed as a program; text_image_alignment: frame k adds what
step k of `steps` adds. New axes:
- past_step_following: instruction_following restricted to the steps that refer to the past (exact per frame).
- appearance_consistency: a frame counts when its perceived hidden appearance (paper tint AND shape offset) equals
  the reference: the first generated frame for text->tutorials (frames 2.. are scored; frame 1 is free), the input
  image's (= meta `appearance`) for image->tutorials (every frame is scored). paper_consistency and
  offset_consistency score each attribute alone.
Other tasks: composition / decomposition / style accuracy are exact (the output's element set equals the target;
decomposition per output), with `*_jaccard` partial-credit twins; style also reports structure_jaccard (shape and
cell only) and color_fraction (share of drawn elements in the swatch colour).
Frame quality (every generated image): clean_pixel_fraction = share of pixels within 48 RGB levels (max over
channels) of a clean re-render of the elements the judge perceives — speckle, blur, rounded squares or stray ink
lower it even when perception reads the right elements; clean_frame_rate = share of images with fewer off
pixels than one shape side (7 at 32 px).

A missing or extra frame/output scores 0 for its position: denominators are max(expected, produced).

Predictions folder: `predictions.jsonl`, one {"id", "text" (optional plan string), "images": [paths relative to
the folder]} per item; images are the tutorial frames or the task's outputs in target order.

    python -m loom.world.judge --manifest DATA_DIR [--predictions PRED_DIR]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from loom.world.manifest import manifest_path, read_image, read_jsonl, write_jsonl
from loom.world.perceive import perceive, perceive_appearance
from loom.world.program import parse_step, run_program
from loom.world.shapes import PLAIN, Appearance, Element, render, shape_side
from loom.world.text import format_plan, parse_plan, split_steps

PREDICTIONS_NAME = "predictions.jsonl"
Frames = Sequence[frozenset[Element]]


CLEAN_TOLERANCE = 48  # RGB levels (max over channels) a pixel may differ from the clean re-render
# An image is a clean frame when fewer pixels than one shape side (7 at 32 px, 13 at 64 px) are off: a circle drawn
# as a square (12 / 36 px), a stray blob or speckle fails, a single off pixel does not.


def jaccard(expected: set[Element] | frozenset[Element], found: set[Element] | frozenset[Element]) -> float:
    """|A & B| / |A | B|; two empty sets agree."""
    union = len(expected | found)
    return 1.0 if union == 0 else len(expected & found) / union


def _per_position(values: Sequence[float], denom: int) -> float:
    return sum(values) / denom if denom else 0.0


def plan_accuracy(expected: Sequence[Element], parsed: Sequence[Element | None]) -> float:
    """1.0 when the plan names exactly the expected elements in order (and nothing else)."""
    return float(len(expected) > 0 and list(parsed) == list(expected))


def plan_step_accuracy(expected: Sequence[Element], parsed: Sequence[Element | None]) -> float:
    return _per_position([e == p for e, p in zip(expected, parsed)], max(len(expected), len(parsed)))


def instruction_following(expected: Sequence[Element], frames: Frames) -> float:
    exact = [frame == frozenset(expected[: k + 1]) for k, frame in enumerate(frames[: len(expected)])]
    return _per_position(exact, max(len(expected), len(frames)))


def frame_jaccard(expected: Sequence[Element], frames: Frames) -> float:
    overlap = [jaccard(set(expected[: k + 1]), frame) for k, frame in enumerate(frames[: len(expected)])]
    return _per_position(overlap, max(len(expected), len(frames)))


def _added(frames: Frames, k: int) -> frozenset[Element]:
    return frames[k] - (frames[k - 1] if k > 0 else frozenset())


def temporal_coherence(steps: Sequence[Element | None], frames: Frames) -> float:
    """Frame k keeps frame k-1 unchanged and adds exactly step k's element."""
    ok = [steps[k] is not None and (k == 0 or frames[k - 1] <= frames[k]) and _added(frames, k) == {steps[k]}
          for k in range(min(len(frames), len(steps)))]
    return _per_position(ok, max(len(frames), len(steps)))


def reference_faithfulness(reference: set[Element] | frozenset[Element], frames: Frames) -> float:
    return float(bool(frames) and frames[-1] == frozenset(reference))


def reference_jaccard(reference: set[Element] | frozenset[Element], frames: Frames) -> float:
    return jaccard(reference, frames[-1]) if frames else 0.0


def text_image_alignment(parsed: Sequence[Element | None], frames: Frames) -> float:
    hits = [p is not None and p in _added(frames, k) for k, p in enumerate(parsed[: len(frames)])]
    return _per_position(hits, max(len(parsed), len(frames)))


def off_pixels(image: np.ndarray, seen: frozenset[Element] | None = None, look: Appearance = PLAIN
               ) -> np.ndarray:
    """Boolean map of pixels more than CLEAN_TOLERANCE from the clean render of what the judge perceives."""
    img = np.asarray(image)[..., :3].astype(np.int16)
    seen = perceive(img) if seen is None else seen
    clean = render(seen, img.shape[0], appearance=look).astype(np.int16)
    return np.abs(img - clean).max(-1) > CLEAN_TOLERANCE


def clean_pixel_fraction(image: np.ndarray, seen: frozenset[Element] | None = None) -> float:
    return float(1.0 - off_pixels(image, seen).mean())


def frame_quality(images: Sequence[np.ndarray], seen: Sequence[frozenset[Element]] | None = None,
                  looks: Sequence[Appearance] | None = None) -> dict[str, float]:
    if not images:
        return {"clean_pixel_fraction": 0.0, "clean_frame_rate": 0.0}
    off = [off_pixels(im, None if seen is None else seen[i], PLAIN if looks is None else looks[i])
           for i, im in enumerate(images)]
    return {"clean_pixel_fraction": float(np.mean([1.0 - o.mean() for o in off])),
            "clean_frame_rate": float(np.mean([o.sum() < shape_side(o.shape[0]) for o in off]))}


def score_tutorial(
    row: dict, frames: Sequence[np.ndarray], text: str | Sequence[str] | None
) -> dict[str, float]:
    """All tutorial axes. With text=None (frames rendered from the given plan) the plan axes are left out and
    coherence / alignment are checked against the ground-truth plan."""
    expected = [Element.from_dict(d) for d in row["meta"]["elements"]]  # reading order == plan order
    seen = [perceive(f) for f in frames]
    parsed = parse_plan(row["plan"] if text is None else text)
    scores = {
        "instruction_following": instruction_following(expected, seen),
        "frame_jaccard": frame_jaccard(expected, seen),
        "temporal_coherence": temporal_coherence(parsed, seen),
        "reference_faithfulness": reference_faithfulness(set(expected), seen),
        "reference_jaccard": reference_jaccard(set(expected), seen),
        "text_image_alignment": text_image_alignment(parsed, seen),
        **frame_quality(frames, seen),
    }
    if text is not None:
        scores = {"plan_accuracy": plan_accuracy(expected, parsed),
                  "plan_step_accuracy": plan_step_accuracy(expected, parsed), **scores}
    return scores


# ---- mechanisms-world tutorials -------------------------------------------------------------------------------
States = Sequence[frozenset[Element] | None]


def state_following(states: States, frames: Frames, only: Sequence[bool] | None = None) -> float:
    """Share of steps (all, or those with only[k]) whose frame equals the state after the step (exact)."""
    ks = [k for k in range(len(states)) if only is None or only[k]]
    ok = [k < len(frames) and frames[k] == states[k] for k in ks]
    extra = 0 if only is not None else max(0, len(frames) - len(states))
    return _per_position(ok, len(ks) + extra)


def state_jaccard(states: States, frames: Frames) -> float:
    overlap = [jaccard(set(st), frames[k]) for k, st in enumerate(states[: len(frames)])]
    return _per_position(overlap, max(len(states), len(frames)))


def _change(before: frozenset[Element], after: frozenset[Element]) -> tuple[frozenset, frozenset]:
    return before - after, after - before


def program_coherence(own: States, frames: Frames) -> float:
    """Frame k changes frame k-1 exactly as step k of the replayed plan changes its state."""
    blank: frozenset[Element] = frozenset()
    ok = [own[k] is not None and _change(frames[k - 1] if k else blank, frames[k])
          == _change(own[k - 1] if k else blank, own[k]) for k in range(min(len(frames), len(own)))]
    return _per_position(ok, max(len(frames), len(own)))


def program_alignment(own: States, frames: Frames) -> float:
    """Frame k adds (at least) the element step k of the replayed plan adds."""
    blank: frozenset[Element] = frozenset()
    ok = [own[k] is not None and own[k] - (own[k - 1] if k else blank) <= _added(frames, k)
          for k in range(min(len(frames), len(own)))]
    return _per_position(ok, max(len(frames), len(own)))


def appearance_consistency(looks: Sequence[Appearance], reference: Appearance | None, num_steps: int,
                           attribute: str | None = None) -> float:
    """Share of frames whose appearance (or one attribute of it) equals the reference; reference None: the first
    frame's, which is then not scored. Missing or extra frames count as inconsistent."""
    first_free = reference is None
    if first_free:
        if not looks:
            return 0.0
        reference = looks[0]

    def same(a: Appearance) -> bool:
        return a == reference if attribute is None else getattr(a, attribute) == getattr(reference, attribute)

    scored = looks[1:] if first_free else looks
    return _per_position([same(a) for a in scored], max(num_steps, len(looks)) - int(first_free))


def score_program_tutorial(row: dict, frames: Sequence[np.ndarray], text: str | Sequence[str] | None
                           ) -> dict[str, float]:
    meta = row["meta"]
    states = [frozenset(Element.from_dict(d) for d in st) for st in meta["states"]]
    expected = [parse_step(s) for s in row["plan"]]
    plan = row["plan"] if text is None else (split_steps(text) if isinstance(text, str) else list(text))
    parsed = [parse_step(s) for s in plan]
    own = run_program(parsed)
    read = [perceive_appearance(f) for f in frames]
    looks, seen = [r[0] for r in read], [r[1] for r in read]
    reference = Appearance.from_dict(meta["appearance"]) if row.get("input_images") else None
    scores = {
        "instruction_following": state_following(states, seen),
        "frame_jaccard": state_jaccard(states, seen),
        "temporal_coherence": program_coherence(own, seen),
        "reference_faithfulness": reference_faithfulness(states[-1], seen),
        "reference_jaccard": reference_jaccard(states[-1], seen),
        "text_image_alignment": program_alignment(own, seen),
        "appearance_consistency": appearance_consistency(looks, reference, len(states)),
        "paper_consistency": appearance_consistency(looks, reference, len(states), "paper"),
        "offset_consistency": appearance_consistency(looks, reference, len(states), "offset"),
        **frame_quality(frames, seen, looks),
    }
    if any(meta["past"]):
        scores["past_step_following"] = state_following(states, seen, meta["past"])
    if text is not None:
        scores = {"plan_accuracy": float(bool(expected) and parsed == expected),
                  "plan_step_accuracy": _per_position([e == p for e, p in zip(expected, parsed)],
                                                      max(len(expected), len(parsed))), **scores}
    return scores


def score_compose(row: dict, images: Sequence[np.ndarray]) -> dict[str, float]:
    expected = frozenset(Element.from_dict(d) for d in row["meta"]["elements"])
    found = perceive(images[0]) if images else None
    return {"composition_accuracy": float(found == expected),
            "composition_jaccard": jaccard(expected, found) if found is not None else 0.0,
            **frame_quality(images[:1])}


def score_decompose(row: dict, images: Sequence[np.ndarray]) -> dict[str, float]:
    """Output k must show element k alone, centred; order is reading order of the composite."""
    expected = [Element.from_dict(d).moved_to("center") for d in row["meta"]["elements"]]
    denom = max(len(expected), len(images))
    seen = [perceive(img) for img in images]
    return {"decomposition_accuracy": _per_position([s == {e} for e, s in zip(expected, seen)], denom),
            "decomposition_jaccard": _per_position([jaccard({e}, s) for e, s in zip(expected, seen)], denom),
            **frame_quality(images, seen)}


def score_style(row: dict, images: Sequence[np.ndarray]) -> dict[str, float]:
    """style_accuracy is exact (shape, cell and swatch colour); the partial axes say which half went wrong."""
    expected = frozenset(Element.from_dict(d) for d in row["meta"]["elements"])
    found = perceive(images[0]) if images else frozenset()
    color = row["meta"]["color"]
    return {
        "style_accuracy": float(bool(images) and found == expected),
        "style_jaccard": jaccard(expected, found) if images else 0.0,
        "structure_jaccard": jaccard({(e.shape, e.cell) for e in expected}, {(e.shape, e.cell) for e in found}),
        "color_fraction": sum(e.color == color for e in found) / len(found) if found else 0.0,
        **frame_quality(images[:1]),
    }


def task_kind(row: dict) -> str:
    """Aggregation bucket: image-to-tutorial is reported apart from text-to-tutorial."""
    if row["task"] == "tutorial":
        return "image_tutorial" if row.get("input_images") else "tutorial"
    return row["task"]


def score_item(
    row: dict, images: Sequence[np.ndarray], text: str | Sequence[str] | None = None
) -> dict[str, float]:
    """Score one manifest row given the generated images (frames or outputs) and, for tutorials, plan text."""
    if row["task"] == "tutorial":
        return (score_program_tutorial if "states" in row["meta"] else score_tutorial)(row, images, text)
    scorers = {"compose": score_compose, "decompose": score_decompose, "style": score_style}
    if row["task"] not in scorers:
        raise ValueError(f"unknown task {row['task']!r}")
    return scorers[row["task"]](row, images)


def ground_truth(row: dict) -> tuple[list[str], str | None]:
    """(image paths, plan text) that a perfect model would produce for this row."""
    if row["task"] == "tutorial":
        return list(row["frames"]), format_plan(row["plan"])
    return list(row["targets"]), None


def _zero_scores(row: dict) -> dict[str, float]:
    dummy = score_item(row, [], "" if row["task"] == "tutorial" else None)
    return {axis: 0.0 for axis in dummy}


def judge_folder(
    manifest: str | Path, predictions: str | Path | None = None, scores_out: str | Path | None = None
) -> dict[str, dict[str, float]]:
    """Mean of every axis per task kind, plus `n` (items) and `missing` (items without a prediction, scored 0).

    predictions=None judges the manifest's own ground truth, which must come out 1.0 everywhere."""
    rows = read_jsonl(manifest_path(manifest))
    data_root = manifest_path(manifest).parent
    if predictions is None:
        pred_root, preds = data_root, {}
        for row in rows:
            paths, text = ground_truth(row)
            preds[row["id"]] = {"images": paths, "text": text}
    else:
        pred_root = Path(predictions) if Path(predictions).is_dir() else Path(predictions).parent
        pred_file = pred_root / PREDICTIONS_NAME if Path(predictions).is_dir() else Path(predictions)
        preds = {p["id"]: p for p in read_jsonl(pred_file)}
    per_item, sums, counts = (
        [],
        defaultdict(lambda: defaultdict(float)),
        defaultdict(lambda: defaultdict(int)),
    )
    for row in rows:
        pred = preds.get(row["id"])
        if pred is None:
            scores = _zero_scores(row)
            counts[task_kind(row)]["missing"] += 1
        else:
            images = [read_image(pred_root / p) for p in pred.get("images", [])]
            scores = score_item(row, images, pred.get("text"))
        kind = task_kind(row)
        counts[kind]["n"] += 1
        for axis, value in scores.items():
            sums[kind][axis] += value
            counts[kind][axis] += 1
        per_item.append({"id": row["id"], "kind": kind, **scores})
    if scores_out is not None:
        write_jsonl(Path(scores_out), per_item)
    summary: dict[str, dict[str, float]] = {}
    for kind in sorted(counts):
        summary[kind] = {axis: sums[kind][axis] / counts[kind][axis] for axis in sums[kind]}
        summary[kind]["n"] = counts[kind]["n"]
        summary[kind]["missing"] = counts[kind]["missing"]
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score shapes-world generations against a manifest.")
    parser.add_argument("--manifest", required=True, help="dataset folder (or its manifest.jsonl)")
    parser.add_argument(
        "--predictions", default=None, help="predictions folder; omit to score the ground truth"
    )
    parser.add_argument("--scores-out", default=None, help="optional per-item scores .jsonl")
    args = parser.parse_args(argv)
    print(json.dumps(judge_folder(args.manifest, args.predictions, args.scores_out), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
