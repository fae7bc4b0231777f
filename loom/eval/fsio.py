"""Small file helpers shared by the eval suite: atomic writes and JSON reads with actionable errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..utils.io import (  # noqa: F401  (re-exported for the eval suite)
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
)


class EvalInputError(ValueError):
    """Bad user input (file, row, flag). The message names the offending place and the fix."""


def read_json(path: Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalInputError(
            f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg}); "
            "regenerate it or fix the file by hand"
        ) from e


def read_jsonl(path: Path, what: str = "JSONL file") -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} not found: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise EvalInputError(
                f"{what} {path}, line {lineno}: not valid JSON ({e.msg}); "
                "delete the line or rerun the command that wrote the file"
            ) from e
    return rows


def read_id_list(path: Path) -> list[str]:
    """One id per line; blank lines and `#` comments are ignored (the committed id lists carry a header)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"id list not found: {path}")
    ids = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise EvalInputError(
            f"id list {path} has no ids yet; draw it from a local copy of the data with "
            "`python -m loom.eval select ...` (the command is in the file's header)"
        )
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise EvalInputError(f"id list {path} repeats ids {dup[:5]}; each id must appear once")
    return ids
