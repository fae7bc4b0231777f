"""Training throughput benchmark: tokens/s, MFU and peak memory of the real train step (loom.train.Trainer).

CPU (always): loom-tiny on synthetic tutorial-shaped samples. GPU (when CUDA is present): a reduced-depth model
of BAGEL-7B width (D 3584, F 18944, 28/4 heads, full vocab; --layers decoder and ViT layers), bf16, FSDP
when launched on several GPUs, activation checkpointing on.

    python scripts/bench_train.py [--steps 10] [--warmup 3] [--out bench_train.json]
    torchrun --nproc_per_node 8 scripts/bench_train.py --layers 4      # multi-GPU, FSDP2
    python scripts/bench_train.py --demo [--steps 40 --reps 3]         # shapes demo recipe, A/B interleaved

Writes one JSON object per configuration (a list) to --out and prints a table.

`--demo`: steps/s and tokens/s of the shapes-demo step (configs/train/shapes_demo.yaml on a small world written
to a temp folder) for each variant in DEMO_VARIANTS, measured interleaved in one process — every variant runs
the same packs, one step each in turn, `--reps` rounds — so a busy machine slows all of them alike and the ratios
stay meaningful. Writes evals/perf/train_demo_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loom.train.config import load_train_config  # noqa: E402
from loom.train.trainer import Trainer  # noqa: E402

TOKENIZER = ROOT / "tests" / "fixtures" / "bagel-tiny"


class _BenchTrainer(Trainer):
    def save(self):  # a benchmark never writes resume state
        return None


def configurations(layers: int) -> list[tuple[str, list[str]]]:
    out = [("loom-tiny (cpu)", [
        "model.preset=loom-tiny", "data.sources.syn.image_size=32", "data.batch_size=4", "data.max_tokens=4096",
        "data.max_tokens_per_sample=4096", "parallel.activation_checkpointing=false"])]
    if torch.cuda.is_available():
        out.append((f"bagel-7b width, {layers} layers (cuda)", [
            "model.preset=bagel-7b-mot", f"+model.overrides.llm.num_hidden_layers={layers}",
            f"+model.overrides.vit.num_hidden_layers={layers}",
            "+model.overrides.vae.kind=pixel", "+model.overrides.vae.z_channels=192",
            "+model.overrides.vae.downsample=8", "data.sources.syn.image_size=512", "data.batch_size=2",
            "data.max_tokens=16384", "data.max_tokens_per_sample=16384", "parallel.activation_checkpointing=true",
            "parallel.mixed_precision=bf16"]))
    return out


def run_one(name: str, overrides: list[str], steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"run.dir={tmp}", f"run.total_steps={warmup + steps}", "model.init=scratch",
                f"model.tokenizer={TOKENIZER}", "data.sources.syn.path=synthetic", "data.sources.syn.num_rows=64",
                "checkpoint.every=0", "checkpoint.export_at_end=false", "ema.enabled=true",
                "data.text_cond_dropout=0", "data.vit_cond_dropout=0", "data.vae_cond_dropout=0",
                f"log.every={warmup + steps}"]
        cfg = load_train_config(None, [*base, *[o.lstrip("+") for o in overrides]])
        tr = _BenchTrainer(cfg)
        dev = tr.info.device
        for _ in range(warmup):  # compile / allocator warm-up, excluded from the numbers
            tr.train_step(tr.loader.next_step(tr.grad_accum))
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        from loom.train import parallel
        from loom.train.metrics import peak_memory_gb, peak_tflops, train_flops

        tokens = len_sq = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            rec = tr.train_step(tr.loader.next_step(tr.grad_accum))
            tokens += rec["tokens"]
            len_sq += rec["len_sq"]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = peak_tflops(dev, cfg.log.peak_tflops)
        flops = train_flops(tr.model_cfg.llm, tokens, len_sq)
        world = tr.info.world_size
        res = {"name": name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               "world_size": world, "steps": steps, "step_time_s": dt / steps, "tokens_per_s": tokens / dt,
               "tokens_per_s_per_device": tokens / dt / world, "tflops_per_device": flops / dt / 1e12 / world,
               "mfu": flops / dt / 1e12 / (peak * world) if peak else None,  # null: no known peak (CPU)
               "peak_tflops_assumed": peak,
               "peak_mem_gb": parallel.all_reduce_max([peak_memory_gb(dev)], tr.info)[0],
               "params_m": sum(p.numel() for p in tr.model.parameters()) / 1e6 * (world if world > 1 else 1),
               "final_loss": rec["loss"]}
        parallel.barrier(tr.info)
        return res


# "before" = the demo recipe as it first ran on the trainer (the trainer's defaults: activation checkpointing on,
# data built in the training process); "after" = the committed recipe
DEMO_VARIANTS: dict[str, list[str]] = {
    "before: trainer defaults (activation checkpointing)": ["parallel.activation_checkpointing=true"],
    "after: shapes_demo.yaml": [],
}


def run_demo_ab(steps: int, reps: int, threads: int) -> list[dict]:
    import statistics

    from loom.world.demo import DemoConfig, prepare

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = DemoConfig(n_train={"tutorial": 300, "image_tutorial": 60, "compose": 60, "style": 30},
                         n_test={"tutorial": 1})
        trainers = {}
        for i, (name, ov) in enumerate(DEMO_VARIANTS.items()):
            cfg.overrides = [*ov, "checkpoint.every=0", "checkpoint.export_at_end=false", "log.progress=false",
                             f"log.every={10**9}", "run.total_steps=1000000"]
            _, tcfg, _ = prepare(cfg, root / f"v{i}", data_root=root / "world", log=lambda _: None)
            trainers[name] = _BenchTrainer(tcfg)
        first = next(iter(trainers.values()))
        packs = [first.loader.next_step(first.grad_accum) for _ in range(steps + 3)]
        for tr in trainers.values():  # warm-up on the first packs
            for micro in packs[:3]:
                tr.train_step(micro)
        times: dict[str, list[float]] = {n: [] for n in trainers}
        tokens = sum(mb.packed.sequence_length for micro in packs[3:] for mb in micro)
        for _ in range(reps):
            for micro in packs[3:]:
                for name, tr in trainers.items():
                    t0 = time.perf_counter()
                    tr.train_step(micro)
                    times[name].append(time.perf_counter() - t0)
    base = statistics.median(next(iter(times.values())))
    out = []
    for name, ts in times.items():
        med = statistics.median(ts)
        out.append({"name": name, "device": "cpu", "threads": threads, "steps_timed": len(ts),
                    "step_time_s_median": med, "steps_per_s": 1.0 / med, "tokens_per_s": tokens / steps / med,
                    "speedup_vs_first": base / med, "overrides": DEMO_VARIANTS[name]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2, help="decoder/ViT layers of the BAGEL-width GPU model")
    ap.add_argument("--out", type=Path, default=Path("evals/perf/train_cpu.json"))
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--demo", action="store_true", help="shapes-demo recipe variants, A/B interleaved (CPU)")
    ap.add_argument("--reps", type=int, default=3, help="--demo: rounds over the same packs")
    ap.add_argument("--threads", type=int, default=2, help="--demo: torch threads")
    a = ap.parse_args(argv)
    if a.demo:
        res = run_demo_ab(a.steps, a.reps, a.threads)
        out = a.out if a.out != Path("evals/perf/train_cpu.json") else Path("evals/perf/train_demo_cpu.json")
        print(f"{'variant':<55} {'s/step':>8} {'steps/s':>8} {'tok/s':>8} {'speedup':>8}")
        for r in res:
            print(f"{r['name']:<55} {r['step_time_s_median']:>8.3f} {r['steps_per_s']:>8.2f} {r['tokens_per_s']:>8.0f} "
                  f"{r['speedup_vs_first']:>8.2f}")
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(out)
        return 0
    results = []
    for name, ov in configurations(a.layers):
        if a.cpu_only and "cuda" in name:
            continue
        results.append(run_one(name, ov, a.steps, a.warmup))
    from loom.train import parallel

    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"{'config':<40} {'tok/s':>10} {'MFU':>8} {'peak GB':>8} {'s/step':>8}")
        for r in results:
            print(f"{r['name']:<40} {r['tokens_per_s']:>10.0f} {r['mfu'] if r['mfu'] is not None else float('nan'):>8.4f} {r['peak_mem_gb']:>8.2f} "
                  f"{r['step_time_s']:>8.3f}")
        tmp = a.out.with_name(a.out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(a.out)
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
