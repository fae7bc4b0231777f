"""Task prompts shared by training-data construction (converters, `loom data` stages) and evaluation
(`loom.eval.benchmarks`), so a model is trained on the wording it is evaluated with.

Entity tokens (paper §3.3, appendix A.1): a learnable tag names the subject of each image and is immediately
followed by its description — "the <model> woman in a linen dress from <image 1>" — so the token binds to the
visual concept and the words carry the attributes.
"""

from __future__ import annotations

import re

RECIPE_PROMPT = "Create a tutorial for making {goal}."  # phrasing of the paper's Fig. 4 (RecipeGen, Table 1)
PAINTING_PROMPT = "Create a {n}-step tutorial that ends at the given image: {subject}."  # [our choice], Tables 2/4
STYLE_PROMPT = "Apply the <style> of <image 1> to <image 2>."  # input_images = [style reference, content]
DESTYLIZE_PROMPT = (
    "Render this exact scene as a realistic, natural photograph: keep the subject, composition, pose, layout and "
    "colours, and remove every trace of artistic style (brush strokes, line art, texture, stylised shading)."
)

# Subject-folder names → entity token (plural and singular accepted); anything else needs --entity NAME=<token>.
CATEGORY_TOKENS = {
    "model": "<model>", "person": "<model>", "people": "<model>", "garment": "<garment>", "clothing": "<garment>",
    "upper": "<upper>", "top": "<upper>", "lower": "<lower>", "bottom": "<lower>", "bag": "<bag>",
    "product": "<object>", "object": "<object>", "character": "<character>", "scene": "<scene>",
    "background": "<scene>", "style": "<style>",
}


def recipe_prompt(goal: str) -> str:
    return RECIPE_PROMPT.format(goal=goal.strip().rstrip("."))


def painting_prompt(num_steps: int, subject: str) -> str:
    return PAINTING_PROMPT.format(n=num_steps, subject=subject.strip().rstrip("."))


def category_token(category: str, overrides: dict[str, str] | None = None) -> str:
    """Entity token of a subject category (`models` → `<model>`); ValueError naming the fix when unknown."""
    # lazily: loom.data.entities imports torch, and the eval loaders import this module for two strings
    from ..entities import ENTITY_RE

    name = category.strip().lower()
    for key in (name, name[:-1] if name.endswith("s") else name):
        if overrides and key in overrides:
            token = overrides[key]
            break
        if key in CATEGORY_TOKENS:
            token = CATEGORY_TOKENS[key]
            break
    else:
        raise ValueError(f"no entity token for category {category!r}: name the folder after one of "
                         f"{sorted(CATEGORY_TOKENS)} or pass --entity {name}=<token>")
    if not ENTITY_RE.match(token):
        raise ValueError(f"entity token {token!r} for {category!r} must look like <name> (lower case)")
    return token


def unregistered(tokens: list[str]) -> list[str]:
    """Tokens the default training vocabulary lacks (add them to data.build.entity_tokens)."""
    from ..entities import DEFAULT_ENTITY_TOKENS

    return sorted(set(tokens) - set(DEFAULT_ENTITY_TOKENS))


def entity_phrase(token: str, description: str = "") -> str:
    """`<model> woman in a casual pose`: the token, then its description (single line, no tags)."""
    desc = " ".join(re.sub(r"<[^>]*>", " ", description).split()).rstrip(".")
    return f"{token} {desc}" if desc else token


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def compose_prompt(entities: list[tuple[str, str]]) -> str:
    """Forward instruction: input image k holds entity k = (token, description)."""
    parts = [f"the {entity_phrase(t, d)} from <image {k}>" for k, (t, d) in enumerate(entities, start=1)]
    return f"Combine {_join(parts)} into one coherent, realistic image."


def decompose_prompt(entities: list[tuple[str, str]]) -> str:
    """Reverse instruction: target k is entity k, isolated."""
    parts = [f"the {entity_phrase(t, d)}" for t, d in entities]
    return (f"Decompose <image 1> into {_join(parts)}, each isolated on a plain white background, "
            "one image per entity in this order.")


def insert_entity_tokens(prompt: str, tokens: dict[int, str]) -> str:
    """Put each input image's entity token right before its `<image k>` placeholder (tokens: k → token); a
    prompt without placeholders gets them prepended, in input order, as "<token> <image k>" anchors."""
    placeholder = re.compile(r"<image[ _]?(\d+)>")
    if not placeholder.search(prompt):
        anchors = " ".join(f"{tokens[k]} <image {k}>" for k in sorted(tokens))
        return f"{anchors} {prompt}".strip()

    def sub(m: re.Match) -> str:
        k = int(m.group(1))
        before = prompt[: m.start()].rstrip()
        if k not in tokens or before.endswith(tokens[k]):  # idempotent: never doubles a token
            return m.group(0)
        return f"{tokens[k]} {m.group(0)}"

    return placeholder.sub(sub, prompt)
