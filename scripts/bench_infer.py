"""Benchmark a plan-then-render tutorial per attention backend: per-frame latency, peak memory, forwards per step.

    python scripts/bench_infer.py                                   # tiny fixture model on CPU, sdpa (+ flex/flash if usable)
    python scripts/bench_infer.py --model models/BAGEL-7B-MoT --resolution 1024 --timesteps 50 --plan-steps 4
    python scripts/bench_infer.py --out bench_infer.json

The plan is fixed (`FixedPlanner`, labelled in the JSON) so every backend renders the same work; latency is per
frame (prefill of the three CFG contexts + all denoising steps + VAE decode). "forwards_per_denoising_step" must
be 1.0 with CFG on: every CFG branch runs in one batched forward. Peak memory: torch.cuda.max_memory_allocated on
GPU; the process's peak RSS on CPU (includes Python and the weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loom.infer.engine import Engine  # noqa: E402
from loom.infer.load import load_pretrained  # noqa: E402
from loom.infer.pipeline import GenerationSettings, Pipeline  # noqa: E402
from loom.infer.planner import FixedPlanner  # noqa: E402
from loom.model.attention import flash_available  # noqa: E402

PLAN = ["sketch the outline", "ink the main lines", "add flat colours", "shade the forms", "add highlights",
        "paint the background"]


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kib / 1024


def backends(device: torch.device, wanted: list[str] | None) -> list[str]:
    if wanted:
        return wanted
    out = ["sdpa", "flex"]
    if flash_available():
        out.append("flash")
    return out


def bench_one(pipe: Pipeline, backend: str, settings: GenerationSettings, steps: int, repeats: int) -> dict:
    pipe.engine.model.attn_backend = backend
    dev = pipe.engine.device
    plan = FixedPlanner(PLAN[:steps])
    pipe.run("tutorial", "Draw an owl step by step", settings=settings, planner=plan)  # warm-up (compile, caches)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    runs = []
    for _ in range(repeats):
        res = pipe.run("tutorial", "Draw an owl step by step", settings=settings, planner=plan)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        runs.append(res)
    best = min(runs, key=lambda r: r.timings["total_seconds"])
    st = best.stats
    n_steps = (settings.num_timesteps - 1) * len(best.frames)
    return {
        "backend": backend,
        "frame_seconds": [round(x, 5) for x in st.frame_seconds],
        "mean_frame_seconds": round(sum(st.frame_seconds) / len(st.frame_seconds), 5),
        "prefill_seconds": round(st.prefill_seconds, 5),
        "total_seconds": round(best.timings["total_seconds"], 5),
        "context_tokens": [f.num_context_tokens for f in best.frames],
        "history": [f.history for f in best.frames],
        "forwards_denoise": st.num_forwards_denoise,
        "forwards_prefill": st.num_forwards_prefill,
        "forwards_per_denoising_step": st.num_forwards_denoise / n_steps,
        "peak_memory_mib": round(peak_mib(dev), 1),
        "peak_memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "bagel-tiny"))
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backend", action="append", choices=["sdpa", "flex", "flash"], help="default: all usable")
    p.add_argument("--plan-steps", type=int, default=4, help="tutorial steps = frames rendered")
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--k-max", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="evals/perf/infer_cpu.json")
    args = p.parse_args(argv)

    ld = load_pretrained(args.model, device=args.device, dtype=args.dtype, verbose=False)
    pipe = Pipeline(Engine(ld.model, ld.vae, ld.tokenizer), ld.build, ld.describe())
    small = ld.config.max_latent_size * ld.config.pixels_per_latent_token <= 512
    settings = GenerationSettings(seed=0, resolution=(args.resolution, args.resolution), num_timesteps=args.timesteps,
                                  k_max=args.k_max, vae_transform=(64, 32) if small else None,
                                  vit_transform=(56, 28) if small else None)
    results = []
    for b in backends(ld.device, args.backend):
        try:
            r = bench_one(pipe, b, settings, args.plan_steps, args.repeats)
        except Exception as e:  # a backend that cannot run here is reported, not fatal
            r = {"backend": b, "error": f"{type(e).__name__}: {e}"[:500]}
        results.append(r)
        if "error" in r:
            print(f"{b:>6}: unavailable ({r['error'][:120]})")
        else:
            print(f"{b:>6}: {r['mean_frame_seconds'] * 1000:8.1f} ms/frame  per frame "
                  f"{[round(x * 1000, 1) for x in r['frame_seconds']]} ms  peak {r['peak_memory_mib']:.0f} MiB  "
                  f"forwards/denoising step {r['forwards_per_denoising_step']:.2f}")
    report = {"model": ld.describe(), "device": str(ld.device), "torch": torch.__version__,
              "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
              "settings": {"plan_steps": args.plan_steps, "timesteps": args.timesteps, "resolution": args.resolution,
                           "k_max": args.k_max, "cfg": "tutorial defaults (text 4.0, image 2.0, interval [0, 1])",
                           "plan": "fixed (benchmark only)"},
              "results": results, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    ok = [r for r in results if "error" not in r]
    return 0 if ok and all(r["forwards_per_denoising_step"] == 1.0 for r in ok) else 1


if __name__ == "__main__":
    sys.exit(main())
