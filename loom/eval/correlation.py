"""Human–judge agreement for Tables 5–6 (eval-protocols §6).

Per (model, criterion): x_i = judge score of case i (mean over valid repeats), y_i = mean human score over the
raters of case i, over the cases present in both. Pearson r with its two-sided p-value and n; r is undefined ("n/a",
never 0) when either vector is constant or n < 3. Also Spearman ρ and a pooled r across models.
"""

from __future__ import annotations

import math
from typing import Any

from scipy import stats

from loom.eval.aggregate import per_item_means
from loom.eval.human import Rating, case_means


def pearson(x: list[float], y: list[float]) -> dict[str, Any]:
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    if n < 3 or len(set(x)) == 1 or len(set(y)) == 1:
        why = "n < 3" if n < 3 else "constant vector"
        return {"r": None, "p": None, "n": n, "note": f"undefined ({why})"}
    res = stats.pearsonr(x, y)
    return {"r": float(res.statistic), "p": float(res.pvalue), "n": n}


def spearman(x: list[float], y: list[float]) -> dict[str, Any]:
    n = len(x)
    if n < 3 or len(set(x)) == 1 or len(set(y)) == 1:
        return {"rho": None, "p": None, "n": n}
    res = stats.spearmanr(x, y)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def critical_r(n: int, alpha: float = 0.05) -> float:
    """Smallest |r| with two-sided p < alpha at sample size n (t-test on n − 2 degrees of freedom)."""
    t = stats.t.ppf(1 - alpha / 2, n - 2)
    return float(t / math.sqrt(n - 2 + t * t))


def paired(
    judge_records: list[dict[str, Any]], ratings: list[Rating], model: str, criterion: str
) -> tuple[list[str], list[float], list[float]]:
    j = per_item_means(judge_records, criterion)
    h = case_means(ratings, model, criterion)
    cases = sorted(set(j) & set(h))
    return cases, [j[c] for c in cases], [h[c] for c in cases]


def correlate(
    judge_by_model: dict[str, list[dict[str, Any]]],
    ratings: list[Rating],
    criteria: tuple[str, ...],
    skip: dict[str, set[str]] | None = None,
) -> dict[str, Any]:
    """`skip[model]` lists criteria reported as '—' (no paired text)."""
    skip = skip or {}
    table: dict[str, dict[str, Any]] = {}
    pooled: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in criteria}
    for model, recs in judge_by_model.items():
        table[model] = {}
        for c in criteria:
            if c in skip.get(model, set()):
                table[model][c] = None
                continue
            cases, x, y = paired(recs, ratings, model, c)
            table[model][c] = {**pearson(x, y), "spearman": spearman(x, y), "cases": cases}
            pooled[c][0].extend(x)
            pooled[c][1].extend(y)
    return {"per_model": table, "pooled": {c: pearson(*pooled[c]) for c in criteria}}
