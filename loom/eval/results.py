"""The generation-output contract that every scorer reads.

A *run folder* holds one model's outputs on one benchmark:

    RUN/run.json                      written by the harness: bench, model label, generator, seed
    RUN/items/<item_id>/result.json   prompt, plan (list[str]), steps [{index, text, image}], + harness fields
    RUN/items/<item_id>/frame_01.png  step images (paths in result.json are relative to the item folder)
    RUN/items/<item_id>/inputs/       conditioning images copied by the harness (reference panel, OmniContext refs)
    RUN/scores/                       everything the scorers write

`text_source` is "model" when the model wrote the step text, "given" when the step prompts were supplied to it
(the paper's adapted Bagel / Janus-Pro baselines); criteria that judge model-written text (NC, SA) are then "—".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loom.eval.fsio import EvalInputError, read_json


@dataclass
class Step:
    index: int
    text: str
    image: Path  # absolute


@dataclass
class TutorialResult:
    item_id: str
    prompt: str
    plan: list[str]
    steps: list[Step]
    text_source: str = "model"
    inputs: list[Path] = field(default_factory=list)  # absolute paths of conditioning images
    raw: dict[str, Any] = field(default_factory=dict)


def parse_result(d: dict[str, Any], item_dir: Path, where: str) -> TutorialResult:
    """Validate one result.json dict. `where` names the file in error messages."""
    for k in ("prompt", "steps"):
        if k not in d:
            raise EvalInputError(
                f"{where}: missing key {k!r}; a result.json needs prompt, plan and steps "
                "({index, text, image}) as written by `loom generate tutorial`"
            )
    if not isinstance(d["steps"], list) or not d["steps"]:
        raise EvalInputError(f"{where}: 'steps' must be a non-empty list")
    steps = []
    for i, s in enumerate(d["steps"]):
        if not isinstance(s, dict) or "image" not in s:
            raise EvalInputError(f"{where}: steps[{i}] needs at least an 'image' (and 'text', 'index')")
        img = (item_dir / s["image"]).resolve()
        if not img.is_file():
            raise EvalInputError(
                f"{where}: steps[{i}].image {s['image']!r} does not exist ({img}); "
                "regenerate the item (delete its folder and rerun `generate`)"
            )
        steps.append(Step(int(s.get("index", i + 1)), str(s.get("text") or ""), img))
    text_source = d.get("text_source", "model")
    if text_source not in ("model", "given"):
        raise EvalInputError(f"{where}: text_source must be 'model' or 'given', got {text_source!r}")
    inputs = [(item_dir / p).resolve() for p in d.get("inputs", [])]
    return TutorialResult(
        str(d.get("item_id", item_dir.name)),
        str(d["prompt"]),
        list(d.get("plan") or []),
        steps,
        text_source,
        inputs,
        d,
    )


def load_run(run_dir: Path) -> list[TutorialResult]:
    """All finished items of a run, sorted by item id. Unfinished items (no result.json) are skipped."""
    items_dir = Path(run_dir) / "items"
    if not items_dir.is_dir():
        raise EvalInputError(
            f"{run_dir} has no items/ folder; point at a run folder written by "
            "`python -m loom.eval generate` (or see results.py for the layout)"
        )
    out = []
    for item_dir in sorted(p for p in items_dir.iterdir() if p.is_dir()):
        rj = item_dir / "result.json"
        if rj.is_file():
            out.append(parse_result(read_json(rj, "result file"), item_dir, str(rj)))
    if not out:
        raise EvalInputError(f"{items_dir} contains no finished items (no */result.json)")
    return out


def run_text_source(results: list[TutorialResult]) -> str:
    """'given' only when every item's text was supplied to the model, so a table can print '—'."""
    return "given" if all(r.text_source == "given" for r in results) else "model"
