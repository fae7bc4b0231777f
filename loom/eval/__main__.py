"""`python -m loom.eval <subcommand>` (also `loom eval …`): generate, score, clip, table, correlate, human, select,
dry-run. Every subcommand reads and writes files only; see evals/README.md for the per-table recipes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from loom.eval.fsio import EvalInputError
from loom.eval.judge import JudgeError

DEFAULT_JUDGE = {"tutorial": "gpt-4o-2024-08-06", "painting": "gpt-4o-2024-08-06", "omnicontext": "gpt-4.1"}
BENCH_RUBRIC = {"recipegen": "tutorial", "makeanything": "painting"}


def _runs(pairs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in pairs:
        label, sep, path = p.partition("=")
        if not sep or not label or not path:
            raise EvalInputError(
                f"--run {p!r}: expected LABEL=RUN_DIR, e.g. --run 'Loom (ours)=runs/recipegen/loom'"
            )
        if label in out:
            raise EvalInputError(f"--run label {label!r} given twice")
        out[label] = Path(path)
    if not out:
        raise EvalInputError("give at least one --run LABEL=RUN_DIR")
    return out


def _add_judge_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge")
    g.add_argument(
        "--judge-model", help="pinned model name (default: gpt-4o-2024-08-06; gpt-4.1 for omnicontext)"
    )
    g.add_argument("--judge-base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="env var that holds the key")
    g.add_argument("--judge-workers", type=int, default=16)
    g.add_argument("--judge-max-tokens", type=int, default=1500)
    g.add_argument("--judge-timeout", type=float, default=120.0)
    g.add_argument("--judge-max-attempts", type=int, default=6)
    g.add_argument("--judge-backoff", type=float, default=1.0, help="base seconds of the exponential backoff")
    g.add_argument("--judge-price-in", type=float, help="USD per 1M input tokens (cost estimate only)")
    g.add_argument("--judge-price-out", type=float, help="USD per 1M output tokens")
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("LOOM_JUDGE_CACHE", Path.home() / ".cache" / "loom" / "judge")),
    )
    g.add_argument("--repeats", type=int, help="judge runs per item (default 3; 1 for omnicontext official)")


def _judge_client(a: argparse.Namespace, kind: str, official: bool = False) -> Any:
    from loom.eval.judge import JudgeClient, JudgeConfig

    cfg = JudgeConfig(
        model=a.judge_model or DEFAULT_JUDGE[kind],
        base_url=a.judge_base_url,
        api_key_env=a.judge_api_key_env,
        workers=a.judge_workers,
        timeout_s=a.judge_timeout,
        max_attempts=a.judge_max_attempts,
        backoff_base_s=a.judge_backoff,
        cache_dir=a.cache_dir,
        price_in_per_mtok=a.judge_price_in,
        price_out_per_mtok=a.judge_price_out,
        max_tokens=1400 if kind == "omnicontext" else a.judge_max_tokens,
        # The OmniContext prompt never says "JSON", which json_object mode requires; the official
        # scorer also leaves temperature at the API default.
        json_mode=kind != "omnicontext",
        temperature=None if official else 0.0,
    )
    return JudgeClient(cfg)


def _load_items(a: argparse.Namespace) -> list[Any]:
    from loom.eval import benchmarks as B
    from loom.eval.fsio import read_id_list

    ids = read_id_list(a.ids) if a.ids else None
    if a.bench == "recipegen":
        return B.load_recipegen(a.data, ids, split=a.split or "test")
    if a.bench == "makeanything":
        return B.load_makeanything(a.data, ids)
    items = B.load_omnicontext(a.data or "OmniGen2/OmniContext", split=a.split or "train")
    if ids is not None:
        keep = set(ids)
        items = [it for it in items if it.key in keep or f"{it.task_type}__{it.key}" in keep]
    return items


def cmd_generate(a: argparse.Namespace) -> int:
    from loom.eval import benchmarks as B
    from loom.eval import harness as H

    items = _load_items(a)
    if a.bench == "omnicontext":
        items = B.omnicontext_bench_items(items)
    if a.generator == "loom-cli":
        if not a.model:
            raise EvalInputError("--generator loom-cli needs --model MODEL_DIR (a loom export folder)")
        task = a.loom_task or ("compose" if a.bench == "omnicontext" else "tutorial")
        gen: Any = H.LoomCLIGenerator(
            Path(a.model), task, tuple(a.loom_exe.split()), a.image_flag, tuple(a.extra_arg or ()), a.timeout
        )
    else:
        if not a.plans or not a.step_command:
            raise EvalInputError(
                "--generator external-plan needs --plans (JSON or a Loom run folder) and "
                "--step-command (template with {prompt} {out} {seed} {step} {history})"
            )
        gen = H.ExternalPlanGenerator(
            H.load_plans(Path(a.plans)), H.CommandStepRenderer(a.step_command, a.timeout)
        )
    rep = H.run_generation(
        items,
        gen,
        Path(a.out),
        model_label=a.label,
        generator_name=a.generator,
        seed=a.seed,
        shard=a.shard,
        num_shards=a.num_shards,
    )
    print(f"done {len(rep.done)}, already done {len(rep.skipped)}, failed {len(rep.failed)}")
    return 1 if rep.failed else 0


def cmd_score(a: argparse.Namespace) -> int:
    if a.bench == "omnicontext":
        from loom.eval import omnicontext as O

        client = _judge_client(a, "omnicontext", official=a.mode == "official")
        items = _load_items(a)
        repeats = a.repeats or (1 if a.mode == "official" else 3)
        s = O.score_run(Path(a.run), items, client, a.mode, repeats, seed=a.seed, language=a.language)
        print(
            json.dumps(
                {
                    "tasks": {t: v["overall"]["mean"] for t, v in s["tasks"].items()},
                    "avg_dagger": s["avg_dagger"],
                    "avg_official": s["avg_official_overall"],
                    "guessed": s["num_guessed"],
                    "invalid": s["num_invalid"],
                    "usage": s["usage"],
                },
                indent=2,
            )
        )
        return 0
    from loom.eval.rubrics import RUBRICS
    from loom.eval.scoring import score_run

    rubric_name = a.rubric or BENCH_RUBRIC.get(a.bench or "")
    if rubric_name is None:
        raise EvalInputError(
            "pass --rubric tutorial|painting (or --bench recipegen|makeanything|omnicontext)"
        )
    client = _judge_client(a, rubric_name)
    s = score_run(Path(a.run), RUBRICS[rubric_name], client, a.repeats or 3, a.subset)
    print(
        json.dumps(
            {"criteria": s["criteria"], "invalid_records": s["invalid_records"], "usage": s["usage"]},
            indent=2,
        )
    )
    return 0


def cmd_clip(a: argparse.Namespace) -> int:
    from loom.eval.clip_score import load_backend, write_clip_scores

    backend = load_backend(a.backend, a.weights, a.device)
    out = write_clip_scores(Path(a.run), backend, tuple(a.variants.split(",")), a.weights, a.batch_size)
    for v, d in out["variants"].items():
        print(f"CLIP ({v}): {d['mean']:.3f} over {d['num_items']} items")
    return 0


def cmd_table(a: argparse.Namespace) -> int:
    from loom.eval import tables as T
    from loom.eval.human import load_human_csv

    runs = _runs(a.run)
    human = load_human_csv(a.human) if getattr(a, "human", None) else None
    n = a.number
    if n == 1:
        t = T.build_table1(runs, a.judge_model, human, a.subset, a.clip_variant)
    elif n == 2:
        t = T.build_table2(runs, a.judge_model, human, a.subset)
    elif n == 3:
        t = T.build_table3(runs, a.mode, a.judge_model)
    elif n == 4:
        t = T.build_table4(runs, a.judge_model, a.subset)
    else:
        if human is None:
            raise EvalInputError(f"table {n} is a human–judge correlation: pass --human RATINGS.csv")
        t = T.build_correlation_table(n, runs, human, a.judge_model)
    paths = T.write_table(t, Path(a.out))
    print(T.render_markdown(t))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_human(a: argparse.Namespace) -> int:
    from loom.eval.human import krippendorff_alpha_interval, load_human_csv, model_summary

    ratings = load_human_csv(a.csv)
    models = sorted({r.model for r in ratings})
    crits = sorted({r.criterion for r in ratings})
    out = {m: {c: model_summary(ratings, m, c) for c in crits} for m in models}
    out["krippendorff_alpha_interval"] = {c: krippendorff_alpha_interval(ratings, c) for c in crits}
    print(json.dumps(out, indent=2))
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    from loom.eval import benchmarks as B
    from loom.eval.fsio import atomic_write_text

    if a.bench == "recipegen":
        eligible = B.recipegen_eligible(B.load_recipegen(a.data, split=a.split or "test"), a.num_plan_steps)
        rule = f"RecipeGen {a.split or 'test'} recipes with exactly {a.num_plan_steps} steps"
    else:
        eligible = [it.item_id for it in B.load_makeanything(a.data, num_panels=a.num_plan_steps)]
        rule = f"MakeAnything painting-type grids with {a.num_plan_steps} panels"
    ids = B.select_ids(eligible, a.n, a.seed)
    header = (
        f"# {rule}; {a.n} of {len(eligible)} eligible, ordered by sha256(f'{a.seed}:{{id}}').\n"
        f"# Regenerate: python -m loom.eval select {a.bench} --data SRC --n {a.n} --seed {a.seed}\n"
    )
    atomic_write_text(Path(a.out), header + "".join(i + "\n" for i in ids))
    print(f"wrote {len(ids)} ids to {a.out}")
    return 0


def cmd_dry_run(a: argparse.Namespace) -> int:
    from loom.eval.dry_run import dry_run

    for p in dry_run(Path(a.out)):
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="loom eval", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser(
        "generate", help="run a generator over a benchmark into a run folder (resumable, sharded)"
    )
    g.add_argument("--bench", required=True, choices=["recipegen", "makeanything", "omnicontext"])
    g.add_argument("--data", help="local path or datasets name (omnicontext default: OmniGen2/OmniContext)")
    g.add_argument("--ids", type=Path, help="id list, e.g. evals/recipegen/test_ids.txt")
    g.add_argument("--split")
    g.add_argument("--out", required=True, type=Path, help="run folder for this model on this benchmark")
    g.add_argument("--label", required=True, help="model label recorded in run.json")
    g.add_argument("--generator", default="loom-cli", choices=["loom-cli", "external-plan"])
    g.add_argument("--model", help="loom export folder (loom-cli)")
    g.add_argument("--loom-task", help="`loom generate <task>` (default tutorial; compose for omnicontext)")
    g.add_argument(
        "--loom-exe", default="loom", help="command that runs the loom CLI (e.g. 'python -m loom')"
    )
    g.add_argument("--image-flag", default="--image", help="CLI flag for each conditioning image")
    g.add_argument(
        "--extra-arg", action="append", help="extra argument passed through to the CLI (repeatable)"
    )
    g.add_argument("--plans", help="external-plan: JSON {item_id: [steps]} or a Loom run folder")
    g.add_argument("--step-command", help="external-plan: command template rendering one step")
    g.add_argument("--timeout", type=float, help="seconds per generator call")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--shard", type=int, default=0)
    g.add_argument("--num-shards", type=int, default=1)
    g.set_defaults(fn=cmd_generate)

    s = sub.add_parser("score", help="LLM-judge a run folder (Tables 1–4) or OmniContext outputs (Table 3)")
    s.add_argument("--run", required=True, type=Path)
    s.add_argument("--bench", choices=["recipegen", "makeanything", "omnicontext"])
    s.add_argument("--rubric", choices=["tutorial", "painting"])
    s.add_argument("--subset", type=Path, help="also summarise this id subset (e.g. the human-rated cases)")
    s.add_argument("--mode", default="official", choices=["official", "fixed"], help="OmniContext scorer")
    s.add_argument("--data", help="OmniContext source (default OmniGen2/OmniContext)")
    s.add_argument("--ids", type=Path)
    s.add_argument("--split")
    s.add_argument("--language", default="en")
    s.add_argument("--seed", type=int, default=0, help="seed of the official mode's guess fallback")
    _add_judge_args(s)
    s.set_defaults(fn=cmd_score)

    c = sub.add_parser("clip", help="CLIP ViT-L/14 score of a run folder → scores/clip.json")
    c.add_argument("--run", required=True, type=Path)
    c.add_argument("--backend", default="transformers", choices=["transformers", "open_clip"])
    c.add_argument(
        "--weights", help="HF name/path (transformers) or ARCH:TAG (open_clip); default ViT-L/14 OpenAI"
    )
    c.add_argument("--variants", default="step,prompt")
    c.add_argument("--device", default="cpu")
    c.add_argument("--batch-size", type=int, default=16)
    c.set_defaults(fn=cmd_clip)

    for name, nums, hlp in (
        ("table", [1, 2, 3, 4, 5, 6], "print/write Table N (md, tex, json)"),
        ("correlate", [5, 6], "Tables 5–6: Pearson r between human and judge scores"),
    ):
        t = sub.add_parser(name, help=hlp)
        t.add_argument("number", type=int, choices=nums)
        t.add_argument(
            "--run", action="append", default=[], help="LABEL=RUN_DIR (repeatable, table row order)"
        )
        t.add_argument("--human", type=Path, help="human ratings CSV (see loom/eval/human.py)")
        t.add_argument("--judge-model", help="pick the judge scores when a run has several")
        t.add_argument(
            "--subset", type=Path, help="restrict G columns to these ids (e.g. the 20 human cases)"
        )
        t.add_argument(
            "--mode", default="official", choices=["official", "fixed"], help="Table 3 scorer mode"
        )
        t.add_argument("--clip-variant", default="step", choices=["step", "prompt"])
        t.add_argument("--out", type=Path, default=Path("tables"))
        t.set_defaults(fn=cmd_table)

    h = sub.add_parser("human", help="summarise a human ratings CSV (means, raters per case, Krippendorff α)")
    h.add_argument("csv", type=Path)
    h.set_defaults(fn=cmd_human)

    se = sub.add_parser("select", help="draw the fixed evaluation id list from a local copy of the data")
    se.add_argument("bench", choices=["recipegen", "makeanything"])
    se.add_argument("--data", required=True)
    se.add_argument("--split")
    se.add_argument("--n", type=int, required=True)
    se.add_argument("--plan-steps", dest="num_plan_steps", type=int, default=4,
                    help="keep recipes / painting grids with exactly this many steps (default 4)")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--out", type=Path, required=True)
    se.set_defaults(fn=cmd_select)

    d = sub.add_parser("dry-run", help="tiny end-to-end run (fake generator, loopback fake judge, tiny CLIP)")
    d.add_argument("--out", type=Path, required=True)
    d.set_defaults(fn=cmd_dry_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    from loom.utils.cli import clean_warnings, fail

    args = build_parser().parse_args(argv)
    with clean_warnings("loom eval"):
        try:
            return int(args.fn(args) or 0)
        except (EvalInputError, JudgeError) as e:
            return fail("loom eval", str(e), 2)


if __name__ == "__main__":
    sys.exit(main())
