"""One prepared GPU validation run (H200): parity, training MFU, inference speed and memory at the 7B geometry.

    python scripts/gpu_check.py                       # CUDA; ≤ 8 min; evals/perf/h200.json + evals/perf/h200.md
    python scripts/gpu_check.py --tiny --out /tmp/g.json   # CPU, tiny geometry: the same stages (used by a test)

Every stage has its own time box (`BUDGET_S`) inside one overall budget; a stage that would not fit, fails or
runs over is recorded with its reason and the next one runs. Stages:

1. `parity`: `check_reference` on tests/fixtures/bagel-tiny on the device — sdpa, flex (compiled on CUDA) and
   flash-attn when it imports — at fp32 (the fixture's tolerances) and bf16 (max abs error ≤ `BF16_MAX_ABS` per
   case, judged here: bf16 keeps 8 mantissa bits, a relative step of 2⁻⁸, and the error grows over the layers;
   the fixture's 1e-4 does not apply).
2. `train`: BAGEL-7B-MoT geometry, random weights built on the meta device and materialised in bf16 on the GPU;
   one forward+backward of a packed 4k-token (2k CE text + two 512² targets) and 16k-token (8k CE text + two
   1024² targets) batch, without and with activation checkpointing: tokens/s, MFU (model FLOPs = 6 × active
   linear params × tokens + lm_head on CE tokens + attention over the allowed (q, k) pairs, fwd + bwd; divided
   by the H200's dense bf16 peak `PEAK_TFLOPS`), peak memory.
3. `t2i`: 1024² text-to-image, 50 timesteps, text + image CFG (3 branches in one forward per step): seconds per
   image, forwards per denoising step, peak memory.
4. `tutorial`: a 4-frame plan-then-render tutorial at 512² (fixed plan): seconds per frame, KV cache bytes held
   after each frame.
5. `offload`: t2i under `--device-map offload` (decoder layers beyond `OFFLOAD_GIB` streamed from CPU RAM),
   `OFFLOAD_STEPS` denoising steps: seconds per step.

Text uses the fixture tokenizer (random weights: the figures are speed and memory, not quality).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"
PEAK_TFLOPS = 989.4  # H200 SXM dense bf16 (NVIDIA datasheet: 1979 TFLOPS with 2:4 sparsity)
BF16_MAX_ABS = 0.1  # on the fixture's O(1) logits / velocities / latents
BUDGET_S = {"parity": 90, "train": 150, "t2i": 90, "tutorial": 90, "offload": 60}  # sums to 480 s = 8 min
TINY_BOX_SCALE = 4  # --tiny checks code paths on a shared CPU: wider boxes, same structure
OFFLOAD_GIB, OFFLOAD_STEPS = 16.0, 3
BAGEL_H800_S_PER_IMAGE = 5.0  # BAGEL maintainers: ≈ 5 s per 1024² image on H800 (user-asks §A.2)


class StageTimeout(Exception):
    pass


@contextmanager
def time_box(seconds: float):
    def alarm(signum, frame):
        raise StageTimeout(f"ran over its {seconds:.0f} s time box")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Env:
    """Device, dtype, geometry and sizes of this run (`--tiny`: CPU, loom-tiny, small sequences)."""

    def __init__(self, tiny: bool) -> None:
        from loom.model.configs import preset

        self.tiny = tiny
        self.device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
        self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.cfg = preset("loom-tiny" if tiny else "bagel-7b-mot")
        # (text CE tokens, VAE target side in pixels) per training pack
        self.packs = {"small": (32, 16), "large": (64, 24)} if tiny else {"4k": (2048, 512), "16k": (7800, 1024)}
        self.t2i_side, self.t2i_steps = (32, 2) if tiny else (1024, 50)
        self.tut_side, self.tut_frames, self.tut_steps = (32, 2, 2) if tiny else (512, 4, 50)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None


def random_model(env: Env, requires_grad: bool = False):
    """The geometry on the meta device, materialised on the target device with normal(0, 0.02) weights."""
    from loom.model.loom import Loom

    with torch.device("meta"):
        model = Loom(env.cfg)
    model = model.to_empty(device=env.device).to(env.dtype)
    g = torch.Generator(device=env.device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    model.reset_fixed_tables()
    model.requires_grad_(requires_grad)
    return model


# ---- stage 1: fixture parity ---------------------------------------------------------------------------------
PARITY_SHIM = r"""
import sys, torch
from loom.tools import check_reference as cr, reference_cases as rc
device, backend, root = sys.argv[1], sys.argv[2], sys.argv[3]
cases = sys.argv[4].split(",") if sys.argv[4] else None
torch.set_default_device(device)
init, dtype = rc.ModelContext.__init__, [torch.float32]
def on_device(self, root):
    init(self, root)
    self.model.to(device, dtype[0]); self.vae.to(device)
rc.ModelContext.__init__ = on_device
for name in sys.argv[5].split(","):
    dtype[0] = getattr(torch, name)
    print(f"=== {name}", flush=True)
    cr.check(root, cases, backend, verbose=True)
"""


def stage_parity(env: Env) -> dict:
    import subprocess

    from loom.model.attention import flash_available

    backends = ["sdpa"] if env.tiny else ["sdpa", "flex"] + (["flash"] if flash_available() else [])
    cases = "kv_consistency" if env.tiny else ""
    out = {}
    for backend in backends:
        proc = subprocess.Popen([sys.executable, "-c", PARITY_SHIM, str(env.device), backend, str(FIXTURE), cases,
                                 "float32,bfloat16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        try:
            stdout, stderr = proc.communicate()
        except BaseException:  # the time box ran out: do not leave the checker running
            proc.kill()
            proc.wait()
            raise
        for block in stdout.split("=== ")[1:]:
            dtype, *lines = block.strip().splitlines()
            rows = [ln.split() for ln in lines if re.match(r"^\S+\s+max_err", ln)]
            entry = {"max_err": {r[0]: None if r[2] == "-" else float(r[2]) for r in rows},
                     "summary": lines[-1] if lines else "(no output)"}
            if dtype == "float32":  # the fixture's own tolerances
                entry["ok"] = bool(rows) and all(r[3] != "FAIL" for r in rows)
            else:  # float tensors against the bf16 bound; decoded images and token ids are reported, not judged
                keys = {m[1]: float(m[2]) for ln in lines if (m := re.match(r"^\s+(\S+)\s+(\S+)\s+(ok|BAD)", ln))}
                judged = {k: e for k, e in keys.items() if "uint8" not in k and "_ids" not in k}
                entry["ok"] = bool(judged) and all(e <= BF16_MAX_ABS for e in judged.values())
                entry["worst_judged"] = max(judged.items(), key=lambda kv: kv[1]) if judged else None
                entry["tolerance"] = f"max abs error ≤ {BF16_MAX_ABS} on float tensors"
            out[f"{backend}/{dtype}"] = entry
        if proc.returncode not in (0, 1):
            out[f"{backend}/error"] = stderr[-800:]
    return out


# ---- stage 2: training --------------------------------------------------------------------------------------
def training_pack(env: Env, text: int, side: int):
    from loom.data.packing import PackGeometry, pack_sequences
    from loom.data.tokenizer import SpecialTokens
    from loom.data.types import PlanItem, SequencePlan

    g = torch.Generator().manual_seed(0)
    tok = SpecialTokens(bos=501, eos=502, start_of_image=503, end_of_image=504)
    items = [PlanItem("text", text_ids=torch.randint(0, 500, (text,), generator=g).tolist(), loss=True)]
    items += [PlanItem("vae_image", image=torch.zeros(3, side, side), loss=True, timestep_logit=0.0) for _ in range(2)]
    return pack_sequences([SequencePlan(items)], tok, PackGeometry.from_config(env.cfg))


def model_flops(env: Env, batch) -> float:
    """Forward + backward model FLOPs (3 × forward): linears of one expert per token, lm_head on CE tokens,
    attention over the allowed (q, k) pairs (QKᵀ and PV)."""
    from loom.infer.quantize import part_of
    from loom.model.attention import spec_from_splits

    llm = env.cfg.llm
    with torch.device("meta"):
        from loom.model.loom import Loom

        meta = Loom(env.cfg)
    per_token = sum(m.weight.numel() for n, m in meta.named_modules()
                    if part_of(n) == "und" and isinstance(m, torch.nn.Linear))
    pairs = int(spec_from_splits(batch.sample_lens, batch.split_lens, batch.attn_modes).dense().sum())
    fwd = 2 * per_token * batch.sequence_length + 2 * llm.hidden_size * llm.vocab_size * batch.ce_loss_indexes.numel()
    fwd += 4 * llm.num_hidden_layers * llm.num_attention_heads * llm.head_dim * pairs
    return 3.0 * fwd


def stage_train(env: Env) -> dict:
    from loom.train.parallel import apply_activation_checkpointing

    model = random_model(env)
    for n, p in model.named_parameters():  # the ViT is not in these packs
        p.requires_grad_(not n.startswith("vit_model") and not n.endswith("pos_embed"))
    model.attn_backend = "flex" if env.device.type == "cuda" else "sdpa"
    out: dict = {"attn_backend": model.attn_backend}
    for ac in (False, True):
        if ac:
            apply_activation_checkpointing(model)
        for name, (text, side) in env.packs.items():
            key = f"{name}/{'ac' if ac else 'no_ac'}"
            batch = training_pack(env, text, side).to(env.device)
            x0 = torch.randn(batch.num_vae_tokens, env.cfg.latent_token_dim, device=env.device, dtype=env.dtype)
            batch.packed_noise = torch.randn_like(x0)
            try:
                times = []
                for _ in range(2):  # the first compiles flex and warms the allocator
                    env.reset_peak()
                    env.sync()
                    t0 = time.perf_counter()
                    res = model(batch, x0=x0)
                    (res.ce.float().mean() + res.mse.float().mean()).backward()
                    env.sync()
                    times.append(time.perf_counter() - t0)
                    model.zero_grad(set_to_none=True)
                flops = model_flops(env, batch)
                sec = times[-1]
                out[key] = {"tokens": batch.sequence_length, "seconds": sec, "tokens_per_s": batch.sequence_length / sec,
                            "model_tflops": flops / 1e12, "peak_gib": env.peak_gib(),
                            "mfu": flops / sec / (PEAK_TFLOPS * 1e12) if env.device.type == "cuda" else None}
            except torch.OutOfMemoryError as e:
                out[key] = {"tokens": batch.sequence_length, "error": f"OOM: {str(e)[:200]}"}
                model.zero_grad(set_to_none=True)
    return out


# ---- stages 3-5: inference -----------------------------------------------------------------------------------
def engine_for(env: Env, model):
    from loom.data.tokenizer import load_tokenizer
    from loom.infer.engine import Engine
    from loom.model.vae import build_autoencoder

    with torch.device("meta"):
        vae = build_autoencoder(env.cfg.vae)
    vae = vae.to_empty(device=env.device)
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.zero_()
    return Engine(model.eval(), vae.to(env.dtype if env.device.type == "cuda" else torch.float32),
                  load_tokenizer(FIXTURE))


def t2i(env: Env, eng, steps: int) -> dict:
    from loom.infer.cache import Context
    from loom.infer.engine import ImageSamplerConfig

    side = env.t2i_side // env.cfg.pixels_per_latent_token
    s = ImageSamplerConfig(num_timesteps=steps + 1, cfg_text_scale=4.0, cfg_img_scale=1.5, cfg_interval=(0.0, 1.0))
    env.reset_peak()
    env.sync()
    t0 = time.perf_counter()
    cond = eng.add_text(Context(), list(range(10, 40)))
    n0 = eng.num_forwards
    lat = eng.generate_image(cond, Context(), cond, side, side, s)
    env.sync()
    eng.decode_latents(lat, side, side)
    env.sync()
    sec = time.perf_counter() - t0
    return {"seconds_per_image": sec, "denoising_steps": steps, "forwards_per_denoising_step":
            (eng.num_forwards - n0) / steps, "peak_gib": env.peak_gib(), "resolution": env.t2i_side}


def stage_t2i(env: Env) -> dict:
    eng = engine_for(env, random_model(env))
    eng.model.attn_backend = "flex" if env.device.type == "cuda" else "sdpa"
    t2i(env, eng, 2)  # warm-up: kernels, allocator
    return t2i(env, eng, env.t2i_steps)


def stage_tutorial(env: Env) -> dict:
    from loom.data.builders import BuildConfig
    from loom.data.builders.tutorial import plan_item, tutorial_prefix
    from loom.data.transforms import ImageTransform
    from loom.infer.cache import held_bytes
    from loom.infer.engine import ImageSamplerConfig
    from loom.infer.loop import ItemContexts, inference_build_context, render_tutorial

    eng = engine_for(env, random_model(env))
    side = env.tut_side
    eng.vae_transform, eng.vit_transform = ImageTransform(side, side, 16), ImageTransform((side // 14) * 14, 28, 14)
    bctx, images, mem = inference_build_context(eng, BuildConfig(k_max=4))
    contexts = ItemContexts(eng)
    steps = [f"step number {k}" for k in range(1, env.tut_frames + 1)]
    kv = []

    def on_frame(t, n, hist):
        def cb(i, total):
            if i == total:
                kv.append(held_bytes(contexts.cached()))
        return cb

    s = ImageSamplerConfig(num_timesteps=env.tut_steps, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0))
    env.reset_peak()
    h = side // env.cfg.pixels_per_latent_token
    out = render_tutorial(eng, contexts, bctx, images, mem, tutorial_prefix(bctx, images, "Draw an owl", []),
                          plan_item(bctx, steps), steps, h, h, s, 0, 4, on_frame_start=on_frame)
    return {"seconds_per_frame": out.stats.frame_seconds, "kv_bytes_held_after_frame": kv,
            "context_tokens": [f.num_context_tokens for f in out.frames], "peak_gib": env.peak_gib(),
            "resolution": side, "timesteps": env.tut_steps}


def stage_offload(env: Env) -> dict:
    from loom.infer.load import dispatch, plan_device_map

    saved = env.device
    env.device = torch.device("cpu")
    model = random_model(env)  # on CPU first, then dispatched
    env.device = saved
    gib = None if env.device.type == "cpu" else OFFLOAD_GIB
    dm = plan_device_map(model, "offload", max_memory_gib=gib)
    model = dispatch(model, dm)
    eng = engine_for(env, model)
    res = t2i(env, eng, OFFLOAD_STEPS)
    res["seconds_per_step"] = res["seconds_per_image"] / OFFLOAD_STEPS
    res["layers_on_gpu"] = sum(1 for k, v in dm.items() if ".layers." in k and v not in ("cpu", "disk"))
    res["max_memory_gib"] = gib
    return res


STAGES = {"parity": stage_parity, "train": stage_train, "t2i": stage_t2i, "tutorial": stage_tutorial,
          "offload": stage_offload}


def summary_md(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "", f"torch {report['torch']}, {report['created']}, "
             f"{report['total_seconds']:.0f} s in all{' (tiny, CPU)' if report['tiny'] else ''}.", ""]
    for name, st in report["stages"].items():
        lines.append(f"## {name}: {st['status']} ({st.get('seconds', 0):.1f} s)")
        if st["status"] != "ok":
            lines.append(f"- {st.get('reason', '')}")
        else:
            lines.append("```json")
            lines.append(json.dumps(st["result"], indent=1)[:3000])
            lines.append("```")
        lines.append("")
    lines.append(f"Reference points: H200 dense bf16 peak {PEAK_TFLOPS} TFLOPS; BAGEL's published ≈ "
                 f"{BAGEL_H800_S_PER_IMAGE:.0f} s per 1024² image on H800-class hardware.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny geometry (the test mode)")
    ap.add_argument("--out", default=None, help="JSON (default evals/perf/h200.json; --tiny: required)")
    ap.add_argument("--summary", default=None, help="markdown summary (default: --out with .md)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--budget-s", type=float, default=None, help="overall budget (default: the stages' boxes)")
    args = ap.parse_args(argv)
    if args.tiny and not args.out:
        ap.error("--tiny needs --out (evals/perf/h200.json holds GPU figures only)")
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --tiny for the CPU smoke mode", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from loom.utils.io import atomic_write_json, atomic_write_text

    env = Env(args.tiny)
    scale = TINY_BOX_SCALE if args.tiny else 1
    budget = args.budget_s if args.budget_s is not None else float(sum(BUDGET_S.values()) * scale)
    t_start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0) if env.device.type == "cuda" else "cpu", "tiny": args.tiny,
              "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "peak_tflops_bf16_dense": PEAK_TFLOPS, "bagel_published_s_per_1024_image_h800": BAGEL_H800_S_PER_IMAGE,
              "stages": {}}
    out = Path(args.out or ROOT / "evals" / "perf" / "h200.json")
    for name in args.stages.split(","):
        left = budget - (time.perf_counter() - t_start)
        box = min(BUDGET_S[name] * scale, left)
        if box < 5:
            report["stages"][name] = {"status": "skipped", "reason": f"{left:.0f} s left of the overall budget"}
            continue
        t0 = time.perf_counter()
        try:
            with time_box(box):
                result = STAGES[name](env)
            report["stages"][name] = {"status": "ok", "result": result}
        except StageTimeout as e:
            report["stages"][name] = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # one stage's failure is recorded, the rest still run
            report["stages"][name] = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:600],
                                      "traceback": traceback.format_exc()[-1500:]}
        report["stages"][name]["seconds"] = time.perf_counter() - t0
        if env.device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[gpu_check] {name}: {report['stages'][name]['status']} "
              f"({report['stages'][name]['seconds']:.1f} s)", flush=True)
    report["total_seconds"] = time.perf_counter() - t_start
    atomic_write_json(out, report)
    atomic_write_text(Path(args.summary or out.with_suffix(".md")), summary_md(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
