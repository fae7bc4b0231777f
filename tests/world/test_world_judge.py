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
    "plan_step_accuracy",
    "frame_jaccard",
    "reference_jaccard",
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
# (frame sets, plan text) -> expected (exact: plan, instruction, temporal, reference, alignment; partial credit:
# plan steps, frame Jaccard, reference Jaccard); worked out by hand.
CASES = {
    "ground truth": (GOOD, PLAN, (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)),
    "shape removed from last frame": (
        [E[:1], E[:2], E[:3], E[:3]], PLAN, (1.0, 0.75, 0.75, 0.0, 0.75, 1.0, 0.9375, 0.75)),
    "wrong colour of an old shape": (
        [E[:1], E[:2], E[:3], [RECOLOURED, *E[1:]]],
        PLAN,
        (1.0, 0.75, 0.75, 0.0, 1.0, 1.0, 0.9, 0.6),
    ),
    "wrong shape of the new element": (
        [E[:1], E[:2], E[:3], [*E[:3], RESHAPED]],
        PLAN,
        (1.0, 0.75, 0.75, 0.0, 0.75, 1.0, 0.9, 0.6),
    ),
    "frames 2 and 3 swapped": (
        [E[:1], E[:3], E[:2], E[:4]], PLAN, (1.0, 0.5, 0.25, 1.0, 0.75, 1.0, 0.8333, 1.0)),
    "last frame missing": ([E[:1], E[:2], E[:3]], PLAN, (1.0, 0.75, 0.75, 0.0, 0.75, 1.0, 0.75, 0.75)),
    "plan steps 2 and 3 swapped": (
        GOOD,
        format_plan([ROW["plan"][i] for i in (0, 2, 1, 3)]),
        (0.0, 1.0, 0.5, 1.0, 0.5, 0.5, 1.0, 1.0),
    ),
    "plan step with wrong colour": (
        GOOD,
        PLAN.replace("red circle", "orange circle"),
        (0.0, 1.0, 0.75, 1.0, 0.75, 0.75, 1.0, 1.0),
    ),
    "plan with an extra step": (
        GOOD,
        PLAN + "\nStep 5: Draw a red square in the left.",
        (0.0, 1.0, 0.8, 1.0, 0.8, 0.8, 1.0, 1.0),
    ),
    "no plan at all": (GOOD, "", (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0)),
}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("case", list(CASES))
def test_tutorial_axes_under_corruption(case: str, size: int) -> None:
    sets, text, expected = CASES[case]
    assert _scores(sets, text, size) == expected


def test_render_only_scoring_uses_the_ground_truth_plan() -> None:
    scores = score_item(ROW, _frames(GOOD, 32), None)
    assert "plan_accuracy" not in scores and "plan_step_accuracy" not in scores
    assert scores["text_image_alignment"] == scores["temporal_coherence"] == 1.0
    swapped = score_item(ROW, _frames([E[:1], E[:3], E[:2], E[:4]], 32), None)
    assert swapped["text_image_alignment"] == 0.75 and swapped["temporal_coherence"] == 0.25


@pytest.mark.parametrize("size", [32, 64])
def test_frame_quality_falls_with_speckle_blur_and_rounding(size: int) -> None:
    clean = render(E, size)
    assert score_item(ROW, [render(E[:k], size) for k in range(1, 5)], PLAN)["clean_frame_rate"] == 1.0
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 40, clean.shape), 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(clean).filter(ImageFilter.GaussianBlur(1.0)))
    for bad in (noisy, blurred):
        q = score_item(ROW, [render(E[:k], size) for k in range(1, 4)] + [bad], PLAN)
        assert q["clean_frame_rate"] == 0.75 and q["clean_pixel_fraction"] < 1.0
    # a square drawn where the judge still reads a circle (rounded-square artefact) is not a clean frame
    from loom.world.judge import frame_quality
    from loom.world.shapes import draw_element

    square_for_circle = draw_element(render(E[1:], size), Element("red", "square", "top left"))
    assert frame_quality([square_for_circle], [frozenset(E)])["clean_frame_rate"] == 0.0
    one_off = render(E, size)
    one_off[0, 0] = (0, 0, 0)
    assert frame_quality([one_off])["clean_frame_rate"] == 1.0


def _row(task: str, elements: list[Element], **meta: str) -> dict:
    return {"id": "x", "task": task, "meta": {"elements": [e.to_dict() for e in elements], **meta}}


@pytest.mark.parametrize("size", [32, 64])
def test_compose_decompose_style_axes(size: int) -> None:
    a, b = Element("red", "circle", "top left"), Element("blue", "triangle", "bottom right")
    swapped = [a.moved_to(b.cell), b.moved_to(a.cell)]
    compose = _row("compose", [a, b])

    def axes(row: dict, images: list, *names: str) -> tuple[float, ...]:
        got = score_item(row, images)
        return tuple(round(got[n], 4) for n in names)

    comp = ("composition_accuracy", "composition_jaccard")
    assert axes(compose, [render([a, b], size)], *comp) == (1.0, 1.0)
    assert axes(compose, [render([a], size)], *comp) == (0.0, 0.5)
    assert axes(compose, [render(swapped, size)], *comp) == (0.0, 0.0)
    assert axes(compose, [], *comp) == (0.0, 0.0)

    decompose = _row("decompose", [a, b])
    centred = [render([e.moved_to("center")], size) for e in (a, b)]
    dec = ("decomposition_accuracy", "decomposition_jaccard")
    assert axes(decompose, centred, *dec) == (1.0, 1.0)
    assert axes(decompose, centred[::-1], *dec) == (0.0, 0.0)
    assert axes(decompose, centred[:1], *dec) == (0.5, 0.5)
    assert axes(decompose, [*centred, centred[0]], *dec) == (0.6667, 0.6667)
    assert axes(decompose, [render([a], size), centred[1]], *dec) == (0.5, 0.5)  # not centred
    two = render([a.moved_to("center"), Element("red", "square", "top")], size)  # an extra element
    assert axes(decompose, [two, centred[1]], *dec) == (0.5, 0.75)

    c, d = Element("green", "square", "top"), Element("green", "circle", "left")
    style = _row("style", [c, d], color="green")
    sty = ("style_accuracy", "style_jaccard", "structure_jaccard", "color_fraction")
    assert axes(style, [render([c, d], size)], *sty) == (1.0, 1.0, 1.0, 1.0)
    wrong_colour = [Element("orange", e.shape, e.cell) for e in (c, d)]
    assert axes(style, [render(wrong_colour, size)], *sty) == (0.0, 0.0, 1.0, 0.0)
    assert axes(style, [render([c], size)], *sty) == (0.0, 0.5, 0.5, 1.0)
    copied_content = render([c, d], size, outlined=True)
    assert set(axes(style, [copied_content], *sty)) == {0.0}


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
    assert summary["reference_faithfulness"] == pytest.approx(2 / 4)
    assert summary["reference_jaccard"] == pytest.approx((2 + (n_last - 1) / n_last) / 4)
    assert summary["temporal_coherence"] == pytest.approx((2 + (n_last - 1) / n_last) / 4)
    assert summary["instruction_following"] == pytest.approx((2 + (n_last - 1) / n_last) / 4)
    per_item = read_jsonl(tmp_path / "scores.jsonl")
    assert [r["id"] for r in per_item] == [r["id"] for r in rows]
    assert all(v == 0.0 for k, v in per_item[3].items() if k not in ("id", "kind"))
