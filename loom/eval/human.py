"""Human ratings (the paper's Fig. 8 questionnaire): CSV import, two-level means, Krippendorff's α.

CSV, long format:  model,case_id,rater,criterion,score        (criterion: TC, IF, NC, RF or SA)
CSV, wide format:  model,case_id,rater,TC,IF,NC               (one column per criterion; blank = not rated)
Scores are integers 1–5. Model names must equal the labels given to `--run LABEL=DIR`.

Aggregation (eval-protocols §2.3 [our choice]): per (model, case, criterion) the mean over the raters who saw the
case, then the mean over cases, so cases with more raters do not dominate.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.eval.fsio import EvalInputError

CRITERION_ALIASES = {
    "tc": "TC",
    "coh": "TC",
    "coherence": "TC",
    "temporal_coherence": "TC",
    "if": "IF",
    "ins": "IF",
    "instruction_following": "IF",
    "nc": "NC",
    "con": "NC",
    "narrative_consistency": "NC",
    "rf": "RF",
    "ref": "RF",
    "reference_faithfulness": "RF",
    "sa": "SA",
    "ali": "SA",
    "semantic_alignment": "SA",
}


@dataclass(frozen=True)
class Rating:
    model: str
    case_id: str
    rater: str
    criterion: str
    score: int


def _criterion(name: str, where: str) -> str:
    c = CRITERION_ALIASES.get(name.strip().lower())
    if c is None:
        raise EvalInputError(f"{where}: unknown criterion {name!r}; use one of TC, IF, NC, RF, SA")
    return c


def _score(v: str, where: str, low: int, high: int) -> int:
    try:
        s = int(v.strip())
    except ValueError:
        raise EvalInputError(f"{where}: score {v!r} is not an integer {low}-{high}; fix the cell") from None
    if not low <= s <= high:
        raise EvalInputError(f"{where}: score {s} is outside {low}-{high}; fix the cell")
    return s


def load_human_csv(path: Path, low: int = 1, high: int = 5) -> list[Rating]:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"human ratings file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("model", "case_id", "rater") if c not in cols]
        if missing:
            raise EvalInputError(
                f"{path}: missing column(s) {missing}; header must start with model,case_id,rater "
                "followed by either criterion,score (long) or one column per criterion (wide)"
            )
        long = "criterion" in cols and "score" in cols
        wide_cols = [c for c in cols if c not in ("model", "case_id", "rater")]
        if not long:
            for c in wide_cols:
                _criterion(c, f"{path} header")
        out: list[Rating] = []
        seen: set[tuple[str, str, str, str]] = set()
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "") for k, v in row.items() if k is not None}
            where = f"{path} line {lineno}"
            base = (row["model"].strip(), row["case_id"].strip(), row["rater"].strip())
            if not all(base):
                raise EvalInputError(f"{where}: model, case_id and rater must all be non-empty")
            cells = (
                [(row["criterion"], row["score"])]
                if long
                else [(c, row[c]) for c in wide_cols if row[c].strip()]
            )
            for crit, val in cells:
                r = Rating(*base, _criterion(crit, where), _score(val, where, low, high))
                key = (r.model, r.case_id, r.rater, r.criterion)
                if key in seen:
                    raise EvalInputError(
                        f"{where}: rater {r.rater} rated {r.model}/{r.case_id}/{r.criterion} twice"
                    )
                seen.add(key)
                out.append(r)
    if not out:
        raise EvalInputError(f"{path}: no ratings")
    return out


def case_means(ratings: list[Rating], model: str, criterion: str) -> dict[str, float]:
    acc: dict[str, list[int]] = defaultdict(list)
    for r in ratings:
        if r.model == model and r.criterion == criterion:
            acc[r.case_id].append(r.score)
    return {k: sum(v) / len(v) for k, v in sorted(acc.items())}


def model_summary(ratings: list[Rating], model: str, criterion: str) -> dict[str, Any]:
    cm = case_means(ratings, model, criterion)
    raters = defaultdict(set)
    for r in ratings:
        if r.model == model and r.criterion == criterion:
            raters[r.case_id].add(r.rater)
    return {
        "mean": sum(cm.values()) / len(cm) if cm else None,
        "n_cases": len(cm),
        "raters_per_case": (sum(len(v) for v in raters.values()) / len(raters)) if raters else None,
    }


def krippendorff_alpha_interval(ratings: list[Rating], criterion: str) -> float | None:
    """Interval-metric α between raters; units are (model, case) pairs; units with one rating are unpairable.

    α = 1 − D_o / D_e with D_o = (1/n) Σ_u Σ_{i≠j∈u} (v_i−v_j)² / (m_u − 1), D_e = Σ_{i≠j} (v_i−v_j)² / (n(n−1)),
    n = number of pairable values. None when undefined (no pairable unit, or no variation at all)."""
    units: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in ratings:
        if r.criterion == criterion:
            units[(r.model, r.case_id)].append(r.score)
    pairable = [v for v in units.values() if len(v) >= 2]
    values = [x for v in pairable for x in v]
    n = len(values)
    if n < 2:
        return None
    d_o = sum(sum((a - b) ** 2 for a in v for b in v) / (len(v) - 1) for v in pairable) / n
    d_e = sum((a - b) ** 2 for a in values for b in values) / (n * (n - 1))
    return None if d_e == 0 else 1.0 - d_o / d_e
