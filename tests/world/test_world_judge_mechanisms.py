"""Judge axes of the mechanisms world: ground truth scores 1.0 on every axis, and each corruption lowers its axis
(a changed tint or offset in a later frame -> appearance_consistency; a wrongly resolved past step ->
past_step_following), on blurred, noisy frames."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from loom.world.generate import write_dataset
from loom.world.judge import judge_folder, score_item
from loom.world.program import Step, program_step_text, run_program
from loom.world.shapes import Appearance, Element, reading_order, render
from loom.world.text import format_plan

RED = Element("red", "circle", "top left")
BLUE = Element("blue", "square", "bottom right")
PROGRAM = [Step("draw", RED), Step("draw", BLUE), Step("move", direction="up"), Step("recolour", color="green"),
           Step("copy", direction="left"), Step("draw", Element("yellow", "triangle", "bottom"))]
LOOK = Appearance("cream", "down right")
NEW_AXES = ("appearance_consistency", "paper_consistency", "offset_consistency", "past_step_following")


def _row(program=PROGRAM, look=LOOK, from_image=False) -> dict:
    states = run_program(program)
    meta = {"elements": [e.to_dict() for e in reading_order(states[-1])],
            "states": [[e.to_dict() for e in reading_order(s)] for s in states],
            "past": [s.refers_to_past for s in program], "appearance": look.to_dict(), "world": "mechanisms"}
    return {"id": "m0", "task": "tutorial", "prompt": "unused", "plan": [program_step_text(s) for s in program],
            "frames": [], "input_images": ["ref.png"] if from_image else [], "meta": meta}


def _soft(img: np.ndarray, seed: int) -> np.ndarray:
    out = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float64)
    return np.clip(out + np.random.default_rng(seed).normal(0, 15, out.shape), 0, 255).astype(np.uint8)


def _frames(states, looks, size=32, soft=True) -> list[np.ndarray]:
    clean = [render(s, size, appearance=lk) for s, lk in zip(states, looks)]
    return [_soft(img, k) for k, img in enumerate(clean)] if soft else clean


def _score(states=None, looks=None, text=None, row=None, size=32, soft=True) -> dict[str, float]:
    row = row or _row()
    states = run_program(PROGRAM) if states is None else states
    looks = [LOOK] * len(states) if looks is None else looks
    plan = format_plan(row["plan"]) if text is None else text
    return score_item(row, _frames(states, looks, size, soft), plan)


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_scores_one_on_every_axis(size: int) -> None:
    scores = _score(size=size, soft=False)
    assert set(NEW_AXES) <= set(scores)
    assert all(v == 1.0 for v in scores.values()), scores
    soft = _score(size=size)  # blurred, noisy frames: perception still reads every axis right
    assert all(v == 1.0 for k, v in soft.items() if not k.startswith("clean_")), soft


def test_ground_truth_manifests_score_one(tmp_path: Path) -> None:
    for task in ("tutorial", "image_tutorial"):
        man = write_dataset(tmp_path / task, task, 10, "test", seed=4, size=32, world="mechanisms")
        summary = judge_folder(man)[task]
        axes = {k: v for k, v in summary.items() if k not in ("n", "missing")}
        assert all(v == 1.0 for v in axes.values()), (task, axes)
        assert "appearance_consistency" in axes
        assert ("past_step_following" in axes) == (task == "tutorial")  # image->tutorials only draw


def test_a_changed_tint_or_offset_in_a_later_frame_lowers_appearance_consistency() -> None:
    n = len(PROGRAM)
    tint = _score(looks=[LOOK] * 3 + [Appearance("sky", "down right")] + [LOOK] * (n - 4))
    assert tint["appearance_consistency"] == pytest.approx((n - 2) / (n - 1))  # frame 1 is the reference
    assert tint["paper_consistency"] == pytest.approx((n - 2) / (n - 1)) and tint["offset_consistency"] == 1.0
    assert tint["instruction_following"] == 1.0 and tint["past_step_following"] == 1.0  # only the look changed
    shift = _score(looks=[LOOK] * (n - 2) + [Appearance("cream", "up left")] * 2)
    assert shift["appearance_consistency"] == pytest.approx((n - 3) / (n - 1))
    assert shift["offset_consistency"] == pytest.approx((n - 3) / (n - 1)) and shift["paper_consistency"] == 1.0
    clean = _score(looks=[LOOK] * (n - 2) + [Appearance("cream", "up left")] * 2, soft=False)
    assert clean["clean_frame_rate"] == 1.0  # the re-render follows the perceived look: a shift is not a defect


def test_the_first_frame_is_free_for_text_but_fixed_by_the_input_image() -> None:
    other = [Appearance("mint", "up left")] * len(PROGRAM)
    assert _score(looks=other)["appearance_consistency"] == 1.0  # consistent with its own first frame
    image_row = _row(from_image=True)
    assert _score(looks=other, row=image_row)["appearance_consistency"] == 0.0  # the input image's look is the rule
    assert _score(row=image_row)["appearance_consistency"] == 1.0


def test_a_wrongly_resolved_past_step_lowers_past_step_following() -> None:
    truth = run_program(PROGRAM)
    # step 3 "Move the last shape one cell up" applied to the red circle (drawn two steps back) instead of the blue
    wrong = list(truth)
    wrong[2] = frozenset({RED.moved_to("left"), BLUE})
    scores = _score(states=wrong)
    past_steps = sum(s.refers_to_past for s in PROGRAM)
    assert scores["past_step_following"] == pytest.approx((past_steps - 1) / past_steps)
    assert scores["instruction_following"] == pytest.approx(5 / 6)
    assert scores["appearance_consistency"] == 1.0
    # a wrong draw step leaves past_step_following alone: the axis is restricted to past-referring steps
    wrong_draw = list(truth)
    wrong_draw[5] = truth[4] | {Element("yellow", "circle", "bottom")}
    scores = _score(states=wrong_draw)
    assert scores["past_step_following"] == 1.0 and scores["instruction_following"] == pytest.approx(5 / 6)


def test_plan_axes_read_past_steps_and_coherence_follows_the_models_own_plan() -> None:
    steps = [program_step_text(s) for s in PROGRAM]
    wrong_plan = format_plan([*steps[:2], "Move the last shape one cell left.", *steps[3:]])
    scores = _score(text=wrong_plan)  # frames are the ground truth, the plan is not
    assert scores["plan_accuracy"] == 0.0 and scores["plan_step_accuracy"] == pytest.approx(5 / 6)
    # replayed, the model's plan moves the blue square into the bottom at step 3: the frames (which move it up)
    # do not change the way its own step says, so coherence falls although the frames follow the ground truth
    assert scores["temporal_coherence"] < 1.0 and scores["instruction_following"] == 1.0
    # missing frames count against every frame axis, the appearance axis included
    short = _score(states=run_program(PROGRAM)[:3])
    assert short["appearance_consistency"] == pytest.approx(2 / 5) and short["past_step_following"] == pytest.approx(
        1 / 3)
