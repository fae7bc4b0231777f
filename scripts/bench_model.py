"""Shared by the benchmarks: the reduced-width model of realistic shape, and A/B timing interleaved in one process.

`narrow_config()` keeps what decides attention and KV cost at BAGEL-7B-MoT — head dim 128, GQA 7:1 (query heads
per KV head), MoT experts, SigLIP head dim 72, latent tokens of 64 channels — at a width a CPU can run: hidden
896 (7 heads, 1 KV head), 4 decoder layers, vocabulary 8192, a 2-layer ViT of width 288 (random weights; the
FLUX geometry's 64-channel latent tokens, the autoencoder itself is not built).

A/B: `import_baseline(REF)` exports REF's `loom` package (`git archive`) as `loom_base` and imports it next to
this checkout's `loom` (the model, data and inference code import each other relatively, so the copy is
self-contained). Both variants then get the same weights and inputs and `interleave` times them one call after
the other, A B B A A B …, so each pair sees the same machine load; on a shared, noisy machine only these paired
ratios mean anything.
"""

from __future__ import annotations

import atexit
import importlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def narrow_config(layers: int = 4, vit_layers: int = 2, vocab: int = 8192, pkg: str = "loom"):
    c = importlib.import_module(f"{pkg}.model.configs")
    return c.LoomConfig(
        llm=c.LLMConfig(hidden_size=896, intermediate_size=4736, num_hidden_layers=layers, num_attention_heads=7,
                        num_key_value_heads=1, vocab_size=vocab),
        vit=c.ViTConfig(hidden_size=288, intermediate_size=1076, num_hidden_layers=vit_layers, num_attention_heads=4),
        vae=c.VAEConfig(),
    )


def seeded_model(cfg, seed: int = 0, pkg: str = "loom"):
    """Random weights, reproducible (BAGEL-like scales: normal(0, 0.02) matrices, unit norms)."""
    import torch

    Loom = importlib.import_module(f"{pkg}.model.loom").Loom
    torch.manual_seed(seed)
    model = Loom(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and p.dim() >= 2 and "pos_embed" not in name:
                p.normal_(0.0, 0.02)
    return model.eval()


def import_baseline(ref: str) -> str:
    """REF's `loom` as the importable package `loom_base` (removed at exit)."""
    tmp = Path(tempfile.mkdtemp(prefix="loom-base-"))
    atexit.register(shutil.rmtree, tmp, True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "loom"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    (tmp / "loom").rename(tmp / "loom_base")
    sys.path.insert(0, str(tmp))
    importlib.import_module("loom_base")
    return "loom_base"


def start_ab(ref: str, rounds: int) -> str:
    """Import REF as the baseline package and say what is compared; returns the package name."""
    base = import_baseline(ref)
    print(f"A = {ref} (as {base}), B = this checkout ({git_rev()}), {rounds} rounds interleaved")
    return base


def git_rev(ref: str = "HEAD") -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True,
                          text=True).stdout.strip()


def interleave(fns: dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """{"A": fn, "B": fn} → seconds per call, called A B, B A, A B … (`warmup` untimed calls of each first)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in (("A", "B") if r % 2 == 0 else ("B", "A")):
            t0 = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t0)
    return out


def summarise(times: dict[str, list[float]]) -> dict:
    """Medians of each variant, and the median of the per-round ratios A/B (> 1: B is faster)."""
    a, b = times["A"], times["B"]
    pairs = [x / y for x, y in zip(a, b)]
    return {"A_seconds": a, "B_seconds": b, "A_median": statistics.median(a), "B_median": statistics.median(b),
            "paired_ratios_A_over_B": pairs, "ratio_A_over_B_median": statistics.median(pairs)}


def machine() -> dict:
    import torch

    return {"torch": torch.__version__, "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
