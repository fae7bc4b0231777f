"""Routing: text/ViT tokens use the understanding expert, latent tokens the generation expert."""

from __future__ import annotations

import torch

from loom.data.packing import PackGeometry, pack_sequences
from loom.data.tokenizer import SpecialTokens
from loom.data.types import PlanItem, SequencePlan
from loom.model.configs import preset
from loom.model.loom import Loom
from loom.model.vae import build_autoencoder, encode_to_tokens

TOKENS = SpecialTokens(bos=501, eos=502, start_of_image=503, end_of_image=504)


def _model():
    torch.manual_seed(0)
    cfg = preset("loom-tiny")
    m = Loom(cfg)
    for p in m.parameters():  # break the und/gen symmetry so routing mistakes show
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return m, cfg


def _grads(model, batch, x0=None):
    model.zero_grad()
    out = model(batch, x0=x0)
    loss = out.ce.sum() + out.mse.sum()
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_text_only_batch_reaches_only_understanding_weights():
    model, cfg = _model()
    plan = SequencePlan([PlanItem("text", text_ids=[5, 6, 7, 8], loss=True)])
    batch = pack_sequences([plan], TOKENS, PackGeometry.from_config(cfg))
    g = _grads(model, batch)
    gen = [n for n in g if "_moe_gen" in n]
    und = [n for n in g if n.startswith("language_model.model.layers.") and "_moe_gen" not in n]
    assert gen and und
    assert all(g[n] is None or float(g[n].abs().sum()) == 0.0 for n in gen)
    assert all(g[n] is not None and float(g[n].abs().sum()) > 0 for n in und)


def test_latent_tokens_use_generation_expert():
    model, cfg = _model()
    vae = build_autoencoder(cfg.vae)
    img = torch.rand(3, 16, 16) * 2 - 1
    plan = SequencePlan([PlanItem("text", text_ids=[5, 6]), PlanItem("vae_image", image=img, loss=True,
                                                                       timestep_logit=0.3)])
    batch = pack_sequences([plan], TOKENS, PackGeometry.from_config(cfg))
    x0 = torch.cat(encode_to_tokens(vae, batch.vae_images, batch.vae_latent_shapes, cfg.latent_patch_size))
    batch.packed_noise = torch.randn_like(x0)
    g = _grads(model, batch, x0)
    assert float(g["language_model.model.layers.1.mlp_moe_gen.down_proj.weight"].abs().sum()) > 0
    assert float(g["language_model.model.norm_moe_gen.weight"].abs().sum()) > 0
    # the final und norm only sees the (loss-free) text tokens of this sample: no gradient path from the MSE
    gn = g["language_model.model.norm.weight"]
    assert gn is None or float(gn.abs().sum()) == 0.0


def test_dense_layer_variant_and_copy_init():
    from loom.model.mot import DecoderLayer

    cfg = preset("loom-tiny").llm
    dense = DecoderLayer(cfg, mot=False)
    assert not any("_moe_gen" in n for n, _ in dense.named_parameters())
    mot = DecoderLayer(cfg, mot=True)
    mot.init_moe_from_und()
    assert torch.equal(mot.self_attn.q_proj_moe_gen.weight, mot.self_attn.q_proj.weight)
    assert torch.equal(mot.mlp_moe_gen.up_proj.weight, mot.mlp.up_proj.weight)


def test_freeze_und_detaches_understanding_activations():
    """BAGEL's freeze_und: a mixed batch trains only generation weights (and lm_head from CE); the und expert
    gets exactly zero gradient even though CE and MSE both flow."""
    model, cfg = _model()
    model.language_model.freeze_und = True
    vae = build_autoencoder(cfg.vae)
    plan = SequencePlan([PlanItem("text", text_ids=[5, 6], loss=True),
                         PlanItem("vae_image", image=torch.rand(3, 16, 16) * 2 - 1, loss=True, timestep_logit=0.0)])
    batch = pack_sequences([plan], TOKENS, PackGeometry.from_config(cfg))
    x0 = torch.cat(encode_to_tokens(vae, batch.vae_images, batch.vae_latent_shapes, cfg.latent_patch_size))
    batch.packed_noise = torch.randn_like(x0)
    g = _grads(model, batch, x0)
    und = [n for n in g if n.startswith("language_model.model.") and "_moe_gen" not in n]
    assert all(g[n] is None or float(g[n].abs().sum()) == 0.0 for n in und)
    assert float(g["language_model.model.layers.0.self_attn.q_proj_moe_gen.weight"].abs().sum()) > 0
    model.language_model.freeze_und = False
    g = _grads(model, batch, x0)
    assert float(g["language_model.model.layers.0.self_attn.k_proj.weight"].abs().sum()) > 0
