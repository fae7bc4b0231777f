"""Memory per quantisation mode and of the KV cache: measured at reduced width on CPU, computed at 7B.

    python scripts/bench_memory.py [--part quant,weights7b,kv] [--out-dir evals/perf]

- `quant` → memory_quant_cpu.json (measured): the narrow model of realistic shape (`bench_model.narrow_config`,
  head dim 128, GQA 7:1, 4 MoT layers, pixel autoencoder) saved as a BAGEL-layout release with random fp32
  weights, then per mode (none = fp32, int8, fp8, nf4; every part) one fresh process loads it with
  `load_pretrained(quantize=mode)` and renders one 18×18-token image with text + image CFG on a 1.2k-token
  context: peak RSS of the process, bytes of all parameters and of the linear layers per part, and the deviation
  from fp32 (max / mean |Δ| of the final latents, PSNR of the decoded frames).
- `weights7b` → memory_7b_computed.json (computed, not measured): BAGEL-7B-MoT parameter counts per part from the
  model built on the meta device, and each mode's bytes for every distinct linear shape, obtained by quantising
  one bf16 tensor of that shape with torchao.
- `kv` → memory_kv.json: the KV cache of a 6-frame text→tutorial with K_max = 4 through the real loop
  (`ItemContexts`, pages, history pruning): rows held after each frame by the shared cache vs one copy per cached
  context (the concatenating cache), plus the rows gathered per image for attention (transient) vs the two
  copies per denoising step the concatenating engine made. Run at the real 1024² layout (4096 VAE + 4900 ViT
  tokens per frame) with a 1-layer model — the rows only depend on the layout — and turned into 7B bytes
  (28 layers × K and V × 4 KV heads × 128 × bf16 = 57344 bytes per row: computed); and measured in bytes with
  the narrow model at 288² frames on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import ROOT, machine, narrow_config, seeded_model  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"
MODES = ("none", "int8", "fp8", "nf4")
STEPS = ["fold the square in half", "fold the corners to the centre", "turn it over", "fold the flaps up",
         "shape the neck and tail", "open the wings"]


class AnonPeak:
    """Peak private (anonymous) resident memory, sampled every 5 ms from /proc/self/status RssAnon — weights
    mapped from the safetensors file are file-backed and not in it. The child runs with a 64 KiB mmap threshold
    so that freed tensors go back to the OS at once instead of staying in glibc's heap."""

    def __init__(self) -> None:
        import threading

        self.peak, self._stop = 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> AnonPeak:
        self.peak = self.now()
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def _rss_mib() -> float:
    """Peak resident set of this process image: VmHWM (ru_maxrss would carry the parent's peak over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- quant: one process per mode ---------------------------------------------------------------------------------
def quant_config():
    from loom.model.configs import VAEConfig

    cfg = narrow_config()
    cfg.vae = VAEConfig(kind="pixel", z_channels=12, downsample=2)  # no weights: memory is the LLM's
    return cfg


def write_release(folder: Path) -> None:
    """The seeded narrow model as a BAGEL-layout folder (fp32 ema.safetensors, configs, the fixture tokenizer)."""
    import shutil
    from dataclasses import asdict

    from loom.model.weights import save_state_dict

    cfg = quant_config()
    folder.mkdir(parents=True, exist_ok=True)
    llm = json.loads((FIXTURE / "llm_config.json").read_text())
    llm.update(hidden_size=cfg.llm.hidden_size, intermediate_size=cfg.llm.intermediate_size,
               num_hidden_layers=cfg.llm.num_hidden_layers, num_attention_heads=cfg.llm.num_attention_heads,
               num_key_value_heads=cfg.llm.num_key_value_heads, vocab_size=cfg.llm.vocab_size)
    vit = json.loads((FIXTURE / "vit_config.json").read_text())
    vit.update(hidden_size=cfg.vit.hidden_size, intermediate_size=cfg.vit.intermediate_size,
               num_hidden_layers=cfg.vit.num_hidden_layers + 1, num_attention_heads=cfg.vit.num_attention_heads)
    (folder / "llm_config.json").write_text(json.dumps(llm))
    (folder / "vit_config.json").write_text(json.dumps(vit))
    (folder / "loom_config.json").write_text(json.dumps({"vae": asdict(cfg.vae)}))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(FIXTURE / f, folder / f)
    save_state_dict(seeded_model(cfg).state_dict(), folder / "ema.safetensors")


def quant_child(folder: str, mode: str, out: str) -> None:
    from safetensors.torch import save_file

    from loom.infer.cache import Context
    from loom.infer.engine import Engine, ImageSamplerConfig
    from loom.infer.load import load_pretrained
    from loom.infer.quantize import linear_weight_bytes, tensor_nbytes

    torch.set_num_threads(2)
    rss0, anon0 = _rss_mib(), AnonPeak.now()
    t0 = time.perf_counter()
    with AnonPeak() as load_anon:
        ld = load_pretrained(folder, device="cpu", dtype="fp32", verbose=False, quantize=mode)
    load_s = time.perf_counter() - t0
    rss_load = _rss_mib()
    gen_anon = AnonPeak().__enter__()
    eng = Engine(ld.model, ld.vae, ld.tokenizer)
    cfg = ld.config
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(0, 490, (n,), generator=g).tolist()  # noqa: E731
    ctx = eng.add_text(Context(), ids(64))
    for k in (1, 2):
        ctx = eng.add_latents(ctx, torch.randn(18 * 18, cfg.latent_token_dim, generator=g), 18, 18, frame=k)
        ctx = eng.extend(ctx, eng.vit_block(ctx, torch.rand(3, 224, 224, generator=g) * 2 - 1, k))
    cond = eng.add_text(ctx, ids(32))
    uncond = eng.add_text(Context(), ids(32))
    sampler = ImageSamplerConfig(num_timesteps=6, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0))
    lat = eng.generate_image(cond, uncond, ctx, 18, 18, sampler, noise=torch.randn(324, cfg.latent_token_dim,
                                                                                      generator=g), frame=3)
    img, _ = eng.decode_latents(lat, 18, 18)
    gen_anon.__exit__()
    save_file({"latents": lat.contiguous(), "image": img.contiguous()}, out)
    print(json.dumps({"mode": mode, "peak_rss_mib": round(_rss_mib(), 1), "rss_after_imports_mib": round(rss0, 1),
                      "peak_rss_after_load_mib": round(rss_load, 1), "anon_after_imports_mib": round(anon0, 1),
                      "peak_anon_load_mib": round(load_anon.peak, 1), "peak_anon_generate_mib": round(gen_anon.peak, 1),
                      "load_seconds": round(load_s, 2),
                      "param_bytes": sum(tensor_nbytes(p) for p in ld.model.parameters()),
                      "linear_weight_bytes": linear_weight_bytes(ld.model), "quantize": ld.describe()["quantize"],
                      "context_tokens": cond.kv_len}))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_quant() -> dict:
    from safetensors.torch import load_file

    rows = []
    with tempfile.TemporaryDirectory(prefix="loom-mem-") as tmp:
        folder = Path(tmp) / "release"
        write_release(folder)
        outs = {}
        for mode in MODES:
            out = Path(tmp) / f"{mode}.safetensors"
            res = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, str(out)],
                                 capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin",
                                                                      "MALLOC_MMAP_THRESHOLD_": "65536"})
            if res.returncode != 0:
                rows.append({"mode": mode, "error": res.stderr[-1500:]})
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            outs[mode] = load_file(str(out))
            r = rows[-1]
            print(f"  {mode}: peak RSS {r['peak_rss_mib']} MiB, private peak load {r['peak_anon_load_mib']} / "
                  f"generate {r['peak_anon_generate_mib']} MiB, params {r['param_bytes'] / 2**20:.1f} MiB")
    ref = outs.get("none")
    for r in rows:
        if ref is not None and r["mode"] in outs:
            d = (outs[r["mode"]]["latents"] - ref["latents"]).abs()
            r["vs_fp32"] = {"latents_max_abs": d.max().item(), "latents_mean_abs": d.mean().item(),
                            "decoded_psnr_db": psnr(outs[r["mode"]]["image"], ref["image"])}
    return {"what": "measured on CPU: the narrow model (bench_model.narrow_config, pixel autoencoder) as a random-"
                    "weight fp32 release, loaded with --quantize MODE on every part, one 18x18-token image rendered "
                    "with text + image CFG (5 steps). peak_rss: VmHWM of the process (Python, torch, weights, "
                    "activations, and the safetensors file pages mapped while loading); peak_anon_*: sampled peak "
                    "private memory while loading / generating (mode none keeps its fp32 weights as file-backed "
                    "pages of the mapped file, so they are not in it); deviation against mode none (fp32)", "rows": rows, "machine": machine()}


# ---- weights7b: exact bytes per mode from parameter counts --------------------------------------------------------
def run_weights7b() -> dict:
    from collections import Counter

    from loom.infer.quantize import import_quietly, part_of, quantize_linear, tensor_nbytes
    from loom.model.configs import preset
    from loom.model.loom import Loom

    import_quietly()
    with torch.device("meta"):
        model = Loom(preset("bagel-7b-mot"))
    shapes: dict[str, Counter] = {p: Counter() for p in ("und", "gen", "vit")}
    counted = set()
    for name, mod in model.named_modules():
        part = part_of(name)
        if part is not None and isinstance(mod, torch.nn.Linear):
            shapes[part][tuple(mod.weight.shape)] += 1
            counted.add(id(mod.weight))
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)  # biases, norms, embeddings …
    from loom.model.configs import VAEConfig
    from loom.model.vae import build_autoencoder

    with torch.device("meta"):
        vae_params = sum(p.numel() for p in build_autoencoder(VAEConfig()).parameters())
    per_shape: dict[tuple, dict[str, int]] = {}
    for shape in {s for c in shapes.values() for s in c}:
        per_shape[shape] = {"none": shape[0] * shape[1] * 2}
        for mode in ("int8", "fp8", "nf4"):
            lin = torch.nn.Linear(shape[1], shape[0], bias=False, dtype=torch.bfloat16)
            ok = quantize_linear(lin, mode)
            per_shape[shape][mode] = tensor_nbytes(lin.weight) if ok else per_shape[shape]["none"]
            del lin
    gb = 1e9
    out: dict = {"what": "COMPUTED (not measured): BAGEL-7B-MoT in bf16; linear weights of each part at each "
                         "mode's exact bytes (one bf16 tensor per distinct shape quantised with torchao); every "
                         "other parameter (embeddings, lm_head, norms, biases, connector, ViT patch / position "
                         "embeddings, time embedder, vae2llm / llm2vae) kept in bf16; the FLUX VAE (vae_gb, bf16, "
                         "never quantised) not in total_gb",
                 "params": {p: sum(a * b * n for (a, b), n in c.items()) for p, c in shapes.items()},
                 "params_other": other, "vae_gb": vae_params * 2 / 1e9, "modes": {}}
    for mode in ("none", "int8", "fp8", "nf4"):
        parts = {p: sum(per_shape[s][mode] * n for s, n in c.items()) for p, c in shapes.items()}
        total = sum(parts.values()) + other * 2
        out["modes"][mode] = {"parts_gb": {p: v / gb for p, v in parts.items()}, "other_gb": other * 2 / gb,
                              "total_gb": total / gb}
    return out


# ---- kv: the tutorial loop's cache ----------------------------------------------------------------------------------
def kv_layout_config():
    """One decoder layer of minimal width at BAGEL's tables (64×64 latent grid, 70×70 ViT grid): rows only."""
    from loom.model.configs import LLMConfig, LoomConfig, VAEConfig, ViTConfig

    return LoomConfig(llm=LLMConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1, vocab_size=1024),
                      vit=ViTConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1),
                      vae=VAEConfig())


def tutorial_kv(cfg, side: int, k_max: int = 4, num_frames: int = 6) -> list[dict]:
    """Run the loop's context building for a text→tutorial (no sampling: the frames are random latents), and
    record per frame what the cache holds and what the denoising loop would gather."""
    from PIL import Image

    from loom.data.builders import BuildConfig
    from loom.data.builders.tutorial import history_items, plan_item, step_item, tutorial_prefix
    from loom.data.history import sparse_history_indices
    from loom.data.tokenizer import load_tokenizer
    from loom.infer.cache import held_bytes
    from loom.infer.engine import Engine
    from loom.infer.loop import ItemContexts, inference_build_context

    model = seeded_model(cfg)
    eng = Engine(model, None, load_tokenizer(FIXTURE))
    vit_max = min(980, (side // 14) * 14)
    from loom.data.transforms import ImageTransform

    eng.vae_transform, eng.vit_transform = ImageTransform(side, side, 16), ImageTransform(vit_max, vit_max, 14)
    bctx, images, mem = inference_build_context(eng, BuildConfig(k_max=k_max))
    contexts = ItemContexts(eng, rope_gaps=True)
    prefix = tutorial_prefix(bctx, images, "How to fold a paper crane", [])
    plan = plan_item(bctx, STEPS[:num_frames])
    row = None
    g = torch.Generator().manual_seed(0)
    grid = side // cfg.pixels_per_latent_token
    rows = []
    for t in range(1, num_frames + 1):
        hist = sparse_history_indices(t - 1, k_max, 0)
        items = [*prefix, plan, *history_items(bctx, images, {k: f"frame{k}" for k in hist}),
                 step_item(bctx, t, STEPS[t - 1])]
        contexts.retain(items)
        branches = [c for c in contexts.branches(items) if c is not None]
        cached = contexts.cached()
        row = row or (cached[0].nbytes // cached[0].kv_len)
        n = grid * grid + 2
        bufs = eng.attention_buffers(branches, [n] * len(branches))
        gathered = sum({id(b): b.copied for b in bufs if b is not None}.values())
        rows.append({"frame": t, "history": hist, "branch_tokens": [c.kv_len for c in branches],
                     "held_rows": held_bytes(cached) // row, "one_copy_per_context_rows": sum(c.kv_len for c in cached),
                     "gathered_rows_per_image": gathered // row,
                     "concat_engine_rows_per_step": 2 * sum(c.kv_len for c in branches),
                     "held_bytes": held_bytes(cached), "gathered_bytes_per_image": gathered, "row_bytes": row})
        del bufs
        mem.images[f"frame{t}"] = Image.new("RGB", (side, side), (30 * t, 90, 200))
        contexts.set_latents(images.vae(f"frame{t}"), torch.randn(grid * grid, cfg.latent_token_dim, generator=g),
                             grid, grid)
        print(f"  frame {t}: held {rows[-1]['held_rows']} rows vs {rows[-1]['one_copy_per_context_rows']} "
              f"(one copy per context); gathered per image {rows[-1]['gathered_rows_per_image']}", flush=True)
    return rows


def run_kv() -> dict:
    row_7b = 28 * 2 * 4 * 128 * 2
    layout = tutorial_kv(kv_layout_config(), 1024)
    for r in layout:
        r.pop("held_bytes"), r.pop("gathered_bytes_per_image"), r.pop("row_bytes")
        r["7b_gb"] = {k.replace("_rows", ""): v * row_7b / 1e9 for k, v in r.items() if k.endswith("_rows")}
    narrow = tutorial_kv(narrow_config(), 288)
    return {"what": "6-frame text->tutorial, K_max 4, through ItemContexts (frames = random latents, no sampling). "
                    "1024²: rows from the real layout (1-layer model), 7b_gb COMPUTED as rows x 57344 bytes (bf16, "
                    "28 layers, K+V, 4 KV heads x 128). narrow_288: MEASURED bytes of the narrow model's pages on "
                    "CPU (fp32) at 288² frames. Text lengths come from the fixture tokenizer, not Qwen's.",
            "bytes_per_row_7b_bf16": row_7b, "layout_1024": layout, "narrow_288": narrow, "machine": machine()}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        quant_child(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="quant,weights7b,kv")
    ap.add_argument("--out-dir", default="evals/perf")
    args = ap.parse_args()
    from loom.utils.io import atomic_write_json

    out = Path(args.out_dir)
    for part in args.part.split(","):
        print(f"[bench_memory] {part}", flush=True)
        fn, name = {"quant": (run_quant, "memory_quant_cpu.json"), "weights7b": (run_weights7b, "memory_7b_computed.json"),
                    "kv": (run_kv, "memory_kv.json")}[part]
        atomic_write_json(out / name, fn())
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
