"""Loom's Table 4 on the shapes world: full model vs w/o time embedding vs w/o stepwise prompt vs w/o reference
sampling (K_max = 0). Every variant is trained from scratch with the same budget (optimizer steps, or wall-clock
minutes) for each seed, then judged on held-out text→tutorials (and image→tutorials) by the programmatic judge.

    python scripts/ablation_shapes.py --steps 6000 --seeds 0 1 2 --out runs/ablation \\
        --table evals/shapes/ablation.md                      # GPU when available, CPU otherwise
    python scripts/ablation_shapes.py --steps 4000 --jobs 2 ...  # 2-core CPU: two runs at once, 1 thread each

Runs are resumable (a finished run keeps its `result.json`). `--jobs N` runs N (variant, seed) runs at once in
worker processes with cores/N torch threads each: on a 2-core CPU two 1-thread runs give 1.35x the throughput of
one 2-thread run (0.25 s/step each vs 0.17 s/step, measured). `--set key=value` (repeatable) overrides any
`DemoConfig` field (type-checked, unknown keys refused; dict fields such as `mix` are updated key by key), e.g. `--set num_timesteps=6 --set 'mix={"tutorial": 4, "plan": 8}'`.

Variants (as the training builders and the inference loop implement them, `loom.data.builders.BuildConfig`):
  full          e_t on every visual token, `Step t: S_t` before frame t, sparse history with K_max = 4
  no_time       use_temporal = False (every frame slot 0) and no temporal table in the model
  no_stepwise   stepwise_prompt = False: no S_t item in training or generation (the plan is still there)
  no_reference  k_max = 0: no history frames in training or generation

The table is mean ± std over seeds of each judge axis, for the full pipeline (the model writes its plan, as in the
paper) and for the renderer alone (frames rendered from the ground-truth plan through a `FixedPlanner`): the
ablated components act on rendering, and plan errors would otherwise dominate the frame axes. `--label` marks
reduced runs (smaller budget/model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from loom.config import ConfigError, merge_into  # noqa: E402
from loom.data.tokenizer import SpecialTokens  # noqa: E402
from loom.utils.io import atomic_write_json, atomic_write_text  # noqa: E402
from loom.world.demo import (  # noqa: E402
    DEMO_SCAFFOLD,
    DemoConfig,
    SampleStream,
    build_model,
    evaluate,
    make_pipeline,
    pick_threads,
    train,
    write_world,
)
from loom.world.vocab import build_world_tokenizer  # noqa: E402

VARIANTS: dict[str, dict] = {
    "full": {},
    "no_time": {"use_temporal": False},
    "no_stepwise": {"stepwise_prompt": False},
    "no_reference": {"k_max": 0},
}
LABELS = {"full": "Loom (full)", "no_time": "w/o Time Embedding", "no_stepwise": "w/o Stepwise Prompt",
          "no_reference": "w/o Reference Sampling (K_max = 0)"}
AXES = ("plan_accuracy", "instruction_following", "temporal_coherence", "reference_faithfulness",
        "text_image_alignment")


def run_one(base: DemoConfig, variant: str, seed: int, out: Path, steps: int | None, minutes: float | None,
            log) -> dict:
    cfg = dataclasses.replace(base, seed=seed, **VARIANTS[variant])
    run_dir = out / f"{variant}-s{seed}"
    result_file = run_dir / "result.json"
    if result_file.exists():  # resumable: finished runs are kept
        return json.loads(result_file.read_text())
    torch.set_num_threads(pick_threads(cfg.threads, log))
    torch.set_flush_denormal(True)
    manifests = write_world(out / f"data-s{seed}", cfg, lambda s: None)  # shared by the variants of a seed
    tok = build_world_tokenizer(run_dir / "tokenizer", DEMO_SCAFFOLD)
    model, vae = build_model(cfg, tok)
    stream = SampleStream(manifests["train"], tok, cfg.build_config(), cfg.mix, cfg.seed)
    t0 = time.perf_counter()
    seconds = minutes * 60 if minutes else 1e12
    tl = train(model, vae, stream, SpecialTokens.from_tokenizer(tok), cfg, seconds, log, max_steps=steps)
    train_s = time.perf_counter() - t0
    pipe = make_pipeline(model, vae, tok, cfg.build_config())
    test = {k: v for k, v in manifests["test"].items() if k in ("tutorial", "image_tutorial")}
    scores = evaluate(pipe, test, run_dir / "predictions", cfg)
    gt = evaluate(pipe, {"tutorial": manifests["test"]["tutorial"]}, run_dir / "predictions_gt_plan", cfg,
                  gt_plan=True)
    result = {"variant": variant, "seed": seed, "steps": tl.steps[-1] if tl.steps else 0,
              "train_minutes": train_s / 60, "final_loss": tl.loss[-1] if tl.loss else None, "scores": scores,
              "scores_gt_plan": gt}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result_file, result)  # the resume marker: never half-written
    return result


def apply_overrides(cfg: DemoConfig, overrides: list[str]) -> DemoConfig:
    """`key=value` dotlist → the project's strict, type-checked merge (`loom.config.merge_into`)."""
    bad = [o for o in overrides if "=" not in o]
    try:
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        return merge_into(cfg, OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides))))
    except ConfigError as e:
        raise SystemExit(f"--set: {e}") from None


def run_workers(argv: list[str], runs: list[tuple[str, int]], out: Path, jobs: int, threads: int) -> None:
    """Run the pending (variant, seed) runs `jobs` at a time, each in its own process (own torch threads); each
    worker writes its `result.json` and log, which the parent then reads back like a resumed run."""
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    pending = [(v, s) for v, s in runs if not (out / f"{v}-s{s}" / "result.json").exists()]
    live: list[tuple[subprocess.Popen, str, object]] = []
    failed = []
    while pending or live:
        while pending and len(live) < jobs:
            v, s = pending.pop(0)
            (out / f"{v}-s{s}").mkdir(parents=True, exist_ok=True)
            logf = open(out / f"{v}-s{s}" / "train.log", "w")
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
        raise SystemExit(f"ablation runs failed: {', '.join(failed)} (see their train.log under {out})")


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


SECTIONS = (("scores", "tutorial", "Held-out text→tutorials (the model writes its plan)", AXES),
            ("scores", "image_tutorial", "Held-out image→tutorials (the model writes its plan)", AXES),
            ("scores_gt_plan", "tutorial", "Held-out text→tutorials rendered from the ground-truth plan (renderer only)",
             AXES[1:]))


def table(results: list[dict], header: str) -> str:
    lines = [header, ""]
    for key, kind, title, axes in SECTIONS:
        lines += [f"### {title}", "", "| variant | seeds | " + " | ".join(axes) + " |",
                  "|---|---|" + "---|" * len(axes)]
        for v in VARIANTS:
            rs = [r for r in results if r["variant"] == v and kind in r.get(key, {})]
            if not rs:
                continue
            cells = [mean_std([r[key][kind][a] for r in rs]) for a in axes]
            lines.append(f"| {LABELS[v]} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000,
                    help="optimizer steps per run (the shared budget; 6000 = the demo default that passes)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget per run instead of steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="runs/ablation_shapes")
    ap.add_argument("--table", default=None, help="write the markdown table here (e.g. evals/shapes/ablation.md)")
    ap.add_argument("--n-test", type=int, default=24, help="held-out text→tutorials per run")
    ap.add_argument("--n-test-image", type=int, default=8, help="held-out image→tutorials per run")
    ap.add_argument("--n-train", type=int, default=3000, help="training text→tutorials per seed")
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=1536, help="token budget of one pack (one step)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: auto, see pick_threads)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--label", default="", help="extra line under the title (e.g. 'reduced run: …')")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, in worker processes (CPU: cores/jobs threads)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one run, no table (used by --jobs)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a DemoConfig field (YAML value, type-checked); repeatable")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)

    base = DemoConfig(width=args.width, layers=args.layers, heads=args.heads, device=args.device,
                      max_tokens=args.max_tokens, threads=args.threads,
                      n_test={"tutorial": args.n_test, "image_tutorial": args.n_test_image},
                      log_every_s=60.0)
    base.n_train = {**base.n_train, "tutorial": args.n_train}
    base = apply_overrides(base, args.overrides)
    out = Path(args.out)
    budget = f"{args.minutes:g} min" if args.minutes else f"{args.steps} steps"
    runs = [(v, seed) for seed in args.seeds for v in args.variants]
    if args.jobs > 1 and not args.worker:
        for seed in args.seeds:  # the data of a seed is written once, before workers share it
            write_world(out / f"data-s{seed}", dataclasses.replace(base, seed=seed), lambda s: None)
        run_workers(argv, runs, out, args.jobs, args.threads)
    results = []
    for v, seed in runs:
        print(f"== {v} seed {seed} ({budget}, {args.device})", flush=True)
        r = run_one(base, v, seed, out, None if args.minutes else args.steps, args.minutes,
                    lambda s: print(s, flush=True))
        t = r["scores"].get("tutorial", {})
        print(f"   plan {t.get('plan_accuracy', 0):.3f}  IF {t.get('instruction_following', 0):.3f}  "
              f"({r['steps']} steps, {r['train_minutes']:.1f} min)", flush=True)
        results.append(r)
    if args.worker:
        return 0
    header = (f"## Table 4 on the shapes world: ablations (mean ± std over seeds {args.seeds})\n\n"
              f"Budget per run: {budget} of {args.max_tokens}-token packs on {args.device}; model width "
              f"{args.width}, {args.layers} layers; "
              f"{args.n_train} training text→tutorials per seed (+ image→tutorials, composition, style, plan-only "
              f"mix of `loom.world.demo.DemoConfig`); judged on {args.n_test} held-out text→ and "
              f"{args.n_test_image} image→tutorials per run.")
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
