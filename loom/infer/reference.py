"""Fixture runners for the inference cases (`infer_t2i`, `infer_edit`, `infer_text`, `kv_consistency`), used by
`python -m loom.tools.check_reference`. Contexts are built the way BAGEL's `interleave_inference` builds them
(bagel-spec §7.2); `bagel_compat=True` reproduces its CFG gating."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.packing import PackGeometry, pack_sequences
from ..data.transforms import pil_to_tensor
from ..data.types import PlanItem, SequencePlan
from .cache import Context
from .engine import Engine, ImageSamplerConfig


def _engine(fx, ctx) -> Engine:
    return Engine(ctx.model, ctx.vae, ctx.tok, fx.transform("vae_transform"), fx.transform("vit_transform"))


def _sampler(hp: dict) -> ImageSamplerConfig:
    return ImageSamplerConfig(
        num_timesteps=hp["num_timesteps"], timestep_shift=hp["timestep_shift"], cfg_text_scale=hp["cfg_text_scale"],
        cfg_img_scale=hp["cfg_img_scale"], cfg_interval=tuple(hp["cfg_interval"]),
        cfg_renorm_type=hp["cfg_renorm_type"], cfg_renorm_min=hp["cfg_renorm_min"], bagel_compat=True,
    )


def _run_generation(fx, ctx, name: str, gen: Context, cfg_text: Context, cfg_img: Context) -> dict[str, Tensor]:
    case = fx.cases[name]
    eng = _engine(fx, ctx)
    hp = case["hparams"]
    h, w = case["latent_tokens_hw"]
    trace: dict = {}
    final = eng.generate_image(gen, cfg_text, cfg_img, h, w, _sampler(hp), noise=fx.tensors[f"{name}/init_noise"],
                               trace=trace)
    img, _ = eng.decode_latents(final, h, w)
    n = h * w + 2
    out = {
        f"{name}/final_latent": final, f"{name}/image_uint8": img,
        f"{name}/query_position_ids": torch.full((n,), gen.rope),
        f"{name}/cfg_text_query_position_ids": torch.full((n,), cfg_text.rope),
        f"{name}/cfg_img_query_position_ids": torch.full((n,), cfg_img.rope),
        f"{name}/query_vae_position_ids": torch.from_numpy(
            (np.arange(h)[:, None] * ctx.cfg.max_latent_size + np.arange(w)[None, :]).reshape(-1)),
    }
    for i, v in enumerate(trace["v"]):
        out[f"{name}/step{i}/v"] = v
    v_c, v_t, v_i = trace["branches"][0]
    out[f"{name}/step0/v_cond"] = v_c
    if v_t is not None:
        out[f"{name}/step0/v_text_uncond"] = v_t
    if v_i is not None:
        out[f"{name}/step0/v_img_uncond"] = v_i
    kv = case.get("kv_lens", {})
    got = {"cond": gen.kv_len, "text_uncond": cfg_text.kv_len, "img_uncond": cfg_img.kv_len}
    if kv and any(kv[k] != got[k] for k in kv):
        raise AssertionError(f"context lengths {got} != fixture {kv}")
    return out


def run_infer_t2i(fx, ctx) -> dict[str, Tensor]:
    case = fx.cases["infer_t2i"]
    eng = _engine(fx, ctx)
    empty = Context()
    gen = eng.add_text(empty, case["prompt_token_ids"])
    # text goes to gen and cfg_img; cfg_text is the state before the text (empty)
    return _run_generation(fx, ctx, "infer_t2i", gen, empty, gen)


def run_infer_edit(fx, ctx) -> dict[str, Tensor]:
    case = fx.cases["infer_edit"]
    eng = _engine(fx, ctx)
    resized = eng.prepare_image(fx.image(case["input_image"]))
    lat = ctx.vae.encode(pil_to_tensor(resized)[None])[0]
    gen = eng.add_image(Context(), resized, vae=True, vit=True, resized=True)
    cfg_text = gen  # copied after the image
    gen = eng.add_text(gen, case["instruction_token_ids"])
    cfg_img = eng.add_text(Context(), case["instruction_token_ids"])  # never receives images
    out = _run_generation(fx, ctx, "infer_edit", gen, cfg_text, cfg_img)
    out["infer_edit/input_vae_latent"] = lat
    return out


def _understanding_context(fx, ctx, eng: Engine) -> tuple[Context, Tensor]:
    case = fx.cases["infer_text"]
    resized = eng.prepare_image(fx.image(case["image"]))
    vit_img = eng.vit_transform.resize(resized)
    c = eng.add_image(Context(), vit_img, vae=False, vit=True, resized=True)
    c = eng.add_text(c, case["question_token_ids"])
    return c, torch.from_numpy(np.asarray(vit_img).copy())


def run_infer_text(fx, ctx) -> dict[str, Tensor]:
    case = fx.cases["infer_text"]
    eng = _engine(fx, ctx)
    c, vit_u8 = _understanding_context(fx, ctx, eng)
    if c.rope != case.get("start_rope_id", c.rope) or c.kv_len != case.get("context_kv_len", c.kv_len):
        raise AssertionError(f"context rope {c.rope} / kv_len {c.kv_len} differ from the fixture")
    ids, logits, _ = eng.generate_text(c, max_length=case["max_length_arg"], stop_at_eos=False)
    return {"infer_text/generated_ids": torch.tensor(ids), "infer_text/step_logits": logits,
            "infer_text/vit_input_uint8": vit_u8}


def run_kv_consistency(fx, ctx) -> dict[str, Tensor]:
    case = fx.cases["infer_text"]
    eng = _engine(fx, ctx)
    c, vit_u8 = _understanding_context(fx, ctx, eng)
    _, logits, _ = eng.generate_text(c, max_length=1, stop_at_eos=False)
    img = (vit_u8.permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    plan = SequencePlan([PlanItem("vit_image", image=img), PlanItem("text", text_ids=case["question_token_ids"]),
                         PlanItem("text", text_ids=[], loss=True)], source="kv_consistency")
    batch = pack_sequences([plan], ctx.tokens, PackGeometry.from_config(ctx.cfg))
    with torch.no_grad():
        res = ctx.model(batch, return_logits=True)
    return {"kv_consistency/cached_logits": logits[0], "kv_consistency/full_forward_logits": res.logits[0],
            "kv_consistency/full_forward_position_ids": batch.packed_position_ids}


RUNNERS = {
    "infer_t2i": run_infer_t2i,
    "infer_edit": run_infer_edit,
    "infer_text": run_infer_text,
    "kv_consistency": run_kv_consistency,
}
