from loom.world.shapes import Element
from loom.world.text import compose_prompt, format_plan, parse_element, parse_plan, step_text, tutorial_prompt

RED = Element("red", "circle", "top left")
BLUE = Element("blue", "square", "center")
GREEN = Element("green", "triangle", "bottom right")


def test_prompt_and_step_wording() -> None:
    assert step_text(RED) == "Draw a red circle in the top left."
    assert tutorial_prompt([BLUE, RED]) == (
        "Create a tutorial for drawing a blue square in the center and a red circle in the top left."
    )
    assert tutorial_prompt([BLUE, RED, GREEN]).count(",") == 1
    assert compose_prompt(["top left", "center"]) == (
        "Place the <object> from <image 1> in the top left and the <object> from <image 2> in the center."
    )
    assert format_plan(["A.", "B."]) == "Step 1: A.\nStep 2: B."


def test_plan_round_trip() -> None:
    steps = [step_text(e) for e in (RED, BLUE, GREEN)]
    assert parse_plan(format_plan(steps)) == [RED, BLUE, GREEN]
    assert parse_plan(steps) == [RED, BLUE, GREEN]


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
