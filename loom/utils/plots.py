"""Training curves with matplotlib: one panel per metric, real axes, log-scaled losses.

    from loom.utils.plots import plot_training_curves
    plot_training_curves("runs/x/metrics.jsonl", "runs/x/curves.png")                  # step on x
    plot_training_curves(rows, "curves.png", x="minutes")                               # rows: list of dicts

Rows are what `loom.train.metrics.MetricsSink` writes (step, loss, ce, mse, lr, …). CE and MSE get their own panels
(they differ by orders of magnitude and move at different times); a metric missing, null or non-finite in a row
is skipped for that row only, and a panel with no data says so instead of disappearing. x = "minutes" reads
`elapsed_seconds` / `seconds` / `time` from the rows (the first present).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from pathlib import Path

from .io import atomic_write_bytes

PANELS = (("loss", "total loss", True), ("ce", "text CE (plan)", True), ("mse", "flow MSE (frames)", True),
          ("lr", "learning rate", False))
_TIME_KEYS = ("elapsed_seconds", "seconds", "time")


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl (blank and torn lines — a run killed mid-write — are skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def _x(row: dict, x: str) -> float | None:
    if x == "minutes":
        for k in _TIME_KEYS:
            if isinstance(row.get(k), (int, float)):
                return row[k] / 60.0
        return None
    v = row.get(x)
    return float(v) if isinstance(v, (int, float)) else None


def series(rows: Iterable[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of `key` over `x`, keeping rows where both are finite numbers."""
    xs, ys = [], []
    for r in rows:
        xv, yv = _x(r, x), r.get(key)
        if xv is None or not isinstance(yv, (int, float)) or not math.isfinite(yv) or not math.isfinite(xv):
            continue
        xs.append(xv)
        ys.append(float(yv))
    return xs, ys


def training_curves_figure(rows: Iterable[dict] | str | Path, x: str = "step", panels: tuple = PANELS,
                           title: str | None = None, dpi: int = 110):
    """A matplotlib `Figure` with one panel per (key, label, log_y) in `panels` against `x` ("step", "minutes"
    or any numeric key). Log-scaled panels drop values ≤ 0 (a log axis cannot show them)."""
    from matplotlib.figure import Figure  # the object API: no pyplot global state, no display backend

    rows = read_metrics(rows) if isinstance(rows, (str, Path)) else list(rows)
    fig = Figure(figsize=(4.0 * len(panels), 3.2), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xlabel = {"step": "optimizer step", "minutes": "training minutes"}.get(x, x)
    for ax, (key, label, log_y) in zip(axes, panels):
        xs, ys = series(rows, key, x)
        if log_y:
            keep = [(a, b) for a, b in zip(xs, ys) if b > 0]
            xs, ys = [a for a, _ in keep], [b for _, b in keep]
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="major", alpha=0.35)
        if not ys:
            ax.text(0.5, 0.5, f"no {key} values", ha="center", va="center", transform=ax.transAxes, color="0.5")
            continue
        ax.plot(xs, ys, lw=1.4, marker="." if len(ys) < 40 else None, label=key)
        if log_y:
            ax.set_yscale("log")
            ax.grid(True, which="minor", alpha=0.15)
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_training_curves(rows: Iterable[dict] | str | Path, out: str | Path, x: str = "step",
                         panels: tuple = PANELS, title: str | None = None, dpi: int = 110) -> Path:
    """`training_curves_figure` saved as a PNG at `out` (atomically). Returns `out`."""
    buf = io.BytesIO()
    training_curves_figure(rows, x, panels, title, dpi).savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)
