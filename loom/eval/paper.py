"""The Loom paper's published numbers (Tables 1–6) and the derived claims of its §4.2 / §4.4 text.

Printed next to our rows by `tables.py`; the claim functions make explicit which convention each sentence of the
paper uses (eval-protocols §0), and the unit tests recompute them from these numbers.
"""

from __future__ import annotations

from loom.eval.omnicontext import TABLE3_TASKS

Cell = tuple[float | None, float | None]  # (GPT-4o, human); None = "—"

# Table 1: text-to-interleaved (TC, IF, NC as (G, H)), CLIP ViT-L/14.
TABLE1: dict[str, dict[str, Cell | float]] = {
    "Doubao": {"TC": (4.35, 4.10), "IF": (4.25, 4.05), "NC": (4.95, 4.65), "CLIP": 0.250},
    "Bagel": {"TC": (1.40, 1.25), "IF": (1.55, 1.05), "NC": (None, None), "CLIP": 0.217},
    "Janus-Pro": {"TC": (1.05, 1.10), "IF": (1.10, 1.00), "NC": (None, None), "CLIP": 0.105},
    "Anole": {"TC": (1.55, 1.05), "IF": (1.35, 1.05), "NC": (1.95, 1.35), "CLIP": 0.219},
    "Loom (paper)": {"TC": (4.25, 4.15), "IF": (3.75, 3.35), "NC": (4.70, 4.30), "CLIP": 0.269},
}

# Table 2: image-to-interleaved painting tutorials (TC, RF, SA as (G, H)).
TABLE2: dict[str, dict[str, Cell]] = {
    "Doubao": {"TC": (2.05, 2.15), "RF": (2.65, 2.65), "SA": (3.55, 3.85)},
    "Bagel": {"TC": (1.25, 1.00), "RF": (1.15, 1.55), "SA": (None, None)},
    "Loom (paper)": {"TC": (3.15, 3.65), "RF": (3.85, 4.15), "SA": (3.15, 2.95)},
}

# Table 3: OmniContext per-task overall scores (MULTIPLE ×3, SCENE ×3) and the printed Avg†.
TABLE3: dict[str, tuple[list[float], float]] = {
    "Gemini-2.0-flash": ([2.91, 2.16, 3.80, 3.02, 3.89, 2.92], 3.12),
    "GPT-4o": ([9.07, 8.95, 8.54, 8.90, 8.44, 8.60], 8.75),
    "UNO": ([2.54, 6.51, 4.39, 2.06, 4.33, 4.37], 4.03),
    "Bagel": ([5.17, 6.64, 6.24, 4.07, 5.71, 5.47], 5.55),
    "OmniGen": ([5.65, 5.44, 4.68, 3.59, 4.32, 5.12], 4.8),
    "OmniGen2": ([7.11, 7.13, 7.45, 6.38, 6.71, 7.04], 6.97),
    "Echo-4o": ([8.07, 7.50, 8.29, 8.62, 8.00, 8.08], 8.09),
    "Loom (paper)": ([8.09, 7.62, 8.25, 8.67, 7.95, 8.23], 8.13),
}
TABLE3_COLUMNS = dict(
    zip(
        TABLE3_TASKS,
        (
            "MULTIPLE Char.",
            "MULTIPLE Object",
            "MULTIPLE Char.+Obj.",
            "SCENE Char.",
            "SCENE Object",
            "SCENE Char.+Obj.",
        ),
    )
)

# Table 4: ablation, GPT-4o only (TC, RF, SA).
TABLE4: dict[str, dict[str, float | None]] = {
    "Baseline": {"TC": 1.25, "RF": 1.15, "SA": None},
    "w/o Time Embedding": {"TC": 2.55, "RF": 2.35, "SA": 2.85},
    "w/o Stepwise Prompt": {"TC": 2.15, "RF": 2.95, "SA": 2.35},
    "w/o Reference Sampling": {"TC": 1.45, "RF": 1.25, "SA": 2.05},
    "Full": {"TC": 3.15, "RF": 3.85, "SA": 3.15},
}

# Tables 5–6: Pearson r between human and GPT-4o scores per model × criterion.
TABLE5: dict[str, dict[str, float | None]] = {
    "Doubao": {"TC": 0.1048, "IF": 0.1325, "NC": 0.3126},
    "Bagel": {"TC": 0.2357, "IF": 0.2536, "NC": None},
    "Janus-Pro": {"TC": -0.0765, "IF": 0.0526, "NC": None},
    "Anole": {"TC": 0.2536, "IF": 0.1683, "NC": 0.1683},
    "Loom (paper)": {"TC": 0.2425, "IF": 0.0605, "NC": 0.2857},
}
TABLE6: dict[str, dict[str, float | None]] = {
    "Doubao": {"TC": 0.0964, "RF": 0.0989, "SA": 0.183},
    "Bagel": {"TC": 0.1325, "RF": 0.380, "SA": None},
    "Loom (paper)": {"TC": 0.3083, "RF": 0.1765, "SA": 0.0964},
}


def g(table: dict, model: str, crit: str) -> float:
    v = table[model][crit][0]
    assert v is not None
    return v


def mean_g(table: dict, model: str, crits: tuple[str, ...]) -> float:
    return sum(g(table, model, c) for c in crits) / len(crits)


def mean_gh(table: dict, model: str, crits: tuple[str, ...]) -> float:
    vals = [v for c in crits for v in table[model][c]]
    return sum(vals) / len(vals)


def gain_over_scale(a: float, b: float, scale: float = 5.0) -> float:
    """The paper's "% improvement" in most places: absolute gain as a share of the 5-point scale."""
    return (a - b) / scale


def ratio_gain(a: float, b: float) -> float:
    """The other convention (image setting, +62% / +51%): a / b − 1."""
    return a / b - 1.0


def avg_dagger(values: list[float]) -> float:
    """Table 3's Avg†: unweighted mean of the six MULTIPLE + SCENE columns."""
    return sum(values) / len(values)
