"""Manifest rows: naming samples and the per-task schema checks shared by the builders (which raise) and
`loom.data.validate` (which collects). Reading manifests is `loom.data.manifest`.

Row schema (image references: paths relative to the manifest folder, or bytes / {"bytes","path"} structs from
parquet and HF readers, see `loom.data.manifest.load_image`):
  tutorial   id, prompt, plan [step texts, no "Step k: "], frames [one per step], input_images [] | [ref]
  compose    id, prompt (with <image k> and entity tokens), input_images [k refs], targets [1]
  decompose  id, prompt, input_images [composite], targets [M]
  style      id, prompt ("Apply the <style> of <image 1> to <image 2>."), input_images [style, content],
             targets [1]
  t2i        id, prompt, targets [1]
  edit       id, prompt, input_images [1], targets [1]
  understand id, prompt, input_images [...], answer
`meta` is free-form and ignored here. A tutorial `plan` given as one string is parsed with `parse_plan`.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from .entities import unknown_tags
from .plan import DEFAULT_N_MAX, parse_plan

TASKS = ("tutorial", "compose", "decompose", "style", "t2i", "edit", "understand")
PLACEHOLDER_RE = re.compile(r"<image[ _]?(\d+)>")
# (min, max) counts of input_images / targets per task; None = unbounded
_INPUTS = {"tutorial": (0, 1), "compose": (1, None), "decompose": (1, 1), "style": (2, 2), "t2i": (0, 0),
           "edit": (1, 1), "understand": (0, None)}
_TARGETS = {"compose": (1, 1), "decompose": (1, None), "style": (1, 1), "t2i": (1, 1), "edit": (1, 1)}


class SampleError(ValueError):
    """A manifest row that cannot become a training sample; the message always starts with its source.
    Raised with `source=` and `reason=` the two parts are also kept apart (reports print each once)."""

    def __init__(self, message: str, *, source: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.source, self.reason = source, reason or message


class ImageError(SampleError):
    """An image reference that cannot be used: missing, undecodable, a decompression bomb, or outside the data
    root. The message names the reference, not the row (the caller adds the row)."""


# What the loader counts (and skips) as a bad sample: bad rows and bad files. Anything else — TypeError,
# KeyError, a ValueError from our own code … — is a bug and stops the run with its traceback.
DATA_ERRORS: tuple[type[BaseException], ...] = (SampleError, OSError, Image.DecompressionBombError)


def record_source(record: dict, manifest: str = "") -> str:
    """`manifest:line:id`. line is 1-based: the file line of a JSONL row (`record["_line"]`, stored by
    `loom.data.manifest.Manifest.row`), else the 0-based row index `record["_row"]` + 1 (parquet / HF rows);
    "?" when unknown."""
    line = record.get("_line")
    if line is None and isinstance(record.get("_row"), int):
        line = record["_row"] + 1
    return f"{manifest or '<records>'}:{'?' if line is None else line}:{record.get('id', '?')}"


def tutorial_steps(record: dict) -> tuple[list[str], list[str]]:
    """(steps, problems) of a tutorial row, *before* truncation (the caller truncates at n_max)."""
    plan = record.get("plan")
    if isinstance(plan, str):
        parsed = parse_plan(plan, n_max=None)
        return parsed.steps, [f"plan unparsable: {p}" for p in parsed.problems]
    if not isinstance(plan, list) or not all(isinstance(s, str) for s in plan):
        return [], ["plan must be a list of step strings (or one plan string)"]
    problems = []
    for k, s in enumerate(plan, 1):
        if not s.strip():
            problems.append(f"plan step {k} is empty")
        elif "\n" in s.strip():
            problems.append(f"plan step {k} spans several lines")
        else:
            # a step that itself parses as several steps would not round-trip through format_plan/parse_plan
            again = parse_plan(f"Step 1: {s}", n_max=None)
            if len(again.steps) != 1 or again.problems:
                problems.append(f"plan step {k} contains step markers: {s[:60]!r}")
    return [s.strip() for s in plan], problems


def _count_problem(name: str, n: int, bounds: tuple[int, int | None]) -> str | None:
    lo, hi = bounds
    if n < lo or (hi is not None and n > hi):
        want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else '∞'}"
        return f"{name}: {n} given, {want} expected"
    return None


def check_record(record: dict, n_max: int = DEFAULT_N_MAX, max_frames: int = 8, max_references: int = 4,
                 entity_tokens: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one row. Errors make the row unusable; warnings (truncation, unknown entity tags,
    unreferenced images) are reported but the row still builds."""
    errors, warnings = [], []
    task = record.get("task")
    if task not in TASKS:
        return [f"unknown task {task!r} (known: {', '.join(TASKS)})"], []
    rid = record.get("id")
    if isinstance(rid, (int, float)) and not isinstance(rid, bool):
        errors.append(f"'id' is the number {rid!r}; ids are strings (write \"{rid}\")")
    elif not isinstance(rid, str) or not rid:
        errors.append("missing or empty 'id'" if rid in (None, "") else
                      f"'id' must be a string, got {type(rid).__name__}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        errors.append("missing or empty 'prompt'")
        prompt = ""
    lists = {}
    for key in ("input_images", "targets", "frames"):
        v = record.get(key, [])
        if not isinstance(v, list) or not all(is_image_ref(x) for x in v):
            errors.append(f"'{key}' must be a list of image references (paths)")
            v = []
        lists[key] = v
    n_in = len(lists["input_images"])
    if (p := _count_problem("input_images", n_in, _INPUTS[task])) is not None:
        errors.append(p)
    if task in _TARGETS and (p := _count_problem("targets", len(lists["targets"]), _TARGETS[task])):
        errors.append(p)
    if task in ("compose", "style", "tutorial", "decompose") and n_in > max_references:
        errors.append(f"{n_in} input images but the model has {max_references} reference slots")
    if task == "decompose" and len(lists["targets"]) > max_frames:
        errors.append(f"{len(lists['targets'])} outputs but the model has {max_frames} frame slots")
    if task == "understand" and not (isinstance(record.get("answer"), str) and record["answer"].strip()):
        errors.append("missing or empty 'answer'")
    if task == "tutorial":
        steps, problems = tutorial_steps(record)
        errors += problems
        n_frames = len(lists["frames"])
        if steps and len(steps) != n_frames:
            more = "more steps than images" if len(steps) > n_frames else "more images than steps"
            errors.append(f"{more}: {len(steps)} plan steps but {n_frames} frames")
        if not steps and not problems:
            errors.append("empty plan")
        if len(steps) > n_max:
            warnings.append(f"{len(steps)} steps truncated to N_max = {n_max}")
    refs = sorted({int(m.group(1)) for m in PLACEHOLDER_RE.finditer(prompt)})
    bad = [k for k in refs if not 1 <= k <= n_in]
    if bad:
        errors.append(f"prompt refers to <image {bad[0]}> but the row has {n_in} input images")
    if task in ("compose", "style", "decompose"):
        missing = [k for k in range(1, n_in + 1) if k not in refs]
        if missing:
            warnings.append(f"input image(s) {missing} not referenced by an <image k> placeholder "
                            "(placed before the text)")
    texts = [prompt] + ([record["answer"]] if isinstance(record.get("answer"), str) else [])
    if entity_tokens:
        for tag in sorted({t for text in texts for t in unknown_tags(text, set(entity_tokens))}):
            warnings.append(f"unknown tag {tag} (not an entity token; it will be split into sub-tokens)")
    return errors, warnings


def is_image_ref(x: Any) -> bool:
    """A non-empty path, raw bytes, a {"bytes"/"path"} struct, or a decoded PIL image."""
    if isinstance(x, str):
        return bool(x)
    if isinstance(x, dict):
        return bool(x.get("bytes") or x.get("path"))
    return isinstance(x, (bytes, bytearray)) or hasattr(x, "getpixel")


def describe_ref(x: Any) -> str:
    """Short printable name of an image reference for error messages."""
    if isinstance(x, str):
        return repr(x)
    if isinstance(x, dict) and x.get("path"):
        return repr(x["path"])
    if isinstance(x, (bytes, bytearray)) or (isinstance(x, dict) and x.get("bytes")):
        return "<inline image bytes>"
    return f"<{type(x).__name__}>"
