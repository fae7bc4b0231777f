"""Exports are BAGEL-layout folders that `load_bagel` reads back exactly; freeze options and LoRA."""

import json

import torch
from safetensors.torch import load_file

from loom.model.loom import TEMPORAL_KEY
from loom.model.weights import load_bagel
from loom.train.trainer import Trainer

from .conftest import FIXTURE, make_cfg


def test_export_round_trips_through_load_bagel_pixel_vae(tmp_path):
    tr = Trainer(make_cfg(tmp_path / "r", "run.total_steps=2", "ema.decay=0.5"))
    tr.run()
    exp = tmp_path / "r" / "exports" / "step-0000002"
    vit = json.loads((exp / "vit_config.json").read_text())
    assert vit["num_hidden_layers"] == tr.model_cfg.vit.num_hidden_layers + 1  # release convention
    assert json.loads((exp / "loom_config.json").read_text())["vae"]["kind"] == "pixel"
    assert {"tokenizer.json", "vocab.json", "merges.txt", "train_config.yaml"} <= {p.name for p in exp.iterdir()}
    assert not (exp / "ae.safetensors").exists()
    model, vae, tok, cfg = load_bagel(exp, verbose=False)
    assert cfg == tr.model_cfg  # every architecture field survives (pixel VAE, latent grid, frames, …)
    assert type(vae).__name__ == "PixelAutoencoder" and tok is not None
    sd = model.state_dict()
    ema = tr.ema.shadow
    assert TEMPORAL_KEY in sd and set(sd) == set(tr.model.state_dict())
    for k, v in sd.items():  # the export holds the EMA weights (checkpoint.export_weights=ema)
        ref = ema[k] if k in ema else tr.model.state_dict()[k]
        assert torch.equal(v, ref), k
    assert not torch.equal(ema["llm2vae.weight"], dict(tr.model.named_parameters())["llm2vae.weight"])


def test_finetune_from_bagel_layout_and_reexport(tmp_path):
    """model.init=bagel:<dir> on the tiny BAGEL-layout fixture (FLUX VAE), then export and reload."""
    tr = Trainer(make_cfg(tmp_path / "r", f"model.init=bagel:{FIXTURE}", "run.total_steps=1",
                          "data.sources.syn.image_size=32", "checkpoint.export_weights=raw"))
    out = tr.run()
    assert torch.isfinite(torch.tensor(out["loss"]))
    exp = tmp_path / "r" / "exports" / "step-0000001"
    assert (exp / "ae.safetensors").read_bytes() == (FIXTURE / "ae.safetensors").read_bytes()
    model, vae, _, cfg = load_bagel(exp, verbose=False)
    assert cfg.vae.kind == "flux" and cfg.vit.num_hidden_layers == tr.model_cfg.vit.num_hidden_layers
    live = tr.model.state_dict()
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())
    # the export is itself a valid init for the next fine-tune
    tr2 = Trainer(make_cfg(tmp_path / "r2", f"model.init=export:{exp}", "run.total_steps=1",
                           "data.sources.syn.image_size=32"))
    assert torch.equal(tr2.model.state_dict()["llm2vae.weight"], live["llm2vae.weight"])


def test_freeze_options(tmp_path):
    def trainable(*extra):
        tr = Trainer(make_cfg(tmp_path / "r", "run.total_steps=1", *extra))
        return {n for n, p in tr.model.named_parameters() if p.requires_grad}

    all_ = trainable()
    no_vit = trainable("optim.freeze.vit=true")
    assert all_ - no_vit == {n for n in all_ if n.split(".")[0] in ("vit_model", "connector", "vit_pos_embed")}
    vocab = {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"}
    no_und = trainable("optim.freeze.und=true", "optim.train_entity_rows=false")
    assert not any(n.startswith("language_model.") and "_moe_gen" not in n for n in no_und)
    assert "language_model.model.layers.0.mlp_moe_gen.gate_proj.weight" in no_und
    # entity-token rows stay trainable (row gradient mask): only the two vocabulary tensors come back
    assert trainable("optim.freeze.und=true") - no_und == vocab
    no_llm = trainable("optim.freeze.llm=true", "optim.train_entity_rows=false")
    assert not any(n.startswith("language_model.") for n in no_llm) and "llm2vae.weight" in no_llm
    assert trainable("optim.freeze.llm=true") - no_llm == vocab


def test_lora_trains_adapters_and_exports_merged_weights(tmp_path):
    tr = Trainer(make_cfg(tmp_path / "r", "run.total_steps=2", "optim.lora.enabled=true", "optim.lora.r=4",
                          "optim.lora.alpha=8", "checkpoint.export_weights=raw", "optim.lr=1e-2"))
    base = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    names = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    vocab = {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"}  # entity rows only
    full = vocab | {"temporal_embed.weight"}  # Loom's temporal table trains in full under LoRA
    assert full <= names and all("lora_" in n for n in names - full)
    assert any("q_proj_moe_gen.lora_A" in n for n in names) and not any("vit_model" in n for n in names)
    tr.run()
    exp = load_file(str(tmp_path / "r" / "exports" / "step-0000002" / "ema.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in exp)
    pre = "language_model.model.layers.0.self_attn.q_proj"
    a, b = (dict(tr.model.named_parameters())[f"{pre}.lora_{x}.default.weight"] for x in "AB")
    merged = base[f"{pre}.base_layer.weight"] + 2.0 * (b @ a).detach()
    torch.testing.assert_close(exp[f"{pre}.weight"], merged)
    assert not torch.equal(exp[f"{pre}.weight"], base[f"{pre}.base_layer.weight"])
    assert torch.equal(exp["llm2vae.weight"], base["llm2vae.weight"])  # frozen under LoRA
    head, head0 = exp["language_model.lm_head.weight"], base["language_model.lm_head.weight"]
    changed = (head != head0).any(1).nonzero().flatten().tolist()
    assert changed == sorted(tr.entities.ids.values())  # … except the entity rows
    model, _, _, _ = load_bagel(tmp_path / "r" / "exports" / "step-0000002", verbose=False)
    assert torch.equal(model.state_dict()[f"{pre}.weight"], exp[f"{pre}.weight"])
