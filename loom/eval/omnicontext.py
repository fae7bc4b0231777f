"""OmniContext scoring (Table 3): Prompt Following and Subject Consistency 0–10, overall = √(PF·SC).

Two modes (eval-protocols §4):
- `official` reproduces `omnicontext/test_omnicontext_score.py` @ 0f72fa9: GPT-4.1, default temperature (field
  omitted), max_tokens 1400, no JSON mode, its reply parser, three tries *without* a break (each try makes both
  calls; the last successfully parsed PF and SC win), and a uniform random 0–10 "guess" when nothing parsed. The
  guess is drawn from an RNG seeded per (key, criterion, repeat) so reruns are reproducible; guesses are counted.
- `fixed`: same prompts and images, temperature 0, one call per criterion, integer 0–10 required, one re-ask, then
  *invalid* (never a guess); run with several repeats and report mean ± std.
Differences from the official code that remain in `official` mode: transport errors (429/5xx/timeouts) are retried
by our client instead of consuming one of the three tries, and replies that only the official `fix_json` fallback
could read count as parse failures (that fallback turns scores into lists, on which the official statistics crash).
Samples whose score is not a number (the official statistics would crash) are counted as invalid.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from loom.eval.fsio import atomic_write_json, atomic_write_jsonl
from loom.eval.images import omnicontext_image_url, open_rgb
from loom.eval.judge import CallFailed, JudgeClient
from loom.eval.omnicontext_prompts import prompt_following, subject_consistency
from loom.eval.scoring import model_slug

TASKS = (
    "single_character",
    "single_object",
    "multi_character",
    "multi_object",
    "multi_character_object",
    "scene_character",
    "scene_object",
    "scene_character_object",
)
# Loom's Table 3 columns (MULTIPLE ×3, SCENE ×3); Avg† is their unweighted mean, not the official 8-task mean.
TABLE3_TASKS = TASKS[2:]
OFFICIAL_TRIES = 3


@dataclass
class OmniItem:
    key: str
    task_type: str
    instruction: str
    language: str
    input_images: list[Image.Image] = field(default_factory=list)


def output_path(run_dir: Path, item: OmniItem) -> Path:
    """The official layout `<model>/fullset/<task_type>/<key>.png`, so official tools can read our runs too."""
    return Path(run_dir) / "fullset" / item.task_type / f"{item.key}.png"


def build_messages(prompt: str, item: OmniItem, output: Image.Image) -> list[dict[str, Any]]:
    """Prompt text, then every input image, then the generated image last; one user message."""
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    for im in item.input_images:
        content.append({"type": "image_url", "image_url": {"url": omnicontext_image_url(im, is_input=True)}})
    content.append({"type": "image_url", "image_url": {"url": omnicontext_image_url(output, is_input=False)}})
    return [{"role": "user", "content": content}]


def official_parse(text: str) -> dict[str, Any]:
    """`mllm_output_to_dict` without `fix_json`: outermost {...} with newlines removed, or a bare 0–10 integer."""
    i, j = text.find("{"), text.rfind("}") + 1
    if i == -1 or j == 0:
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"no JSON in reply: {text[:80]!r}") from None
        if 0 <= n <= 10:
            return {"score": n, "reasoning": "System: output is simply a number"}
        raise ValueError(f"no JSON in reply: {text[:80]!r}")
    obj = json.loads(text[i:j].strip().replace("\n", ""))
    if not isinstance(obj, dict):
        raise ValueError("reply JSON is not an object")
    return obj


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def score_official(
    client: JudgeClient, item: OmniItem, output: Image.Image, repeat: int = 0, seed: int = 0
) -> dict[str, Any]:
    with_scene = "scene" in item.task_type
    pf_msgs = build_messages(prompt_following(item.instruction), item, output)
    sc_msgs = build_messages(subject_consistency(item.instruction, with_scene), item, output)
    pf = sc = None
    pf_raw = sc_raw = ""
    for t in range(OFFICIAL_TRIES):  # no break on success: all three tries run, as in the official loop
        try:
            pf_raw = client.complete(pf_msgs, repeat=f"official:{repeat}:{t}").text
            sc_raw = client.complete(sc_msgs, repeat=f"official:{repeat}:{t}").text
        except CallFailed:
            pf_raw = sc_raw = ""  # the official ask_gpt4o returns "" on a failed request
        try:
            pf = official_parse(pf_raw)  # a PF parse failure leaves SC unparsed for this try, as officially
            sc = official_parse(sc_raw)
        except (ValueError, json.JSONDecodeError):
            pass
    rec: dict[str, Any] = {
        "key": item.key,
        "task_type": item.task_type,
        "language": item.language,
        "repeat": repeat,
        "mode": "official",
        "guessed": [],
    }
    for name, parsed, raw in (("PF", pf, pf_raw), ("SC", sc, sc_raw)):
        if parsed is None:
            rng = random.Random(f"{seed}:{item.key}:{name}:{repeat}")
            parsed = {"score": rng.randint(0, 10), "reasoning": f"guess_if_cannot_parse | {raw}"}
            rec["guessed"].append(name)
        rec[name] = _number(parsed.get("score"))
        rec[f"{name}_raw_score"] = parsed.get("score")
        rec[f"{name}_reason"] = parsed.get("reasoning")
    # A non-numeric score or a negative product would crash the official statistics; count it as invalid.
    both = rec["PF"] is not None and rec["SC"] is not None
    rec["overall"] = math.sqrt(rec["PF"] * rec["SC"]) if both and rec["PF"] * rec["SC"] >= 0 else None
    rec["valid"] = rec["overall"] is not None
    rec["out_of_range"] = rec["valid"] and not (0 <= rec["PF"] <= 10 and 0 <= rec["SC"] <= 10)
    return rec


def validate_score(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    v = obj.get("score")
    if isinstance(v, bool) or not isinstance(v, int):
        return None, f"'score' must be an integer 0-10, got {v!r}"
    if not 0 <= v <= 10:
        return None, f"'score' = {v} is outside 0-10"
    return {"score": v, "reasoning": obj.get("reasoning")}, None


def score_fixed(client: JudgeClient, item: OmniItem, output: Image.Image, repeat: int = 0) -> dict[str, Any]:
    with_scene = "scene" in item.task_type
    rec: dict[str, Any] = {
        "key": item.key,
        "task_type": item.task_type,
        "language": item.language,
        "repeat": repeat,
        "mode": "fixed",
        "guessed": [],
    }
    for name, prompt in (
        ("PF", prompt_following(item.instruction)),
        ("SC", subject_consistency(item.instruction, with_scene)),
    ):
        out = client.ask_json(build_messages(prompt, item, output), validate_score, repeat=repeat)
        rec[name] = float(out.parsed["score"]) if out.parsed else None
        rec[f"{name}_reason"] = out.parsed["reasoning"] if out.parsed else None
        rec[f"{name}_error"] = out.error
        rec[f"{name}_replies"] = out.replies
    rec["valid"] = rec["PF"] is not None and rec["SC"] is not None
    rec["out_of_range"] = False
    rec["overall"] = math.sqrt(rec["PF"] * rec["SC"]) if rec["valid"] else None
    return rec


def aggregate(records: list[dict[str, Any]], language: str = "en") -> dict[str, Any]:
    """Per repeat: per-task means of PF/SC/overall over valid samples in `language`, Avg† (6 columns) and the
    official macro average over the tasks present; then mean and sample std of every number across repeats."""
    by_rep: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["language"] == language and r["valid"]:
            by_rep[int(r["repeat"])][r["task_type"]].append(r)
    per_rep = []
    for rep in sorted(by_rep):
        tasks = {}
        for task, rows in by_rep[rep].items():
            tasks[task] = {m: sum(x[m] for x in rows) / len(rows) for m in ("PF", "SC", "overall")}
            tasks[task]["n"] = len(rows)
        avg_dagger = (
            sum(tasks[t]["overall"] for t in TABLE3_TASKS) / len(TABLE3_TASKS)
            if all(t in tasks for t in TABLE3_TASKS)
            else None
        )
        avg_official = {m: sum(v[m] for v in tasks.values()) / len(tasks) for m in ("PF", "SC", "overall")}
        per_rep.append(
            {"tasks": tasks, "avg_dagger": avg_dagger, "avg_official": avg_official, "num_tasks": len(tasks)}
        )

    def mean_std(vals: list[float]) -> dict[str, float | None]:
        return {
            "mean": sum(vals) / len(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) >= 2 else None,
        }

    tasks_all = sorted({t for p in per_rep for t in p["tasks"]}, key=TASKS.index)
    return {
        "language": language,
        "repeats": len(per_rep),
        "per_repeat": per_rep,
        "tasks": {
            t: {
                m: mean_std([p["tasks"][t][m] for p in per_rep if t in p["tasks"]])
                for m in ("PF", "SC", "overall")
            }
            for t in tasks_all
        },
        "avg_dagger": mean_std([p["avg_dagger"] for p in per_rep if p["avg_dagger"] is not None]),
        "avg_official_overall": mean_std([p["avg_official"]["overall"] for p in per_rep]),
        "num_guessed": sum(len(r["guessed"]) for r in records),
        "num_invalid": sum(1 for r in records if not r["valid"]),
        "num_out_of_range": sum(1 for r in records if r["out_of_range"]),
    }


def score_run(
    run_dir: Path,
    items: list[OmniItem],
    client: JudgeClient,
    mode: str = "official",
    repeats: int = 1,
    seed: int = 0,
    language: str = "en",
) -> dict[str, Any]:
    if mode not in ("official", "fixed"):
        raise ValueError(f"mode must be 'official' or 'fixed', got {mode!r}")
    present = [it for it in items if output_path(run_dir, it).is_file()]
    missing = [f"{it.task_type}/{it.key}" for it in items if not output_path(run_dir, it).is_file()]
    jobs = [(it, r) for it in present for r in range(repeats)]

    def one(job: tuple[OmniItem, int]) -> dict[str, Any]:
        it, rep = job
        out = open_rgb(output_path(run_dir, it))
        return (
            score_official(client, it, out, rep, seed)
            if mode == "official"
            else score_fixed(client, it, out, rep)
        )

    stem = f"omnicontext-{mode}__{model_slug(client.cfg.model)}"
    out = Path(run_dir) / "scores" / f"{stem}.jsonl"
    journal = out.with_name(out.name + ".partial")  # finished items survive a crash; removed once complete
    records = client.judge_many(one, jobs, journal=journal, key=lambda j: f"{j[0].task_type}/{j[0].key}:{j[1]}")
    atomic_write_jsonl(out, records)
    journal.unlink(missing_ok=True)
    summary = {
        "mode": mode,
        "run": str(run_dir),
        "num_items": len(items),
        "num_scored": len(present),
        "missing_outputs": missing,
        "judge": client.cfg.public(),
        **aggregate(records, language),
        "usage": client.usage.summary(client.cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(Path(run_dir) / "scores" / f"summary-{stem}.json", summary)
    return summary
