"""`python -m loom.demo` (`make demo`): the main job on a fresh machine.

Runs loom end to end on the shipped BAGEL-tiny release (random weights exported by the official code):
strict load → reference parity of every fixture case → KV-cached text answer → text-to-image with batched CFG →
PNG + `summary.json` under `runs/demo/`. Random weights draw noise, not pictures: the point is that every
stage runs and matches the official numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bagel-tiny"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loom.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(FIXTURE), help="a BAGEL-layout folder (default: the tiny fixture)")
    ap.add_argument("--out", default="runs/demo")
    args = ap.parse_args(argv)
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
