"""Golden outputs of the KV-cached inference paths, recorded with the code before the paged KV cache
(main @ d530fe2: contexts concatenated per forward, K/V repeated for GQA) so that tests/infer/test_kv_cache.py can
check the current cache is bit-identical to it on this machine.

    PYTHONPATH=<tree> python tests/infer/kv_golden.py OUT.safetensors    # record with the tree on PYTHONPATH

Cases: a 6-frame image→tutorial with K_max = 2 (sparse history drops frame 2 at frame 6; text + image CFG),
decoding 8 tokens then rendering on the decoded context, t2i, edit, greedy understanding (6 tokens).
Only public APIs that exist before and after are used."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bagel-tiny"
STEPS = ["pencil outline", "ink the lines", "flat colours", "shadows", "highlights", "background"]


def _image(seed: int):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy())


def make_pipe():
    from loom.infer.engine import Engine
    from loom.infer.load import load_pretrained
    from loom.infer.pipeline import Pipeline

    ld = load_pretrained(FIXTURE, device="cpu", verbose=False)
    with torch.no_grad():  # a random temporal table, as tests/infer/conftest.py (zeros would hide frame ids)
        w = ld.model.temporal_embed.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    return Pipeline(Engine(ld.model, ld.vae, ld.tokenizer), ld.build, ld.describe())


def run_cases(pipe) -> dict[str, torch.Tensor]:
    from loom.infer.pipeline import GenerationSettings
    from loom.infer.planner import FixedPlanner

    tiny = dict(resolution=(32, 32), num_timesteps=4, vae_transform=(64, 32), vit_transform=(56, 28))
    out: dict[str, torch.Tensor] = {}
    res = pipe.run("tutorial", "Draw an owl", images=[_image(3)], settings=GenerationSettings(seed=7, k_max=2, **tiny),
                   planner=FixedPlanner(STEPS))
    for f in res.frames:
        out[f"tutorial/frame{f.index}"] = f.tokens
    eng = pipe.engine
    from loom.infer.cache import Context
    from loom.infer.engine import ImageSamplerConfig

    # decoding, then rendering on the decoded context (the model-plan path: its decoding KV is reused)
    ctx = eng.add_text(Context(), "Draw an owl")
    ids, logits, ctx = eng.generate_text(ctx, max_length=8, stop_at_eos=False)
    out["decode/ids"], out["decode/logits"] = torch.tensor(ids), logits
    cond = eng.add_text(ctx, "Step 1: outline")
    uncond = eng.add_text(Context(), "Step 1: outline")
    noise = torch.randn(4, eng.cfg.latent_token_dim, generator=torch.Generator().manual_seed(9))
    out["decode/image"] = eng.generate_image(cond, uncond, ctx, 2, 2, ImageSamplerConfig(num_timesteps=4), noise=noise)
    res = pipe.run("t2i", "a red circle", settings=GenerationSettings(seed=1, **tiny))
    out["t2i"] = res.frames[0].tokens
    res = pipe.run("edit", "make it blue", images=[_image(4)], settings=GenerationSettings(seed=1, **tiny))
    out["edit"] = res.frames[0].tokens
    ctx = eng.add_image(Context(), _image(5), vae=False, vit=True)
    ctx = eng.add_text(ctx, "what is this?")
    ids, logits, _ = eng.generate_text(ctx, max_length=6, stop_at_eos=False)
    out["understand/ids"] = torch.tensor(ids)
    out["understand/logits"] = logits
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    import PIL

    meta = {"torch": torch.__version__, "pillow": PIL.__version__}  # inputs are resized by Pillow
    save_file(run_cases(make_pipe()), sys.argv[1], metadata=meta)
    print(f"wrote {sys.argv[1]}")
