"""Pure aggregation of judge records into table cells (no I/O, so it is checked by hand in the tests).

Record shape (one per item × repeat): {"item_id", "repeat", "valid", "scores": {criterion: int} | None}.
- Per item: mean over its valid repeats.
- Per model and criterion: mean over items with ≥ 1 valid repeat; `n_valid` is that item count.
- `std_over_repeats`: sample std (ddof=1) of the per-repeat model means, i.e. how much the table cell moves
  between judge runs at temperature 0 (API nondeterminism); None with fewer than two repeats.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class CriterionStats:
    mean: float | None
    n_valid: int
    std_over_repeats: float | None
    per_item: dict[str, float]


def per_item_means(
    records: Iterable[dict[str, Any]], criterion: str, subset: set[str] | None = None
) -> dict[str, float]:
    acc: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get("valid") and (subset is None or r["item_id"] in subset):
            acc[r["item_id"]].append(float(r["scores"][criterion]))
    return {k: sum(v) / len(v) for k, v in sorted(acc.items())}


def criterion_stats(
    records: list[dict[str, Any]], criterion: str, subset: set[str] | None = None
) -> CriterionStats:
    items = per_item_means(records, criterion, subset)
    mean = sum(items.values()) / len(items) if items else None
    by_rep: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.get("valid") and (subset is None or r["item_id"] in subset):
            by_rep[int(r["repeat"])].append(float(r["scores"][criterion]))
    rep_means = [sum(v) / len(v) for _, v in sorted(by_rep.items())]
    std = statistics.stdev(rep_means) if len(rep_means) >= 2 else None
    return CriterionStats(mean, len(items), std, items)


def summarize(
    records: list[dict[str, Any]], criteria: Iterable[str], subset: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    out = {}
    for c in criteria:
        s = criterion_stats(records, c, subset)
        out[c] = {"mean": s.mean, "n_valid": s.n_valid, "std_over_repeats": s.std_over_repeats}
    return out


def mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
