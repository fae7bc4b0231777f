"""A tiny end-to-end run of every table on generated toy data: fake generators, a fake judge on 127.0.0.1, a
random tiny CLIP, synthetic human ratings. Proves the plumbing from "model folder" to "table files"; the numbers
mean nothing. `python -m loom.eval dry-run --out /tmp/loom-dry`.

Nothing it writes can pass for a real result: the judge is asked for and recorded under the fake judge's own name
(`FAKE_JUDGE_MODEL`, in every judge record and score summary), run labels read "… (dry run)", and every table
says DRY RUN in its caption, its rows' source column, its notes and its JSON (`"dry_run": {…}`).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from PIL import Image

from loom.eval import benchmarks as B
from loom.eval import omnicontext as O
from loom.eval import tables as T
from loom.eval.clip_score import TransformersClip, write_clip_scores
from loom.eval.fakes import FAKE_JUDGE_MODEL, FakeOpenAIServer, build_tiny_clip, fake_tutorial_generator
from loom.eval.harness import ExternalPlanGenerator, load_plans, run_generation
from loom.eval.human import load_human_csv
from loom.eval.judge import JudgeClient, JudgeConfig
from loom.eval.rubrics import PAINTING, TUTORIAL
from loom.eval.scoring import score_run


def make_toy_data(root: Path) -> dict[str, Path]:
    """4 recipes, 3 painting grids (2×2), 2 OmniContext samples per Table 3 task."""
    root.mkdir(parents=True, exist_ok=True)
    rec = root / "recipegen.jsonl"
    rec.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "goal": f"Dish {i}", "steps": [f"s{k}" for k in range(4)]}) + "\n"
            for i in range(4)
        )
    )
    ma = root / "makeanything"
    ma.mkdir(exist_ok=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(ma / f"m{i}.png")
        (ma / f"m{i}.caption").write_text(
            f"2*2 of 4 sub-images, step-by-step oil painting process, a cat {i}"
        )
    oc = root / "omnicontext"
    oc.mkdir(exist_ok=True)
    rows = []
    for t in O.TABLE3_TASKS:
        for k in range(2):
            Image.new("RGB", (40, 40), (k * 100, 50, 50)).save(oc / f"{t}_{k}.png")
            rows.append(
                {
                    "key": f"{t}_{k}",
                    "task_type": t,
                    "instruction": f"Put image 1 in a scene ({t})",
                    "instruction_language": "en",
                    "input_images": [f"{t}_{k}.png"],
                }
            )
    (oc / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"recipegen": rec, "makeanything": ma, "omnicontext": oc / "items.jsonl"}


def _color_renderer(
    item: Any, plan: list[str], step: int, history: list[Path], out_png: Path, seed: int
) -> None:
    Image.new("RGB", (48, 48), (step * 50, 20, 20)).save(out_png)


def _human_csv(path: Path, labels: list[str], cases: list[str], crits: tuple[str, ...]) -> Path:
    rng = random.Random(0)
    lines = ["model,case_id,rater,criterion,score"]
    for m in labels:
        for c in cases:
            for r in ("rater1", "rater2"):
                lines += [f"{m},{c},{r},{k},{rng.randint(1, 5)}" for k in crits]
    path.write_text("\n".join(lines) + "\n")
    return path


LOOM = "Loom (dry run)"
DRY_RUN_NOTE = "fake generators and a fake judge on toy data: the numbers mean nothing"


def mark_dry_run(t: T.Table, judge: str = FAKE_JUDGE_MODEL) -> T.Table:
    """Label a table built from dry-run files as such: caption, every row of ours, notes and JSON."""
    t.caption = f"DRY RUN (fake judge {judge}) — {t.caption}"
    for row in t.rows:
        if row[1] == "ours":
            row[1] = f"dry run, {judge}"
    t.notes.insert(0, f"DRY RUN: {DRY_RUN_NOTE}; judge {judge}")
    t.data["dry_run"] = {"judge": judge, "note": DRY_RUN_NOTE}
    return t


def _write(t: T.Table, out: Path) -> list[Path]:
    return T.write_table(mark_dry_run(t), out / "tables")


def dry_run(out: Path) -> list[Path]:
    out = Path(out)
    data = make_toy_data(out / "data")
    os.environ.setdefault("LOOM_DRY_RUN_KEY", "dry-run")
    written: list[Path] = []
    with FakeOpenAIServer() as srv:

        def client(official: bool = False) -> JudgeClient:
            """The fake judge under its own name, with the request settings of the real one it stands in for
            (GPT-4o rubric scoring: JSON mode, temperature 0; OmniContext official: neither)."""
            return JudgeClient(
                JudgeConfig(
                    model=FAKE_JUDGE_MODEL,
                    base_url=srv.base_url,
                    api_key_env="LOOM_DRY_RUN_KEY",
                    cache_dir=out / "judge_cache",
                    workers=4,
                    backoff_base_s=0.01,
                    jitter_s=0.01,
                    json_mode=not official,
                    temperature=None if official else 0.0,
                )
            )

        # Table 1 + 5: Loom (model-written text) and an adapted baseline (given text) on RecipeGen.
        rec_items = B.load_recipegen(data["recipegen"])
        runs1 = {LOOM: out / "runs/recipegen/loom", "Bagel (dry run)": out / "runs/recipegen/bagel"}
        run_generation(
            rec_items,
            fake_tutorial_generator(),
            runs1[LOOM],
            model_label=LOOM,
            generator_name="fake",
            log=lambda s: None,
        )
        run_generation(
            rec_items,
            ExternalPlanGenerator(load_plans(runs1[LOOM]), _color_renderer),
            runs1["Bagel (dry run)"],
            model_label="Bagel (dry run)",
            generator_name="external-plan",
            log=lambda s: None,
        )
        model, tok = build_tiny_clip()
        for run in runs1.values():
            score_run(run, TUTORIAL, client(), repeats=2)
            write_clip_scores(run, TransformersClip(model, tok), weights="tiny-random")
        human1 = load_human_csv(
            _human_csv(
                out / "human_table1.csv", list(runs1), [it.item_id for it in rec_items], TUTORIAL.criteria
            )
        )
        written += _write(T.build_table1(runs1, human=human1), out)
        written += _write(T.build_correlation_table(5, runs1, human1), out)

        # Tables 2, 4, 6: painting tutorials conditioned on the final panel.
        ma_items = B.load_makeanything(data["makeanything"])
        runs2 = {LOOM: out / "runs/makeanything/loom", "Full (dry run)": out / "runs/makeanything/full"}
        for label, run in runs2.items():
            run_generation(
                ma_items,
                fake_tutorial_generator(),
                run,
                model_label=label,
                generator_name="fake",
                log=lambda s: None,
            )
            score_run(run, PAINTING, client(), repeats=2)
        human2 = load_human_csv(
            _human_csv(
                out / "human_table2.csv", [LOOM], [it.item_id for it in ma_items], PAINTING.criteria
            )
        )
        written += _write(T.build_table2({LOOM: runs2[LOOM]}, human=human2), out)
        written += _write(T.build_table4({"Full (dry run)": runs2["Full (dry run)"]}), out)
        written += _write(T.build_correlation_table(6, {LOOM: runs2[LOOM]}, human2), out)

        # Table 3: OmniContext, official-mode scorer.
        oc_items = B.load_omnicontext(data["omnicontext"])
        run3 = out / "runs/omnicontext/loom"
        run_generation(
            B.omnicontext_bench_items(oc_items),
            fake_tutorial_generator(num_steps=1),
            run3,
            model_label=LOOM,
            generator_name="fake",
            log=lambda s: None,
        )
        O.score_run(run3, oc_items, client(official=True), mode="official")
        written += _write(T.build_table3({LOOM: run3}), out)
    return written
