"""The shapes demo's `report.html` (template `demo_report.html.j2`): headline figures, every judge axis, training
curves (matplotlib, `loom.utils.plots`), and per held-out item the generated storyboard beside the ground truth with
the model's plan. Images are embedded, so the report is one self-contained file."""

from __future__ import annotations

from pathlib import Path

from loom.infer.storyboard import image_view
from loom.utils.io import atomic_write_text
from loom.utils.plots import plot_training_curves
from loom.utils.templates import data_url, render
from loom.world.manifest import read_jsonl
from loom.world.text import format_plan

AXES = ("plan_accuracy", "plan_step_accuracy", "instruction_following", "frame_jaccard", "temporal_coherence",
        "reference_faithfulness", "text_image_alignment", "appearance_consistency", "past_step_following",
        "composition_accuracy", "style_accuracy",
        "clean_frame_rate", "clean_pixel_fraction")


def _embedded(path: Path) -> dict | None:
    """An image view whose src is the file's data: URL (sizes read from the file)."""
    v = image_view(path.parent, path.name, lo=72, hi=96)
    if v is not None and v["exists"]:
        v["src"] = data_url(path)
    return v


def _section(task: str, manifest: Path, pdir: Path) -> dict | None:
    if not (pdir / "predictions.jsonl").exists() or not (pdir / "scores.jsonl").exists():
        return None
    preds = {p["id"]: p for p in read_jsonl(pdir / "predictions.jsonl")}
    scores = {s["id"]: s for s in read_jsonl(pdir / "scores.jsonl")}
    items = []
    for row in read_jsonl(manifest):
        if row["id"] not in scores:
            continue
        p = preds.get(row["id"], {})
        is_tutorial = row["task"] == "tutorial"
        items.append({
            "id": row["id"], "prompt": row["prompt"],
            "inputs": [_embedded(manifest.parent / rel) for rel in row.get("input_images", [])],
            "generated": [_embedded(Path(x)) for x in p.get("images", [])],
            "truth": [_embedded(manifest.parent / rel) for rel in (row.get("frames") or row.get("targets") or [])],
            "plan": (p.get("text") or "") if is_tutorial else None,
            "gt_plan": format_plan(row["plan"]) if is_tutorial else "",
            "scores": [(k, v) for k, v in scores[row["id"]].items() if k not in ("id", "kind")],
        })
    return {"task": task, "items": items}


def write_report(out: Path, metrics: dict, test: dict[str, Path], train_rows: list[dict]) -> Path:
    curves = plot_training_curves(train_rows, out / "training_curves.png", title="shapes demo") if train_rows else None
    scores = metrics["scores"]
    axes = [a for a in AXES if any(a in s for s in scores.values())]
    r = {
        "steps": metrics["train"]["steps"], "train_minutes": metrics["seconds"].get("train", 0.0) / 60,
        "config": metrics["train"]["config"], "model": metrics["model"],
        "generation_config": str(out / "generation.yaml"),
        "plan": metrics["headline"]["plan_accuracy"], "follow": metrics["headline"]["instruction_following"],
        "plan_min": metrics["thresholds"]["plan_accuracy"],
        "follow_min": metrics["thresholds"]["instruction_following"], "passed": metrics["passed"],
        "axes": axes, "table": [(k, {"n": v.get("n", 0), **v}) for k, v in scores.items()], "curves": curves,
        "sections": [s for task, m in test.items() if (s := _section(task, m, out / "judged" / task))],
    }
    path = out / "report.html"
    atomic_write_text(path, render("demo_report.html.j2", r=r))
    return path
