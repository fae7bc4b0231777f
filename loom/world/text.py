"""Wording of the shapes world: prompts, plan steps, and a tolerant parser for model-written plans.

Generator and judge both go through this module, so the phrasing the model is trained on and the phrasing the
judge reads back can never drift apart. The mechanisms world's past-referring steps ("Move the last shape one cell
right.") are worded and parsed in loom/world/program.py, on top of the element wording here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from loom.world.shapes import CELLS, COLORS, SHAPES, Element

# How an element is worded in prompts and plan steps:
# - "cell_first": "in the top left, a red circle" / "In the top left, draw a red circle."
# - "shape_first": "a red circle in the top left" / "Draw a red circle in the top left."
# cell_first is the default because a plan step then names the cell (what the reading order decides) before the
# colour and shape, which the model copies from right after the same cell in the prompt (an induction-head copy);
# shape_first asks it to write the colour of the element whose cell comes next before writing that cell, which
# took thousands of extra steps to learn (evals/shapes/demo_scores.md). The parser reads both.
WORDINGS = ("cell_first", "shape_first")
WORDING = "cell_first"
ENTITY_OBJECT = "<object>"
ENTITY_STYLE = "<style>"
IMAGE_TO_TUTORIAL_PROMPT = "Create a step-by-step tutorial for drawing this picture."
STYLE_PROMPT = f"Apply the {ENTITY_STYLE} of <image 1> to <image 2>."
DECOMPOSE_PROMPT = f"Decompose <image 1> into its {ENTITY_OBJECT} elements, one per image."


def image_token(index: int) -> str:
    """Placeholder for the index-th (1-based) input image inside a prompt."""
    return f"<image {index}>"


def _wording(wording: str | None) -> str:
    w = WORDING if wording is None else wording
    if w not in WORDINGS:
        raise ValueError(f"unknown wording {w!r}; choose from {WORDINGS}")
    return w


def describe(element: Element, wording: str | None = None) -> str:
    if _wording(wording) == "cell_first":
        return f"in the {element.cell}, a {element.color} {element.shape}"
    return f"a {element.color} {element.shape} in the {element.cell}"


def _join(parts: Sequence[str]) -> str:
    """English list: "a", "a and b", "a, b and c"."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def step_text(element: Element, wording: str | None = None) -> str:
    """One plan step without its "Step k: " prefix, as stored in the manifest."""
    if _wording(wording) == "cell_first":
        return f"In the {element.cell}, draw a {element.color} {element.shape}."
    return f"Draw {describe(element, wording)}."


def format_plan(steps: Sequence[str]) -> str:
    """The whole plan as the model writes it: "Step 1: ..." one per line."""
    return "\n".join(f"Step {k}: {s}" for k, s in enumerate(steps, start=1))


def tutorial_prompt(elements: Sequence[Element], wording: str | None = None) -> str:
    """Text-to-tutorial instruction listing the elements in the given (random) order."""
    parts = [describe(e, wording) for e in elements]
    if _wording(wording) == "cell_first":  # "; " between elements: each one's own comma stays unambiguous
        return f"Create a tutorial for drawing {'; '.join(parts[:-1]) + ' and ' if len(parts) > 1 else ''}{parts[-1]}."
    return f"Create a tutorial for drawing {_join(parts)}."


def compose_prompt(cells: Sequence[str]) -> str:
    """Place the object of input image k in cells[k-1]."""
    parts = [
        f"the {ENTITY_OBJECT} from {image_token(k)} in the {cell}" for k, cell in enumerate(cells, start=1)
    ]
    return f"Place {_join(parts)}."


def _alternation(words: Sequence[str]) -> str:
    # Longest first so "top left" wins over "top" and "left" at the same position.
    return "|".join(
        r"[\s_-]+".join(re.escape(part) for part in w.split()) for w in sorted(words, key=len, reverse=True)
    )


_CELL_ALT = _alternation([*CELLS, "centre", "middle"])
_ELEMENT_RE = re.compile(
    rf"\b(?P<color>{_alternation(COLORS)})\s+(?P<shape>{_alternation(SHAPES)})s?\b"
    rf".*?\bin\s+the\s+(?P<cell>{_CELL_ALT})\b",
    re.IGNORECASE | re.DOTALL,
)
_CELL_FIRST_RE = re.compile(  # "In the top left, draw a red circle"
    rf"\bin\s+the\s+(?P<cell>{_CELL_ALT})\b\s*,?\s*(?:draw\s+)?(?:an?\s+)?"
    rf"(?P<color>{_alternation(COLORS)})\s+(?P<shape>{_alternation(SHAPES)})s?\b",
    re.IGNORECASE | re.DOTALL,
)
_STEP_RE = re.compile(r"\**\s*step\s*\d+\s*\**\s*[:.)\-]\s*\**", re.IGNORECASE)
_CELL_ALIASES = {"centre": "center", "middle": "center"}


def parse_element(text: str) -> Element | None:
    """The element a step names — "in the <cell>, (draw) a <color> <shape>" or "<color> <shape> ... in the
    <cell>", whichever starts first — or None when the text names no valid element."""
    found = [m for m in (_CELL_FIRST_RE.search(text), _ELEMENT_RE.search(text)) if m is not None]
    if not found:
        return None
    m = min(found, key=lambda m: m.start())
    cell = re.sub(r"[\s_-]+", " ", m["cell"].lower())
    return Element(m["color"].lower(), m["shape"].lower(), _CELL_ALIASES.get(cell, cell))


def split_steps(text: str) -> list[str]:
    """Step bodies of a plan. Uses "Step k:" markers when present (numbers are ignored, order is kept);
    otherwise each non-empty line is a step."""
    markers = list(_STEP_RE.finditer(text))
    if not markers:
        return [line.strip() for line in text.splitlines() if line.strip()]
    ends = [m.start() for m in markers[1:]] + [len(text)]
    return [text[m.end() : end].strip() for m, end in zip(markers, ends)]


def parse_plan(plan: str | Sequence[str]) -> list[Element | None]:
    """Elements drawn by each step, in order; a step that names no element parses to None (and scores as wrong)."""
    steps = split_steps(plan) if isinstance(plan, str) else list(plan)
    return [parse_element(s) for s in steps]
