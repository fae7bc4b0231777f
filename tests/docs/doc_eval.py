"""Tiny-scale `python -m loom.eval …`: toy benchmarks (loom.eval.dry_run.make_toy_data, one item each), the fixture
model through the real `loom generate` (in-process instead of a subprocess per item), a loopback fake judge, a
random tiny CLIP, synthetic human ratings, and scored toy runs for run folders a README only names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from doc_harness import Session
from doc_runners import PLAN, TINY_GEN, _set, call, fake_openai, ok

DATA_NAMES = {"RECIPEGEN": "recipegen", "RECIPEGEN_PATH_OR_HF_NAME": "recipegen", "MAKEANYTHING": "makeanything",
              "MAKEANYTHING_SHARDS_OR_FOLDER": "makeanything", "OmniGen2/OmniContext": "omnicontext"}
TABLE_RUBRIC = {1: "tutorial", 5: "tutorial", 2: "painting", 4: "painting", 6: "painting"}


def toy(s: Session) -> dict[str, Path]:
    """Toy datasets with one recipe / grid / OmniContext item per task; the id lists the READMEs read point at
    them (the committed lists are PENDING until the real data is drawn)."""
    if "toy" not in s.local:
        from loom.eval.dry_run import make_toy_data

        data = make_toy_data(s.ws / "toydata")
        rows = [json.loads(x) for x in data["omnicontext"].read_text().splitlines()]
        keep = {r["task_type"]: r for r in rows}  # one per Table-3 task
        data["omnicontext"].write_text("".join(json.dumps(r) + "\n" for r in keep.values()))
        for f, ids in ((s.ws / "evals/recipegen/test_ids.txt", "r0"),
                       (s.ws / "evals/recipegen/human_subset_ids.txt", "r0"),
                       (s.ws / "evals/makeanything/test_ids.txt", "m0")):
            f.write_text(f"# tiny docs run\n{ids}\n")
        s.local["toy"] = data
    return s.local["toy"]


def _tiny_clip(s: Session) -> Path:
    d = s.ws / "tiny_clip"
    if not d.exists():
        from loom.eval.fakes import build_tiny_clip

        model, tok = build_tiny_clip()
        model.save_pretrained(d)
        tok.save_pretrained(d)
    return d


def _step_script(s: Session) -> None:
    (s.ws / "my_bagel_step.py").write_text(
        "import argparse\nfrom PIL import Image\np = argparse.ArgumentParser()\n"
        "for a in ('--prompt', '--out', '--seed', '--step'):\n    p.add_argument(a)\n"
        "p.add_argument('--history', nargs='*')\na = p.parse_args()\n"
        "Image.new('RGB', (32, 32), (int(a.seed) % 255, 80, 160)).save(a.out)\n")


class _InProcessLoom:
    """`subprocess` for loom.eval.harness: `python -m loom …` runs in this process (the command is unchanged,
    only the interpreter start is saved); other commands run as subprocesses with `python` = this interpreter."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run(self, cmd, **kw):
        cmd = list(cmd)
        if cmd[:3] == [sys.executable, "-m", "loom"]:
            from loom.__main__ import main

            rc, out, err = call(main, cmd[3:])
            return subprocess.CompletedProcess(cmd, rc, out, err)
        if cmd[0] in ("python", "python3"):
            cmd[0] = sys.executable
        return self.real.run(cmd, **kw)


def _judge_client(s: Session, rubric_kind: str):
    from loom.eval.judge import JudgeClient, JudgeConfig

    return JudgeClient(JudgeConfig(model="gpt-4o-2024-08-06", base_url=fake_openai(s).base_url,
                                   api_key_env="OPENAI_API_KEY", cache_dir=s.ws / "judge_cache", workers=2,
                                   backoff_base_s=0.01, jitter_s=0.01))


def _toy_scored_run(s: Session, run: Path, table: int) -> None:
    """A run folder a README names without making it (e.g. Table 4's variants): toy generation + fake judge."""
    from loom.eval import benchmarks as B
    from loom.eval.fakes import fake_tutorial_generator
    from loom.eval.harness import run_generation
    from loom.eval.rubrics import RUBRICS
    from loom.eval.scoring import score_run

    data = toy(s)
    bench = "recipegen" if TABLE_RUBRIC[table] == "tutorial" else "makeanything"
    items = B.load_recipegen(data["recipegen"]) if bench == "recipegen" else B.load_makeanything(data[bench])
    run_generation(items[:1], fake_tutorial_generator(), run, model_label=run.name, generator_name="fake",
                   log=lambda m: None)
    score_run(run, RUBRICS[TABLE_RUBRIC[table]], _judge_client(s, TABLE_RUBRIC[table]), repeats=1)


def _human_csv(s: Session, path: Path, runs: dict[str, Path], table: int) -> None:
    from loom.eval.dry_run import _human_csv
    from loom.eval.rubrics import RUBRICS

    first = next(iter(runs.values()))
    cases = sorted(p.name for p in (first / "items").iterdir())
    _human_csv(path, list(runs), cases, RUBRICS[TABLE_RUBRIC.get(table, "tutorial")].criteria)


def run_eval(s: Session, argv: list[str]) -> None:
    from loom.eval.__main__ import main

    data = toy(s)
    argv = [str(data[DATA_NAMES[a]]) if a in DATA_NAMES else a for a in argv]
    sub = argv[0]
    if sub == "generate":
        if "--step-command" in argv:
            _step_script(s)
        if "--generator" not in argv or argv[argv.index("--generator") + 1] == "loom-cli":
            task = argv[argv.index("--loom-task") + 1] if "--loom-task" in argv else "tutorial"
            argv = _set(argv, "--loom-exe", f"{sys.executable} -m loom")
            extra = [f"{k}={v}" for k, v in TINY_GEN.items()] + ["--no-progress"]
            if task == "tutorial":
                (s.ws / "tiny_plan.txt").write_text(PLAN)
                extra += ["--planner=fixed", f"--plan-file={s.ws / 'tiny_plan.txt'}"]
            argv += [f"--extra-arg={a}" for a in extra]
    elif sub == "select":
        argv = _set(argv, "--n", "1")
    elif sub == "score":
        if "omnicontext" in argv and "--data" not in argv:  # the default is the Hub dataset
            argv += ["--data", str(data["omnicontext"])]
        argv += ["--judge-base-url", fake_openai(s).base_url, "--judge-api-key-env", "OPENAI_API_KEY",
                 "--cache-dir", str(s.ws / "judge_cache"), "--judge-backoff", "0.01", "--judge-workers", "2"]
    elif sub == "clip":
        argv += ["--weights", str(_tiny_clip(s))]
    elif sub in ("table", "correlate"):
        n = int(argv[1])
        runs = {r.split("=", 1)[0]: s.path(r.split("=", 1)[1]) for i, r in enumerate(argv) if argv[i - 1] == "--run"}
        for run in runs.values():
            if not run.exists():
                _toy_scored_run(s, run, n)
        if "--human" in argv and not s.path(argv[argv.index("--human") + 1]).exists():
            _human_csv(s, s.path(argv[argv.index("--human") + 1]), runs, n)
    elif sub == "dry-run":
        out = argv[argv.index("--out") + 1]
        argv = _set(argv, "--out", str(s.ws / out.lstrip("/")))
    import loom.eval.harness as harness

    real = harness.subprocess
    harness.subprocess = _InProcessLoom(real)
    try:
        rc, out, err = call(main, argv)
    finally:
        harness.subprocess = real
    ok(rc, out, err, f"loom eval {' '.join(argv)}")
    if sub == "generate":
        assert "failed 0" in out, out
