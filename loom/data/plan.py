"""Plan text (Loom §3.2 "Planning-First Strategy", appendix A.1 "Training Scaffolding for Planning").

Canonical plan: one step per line, `Step k: <text>`, k = 1..N, N ≤ N_max (6 in the paper). `format_plan`
writes it (training targets and inference display); `parse_plan` reads it back and also accepts the variants
found in the paper's figures and in RecipeGen / MakeAnything captions:

    Step 1: a\nStep 2: b         Step1: a, Step2: b         **Step 1:** a. **Step 2:** b
    1: a 2: b                    1. a\n2. b                 Step 1) a  Step 2 - b

Markers are found *sequentially* (the next marker must carry the next number), so numbers inside a step
("cook for 8 minutes", "1.5 cups") do not split it. Nothing is dropped silently: text before `Step 1`, empty
steps, numbering gaps and steps beyond N_max are reported on the returned `ParsedPlan`.

The scaffold is the lightweight "skeleton instruction" prepended to the raw prompt; it is a config template.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

DEFAULT_N_MAX = 6  # appendix A.1: plans are truncated at N_max = 6 during training
DEFAULT_SCAFFOLD = (
    "Plan first, then render. Write the complete plan as numbered steps, one per line, in the form "
    "'Step k: description of the step' (at most {n_max} steps); then draw the image of each step in order.\n"
    "Task: {prompt}"
)
SCAFFOLD_FIELDS = ("prompt", "n_max", "num_steps")


def format_step(k: int, text: str) -> str:
    """One canonical plan line: `Step k: text` (k is 1-based)."""
    return f"Step {k}: {text.strip()}"


def format_plan(steps: list[str]) -> str:
    """The whole plan, one `Step k: …` line per step: the CE target of the planning phase."""
    for k, s in enumerate(steps, 1):
        if not s.strip() or "\n" in s:
            raise ValueError(f"plan step {k} must be one non-empty line, got {s!r}")
    return "\n".join(format_step(k, s) for k, s in enumerate(steps, 1))


def check_scaffold(template: str) -> None:
    """A scaffold must contain `{prompt}` and may use only {prompt}, {n_max}, {num_steps}."""
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = names - set(SCAFFOLD_FIELDS)
    if "prompt" not in names or unknown:
        raise ValueError(f"scaffold template must contain {{prompt}} and only {SCAFFOLD_FIELDS} fields; "
                         f"got fields {sorted(names)}")


def render_scaffold(template: str, prompt: str, n_max: int = DEFAULT_N_MAX,
                    num_steps: int | None = None) -> str:
    """Skeleton instruction + raw prompt. `{num_steps}` renders as "N" when unknown (inference)."""
    check_scaffold(template)
    return template.format(prompt=prompt.strip(), n_max=n_max, num_steps=num_steps if num_steps else "N")


@dataclass
class ParsedPlan:
    steps: list[str]  # kept steps, at most n_max, in order
    truncated: list[str] = field(default_factory=list)  # steps beyond n_max (dropped, but reported)
    unparsed: list[str] = field(default_factory=list)  # text not attributed to any step
    problems: list[str] = field(default_factory=list)  # readable issues (empty step, gap, no markers …)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and not self.problems


# "Step k" markers: optional space, then ':' '.' ')' '-' or '–'. Bare "k" markers need whitespace after the
# punctuation (so "1.5" is not a marker) and a line start or whitespace before.
_STEP = r"(?<![\w])step\s*{k}\s*[:.)\-–]"
_BARE = r"(?:^|(?<=\s)){k}\s*[:.)](?=\s|$)"
_ANY_STEP = re.compile(r"(?<![\w])step\s*\d+\s*[:.)\-–]", re.IGNORECASE)
_TRAIL = " \t\r\n,;*#|"


def _marker(style: str, k: int) -> re.Pattern:
    return re.compile((_STEP if style == "step" else _BARE).format(k=k), re.IGNORECASE | re.MULTILINE)


def _first_marker(text: str) -> tuple[str, re.Match] | None:
    m = _marker("step", 1).search(text)
    if m:
        return "step", m
    # a bare "1:" / "1." only counts as the first marker at the very start of a line
    m = re.compile(r"^[ \t]*(1)\s*[:.)](?=\s|$)", re.MULTILINE).search(text)
    return ("bare", m) if m else None


def parse_plan(text: str, n_max: int | None = DEFAULT_N_MAX) -> ParsedPlan:
    """Steps of a plan in any of the accepted forms; `n_max=None` keeps every step."""
    text = text.replace("**", "").replace("__", "")  # markdown emphasis around markers (paper figures)
    first = _first_marker(text)
    if first is None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1:
            out = ParsedPlan(lines, problems=["no step markers; read one step per line"])
        else:
            out = ParsedPlan([], unparsed=lines, problems=["no step markers (expected 'Step 1: …')"])
        return _truncate(out, n_max)
    style, m = first
    out = ParsedPlan([])
    pre = text[:m.start()].strip(_TRAIL)
    if pre:
        out.unparsed.append(pre)
        out.problems.append(f"text before step 1 ignored: {pre[:60]!r}")
    starts, k = [m], 1
    while True:
        nxt = _marker(style, k + 1).search(text, starts[-1].end())
        if nxt is None:
            break
        starts.append(nxt)
        k += 1
    ends = [s.start() for s in starts[1:]] + [len(text)]
    for k, (s, e) in enumerate(zip(starts, ends), 1):
        body = " ".join(text[s.end():e].strip(_TRAIL).split())  # one line, single spaces
        if not body:
            out.problems.append(f"step {k} is empty")
        stray = _ANY_STEP.search(body)
        if stray:
            out.problems.append(f"step {k} contains an out-of-sequence marker {stray.group(0)!r} "
                                "(numbering gap?)")
        out.steps.append(body)
    return _truncate(out, n_max)


def _truncate(p: ParsedPlan, n_max: int | None) -> ParsedPlan:
    if n_max is not None and len(p.steps) > n_max:
        p.truncated = p.steps[n_max:]
        p.steps = p.steps[:n_max]
    return p
