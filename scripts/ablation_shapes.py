"""Loom's Table 4 on the shapes world: full model vs w/o time embedding vs w/o stepwise prompt vs w/o reference
sampling (K_max = 0). Every variant is the shapes-demo recipe (configs/train/shapes_demo.yaml) trained from scratch
through `loom.train` with the same step budget per seed; its export is judged on held-out tutorials with the
model's own plan (as the paper) and rendered from the ground-truth plan (the renderer alone).

    python scripts/ablation_shapes.py --train-steps 3000 --seeds 0 1 2 --jobs 2 --out runs/ablation \\
        --table evals/shapes/ablation.md

Runs are resumable (a finished run keeps its `result.json`; an interrupted training resumes from its newest
checkpoint). `--jobs N` runs N (variant, seed) runs at once in worker processes with cores/N torch threads each.
`--set key=value` (repeatable) overrides the training config of every run (strict, like `loom.train`).
`--world mechanisms` runs every variant on the mechanisms world (loom/world/program.py: hidden appearance,
past-referring steps, up to 12 frames), where history frames and e_t carry what the text does not; its tables add
appearance_consistency and past_step_following.

Variants (training-config overrides; the export records them, so generation uses the same layout):
  full          e_t on every visual token, `Step t: S_t` before frame t, sparse history with K_max = 4
  no_time       data.build.use_temporal = false and no temporal table in the model
  no_stepwise   data.build.stepwise_prompt = false: no S_t item in training or generation (the plan is still there)
  no_reference  data.build.k_max = 0: no history frames in training or generation

The table gives mean ± std over seeds per judge axis and, per ablation, the paired per-seed difference to the full
model (ablated − full) with a 95 % t-interval over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loom.utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from loom.world.demo import (  # noqa: E402
    DemoConfig,
    generate_and_judge,
    generation_settings,
    pick_threads,
    prepare,
    train_stage,
)
from loom.world.generate import WORLDS  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_time": ["data.build.use_temporal=false", "model.overrides.temporal_embedding=false"],
    "no_stepwise": ["data.build.stepwise_prompt=false"],
    "no_reference": ["data.build.k_max=0"],
}
LABELS = {"full": "Loom (full)", "no_time": "w/o Time Embedding", "no_stepwise": "w/o Stepwise Prompt",
          "no_reference": "w/o Reference Sampling (K_max = 0)"}
AXES = ("plan_accuracy", "instruction_following", "temporal_coherence", "reference_faithfulness",
        "text_image_alignment", "appearance_consistency", "past_step_following", "clean_frame_rate")


def demo_config(args, seed: int, overrides: list[str]) -> DemoConfig:
    cfg = DemoConfig(seed=seed, world=args.world, train_steps=args.train_steps, overrides=overrides,
                     n_test={"tutorial": args.n_test, "image_tutorial": args.n_test_image})
    for item in args.n_train:
        task, _, n = item.partition("=")
        if task not in cfg.n_train or not n.isdigit():
            raise SystemExit(f"--n-train {item!r}: expected TASK=N with TASK one of {sorted(cfg.n_train)}")
        cfg.n_train[task] = int(n)
    return cfg


def run_one(args, variant: str, seed: int, out: Path, log) -> dict:
    run_dir = out / f"{variant}-s{seed}"
    result_file = run_dir / "result.json"
    if result_file.exists():  # resumable: finished runs are kept
        return json.loads(result_file.read_text())
    import torch

    torch.set_num_threads(pick_threads(args.threads, log))
    cfg = demo_config(args, seed, [*VARIANTS[variant], *args.overrides])
    manifests, tcfg, _ = prepare(cfg, run_dir, data_root=out / f"data-s{seed}", log=lambda s: None)
    t0 = time.perf_counter()
    res = train_stage(tcfg, run_dir, log)
    if res["status"] != "finished":
        raise SystemExit(f"{variant} seed {seed}: training {res['status']} at step {res['step']}")
    train_s = time.perf_counter() - t0
    from loom.infer.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(res["model"], device="cpu", verbose=False)
    settings = generation_settings(cfg)
    scores = generate_and_judge(pipe, manifests["test"], run_dir / "own_plan", settings)
    gt = generate_and_judge(pipe, {"tutorial": manifests["test"]["tutorial"]}, run_dir / "gt_plan", settings,
                            gt_plan=True)
    result = {"variant": variant, "seed": seed, "world": cfg.world, "train_steps": tcfg.run.total_steps,
              "train_minutes": train_s / 60,
              "overrides": cfg.overrides, "scores": scores, "scores_gt_plan": gt}
    atomic_write_json(result_file, result)  # the resume marker: never half-written
    return result


def run_workers(argv: list[str], runs: list[tuple[str, int]], out: Path, jobs: int, threads: int) -> None:
    """Run the pending (variant, seed) runs `jobs` at a time, each in its own process (own torch threads)."""
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    pending = [(v, s) for v, s in runs if not (out / f"{v}-s{s}" / "result.json").exists()]
    live: list[tuple[subprocess.Popen, str, object]] = []
    failed = []
    while pending or live:
        while pending and len(live) < jobs:
            v, s = pending.pop(0)
            (out / f"{v}-s{s}").mkdir(parents=True, exist_ok=True)
            logf = open(out / f"{v}-s{s}" / "worker.log", "a")
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--variants", v, "--seeds", str(s),
                   "--threads", str(threads), "--jobs", "1", "--worker"]
            print(f"== start {v} seed {s} ({threads} thread(s)); log {logf.name}", flush=True)
            live.append((subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), f"{v}-s{s}", logf))
        time.sleep(1.0)
        for item in list(live):
            proc, name, logf = item
            if proc.poll() is not None:
                logf.close()
                live.remove(item)
                print(f"== done {name} (exit {proc.returncode})", flush=True)
                if proc.returncode:
                    failed.append(name)
    if failed:
        raise SystemExit(f"ablation runs failed: {', '.join(failed)} (see their worker.log under {out})")


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(diffs: list[float]) -> str:
    """Mean paired difference with its 95 % t-interval over seeds (Student t, n − 1 degrees of freedom)."""
    if not diffs:
        return "–"
    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return f"{m:+.3f}"
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{m:+.3f} [{m - half:+.3f}, {m + half:+.3f}]"


SECTIONS = (("scores", "tutorial", "Held-out text→tutorials (the model writes its plan)"),
            ("scores", "image_tutorial", "Held-out image→tutorials (the model writes its plan)"),
            ("scores_gt_plan", "tutorial", "Held-out text→tutorials rendered from the ground-truth plan "
                                           "(renderer only)"))


def table(results: list[dict], header: str) -> str:
    lines = [header, ""]
    for key, kind, title in SECTIONS:
        rows = [r for r in results if kind in r.get(key, {})]
        if not rows:
            continue
        axes = [a for a in AXES if a in rows[0][key][kind]]
        lines += [f"### {title}", "", "| variant | seeds | " + " | ".join(axes) + " |",
                  "|---|---|" + "---|" * len(axes)]
        for v in VARIANTS:
            rs = [r for r in rows if r["variant"] == v]
            if rs:
                cells = [mean_std([r[key][kind][a] for r in rs]) for a in axes]
                lines.append(f"| {LABELS[v]} | {len(rs)} | " + " | ".join(cells) + " |")
        full = {r["seed"]: r[key][kind] for r in rows if r["variant"] == "full"}
        diff_lines = []
        for v in VARIANTS:
            if v == "full":
                continue
            rs = [r for r in rows if r["variant"] == v and r["seed"] in full]
            if rs:
                cells = [paired([r[key][kind][a] - full[r["seed"]][a] for r in rs]) for a in axes]
                diff_lines.append(f"| {LABELS[v]} − full | {len(rs)} | " + " | ".join(cells) + " |")
        if diff_lines:
            lines += ["", "Paired per-seed differences (ablated − full), mean [95 % t-interval]:", "",
                      "| difference | seeds | " + " | ".join(axes) + " |", "|---|---|" + "---|" * len(axes),
                      *diff_lines]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=None,
                    help="optimizer steps per run (default: the demo recipe's run.total_steps)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="runs/ablation_shapes")
    ap.add_argument("--world", default="basic", choices=list(WORLDS),
                    help="shapes world of every run: basic (default) or mechanisms")
    ap.add_argument("--table", default=None, help="write the markdown table here (e.g. evals/shapes/ablation.md)")
    ap.add_argument("--n-test", type=int, default=24, help="held-out text→tutorials per run")
    ap.add_argument("--n-test-image", type=int, default=8, help="held-out image→tutorials per run")
    ap.add_argument("--n-train", action="append", default=[], metavar="TASK=N",
                    help="training items of a task per seed (repeatable; default: the demo's)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: auto, see pick_threads)")
    ap.add_argument("--label", default="", help="extra line under the title (e.g. 'reduced run: …')")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, in worker processes (CPU: cores/jobs threads)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one run, no table (used by --jobs)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="training-config override for every run (strict); repeatable")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    from loom.config import ConfigError

    try:
        return _main(args, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args, argv: list[str]) -> int:
    out = Path(args.out)
    runs = [(v, seed) for seed in args.seeds for v in args.variants]
    if args.jobs > 1 and not args.worker:
        for seed in args.seeds:  # the data of a seed is written once, before workers share it
            cfg = demo_config(args, seed, list(args.overrides))
            prepare(cfg, out / f"data-s{seed}", log=lambda s: None)
        run_workers(argv, runs, out, args.jobs, args.threads)
    results = []
    for v, seed in runs:
        print(f"== {v} seed {seed}", flush=True)
        r = run_one(args, v, seed, out, lambda s: print(s, flush=True))
        t = r["scores"].get("tutorial", {})
        print(f"   plan accuracy {t.get('plan_accuracy', 0):.3f}  instruction following "
              f"{t.get('instruction_following', 0):.3f}  ({r['train_steps']} steps, {r['train_minutes']:.1f} min)",
              flush=True)
        results.append(r)
    if args.worker:
        return 0
    steps = results[0]["train_steps"] if results else args.train_steps
    world = "" if args.world == "basic" else f" ({args.world})"
    header = (f"## Table 4 on the shapes world{world}: ablations (mean ± std over seeds {args.seeds})\n\n"
              f"Budget per run: {steps} optimizer steps of configs/train/shapes_demo.yaml"
              f"{' with ' + ' '.join(args.overrides) if args.overrides else ''}; judged on {args.n_test} held-out "
              f"text→ and {args.n_test_image} image→tutorials per run (exact axes, loom/world/judge.py).")
    if args.label:
        header += f"\n\n**{args.label}**"
    md = table(results, header)
    print(md)
    atomic_write_text(out / "ablation.md", md + "\n")
    atomic_write_json(out / "results.json", results)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.table, md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
