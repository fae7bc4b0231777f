"""Training forward throughput: the tiny model per attention backend, or before/after A/B at realistic shape.

    python scripts/bench_forward.py [--out evals/perf/forward_cpu.json] [--steps 10] [--samples 4]
    python scripts/bench_forward.py --ab d530fe2 [--rounds 6] [--out evals/perf/forward_ab_cpu.json]

The first prints tokens/s per backend (tiny model). `--ab REF` times one packed training forward of the
reduced-width model of realistic shape (`bench_model.narrow_config`: head dim 128, GQA 7:1, a 1010-token
tutorial-like sample: prompt, reference ViT 224² + VAE 288², step text, noisy 288² target) under REF and under
this checkout, alternately in one process (`bench_model.interleave`): the sdpa forward and the flex forward
(eager on CPU, as on a GPU without compile), plus the flex block masks built per forward. No thresholds: ratios
measured side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loom.data.packing import PackGeometry, pack_sequences
from loom.data.tokenizer import SpecialTokens
from loom.data.types import PlanItem, SequencePlan
from loom.model.attention import flash_available
from loom.model.configs import preset
from loom.model.loom import Loom
from loom.model.vae import build_autoencoder, encode_to_tokens


def make_batch(cfg, num_samples: int, seed: int = 0):
    rng = random.Random(seed)
    tokens = SpecialTokens(bos=501, eos=502, start_of_image=503, end_of_image=504)
    plans = []
    for _ in range(num_samples):  # a 3-frame tutorial-like sample: text, clean frames, step text, target
        items = [PlanItem("text", text_ids=[rng.randrange(500) for _ in range(24)], loss=True)]
        for _ in range(2):
            im = torch.rand(3, 32, 32) * 2 - 1
            items += [PlanItem("vae_image", image=im), PlanItem("vit_image", image=torch.rand(3, 28, 28) * 2 - 1)]
        items += [PlanItem("text", text_ids=[rng.randrange(500) for _ in range(12)]),
                  PlanItem("vae_image", image=torch.rand(3, 32, 32) * 2 - 1, loss=True)]
        plans.append(SequencePlan(items))
    batch = pack_sequences(plans, tokens, PackGeometry.from_config(cfg), timestep_generator=torch.Generator().manual_seed(seed))
    return batch


def bench(backend: str, device: str, steps: int, num_samples: int) -> dict:
    torch.manual_seed(0)
    cfg = preset("loom-tiny")
    model = Loom(cfg).to(device)
    model.attn_backend = backend
    vae = build_autoencoder(cfg.vae).to(device)
    batch = make_batch(cfg, num_samples).to(device)
    x0 = torch.cat(encode_to_tokens(vae, batch.vae_images, batch.vae_latent_shapes, cfg.latent_patch_size))
    batch.packed_noise = torch.randn_like(x0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        out = model(batch, x0=x0)
        loss = out.ce.mean() * 0.25 + out.mse.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compilation for flex)
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"backend": backend, "device": device, "tokens_per_step": batch.sequence_length,
            "steps": steps, "seconds": dt, "tokens_per_s": batch.sequence_length * steps / dt}


def narrow_pack(cfg, num_samples: int = 1, seed: int = 0, pkg: str = "loom"):
    """Tutorial-like samples: prompt (64 tokens, CE), reference ViT 224² + VAE 288², step text, noisy 288² target
    (1010 packed tokens each), built with `pkg`'s own packer."""
    import importlib

    packing, types = (importlib.import_module(f"{pkg}.data.{m}") for m in ("packing", "types"))
    tok = importlib.import_module(f"{pkg}.data.tokenizer").SpecialTokens(bos=8001, eos=8002, start_of_image=8003,
                                                                          end_of_image=8004)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    img = lambda s: torch.rand(3, s, s, generator=g) * 2 - 1  # noqa: E731
    P = types.PlanItem
    plans = [types.SequencePlan([P("text", text_ids=[rng.randrange(8000) for _ in range(64)], loss=True),
                                 P("vit_image", image=img(224)), P("vae_image", image=img(288)),
                                 P("text", text_ids=[rng.randrange(8000) for _ in range(32)]),
                                 P("vae_image", image=img(288), loss=True, timestep_logit=0.3)])
             for _ in range(num_samples)]
    return packing.pack_sequences(plans, tok, packing.PackGeometry.from_config(cfg))


def main_ab(args) -> None:
    import importlib

    import bench_model as bm
    import torch.nn.attention.flex_attention as fa

    from loom.utils.io import atomic_write_json

    base = bm.start_ab(args.ab, args.rounds)
    models, batches = {}, {}
    for v, pkg in (("A", base), ("B", "loom")):
        cfg = bm.narrow_config(pkg=pkg)
        models[v] = importlib.import_module(f"{pkg}.model.loom").Loom(cfg).eval()
        batches[v] = narrow_pack(cfg, pkg=pkg)
    models["A"].load_state_dict(bm.seeded_model(bm.narrow_config()).state_dict())  # same weights for A and B
    models["B"].load_state_dict(models["A"].state_dict())
    n_vae = batches["B"].num_vae_tokens
    x0 = torch.randn(n_vae, 64, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(n_vae, 64, generator=torch.Generator().manual_seed(2))
    for b in batches.values():
        b.packed_noise = noise

    def forward(v, backend):
        def run():
            models[v].attn_backend = backend
            with torch.no_grad():
                return models[v](batches[v], x0=x0)
        return run

    masks: list = []
    real = fa.create_block_mask
    fa.create_block_mask = lambda *a, **k: masks.append(1) or real(*a, **k)
    counts = {}
    for v in ("A", "B"):
        n0 = len(masks)
        out = forward(v, "flex")()
        counts[v] = len(masks) - n0
        print(f"  {v}: flex block masks per forward {counts[v]}, mse {out.mse.mean():.6f}")
    results = {}
    for backend in ("sdpa", "flex"):
        t = bm.interleave({v: forward(v, backend) for v in ("A", "B")}, args.rounds)
        results[f"{backend}_forward"] = bm.summarise(t)
        r = results[f"{backend}_forward"]
        print(f"  {backend} forward: A {r['A_median']:.3f}s B {r['B_median']:.3f}s, A/B per round "
              f"{[round(x, 3) for x in r['paired_ratios_A_over_B']]}", flush=True)
    report = {"what": "one packed training forward (no grad) of the narrow model (bench_model.narrow_config: hidden "
                      "896, head dim 128, 7 query heads per KV head, 4 MoT layers, 2 ViT layers), same weights and "
                      "batch; A and B timed alternately in one process (A B, B A, …) after one warm-up each; "
                      "flex runs eager on CPU",
              "A": args.ab, "B": f"{bm.git_rev()} (+ working tree)", "tokens": batches["B"].sequence_length,
              "flex_block_masks_per_forward": counts, "results": results, "machine": bm.machine(),
              "rounds": args.rounds}
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default evals/perf/forward_cpu.json (--ab: forward_ab_cpu.json)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--ab", metavar="REF", help="A/B against git REF on the narrow model of realistic shape")
    ap.add_argument("--rounds", type=int, default=6, help="--ab: A/B rounds (each times A and B once)")
    args = ap.parse_args()
    if args.ab:
        args.out = args.out or "evals/perf/forward_ab_cpu.json"
        return main_ab(args)
    args.out = args.out or "evals/perf/forward_cpu.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = ["sdpa", "flex"] + (["flash"] if flash_available() else [])
    results = []
    for be in backends:
        try:
            r = bench(be, device, args.steps, args.samples)
        except Exception as e:  # a backend missing on this machine is reported, not fatal
            r = {"backend": be, "device": device, "error": f"{type(e).__name__}: {e}"}
        results.append(r)
        msg = f"{r['tokens_per_s']:10.0f} tokens/s" if "tokens_per_s" in r else r["error"]
        print(f"{be:6s} {device}: {msg}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": "loom-tiny", "torch": torch.__version__, "machine": platform.machine(),
               "threads": torch.get_num_threads(), "results": results}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
