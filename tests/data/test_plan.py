"""Plan format, parser variants (paper figures, RecipeGen / MakeAnything captions), scaffold template."""

import pytest

from loom.data.plan import DEFAULT_SCAFFOLD, format_plan, format_step, parse_plan, render_scaffold

S1, S2, S3 = "Boil water, add pasta, cook for about 8 minutes.", "Cut 1.5 avocados into pieces.", "Serve."
STEPS = [S1, S2, S3]


def test_canonical_round_trip():
    text = format_plan(STEPS)
    assert text.splitlines()[0] == "Step 1: Boil water, add pasta, cook for about 8 minutes."
    assert text.count("\n") == 2
    p = parse_plan(text)
    assert p.steps == STEPS and p.ok and not p.truncated and not p.unparsed


@pytest.mark.parametrize("text", [
    f"Step1: {S1} Step2: {S2} Step3: {S3}",
    "Step 1: Boil water, add pasta, cook for about 8 minutes., Step 2: Cut 1.5 avocados into pieces., "
    "Step 3: Serve.",
    "**Step 1:** Boil water, add pasta, cook for about 8 minutes. **Step 2:** Cut 1.5 avocados into pieces. "
    "**Step 3:** Serve.",
    f"1: {S1} **2:** {S2} **3:** {S3}",
    f"1. {S1}\n2. {S2}\n3. {S3}",
    "step 1 - Boil water, add pasta, cook for about 8 minutes.\nSTEP 2) Cut 1.5 avocados into pieces.\n"
    "Step 3. Serve.",
])
def test_variant_forms(text):
    p = parse_plan(text)
    assert [s.rstrip(".,") for s in p.steps] == [s.rstrip(".,") for s in STEPS]
    assert p.ok, p.problems


def test_paper_figure_plan_with_titles():
    fig = ("Step1: Preparing the silver ear fungus: Soak the silver ear fungus in cold water for 2 hours, "
           "then tear it into small pieces. **Step2:** Chopping ingredients: Finely chop the green onion, "
           "garlic, and chili pepper. **Step3:** Finishing the dish: The spicy and sour silver ear fungus is "
           "ready to serve.")
    p = parse_plan(fig)
    assert len(p.steps) == 3 and p.ok
    assert p.steps[1] == "Chopping ingredients: Finely chop the green onion, garlic, and chili pepper."


def test_truncation_at_n_max_is_reported():
    text = format_plan([f"do thing {k}" for k in range(1, 9)])
    p = parse_plan(text)  # default N_max = 6
    assert p.steps == [f"do thing {k}" for k in range(1, 7)]
    assert p.truncated == ["do thing 7", "do thing 8"]
    assert len(parse_plan(text, n_max=None).steps) == 8


def test_problems_are_reported_not_dropped():
    p = parse_plan("Here is my plan: Step 1: a, Step 2: b, Step 4: d")
    assert p.steps == ["a", "b, Step 4: d"] and not p.ok
    assert p.unparsed == ["Here is my plan:"]
    assert any("out-of-sequence" in m for m in p.problems)
    empty = parse_plan("Step 1: a\nStep 2:\nStep 3: c")
    assert empty.steps == ["a", "", "c"] and "step 2 is empty" in empty.problems
    none = parse_plan("just one sentence without markers")
    assert none.steps == [] and none.unparsed == ["just one sentence without markers"] and not none.ok
    lines = parse_plan("first\nsecond")
    assert lines.steps == ["first", "second"] and not lines.ok  # accepted, but flagged


def test_numbers_inside_steps_do_not_split():
    p = parse_plan("Step 1: heat to 180 degrees. 2 eggs: whisk.\nStep 2: bake for 3. minutes")
    assert p.steps == ["heat to 180 degrees. 2 eggs: whisk.", "bake for 3. minutes"]


def test_format_rejects_multiline_or_empty_steps():
    with pytest.raises(ValueError):
        format_plan(["a", "b\nc"])
    with pytest.raises(ValueError):
        format_plan(["a", " "])
    assert format_step(3, " x ") == "Step 3: x"


def test_scaffold_template():
    s = render_scaffold(DEFAULT_SCAFFOLD, "Create a tutorial for drawing a cat.", n_max=6)
    assert s.endswith("Task: Create a tutorial for drawing a cat.") and "at most 6 steps" in s
    assert render_scaffold("{prompt} in {num_steps} steps", "Draw {x}", num_steps=4) == "Draw {x} in 4 steps"
    assert render_scaffold("{prompt} in {num_steps} steps", "p") == "p in N steps"
    for bad in ("no prompt field", "{prompt} {oops}"):
        with pytest.raises(ValueError):
            render_scaffold(bad, "p")
