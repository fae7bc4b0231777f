"""Exports: the self-describing folder that inference, evals and `load_bagel` read (BAGEL release layout).

  ema.safetensors       the whole model under release keys (+ Loom's `temporal_embed.weight`); EMA or raw weights
                        per `checkpoint.export_weights`, LoRA adapters merged
  llm_config.json       Qwen2 config (the source model's JSON, with loom's values written over it)
  vit_config.json       SigLIP config with num_hidden_layers = built + 1 (the release stores JSON = built + 1)
  loom_config.json      Loom-only fields (temporal embedding, frames, references, latent geometry, VAE), plus
                        "build" (every training BuildConfig setting that shapes a sequence, `LAYOUT_KEYS`: the
                        VAE / ViT transforms, scaffold, K_max, N_max, temporal on/off, stepwise prompt, which
                        items are CFG-eligible …; inference uses them by default, `loom.infer.load`),
                        "cfg_dropout" (the trained condition-dropout probabilities, for the record) and
                        "entities" (`EntityVocab.to_dict()`)
  ae.safetensors        FLUX VAE weights, copied from the source model folder (absent for the pixel VAE)
  tokenizer files       `tokenizer.save_pretrained` (with the registered entity tokens), or copied from the
                        tokenizer folder when no tokenizer object is given; vocab_size in llm_config.json is
                        the (possibly grown) embedding row count
  train_config.yaml     the resolved TrainConfig that produced it
Written into `<dir>.tmp` and renamed, like checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from ..config import atomic_write_text
from ..data.builders import BuildConfig
from ..model.configs import LoomConfig
from ..model.weights import save_state_dict

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json")


def llm_config_json(cfg: LoomConfig, base: dict | None = None) -> dict:
    d = dict(base or {})
    c = cfg.llm
    d.update({
        "architectures": d.get("architectures", ["Qwen2ForCausalLM"]), "model_type": "qwen2",
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "vocab_size": c.vocab_size, "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_position_embeddings,
        "hidden_act": "silu", "tie_word_embeddings": False,
    })
    return d


def vit_config_json(cfg: LoomConfig, base: dict | None = None) -> dict:
    d = dict(base or {})
    v = cfg.vit
    d.update({
        "architectures": d.get("architectures", ["SiglipVisionModel"]), "model_type": "siglip_vision_model",
        "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_hidden_layers + 1,  # release convention: JSON = built + 1 (bagel-spec §1.1)
        "num_attention_heads": v.num_attention_heads, "patch_size": v.patch_size, "image_size": v.image_size,
        "layer_norm_eps": v.layer_norm_eps, "hidden_act": "gelu_pytorch_tanh", "num_channels": 3,
    })
    return d


def loom_config_json(cfg: LoomConfig) -> dict:
    return {
        "temporal_embedding": cfg.temporal_embedding, "max_frames": cfg.max_frames,
        "max_references": cfg.max_references, "latent_patch_size": cfg.latent_patch_size,
        "max_latent_size": cfg.max_latent_size, "vit_max_num_patch_per_side": cfg.vit_max_num_patch_per_side,
        "visual_und": cfg.visual_und, "visual_gen": cfg.visual_gen, "vae": dataclasses.asdict(cfg.vae),
    }


# Every BuildConfig field is in exactly one of these (tests/train/test_export.py checks it, so a new field cannot
# be forgotten): LAYOUT_KEYS shape the sequence inference builds and are recorded; TRAIN_ONLY_KEYS only steer
# how training samples are drawn (frame sampling, history rotation, dropout, length cap).
LAYOUT_KEYS = ("vae_transform", "vit_transform", "scaffold", "k_max", "n_max", "use_temporal", "stepwise_prompt",
               "use_vit_for_history", "use_vit_for_references", "cfg_text", "cfg_images", "max_frames",
               "max_references", "entity_tokens")
TRAIN_ONLY_KEYS = ("frames_per_visit", "rotate_history", "text_dropout", "vit_dropout", "vae_dropout",
                   "max_tokens_per_sample")


def layout_json(build: BuildConfig) -> dict:
    """loom_config.json "build": the sequence-shaping settings of the training BuildConfig (JSON lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k in LAYOUT_KEYS for v in [getattr(build, k)]}


def _read_json(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def write_export(out_dir: str | Path, weights: dict[str, Tensor], cfg: LoomConfig, tokenizer_dir: str | Path,
                 source_dir: str | Path | None = None, train_config_yaml: str = "",
                 dtype: torch.dtype | None = None, tokenizer=None, loom_extra: dict | None = None) -> Path:
    """Write an export folder atomically. `weights`: full model state dict under release keys (rank 0 only).
    `tokenizer`: saved with `save_pretrained` (entity tokens included); `loom_extra`: more loom_config.json keys."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = Path(source_dir) if source_dir else None
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    save_state_dict(weights, tmp / "ema.safetensors")
    atomic_write_text(tmp / "llm_config.json", json.dumps(
        llm_config_json(cfg, _read_json(src / "llm_config.json" if src else None)), indent=2))
    atomic_write_text(tmp / "vit_config.json", json.dumps(
        vit_config_json(cfg, _read_json(src / "vit_config.json" if src else None)), indent=2))
    atomic_write_text(tmp / "loom_config.json", json.dumps({**loom_config_json(cfg), **(loom_extra or {})},
                                                           indent=2))
    if cfg.vae.kind == "flux":
        ae = src / "ae.safetensors" if src else None
        if ae is None or not ae.exists():
            raise FileNotFoundError("exporting a FLUX-VAE model needs the source folder's ae.safetensors "
                                    f"(model.init=bagel:<dir> or export:<dir>); looked in {src}")
        shutil.copy2(ae, tmp / "ae.safetensors")
    tok = Path(tokenizer_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
        for f in ("vocab.json", "merges.txt", "generation_config.json"):  # base files save_pretrained may skip
            if (tok / f).exists() and not (tmp / f).exists():  # (added tokens live in tokenizer.json)
                shutil.copy2(tok / f, tmp / f)
    else:
        copied = [shutil.copy2(tok / f, tmp / f) for f in TOKENIZER_FILES if (tok / f).exists()]
        if not copied:
            raise FileNotFoundError(f"no tokenizer files in {tok}")
    if train_config_yaml:
        atomic_write_text(tmp / "train_config.yaml", train_config_yaml)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
