from loom.world.shapes import Element
from loom.world.text import compose_prompt, format_plan, parse_element, parse_plan, step_text, tutorial_prompt

RED = Element("red", "circle", "top left")
BLUE = Element("blue", "square", "center")
GREEN = Element("green", "triangle", "bottom right")


def test_prompt_and_step_wording() -> None:
    # default: the cell first (a step names its cell, then copies colour and shape from after that cell)
    assert step_text(RED) == "In the top left, draw a red circle."
    assert tutorial_prompt([BLUE, RED]) == (
        "Create a tutorial for drawing in the center, a blue square and in the top left, a red circle."
    )
    assert tutorial_prompt([BLUE, RED, GREEN]) == (
        "Create a tutorial for drawing in the center, a blue square; in the top left, a red circle and in the "
        "bottom right, a green triangle."
    )
    assert step_text(RED, "shape_first") == "Draw a red circle in the top left."
    assert tutorial_prompt([BLUE, RED], "shape_first") == (
        "Create a tutorial for drawing a blue square in the center and a red circle in the top left."
    )
    assert tutorial_prompt([BLUE, RED, GREEN], "shape_first").count(",") == 1
    import pytest

    with pytest.raises(ValueError, match="unknown wording"):
        step_text(RED, "colour_first")
    assert compose_prompt(["top left", "center"]) == (
        "Place the <object> from <image 1> in the top left and the <object> from <image 2> in the center."
    )
    assert format_plan(["A.", "B."]) == "Step 1: A.\nStep 2: B."


def test_plan_round_trip() -> None:
    for wording in ("cell_first", "shape_first"):
        steps = [step_text(e, wording) for e in (RED, BLUE, GREEN)]
        assert parse_plan(format_plan(steps)) == [RED, BLUE, GREEN]
        assert parse_plan(steps) == [RED, BLUE, GREEN]
    # whichever element phrase starts first wins
    assert parse_element("In the top, draw a red circle in the bottom.") == Element("red", "circle", "top")
    assert parse_element("Draw a red circle in the bottom. In the top, draw a blue square.") == Element(
        "red", "circle", "bottom")
    assert parse_element("In the top left, draw a pink circle.") is None


def test_parser_is_tolerant_but_not_lenient() -> None:
    messy = "**Step 1:** draw a RED Circle in the Top-Left\nstep 2) Draw a blue square in the centre.  Step 3 - junk"
    assert parse_plan(messy) == [RED, BLUE, None]
    # No "Step k" markers: one step per non-empty line.
    assert parse_plan("Draw a red circle in the top left.\n\nDraw a green triangle in the bottom right.") == [
        RED,
        GREEN,
    ]
    assert parse_element("Draw a red circle.") is None  # no cell
    assert parse_element("Draw a pink circle in the top.") is None  # not a palette colour
    assert parse_element("a green triangle in the top") == Element(
        "green", "triangle", "top"
    )  # not "top left"
    assert parse_plan("") == []
