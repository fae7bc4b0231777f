"""Step programs of the "mechanisms" world: tutorials whose frames need the history frames and their order.

In the basic world a frame is a function of the step-prefix text, so history frames and the temporal embedding
e_t carry nothing the text does not. A mechanisms tutorial (`python -m loom.world.generate --world mechanisms`,
`python -m loom.demo --world mechanisms`) gives each of Loom's mechanisms something to do:

- Hidden appearance (reference sampling, K_max > 0): every frame of a tutorial keeps one paper tint and one shape
  offset (`loom.world.shapes.Appearance`) that no text names. Frame 1 may take any; after it only the history
  frames carry it. Judge axis `appearance_consistency`.
- Steps that refer to the past (temporal embedding with sparse history): besides "In the <cell>, draw a <colour>
  <shape>." a step may be "Move the last shape one cell <dir>.", "Recolour the last shape <colour>." or "Draw
  another one like it one cell <dir>.". "The last shape" is the one the previous step drew, moved, recoloured or
  copied. The step text S_t alone does not say which shape that is or where it stands (only the whole program
  does, by replaying it); the most recent frame(s) do, so the model has to know which history frame is the latest.
  Judge axis `past_step_following` (instruction following on those steps only).
- Long tutorials (the sparse sampler, Eq. 4/6): 4-12 steps; moves and recolours do not add a shape, so N can exceed
  the 9 cells, and with the demo's K_max = 4 frames beyond the fifth see a sparse subset of their history.

The text->tutorial prompt lists the program's steps in order ("Create a tutorial for these steps: ..."), so the
plan is a copy and the test is the rendering; image->tutorial draws the input picture's shapes in reading order
with the input's hidden appearance. Compose / style / decompose items are the basic world's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loom.world.shapes import CELL_INDEX, CELLS, COLORS, OFFSETS, PAPERS, SHAPES, Appearance, Element
from loom.world.text import _alternation, parse_element, step_text

OPS: tuple[str, ...] = ("draw", "move", "recolour", "copy")
PAST_OPS: tuple[str, ...] = ("move", "recolour", "copy")  # steps that refer to the last shape
DIRECTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
NUM_STEPS = (4, 12)  # inclusive range of a text->tutorial's steps
MIN_PAST_STEPS = 2
# Sampling weights of the next step's kind among the ones that are possible in the current state
OP_WEIGHTS: dict[str, float] = {"draw": 0.35, "move": 0.25, "recolour": 0.2, "copy": 0.2}
PROGRAM_PROMPT = "Create a tutorial for these steps:"
State = frozenset[Element]


@dataclass(frozen=True)
class Step:
    """One step: draw `element`; move / copy the last shape one cell `direction`; recolour it `color`."""

    op: str
    element: Element | None = None
    direction: str | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        ok = {"draw": self.element is not None, "move": self.direction in DIRECTIONS,
              "copy": self.direction in DIRECTIONS, "recolour": self.color in COLORS}
        if not ok.get(self.op, False):
            raise ValueError(f"invalid step {self}")

    @property
    def refers_to_past(self) -> bool:
        return self.op in PAST_OPS


def program_step_text(step: Step) -> str:
    """A step as stored in the plan (without "Step k: ")."""
    if step.op == "draw":
        return step_text(step.element)
    if step.op == "move":
        return f"Move the last shape one cell {step.direction}."
    if step.op == "recolour":
        return f"Recolour the last shape {step.color}."
    return f"Draw another one like it one cell {step.direction}."


def program_prompt(steps: Sequence[Step]) -> str:
    return " ".join([PROGRAM_PROMPT, *(program_step_text(s) for s in steps)])


_DIR_ALT = _alternation(DIRECTIONS)
_PAST_RES = {
    "move": re.compile(rf"\bmove\s+the\s+(?:last|previous)\s+shape\s+one\s+cell\s+(?P<direction>{_DIR_ALT})\b",
                       re.IGNORECASE),
    "recolour": re.compile(rf"\brecolou?r\s+the\s+(?:last|previous)\s+shape\s+(?P<color>{_alternation(COLORS)})\b",
                           re.IGNORECASE),
    "copy": re.compile(rf"\bdraw\s+another\s+one\s+like\s+it\s+one\s+cell\s+(?P<direction>{_DIR_ALT})\b",
                       re.IGNORECASE),
}


def parse_step(text: str) -> Step | None:
    """The step a text names (past-referring wordings first, then a drawn element), or None."""
    for op, pattern in _PAST_RES.items():
        m = pattern.search(text)
        if m is not None:
            groups = {k: v.lower() for k, v in m.groupdict().items()}
            return Step(op, **groups)
    element = parse_element(text)
    return None if element is None else Step("draw", element)


def neighbour(cell: str, direction: str) -> str | None:
    """The cell one step in `direction`, or None off the 3x3 grid."""
    row, col = divmod(CELL_INDEX[cell], 3)
    dr, dc = DIRECTIONS[direction]
    r, c = row + dr, col + dc
    return CELLS[3 * r + c] if 0 <= r < 3 and 0 <= c < 3 else None


def apply_step(state: dict[str, Element], last: str | None, step: Step) -> str | None:
    """Apply one step in place to `state` (cell -> element); returns the new last cell, or raises ValueError
    when the step cannot be done (occupied or off-grid target, no last shape, recolour to the same colour)."""
    if step.op == "draw":
        if step.element.cell in state:
            raise ValueError(f"the {step.element.cell} is taken")
        state[step.element.cell] = step.element
        return step.element.cell
    if last is None or last not in state:
        raise ValueError("no last shape")
    if step.op == "recolour":
        if state[last].color == step.color:
            raise ValueError(f"the last shape is already {step.color}")
        state[last] = Element(step.color, state[last].shape, last)
        return last
    target = neighbour(last, step.direction)
    if target is None or target in state:
        raise ValueError(f"cannot {step.op} the last shape {step.direction}")
    state[target] = state[last].moved_to(target)
    if step.op == "move":
        del state[last]
    return target


def run_program(steps: Sequence[Step | None]) -> list[State | None]:
    """World state after each step; None from the first step that is unparsed or cannot be done."""
    state: dict[str, Element] = {}
    last: str | None = None
    out: list[State | None] = []
    for step in steps:
        if step is None or (out and out[-1] is None):
            out.append(None)
            continue
        try:
            last = apply_step(state, last, step)
        except ValueError:
            out.append(None)
            continue
        out.append(frozenset(state.values()))
    return out


def _candidates(state: dict[str, Element], last: str | None) -> dict[str, list[Step]]:
    empty = [c for c in CELLS if c not in state]
    cands: dict[str, list[Step]] = {
        "draw": [Step("draw", Element(col, shp, cell)) for cell in empty for col in COLORS for shp in SHAPES]}
    if last is not None:
        free = [d for d in DIRECTIONS if (t := neighbour(last, d)) is not None and t not in state]
        cands["move"] = [Step("move", direction=d) for d in free]
        cands["copy"] = [Step("copy", direction=d) for d in free]
        cands["recolour"] = [Step("recolour", color=c) for c in COLORS if c != state[last].color]
    return {op: s for op, s in cands.items() if s}


def sample_program(rng: np.random.Generator, num_steps: tuple[int, int] = NUM_STEPS,
                   min_past: int = MIN_PAST_STEPS) -> list[Step]:
    """A valid program of num_steps[0]..num_steps[1] steps with at least `min_past` past-referring steps,
    starting with a draw; each next step's kind is drawn by OP_WEIGHTS among the possible ones."""
    while True:
        n = int(rng.integers(num_steps[0], num_steps[1] + 1))
        state: dict[str, Element] = {}
        last: str | None = None
        steps: list[Step] = []
        for _ in range(n):
            cands = _candidates(state, last)
            ops = sorted(cands, key=OPS.index)
            weights = np.array([OP_WEIGHTS[o] for o in ops])
            op = ops[int(rng.choice(len(ops), p=weights / weights.sum()))]
            step = cands[op][int(rng.integers(len(cands[op])))]
            last = apply_step(state, last, step)
            steps.append(step)
        if sum(s.refers_to_past for s in steps) >= min_past:
            return steps


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """A paper tint and one of the diagonal offsets ("centred" is the basic world's look)."""
    offsets = [o for o in OFFSETS if o != "centred"]
    return Appearance(tuple(PAPERS)[int(rng.integers(len(PAPERS)))], offsets[int(rng.integers(len(offsets)))])


def program_key(steps: Sequence[Step]) -> str:
    """Identity of a program for the split hash: its step texts in order."""
    return "program|" + "|".join(program_step_text(s) for s in steps)
