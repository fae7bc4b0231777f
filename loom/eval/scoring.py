"""Judge a run folder with a tutorial rubric (Tables 1, 2, 4) and write the score files.

Writes `RUN/scores/judge-<rubric>__<model>.jsonl` (one record per item × repeat, with raw replies) and the
matching `summary-…json` (per-criterion mean, n_valid, std over repeats, judge settings, usage). Reruns are free:
every call is served from the judge cache.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from loom.eval.aggregate import summarize
from loom.eval.fsio import (
    EvalInputError,
    atomic_write_json,
    atomic_write_jsonl,
    read_id_list,
    read_json,
    read_jsonl,
)
from loom.eval.judge import JudgeClient
from loom.eval.results import TutorialResult, load_run, run_text_source
from loom.eval.rubrics import Rubric, build_messages, validate_reply


def model_slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model)


def judge_file(run_dir: Path, rubric: Rubric, judge_model: str) -> Path:
    return Path(run_dir) / "scores" / f"judge-{rubric.name}__{model_slug(judge_model)}.jsonl"


def summary_file(run_dir: Path, rubric: Rubric, judge_model: str) -> Path:
    return Path(run_dir) / "scores" / f"summary-{rubric.name}__{model_slug(judge_model)}.json"


def score_run(
    run_dir: Path, rubric: Rubric, client: JudgeClient, repeats: int = 3, subset_file: Path | None = None
) -> dict[str, Any]:
    results = load_run(run_dir)
    jobs: list[tuple[TutorialResult, int]] = [(r, k) for r in results for k in range(repeats)]

    def one(job: tuple[TutorialResult, int]) -> dict[str, Any]:
        res, rep = job
        out = client.ask_json(build_messages(rubric, res), lambda o: validate_reply(rubric, o), repeat=rep)
        rec: dict[str, Any] = {
            "item_id": res.item_id,
            "repeat": rep,
            "valid": out.valid,
            "scores": out.parsed["scores"] if out.parsed else None,
            "overall": out.parsed["overall"] if out.parsed else None,
            "error": out.error,
            "reasked": out.reasked,
            "judge_model": client.cfg.model,
            "judge_model_served": out.model_served,
            "replies": out.replies,
        }
        if out.parsed:
            rec["details"] = {k: v for k, v in out.parsed.items() if k not in ("scores", "overall")}
        return rec

    out = judge_file(run_dir, rubric, client.cfg.model)
    journal = out.with_name(out.name + ".partial")  # finished items survive a crash; removed once complete
    records = client.judge_many(one, jobs, journal=journal, key=lambda j: f"{j[0].item_id}:{j[1]}")
    atomic_write_jsonl(out, records)
    journal.unlink(missing_ok=True)
    summary = {
        "rubric": rubric.name,
        "run": str(run_dir),
        "num_items": len(results),
        "repeats": repeats,
        "text_source": run_text_source(results),
        "judge": client.cfg.public(),
        "criteria": summarize(records, rubric.criteria),
        "invalid_records": sum(1 for r in records if not r["valid"]),
        "usage": client.usage.summary(client.cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if subset_file is not None:
        subset = set(read_id_list(subset_file))
        summary["subset"] = {
            "file": str(subset_file),
            "criteria": summarize(records, rubric.criteria, subset),
        }
    atomic_write_json(summary_file(run_dir, rubric, client.cfg.model), summary)
    return summary


def find_judge_records(
    run_dir: Path, rubric: Rubric, judge_model: str | None
) -> tuple[list[dict[str, Any]], str]:
    """Load the judge records of a run; with several judge models present, `judge_model` must pick one."""
    scores = Path(run_dir) / "scores"
    if judge_model is not None:
        path = judge_file(run_dir, rubric, judge_model)
        return read_jsonl(path, "judge score file"), judge_model
    found = sorted(scores.glob(f"judge-{rubric.name}__*.jsonl")) if scores.is_dir() else []
    if not found:
        raise EvalInputError(
            f"{run_dir}: no {rubric.name} judge scores (scores/judge-{rubric.name}__*.jsonl); "
            f"run `python -m loom.eval score --rubric {rubric.name} --run {run_dir}` first"
        )
    if len(found) > 1:
        raise EvalInputError(
            f"{run_dir}: judge scores from several models ({[p.name for p in found]}); "
            "pass --judge-model to choose one"
        )
    rows = read_jsonl(found[0], "judge score file")
    return rows, str(rows[0]["judge_model"]) if rows else found[0].stem.split("__", 1)[1]


def run_meta(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "run.json"
    return read_json(p, "run metadata") if p.is_file() else {}
