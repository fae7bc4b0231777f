"""Training curves: real matplotlib axes, log-scaled losses, CE and MSE on separate panels, bad rows skipped."""

from __future__ import annotations

import json
import math

from PIL import Image

from loom.utils.plots import plot_training_curves, read_metrics, series, training_curves_figure


def _metrics(path):
    rows = [{"step": s, "loss": 3 * math.exp(-s / 50) + 0.1, "ce": 2 * math.exp(-s / 30) + 0.01,
             "mse": 0.5 * math.exp(-s / 90) + 0.05, "lr": 1e-4 * min(1, s / 20), "elapsed_seconds": 6.0 * s}
            for s in range(10, 201, 10)]
    rows[3]["ce"] = None  # no text loss in that window (a t2i-only batch)
    rows[5]["mse"] = float("nan")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 210, "loss": 0.1')  # torn last line
    return rows


def test_panels_axes_and_values(tmp_path):
    rows = _metrics(tmp_path / "metrics.jsonl")
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == len(rows)
    fig = training_curves_figure(tmp_path / "metrics.jsonl")
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["total loss", "text CE (plan)", "flow MSE (frames)", "learning rate"]
    assert [a.get_yscale() for a in axes] == ["log", "log", "log", "linear"]
    assert all(a.get_xlabel() == "optimizer step" for a in axes)
    ce_x, ce_y = axes[1].lines[0].get_data()
    assert len(ce_x) == len(rows) - 1 and 40 not in list(ce_x)  # the null CE row is skipped, only for CE
    assert list(axes[2].lines[0].get_xdata()) == [r["step"] for r in rows if r["step"] != 60]  # NaN MSE skipped
    assert list(axes[0].lines[0].get_ydata()) == [r["loss"] for r in rows]
    assert len(axes[0].get_yticks()) > 2  # real tick marks, not one label
    mins, _ = series(rows, "loss", "minutes")
    assert mins[0] == 1.0  # 60 s


def test_png_written_and_missing_metric_panel(tmp_path):
    rows = [{"step": 1, "loss": 1.0, "ce": 0.5}, {"step": 2, "loss": 0.5, "ce": 0.4}]
    out = plot_training_curves(rows, tmp_path / "sub" / "curves.png", x="minutes", title="run")
    im = Image.open(out)
    assert im.format == "PNG" and im.width > 800 and im.height > 250
    fig = training_curves_figure(rows)
    assert [t.get_text() for t in fig.axes[2].texts] == ["no mse values"]  # said, not silently dropped
