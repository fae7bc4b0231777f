"""Benchmark a plan-then-render tutorial per attention backend: per-frame latency, peak memory, forwards per step;
or the KV-cached forwards before/after A/B at realistic shape.

    python scripts/bench_infer.py                                   # tiny fixture model on CPU, sdpa (+ flex/flash if usable)
    python scripts/bench_infer.py --model models/BAGEL-7B-MoT --resolution 1024 --timesteps 50 --plan-steps 4
    python scripts/bench_infer.py --out bench_infer.json
    python scripts/bench_infer.py --ab d530fe2 [--rounds 6]        # → evals/perf/infer_ab_cpu.json

`--ab REF`: the narrow model of realistic shape (`bench_model.narrow_config`: head dim 128, GQA 7:1) with a
1268-token conditional context (prompt, two history frames as VAE 288² + ViT 224² blocks, step text), a
1168-token text-unconditional and a 100-token image-unconditional one, built and timed under REF and under
this checkout alternately in one process (`bench_model.interleave`): one CFG denoising step (3 branches × 326
query tokens, one forward), an 8-step image, one decoded token and one 326-token image prefill.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def ab_contexts(pkg: str, model, tok):
    """Engine of package `pkg` and its three CFG contexts: cond = prompt, two history frames (VAE 288² latents +
    ViT 224²), step text; text-uncond = the frames; image-uncond = prompt + step."""
    import importlib

    Engine = importlib.import_module(f"{pkg}.infer.engine").Engine
    Context = importlib.import_module(f"{pkg}.infer.cache").Context
    eng = Engine(model, None, tok)
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(0, 490, (n,), generator=g).tolist()  # noqa: E731
    frames = [(torch.randn(18 * 18, 64, generator=g), torch.rand(3, 224, 224, generator=g) * 2 - 1) for _ in range(2)]

    def history(ctx):
        for k, (z, im) in enumerate(frames, 1):
            ctx = eng.add_latents(ctx, z, 18, 18, frame=k)
            ctx = eng.extend(ctx, eng.vit_block(ctx, im, k))
        return ctx

    prompt, step = ids(64), ids(32)
    cond = eng.add_text(history(eng.add_text(Context(), prompt)), step)
    return eng, (cond, history(Context()), eng.add_text(eng.add_text(Context(), prompt), step))


def main_ab(args) -> int:
    import importlib

    import bench_model as bm

    from loom.data.tokenizer import load_tokenizer
    from loom.utils.io import atomic_write_json

    base = bm.start_ab(args.ab, args.rounds)
    tok = load_tokenizer(ROOT / "tests" / "fixtures" / "bagel-tiny")
    state = bm.seeded_model(bm.narrow_config()).state_dict()
    engines, ctxs = {}, {}
    for v, pkg in (("A", base), ("B", "loom")):
        model = importlib.import_module(f"{pkg}.model.loom").Loom(bm.narrow_config(pkg=pkg)).eval()
        model.load_state_dict(state)
        engines[v], ctxs[v] = ab_contexts(pkg, model, tok)
    noise = torch.randn(18 * 18, 64, generator=torch.Generator().manual_seed(4))
    z = torch.randn(18 * 18, 64, generator=torch.Generator().manual_seed(5))
    n = 18 * 18 + 2

    def step(v):
        """One CFG denoising step (3 branches, one forward). B attends buffers made once per image, as
        `generate_image` does; A concatenates its contexts inside every forward, as it did."""
        eng, cs = engines[v], list(ctxs[v])
        blocks = [eng.latent_block(c, noise, 0.5, 18, 18, 3, 0, "query") for c in cs]
        if v == "B":
            bufs = eng.attention_buffers(cs, [n] * 3)
            return lambda: eng.forward_blocks(cs, blocks, bufs)
        return lambda: eng.forward_blocks(cs, blocks)

    def image(v, steps=8):
        ie = importlib.import_module(f"{base if v == 'A' else 'loom'}.infer.engine")
        s = ie.ImageSamplerConfig(num_timesteps=steps + 1, cfg_text_scale=4.0, cfg_img_scale=2.0,
                                  cfg_interval=(0.0, 1.0))
        return lambda: engines[v].generate_image(*ctxs[v], 18, 18, s, noise=noise, frame=3)

    def decode(v, tokens=8):
        return lambda: engines[v].generate_text(ctxs[v][0], max_length=tokens, stop_at_eos=False)

    def prefill(v):
        return lambda: engines[v].add_latents(ctxs[v][0], z, 18, 18, frame=3)

    a, b = image("A", 2)(), image("B", 2)()
    print(f"  outputs A vs B (2 steps): max |Δ| {(a - b).abs().max().item():.3g}")
    results = {}
    for name, make, per in (("denoise_step", step, 1), ("image_8_steps", image, 8), ("decode_token", decode, 8),
                            ("prefill_image_block", prefill, 1)):
        t = bm.interleave({v: make(v) for v in ("A", "B")}, args.rounds)
        t = {v: [x / per for x in xs] for v, xs in t.items()}
        results[name] = bm.summarise(t)
        r = results[name]
        print(f"  {name}: A {r['A_median']:.4f}s B {r['B_median']:.4f}s, A/B per round "
              f"{[round(x, 3) for x in r['paired_ratios_A_over_B']]}", flush=True)
    report = {"what": "KV-cached forwards of the narrow model (bench_model.narrow_config), same weights and "
                      "contexts; A and B timed alternately in one process (A B, B A, …) after one warm-up each. "
                      "denoise_step: one CFG step, 3 branches x 326 query tokens in one forward (B: buffers made "
                      "once per image, as generate_image does); image_8_steps: generate_image with 8 steps, per "
                      "step (B includes its once-per-image gather); decode_token: 8 greedy tokens on cond, per "
                      "token; prefill_image_block: one 326-token clean latent block on cond",
              "A": args.ab, "B": f"{bm.git_rev()} (+ working tree)",
              "context_tokens": [c.kv_len for c in ctxs["B"]], "query_tokens_per_step": 3 * n,
              "results": results, "machine": bm.machine(), "rounds": args.rounds}
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


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
    p.add_argument("--out", default=None, help="default evals/perf/infer_cpu.json (--ab: infer_ab_cpu.json)")
    p.add_argument("--ab", metavar="REF", help="A/B against git REF on the narrow model of realistic shape")
    p.add_argument("--rounds", type=int, default=6, help="--ab: A/B rounds (each times A and B once)")
    args = p.parse_args(argv)
    if args.ab:
        args.out = args.out or "evals/perf/infer_ab_cpu.json"
        return main_ab(args)
    args.out = args.out or "evals/perf/infer_cpu.json"

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
