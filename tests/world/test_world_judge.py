import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from loom.world.generate import write_dataset
from loom.world.judge import judge_folder, score_item
from loom.world.manifest import read_jsonl, write_png
from loom.world.shapes import Element, render
from loom.world.text import format_plan, step_text

E = [
    Element("red", "circle", "top left"),
    Element("blue", "square", "top right"),
    Element("green", "triangle", "center"),
    Element("yellow", "square", "bottom"),
]
ROW = {
    "id": "t0",
    "task": "tutorial",
    "prompt": "unused",
    "plan": [step_text(e) for e in E],
    "frames": [],
    "input_images": [],
    "meta": {"elements": [e.to_dict() for e in E]},
}
PLAN = format_plan(ROW["plan"])
AXES = (
    "plan_accuracy",
    "instruction_following",
    "temporal_coherence",
    "reference_faithfulness",
    "text_image_alignment",
)


def _soften(img: np.ndarray, seed: int) -> np.ndarray:
    out = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float64)
    return np.clip(out + np.random.default_rng(seed).normal(0, 15, out.shape), 0, 255).astype(np.uint8)


def _frames(sets: list[list[Element]], size: int) -> list[np.ndarray]:
    return [_soften(render(s, size), seed) for seed, s in enumerate(sets)]


def _scores(sets: list[list[Element]], text: str, size: int) -> tuple[float, ...]:
    scores = score_item(ROW, _frames(sets, size), text)
    return tuple(round(scores[a], 4) for a in AXES)


GOOD = [E[:1], E[:2], E[:3], E[:4]]
RECOLOURED = Element("purple", "circle", "top left")
RESHAPED = Element("yellow", "triangle", "bottom")
# (frame sets, plan text) -> expected (plan, instruction, temporal, reference, alignment); worked out by hand.
CASES = {
    "ground truth": (GOOD, PLAN, (1.0, 1.0, 1.0, 1.0, 1.0)),
    "shape removed from last frame": ([E[:1], E[:2], E[:3], E[:3]], PLAN, (1.0, 0.9375, 0.75, 0.75, 0.75)),
    "wrong colour of an old shape": (
        [E[:1], E[:2], E[:3], [RECOLOURED, *E[1:]]],
        PLAN,
        (1.0, 0.9, 0.75, 0.6, 1.0),
    ),
    "wrong shape of the new element": (
        [E[:1], E[:2], E[:3], [*E[:3], RESHAPED]],
        PLAN,
        (1.0, 0.9, 1.0, 0.6, 0.75),
    ),
    "frames 2 and 3 swapped": ([E[:1], E[:3], E[:2], E[:4]], PLAN, (1.0, 0.8333, 0.25, 1.0, 0.75)),
    "last frame missing": ([E[:1], E[:2], E[:3]], PLAN, (1.0, 0.75, 1.0, 0.75, 0.75)),
    "plan steps 2 and 3 swapped": (
        GOOD,
        format_plan([ROW["plan"][i] for i in (0, 2, 1, 3)]),
        (0.5, 1.0, 1.0, 1.0, 0.5),
    ),
    "plan step with wrong colour": (
        GOOD,
        PLAN.replace("red circle", "orange circle"),
        (0.75, 1.0, 1.0, 1.0, 0.75),
    ),
    "plan with an extra step": (
        GOOD,
        PLAN + "\nStep 5: Draw a red square in the left.",
        (0.8, 1.0, 1.0, 1.0, 0.8),
    ),
    "no plan at all": (GOOD, "", (0.0, 1.0, 1.0, 1.0, 0.0)),
}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("case", list(CASES))
def test_tutorial_axes_under_corruption(case: str, size: int) -> None:
    sets, text, expected = CASES[case]
    assert _scores(sets, text, size) == expected


def test_render_only_scoring_uses_the_ground_truth_plan() -> None:
    scores = score_item(ROW, _frames(GOOD, 32), None)
    assert "plan_accuracy" not in scores and scores["text_image_alignment"] == 1.0
    swapped = score_item(ROW, _frames([E[:1], E[:3], E[:2], E[:4]], 32), None)
    assert swapped["text_image_alignment"] == 0.75


def _row(task: str, elements: list[Element], **meta: str) -> dict:
    return {"id": "x", "task": task, "meta": {"elements": [e.to_dict() for e in elements], **meta}}


@pytest.mark.parametrize("size", [32, 64])
def test_compose_decompose_style_axes(size: int) -> None:
    a, b = Element("red", "circle", "top left"), Element("blue", "triangle", "bottom right")
    swapped = [a.moved_to(b.cell), b.moved_to(a.cell)]
    compose = _row("compose", [a, b])
    assert score_item(compose, [render([a, b], size)]) == {"composition_accuracy": 1.0}
    assert score_item(compose, [render([a], size)]) == {"composition_accuracy": 0.5}
    assert score_item(compose, [render(swapped, size)]) == {"composition_accuracy": 0.0}
    assert score_item(compose, []) == {"composition_accuracy": 0.0}

    decompose = _row("decompose", [a, b])
    centred = [render([e.moved_to("center")], size) for e in (a, b)]
    assert score_item(decompose, centred)["decomposition_accuracy"] == 1.0
    assert score_item(decompose, centred[::-1])["decomposition_accuracy"] == 0.0
    assert score_item(decompose, centred[:1])["decomposition_accuracy"] == 0.5
    assert score_item(decompose, [*centred, centred[0]])["decomposition_accuracy"] == pytest.approx(2 / 3)
    assert (
        score_item(decompose, [render([a], size), centred[1]])["decomposition_accuracy"] == 0.5
    )  # not centred

    c, d = Element("green", "square", "top"), Element("green", "circle", "left")
    style = _row("style", [c, d], color="green")
    assert score_item(style, [render([c, d], size)]) == {
        "style_accuracy": 1.0,
        "structure_accuracy": 1.0,
        "color_accuracy": 1.0,
    }
    wrong_colour = [Element("orange", e.shape, e.cell) for e in (c, d)]
    assert score_item(style, [render(wrong_colour, size)]) == {
        "style_accuracy": 0.0,
        "structure_accuracy": 1.0,
        "color_accuracy": 0.0,
    }
    assert score_item(style, [render([c], size)]) == {
        "style_accuracy": 0.5,
        "structure_accuracy": 0.5,
        "color_accuracy": 1.0,
    }
    copied_content = render([c, d], size, outlined=True)
    assert set(score_item(style, [copied_content]).values()) == {0.0}


def test_judge_folder_reads_predictions(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "data", "tutorial", 4, "test", seed=0, size=32)
    rows = read_jsonl(manifest)
    pred_dir = tmp_path / "pred"
    preds = []
    for i, row in enumerate(rows[:3]):  # the 4th item has no prediction at all
        frames = [
            render([Element.from_dict(d) for d in row["meta"]["elements"]][:k], 32)
            for k in range(1, len(row["plan"]) + 1)
        ]
        if i == 0:
            frames[-1] = frames[-2]  # last shape never drawn
        paths = [f"{row['id']}_{k}.png" for k in range(len(frames))]
        for p, f in zip(paths, frames):
            write_png(pred_dir / p, f)
        preds.append({"id": row["id"], "text": format_plan(row["plan"]), "images": paths})
    (pred_dir / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))

    summary = judge_folder(manifest.parent, pred_dir, scores_out=tmp_path / "scores.jsonl")["tutorial"]
    n_last = len(rows[0]["plan"])
    assert summary["n"] == 4 and summary["missing"] == 1
    assert summary["plan_accuracy"] == pytest.approx(3 / 4)
    assert summary["reference_faithfulness"] == pytest.approx((2 + (n_last - 1) / n_last) / 4)
    assert summary["temporal_coherence"] == pytest.approx((2 + (n_last - 1) / n_last) / 4)
    per_item = read_jsonl(tmp_path / "scores.jsonl")
    assert [r["id"] for r in per_item] == [r["id"] for r in rows]
    assert all(v == 0.0 for k, v in per_item[3].items() if k not in ("id", "kind"))
