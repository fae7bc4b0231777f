"""`python -m loom.demo` (`make demo`): the main job on a fresh machine.

Default: the shapes-world demo (`loom.world.demo`): world data → `loom.train` on configs/train/shapes_demo.yaml
(a tiny Loom trained from scratch on the CPU for a fixed number of optimizer steps) → its export copied to
`runs/demo/model` → held-out text→ and image→tutorials, compositions and style transfers generated from that
export with `loom generate --batch`'s code → judged → `runs/demo/report.html` and `runs/demo/metrics.json`.
Measured minutes and scores: evals/shapes/demo_scores.md. Rerun after Ctrl-C to resume training.

`--smoke`: the fixture smoke demo on the shipped BAGEL-tiny release (random weights exported by the official
code): strict load → reference parity of every fixture case → KV-cached text answer → text-to-image with batched
CFG → PNG + `summary.json`. Random weights draw noise, not pictures: the point is that every stage runs and
matches the official numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch

from .world.generate import WORLDS

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bagel-tiny"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loom.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="run the fixture smoke demo instead of the shapes world")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="shapes world: optimizer steps (default: run.total_steps of configs/train/shapes_demo.yaml)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="shapes world: opt-in wall-clock cap on training (stops EARLY, loudly; rerun to finish)")
    ap.add_argument("--seed", type=int, default=0, help="shapes world: data, model and sampling seed")
    ap.add_argument("--world", choices=WORLDS, default="basic",
                    help="shapes world: basic (default) or mechanisms (hidden appearance, steps that refer to the "
                         "past, tutorials of up to 12 frames; loom/world/program.py)")
    ap.add_argument("--threads", type=int, default=0,
                    help="shapes world: torch threads (default 0 = auto: 2 on an idle machine, 1 on a busy one)")
    ap.add_argument("--stage", choices=["data", "train", "all"], default="all",
                    help="shapes world: stop after writing the data, after training, or run everything (default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="shapes world: override of the training config (repeatable), e.g. --set optim.lr=2e-3")
    ap.add_argument("--model", default=str(FIXTURE), help="--smoke: a BAGEL-layout folder (default: the fixture)")
    ap.add_argument("--out", default=None, help="output folder (default runs/demo, --smoke: runs/demo-smoke)")
    args = ap.parse_args(argv)
    if not args.smoke:
        from .config import ConfigError
        from .utils.cli import fail
        from .world.demo import DemoConfig, run_demo

        overrides = list(args.overrides)
        if args.max_minutes is not None:
            overrides.append(f"run.max_minutes={args.max_minutes}")
        cfg = DemoConfig(seed=args.seed, world=args.world, threads=args.threads, train_steps=args.train_steps,
                         overrides=overrides)
        stages = {"data": ("data",), "train": ("data", "train"), "all": ("data", "train", "generate")}[args.stage]
        try:
            res = run_demo(cfg, args.out or "runs/demo", stages=stages)
        except ConfigError as e:
            return fail("python -m loom.demo", str(e), 2)
        return 0 if res.get("status", "finished") in ("finished", "trained") or "passed" in res else 1
    return smoke(args)


def smoke(args: argparse.Namespace) -> int:
    args.out = args.out or "runs/demo-smoke"
    from .infer.cache import Context
    from .infer.engine import Engine, ImageSamplerConfig
    from .model.weights import load_bagel
    from .tools.check_reference import check

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] reference parity on {args.model}")
    buf = io.StringIO()
    passed, failed, skipped = check(args.model, stream=buf)
    print("      " + buf.getvalue().strip().replace("\n", "\n      "))

    print("[2/4] strict load")
    model, vae, tok, cfg = load_bagel(args.model)
    from .data.transforms import ImageTransform

    eng = Engine(model, vae, tok, ImageTransform(96, 64, 16), ImageTransform(84, 42, 14))

    print("[3/4] text generation (greedy, KV cache)")
    ctx = eng.add_text(Context(), "what shapes and colors are in this picture?")
    ids, _, _ = eng.generate_text(ctx, max_length=12)
    answer = eng.decode_text(ids)

    print("[4/4] text-to-image (6 timesteps, text CFG 4.0, one batched forward per step)")
    cond = eng.add_text(Context(), "a tiny orange house under a purple sky")
    before = eng.num_forwards
    lat = eng.generate_image(cond, Context(), cond, 4, 4, ImageSamplerConfig(num_timesteps=6, cfg_img_scale=1.0),
                             generator=torch.Generator().manual_seed(0))
    steps = eng.num_forwards - before
    _, img = eng.decode_latents(lat, 4, 4)
    img.save(out / "t2i.png")
    summary = {"parity": {"passed": passed, "failed": failed, "skipped": skipped}, "answer": answer,
               "t2i_forwards_per_step": steps / 5, "seconds": round(time.perf_counter() - t0, 2)}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}/t2i.png and {out}/summary.json")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
