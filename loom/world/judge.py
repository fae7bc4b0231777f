"""Programmatic judge for the shapes world: the paper's evaluation axes as exact scores in [0, 1].

Images are read back into element sets by `perceive`; plans by `parse_plan`. Every axis is 1.0 on ground truth
and each one is built to fall under a different corruption (see tests/world/test_world_judge.py):

- plan_accuracy: generated step k names the k-th element in reading order (partial credit per position).
- instruction_following: frame k shows exactly the elements of steps 1..k (Jaccard per frame).
- temporal_coherence: frame k keeps everything of frame k-1 and adds exactly one element (frame 0 is blank).
- reference_faithfulness: the last frame shows the reference picture (Jaccard with the full element set).
- text_image_alignment: the element that frame k adds is the one the model's own step k names.
- composition / decomposition / style accuracy: output pictures equal the target element sets.

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
from loom.world.perceive import perceive
from loom.world.shapes import Element
from loom.world.text import format_plan, parse_plan

PREDICTIONS_NAME = "predictions.jsonl"
Frames = Sequence[frozenset[Element]]


def jaccard(expected: set[Element] | frozenset[Element], found: set[Element] | frozenset[Element]) -> float:
    """|A & B| / |A | B|; two empty sets agree."""
    union = len(expected | found)
    return 1.0 if union == 0 else len(expected & found) / union


def plan_accuracy(expected: Sequence[Element], parsed: Sequence[Element | None]) -> float:
    denom = max(len(expected), len(parsed))
    return 0.0 if denom == 0 else sum(e == p for e, p in zip(expected, parsed)) / denom


def instruction_following(expected: Sequence[Element], frames: Frames) -> float:
    denom = max(len(expected), len(frames))
    if denom == 0:
        return 0.0
    return (
        sum(jaccard(set(expected[: k + 1]), frame) for k, frame in enumerate(frames[: len(expected)])) / denom
    )


def _added(frames: Frames, k: int) -> frozenset[Element]:
    return frames[k] - (frames[k - 1] if k > 0 else frozenset())


def temporal_coherence(frames: Frames) -> float:
    if not frames:
        return 0.0
    ok = [(k == 0 or frames[k - 1] <= frames[k]) and len(_added(frames, k)) == 1 for k in range(len(frames))]
    return sum(ok) / len(frames)


def reference_faithfulness(reference: set[Element] | frozenset[Element], frames: Frames) -> float:
    return jaccard(reference, frames[-1]) if frames else 0.0


def text_image_alignment(parsed: Sequence[Element | None], frames: Frames) -> float:
    denom = max(len(parsed), len(frames))
    if denom == 0:
        return 0.0
    return sum(p is not None and p in _added(frames, k) for k, p in enumerate(parsed[: len(frames)])) / denom


def score_tutorial(
    row: dict, frames: Sequence[np.ndarray], text: str | Sequence[str] | None
) -> dict[str, float]:
    """All tutorial axes. With text=None (frames rendered from the given plan) plan_accuracy is left out and
    alignment is checked against the ground-truth plan."""
    expected = [Element.from_dict(d) for d in row["meta"]["elements"]]  # reading order == plan order
    seen = [perceive(f) for f in frames]
    parsed = parse_plan(row["plan"] if text is None else text)
    scores = {
        "instruction_following": instruction_following(expected, seen),
        "temporal_coherence": temporal_coherence(seen),
        "reference_faithfulness": reference_faithfulness(set(expected), seen),
        "text_image_alignment": text_image_alignment(parsed, seen),
    }
    if text is not None:
        scores = {"plan_accuracy": plan_accuracy(expected, parsed), **scores}
    return scores


def score_compose(row: dict, images: Sequence[np.ndarray]) -> dict[str, float]:
    expected = {Element.from_dict(d) for d in row["meta"]["elements"]}
    return {"composition_accuracy": jaccard(expected, perceive(images[0])) if images else 0.0}


def score_decompose(row: dict, images: Sequence[np.ndarray]) -> dict[str, float]:
    """Output k must show element k alone, centred; order is reading order of the composite."""
    expected = [Element.from_dict(d).moved_to("center") for d in row["meta"]["elements"]]
    denom = max(len(expected), len(images))
    total = sum(jaccard({e}, perceive(img)) for e, img in zip(expected, images))
    return {"decomposition_accuracy": total / denom if denom else 0.0}


def score_style(row: dict, images: Sequence[np.ndarray]) -> dict[str, float]:
    """style_accuracy is exact (shape, cell and swatch colour); the two parts say which half went wrong."""
    expected = {Element.from_dict(d) for d in row["meta"]["elements"]}
    found = perceive(images[0]) if images else frozenset()
    color = row["meta"]["color"]
    return {
        "style_accuracy": jaccard(expected, found),
        "structure_accuracy": jaccard(
            {(e.shape, e.cell) for e in expected}, {(e.shape, e.cell) for e in found}
        ),
        "color_accuracy": sum(e.color == color for e in found) / len(found) if found else 0.0,
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
        return score_tutorial(row, images, text)
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
