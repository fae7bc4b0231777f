"""Forward+backward training throughput of the tiny model for each available attention backend.

    python scripts/bench_forward.py [--out runs/bench/forward.json] [--steps 10] [--samples 4]

Prints tokens/s per backend and writes JSON. No thresholds: this is the baseline we push on.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="evals/perf/forward_cpu.json")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
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
