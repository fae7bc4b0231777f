"""Judge rubrics for Tables 1, 2 and 4, message building, and schema validation.

Table 1 uses the paper's Fig. 7 prompt (TC / IF / NC). Tables 2 and 4 use the reconstruction in eval-protocols.md
§3 (TC / RF / SA), since the paper does not publish that prompt. One call sees the whole sequence: the instruction,
the reference image (Table 2/4 only), then every step's text followed by its image, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loom.eval.fsio import EvalInputError
from loom.eval.images import judge_image_url
from loom.eval.results import TutorialResult

ANCHORS = "Use the same 1–5 scale: 5 perfect; 4 minor issue; 3 acceptable (some issues); 2 poor (multiple issues); 1 fail."

_TUTORIAL_AXES = """\
- **Temporal Coherence (TC):** real-world chronological order in one scene; prep < cooking < plating; logical \
progression; no impossible jumps; executable in practice.
- **Instruction Following (IF):** matches the instruction exactly; required elements present (incl. exact step \
count); Image visually matches text for each step; tools/ingredients appear in correct steps; final result meets \
the stated goal.
- **Narrative Consistency (NC):** 1:1 text–image pairing; same scenario/dish across frames; consistent visual style \
(lighting/angle/setup); no contradictions; complete story."""

_PAINTING_AXES = """\
- **Temporal Coherence (TC):** a plausible drawing progression (layout or sketch, then line refinement, then color \
or shading, then detail) on the same canvas and composition; each frame builds on the previous one; no regressions \
or impossible jumps.
- **Reference Faithfulness (RF):** the sequence converges to the reference image: subject identity, composition, \
pose, palette and style of the final frame match the reference, and earlier frames are consistent partial states \
of it.
- **Semantic Alignment (SA):** each step's text accurately describes its image; 1:1 text–image pairing; correct \
step count."""


@dataclass(frozen=True)
class Rubric:
    name: str  # file-name friendly id: "tutorial" (Table 1) or "painting" (Tables 2, 4)
    criteria: tuple[str, ...]  # short codes in table order
    fields: tuple[str, ...]  # JSON integer fields, same order as criteria
    reasoning_fields: tuple[str, ...]
    needs_model_text: str  # criterion that judges model-written text; "—" for text_source == "given"
    axes: str
    uses_reference: bool
    low: int = 1
    high: int = 5

    def field_of(self, criterion: str) -> str:
        return self.fields[self.criteria.index(criterion)]


TUTORIAL = Rubric(
    "tutorial",
    ("TC", "IF", "NC"),
    ("temporal_coherence", "instruction_following", "narrative_consistency"),
    ("temporal_reasoning", "instruction_reasoning", "narrative_reasoning"),
    "NC",
    _TUTORIAL_AXES,
    False,
)
PAINTING = Rubric(
    "painting",
    ("TC", "RF", "SA"),
    ("temporal_coherence", "reference_faithfulness", "semantic_alignment"),
    ("temporal_reasoning", "reference_reasoning", "alignment_reasoning"),
    "SA",
    _PAINTING_AXES,
    True,
)
RUBRICS = {r.name: r for r in (TUTORIAL, PAINTING)}


def pairing_scale(n: int) -> str:
    """Fig. 7's 4-level scale, generalised to N steps (eval-protocols §2.2 [our choice])."""
    return (
        f"Excellent ({n}/{n}) / Good ({n - 1}/{n}) / Fair ({n - 2}/{n}) / Poor (<={max(n - 3, 0)}/{n})"
        if n >= 3
        else f"Excellent ({n}/{n}) / Poor (<{n}/{n})"
    )


def system_prompt(rubric: Rubric, num_steps: int) -> str:
    f = rubric.fields
    steps = ", ".join(f'"step_{k}": "<Match / Mismatch: reason>"' for k in range(1, num_steps + 1))
    if rubric is TUTORIAL:
        reasons = (
            '"temporal_reasoning": "<Explain: Are steps in correct order? List any violations. 2-4 sentences.>",\n'
            '  "instruction_reasoning": "<Explain: Image-text match quality? List mismatches. 2-4 sentences.>",\n'
            '  "narrative_reasoning": "<Explain: Count ratio? Visual consistency? Any contradictions? 2-4 sentences.>",'
        )
    else:
        reasons = (
            '"temporal_reasoning": "<Explain: Is the drawing progression plausible? List any regressions or '
            'jumps. 2-4 sentences.>",\n'
            '  "reference_reasoning": "<Explain: Does the sequence converge to the reference? List deviations. '
            '2-4 sentences.>",\n'
            '  "alignment_reasoning": "<Explain: Does each step text describe its image? List mismatches. '
            '2-4 sentences.>",'
        )
    subject = (
        "step-by-step tutorial sequence"
        if rubric is TUTORIAL
        else "step-by-step drawing tutorial sequence that should end at the given reference image"
    )
    return (
        f"You are a STRICT multimodal content evaluator. Your task is to rigorously assess a {subject} with "
        "**EXACT** image-text alignment verification along three axes and assign a 1–5 score per axis, plus a "
        f"justification each. {ANCHORS}\n\n{rubric.axes}\n\n"
        "Respond with ONLY this JSON structure (no markdown, no comments):\n"
        "{\n"
        f'  "{f[0]}": <integer 1-5>, "{f[1]}": <integer 1-5>, "{f[2]}": <integer 1-5>,\n'
        f"  {reasons}\n"
        '  "overall_score": <float: average of 3 scores, 1 decimal>,\n'
        f'  "detailed_alignment_check": {{{steps}}},\n'
        '  "usability_assessment": "<Honest answer: Can someone ACTUALLY follow this tutorial? Why/why not?>",\n'
        f'  "image_text_pairing": "<{pairing_scale(num_steps)}>"\n'
        "}"
    )


def build_messages(rubric: Rubric, result: TutorialResult, max_side: int = 1024) -> list[dict[str, Any]]:
    n = len(result.steps)
    content: list[dict[str, Any]] = [{"type": "text", "text": f"Instruction: {result.prompt}"}]
    if rubric.uses_reference:
        if not result.inputs:
            raise EvalInputError(
                f"item {result.item_id}: the {rubric.name} rubric needs the reference image, but "
                "result.json lists no 'inputs'; regenerate with the harness, which records it"
            )
        content.append({"type": "text", "text": "Reference image (the finished artwork):"})
        content.append(
            {"type": "image_url", "image_url": {"url": judge_image_url(result.inputs[-1], max_side)}}
        )
    content.append({"type": "text", "text": f"The tutorial has {n} steps."})
    for s in result.steps:
        content.append(
            {"type": "text", "text": f"Step {s.index}: {s.text}" if s.text else f"Step {s.index}: (no text)"}
        )
        content.append({"type": "image_url", "image_url": {"url": judge_image_url(s.image, max_side)}})
    return [{"role": "system", "content": system_prompt(rubric, n)}, {"role": "user", "content": content}]


def validate_reply(rubric: Rubric, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Integers in range are required; everything else is kept as reported. `overall` is recomputed here because
    the judge's own arithmetic is not trusted (eval-protocols §1)."""
    scores: dict[str, int] = {}
    for crit, fld in zip(rubric.criteria, rubric.fields):
        v = obj.get(fld)
        # bool is an int subclass in Python; `true` is not a score.
        if isinstance(v, bool) or not isinstance(v, int):
            return None, f"field {fld!r} must be an integer {rubric.low}-{rubric.high}, got {v!r}"
        if not rubric.low <= v <= rubric.high:
            return None, f"field {fld!r} = {v} is outside {rubric.low}-{rubric.high}"
        scores[crit] = v
    overall = sum(scores.values()) / len(scores)
    judge_overall = obj.get("overall_score")
    mismatch = (
        isinstance(judge_overall, int | float) and abs(float(judge_overall) - round(overall, 1)) > 0.051
    )
    return {
        "scores": scores,
        "overall": overall,
        "judge_overall": judge_overall,
        "overall_mismatch": mismatch,
        "reasoning": {k: obj.get(k) for k in rubric.reasoning_fields},
        "detailed_alignment_check": obj.get("detailed_alignment_check"),
        "usability_assessment": obj.get("usability_assessment"),
        "image_text_pairing": obj.get("image_text_pairing"),
    }, None
