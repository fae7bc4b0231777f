"""The shapes demo's `report.html`: headline figures, every judge axis, training curves, and per held-out item
the generated storyboard next to the ground truth (with the model's plan)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from PIL import Image

from loom.world.manifest import read_jsonl
from loom.world.text import format_plan


def loss_curve_png(rows: list[dict], path: Path, width: int = 640, height: int = 300) -> Path:
    """Loss / CE / MSE against optimizer steps (log-scaled y)."""
    from PIL import ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 12, 14, height - 34
    d.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    xs = [r["step"] for r in rows]
    series = [(k, [r.get(k) or 0.0 for r in rows], c) for k, c in
              (("loss", (30, 30, 30)), ("ce", (40, 80, 220)), ("mse", (220, 40, 40)))]
    vals = [v for _, ys, _ in series for v in ys if v > 0]
    if xs and vals:
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
        hi = hi if hi > lo else lo + 1
        x_max = max(xs) or 1

        def pt(x: float, y: float) -> tuple[float, float]:
            yy = math.log10(max(y, 10**lo))
            return left + (right - left) * x / x_max, bottom - (bottom - top) * (yy - lo) / (hi - lo)

        for e in range(math.floor(lo), math.ceil(hi) + 1):
            for m in (1, 2, 5):
                v = m * 10**e
                if lo <= math.log10(v) <= hi:
                    _, y = pt(0, v)
                    d.line([left, y, right, y], fill=(235, 235, 235))
                    d.text((4, y - 6), f"{v:g}", fill=(90, 90, 90))
        for k in range(5):
            x = x_max * k / 4
            px, _ = pt(x, 10**lo)
            d.text((px - 10, bottom + 4), f"{x:.0f}", fill=(90, 90, 90))
        d.text(((left + right) // 2 - 40, bottom + 18), "optimizer step", fill=(90, 90, 90))
        for i, (name, ys, color) in enumerate(series):
            pts = [pt(x, y) for x, y in zip(xs, ys) if y > 0]
            if len(pts) > 1:
                d.line(pts, fill=color, width=2)
            d.text((right - 70, top + 4 + 14 * i), name, fill=color)
    img.save(path)
    return path


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _img(path: Path | None, title: str = "") -> str:
    if path is None or not path.exists():
        return '<span class="missing">–</span>'
    return f'<img src="{_data_url(path)}" title="{title}">'


def _esc(s: str) -> str:
    return html.escape(s).replace("\n", "<br>")


def write_report(out: Path, metrics: dict, test: dict[str, Path], train_rows: list[dict]) -> Path:
    curve = loss_curve_png(train_rows, out / "loss_curve.png")
    parts = ["<!doctype html><meta charset='utf-8'><title>Loom shapes-world demo</title><style>",
             "body{font-family:sans-serif;margin:20px;max-width:1200px} img{width:72px;height:72px;"
             "image-rendering:pixelated;border:1px solid #ccc;margin:1px} td,th{padding:4px 8px;vertical-align:top;"
             "border-bottom:1px solid #eee;font-size:13px} .plan{font-family:monospace;font-size:12px;"
             "white-space:nowrap} .ok{color:#186a3b} .bad{color:#a93226} .missing{color:#aaa}"
             " table{border-collapse:collapse}</style>",
             "<h1>Loom on the shapes world (tiny, CPU)</h1>"]
    h, th = metrics["headline"], metrics["thresholds"]
    verdict = "ok" if metrics["passed"] else "bad"
    parts.append(f"<p>Training {metrics['train']['steps']} steps ({metrics['seconds'].get('train', 0) / 60:.2f} min);"
                 f" held-out text→tutorials, exact: plan accuracy <b>{h['plan_accuracy']:.3f}</b> "
                 f"(≥ {th['plan_accuracy']}), frame instruction following <b>{h['instruction_following']:.3f}</b> "
                 f"(≥ {th['instruction_following']}) → <b class='{verdict}'>"
                 f"{'reached' if metrics['passed'] else 'not reached'}</b>.</p>")
    parts.append(f"<img src='{_data_url(curve)}' style='width:640px;height:300px;image-rendering:auto'>")
    parts.append("<h2>Scores (mean over held-out items)</h2><table><tr><th>task</th><th>axis</th><th>score</th></tr>")
    for kind, axes in metrics["scores"].items():
        for axis, v in axes.items():
            if axis not in ("n", "missing"):
                parts.append(f"<tr><td>{kind}</td><td>{axis}</td><td>{v:.3f}</td></tr>")
        parts.append(f"<tr><td>{kind}</td><td>n</td><td>{axes.get('n', 0)}</td></tr>")
    parts.append("</table>")
    for task, manifest in test.items():
        pdir = out / "judged" / task
        if not (pdir / "predictions.jsonl").exists():
            continue
        preds = {p["id"]: p for p in read_jsonl(pdir / "predictions.jsonl")}
        scores = {s["id"]: s for s in read_jsonl(pdir / "scores.jsonl")} if (pdir / "scores.jsonl").exists() else {}
        parts.append(f"<h2>{task}</h2><table>")
        for row in read_jsonl(manifest):
            if row["id"] not in scores:
                continue
            p = preds.get(row["id"], {})
            gen = [Path(x) for x in p.get("images", [])]
            truth = [manifest.parent / rel for rel in (row.get("frames") or row.get("targets") or [])]
            inputs = [manifest.parent / rel for rel in row.get("input_images", [])]
            sc = {k: v for k, v in scores.get(row["id"], {}).items() if k not in ("id", "kind")}
            sc_html = "<br>".join(f"{k}: {v:.2f}" for k, v in sc.items())
            plan_html = ""
            if row["task"] == "tutorial":
                plan_html = (f"<div class='plan'><b>generated</b><br>{_esc(p.get('text') or '(no plan)')}"
                             f"<br><b>ground truth</b><br>{_esc(format_plan(row['plan']))}</div>")
            n = max(len(gen), len(truth))
            gen_row = "".join(_img(gen[i] if i < len(gen) else None, "generated") for i in range(n))
            gt_row = "".join(_img(truth[i] if i < len(truth) else None, "ground truth") for i in range(n))
            parts.append(f"<tr><td><b>{row['id']}</b><br>{_esc(row['prompt'])}<br>"
                         f"{''.join(_img(x, 'input') for x in inputs)}</td>"
                         f"<td>generated<br>{gen_row}<br>ground truth<br>{gt_row}</td><td>{plan_html}</td>"
                         f"<td>{sc_html}</td></tr>")
        parts.append("</table>")
    path = out / "report.html"
    from loom.utils.io import atomic_write_text

    atomic_write_text(path, "\n".join(parts))
    return path
