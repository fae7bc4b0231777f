"""Shared tiny-run helpers: a loom-tiny config on CPU and small hand-built sequence plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loom.data.types import PlanItem, SequencePlan

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bagel-tiny"


def tiny_overrides(run_dir: Path, *extra: str) -> list[str]:
    return [
        f"run.dir={run_dir}", "run.total_steps=4", "model.init=scratch", "model.preset=loom-tiny",
        f"model.tokenizer={FIXTURE}", "data.batch_size=2", "data.max_tokens=512", "data.max_tokens_per_sample=512",
        "data.shuffle=false", "data.text_cond_dropout=0.0", "data.vit_cond_dropout=0.0",
        "data.vae_cond_dropout=0.0", "optim.lr=1e-3", "parallel.activation_checkpointing=false",
        "checkpoint.every=0", "checkpoint.export_dtype=fp32", "log.every=1", "ema.decay=0.9",
        "data.sources.syn.path=synthetic", "data.sources.syn.num_rows=8", "data.sources.syn.image_size=16",
        *extra,
    ]


def make_cfg(run_dir: Path, *extra: str):
    from loom.train.config import load_train_config

    return load_train_config(None, tiny_overrides(run_dir, *extra))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def tiny_plan(seed: int, text_len: int = 8, size: int = 16, source: str = "") -> SequencePlan:
    """prompt (cfg) → answer (CE) → clean VAE image + ViT image → noisy VAE target."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(10, 400, (n,), generator=g).tolist()  # noqa: E731
    img = torch.rand(3, size, size, generator=g) * 2 - 1
    vit = torch.rand(3, 28, 28, generator=g) * 2 - 1  # 4 patches: a 1-patch ViT has zero q/k gradient
    return SequencePlan([
        PlanItem("text", text_ids=ids(4), enable_cfg=True),
        PlanItem("text", text_ids=ids(text_len), loss=True),
        PlanItem("vit_image", image=vit, enable_cfg=True, frame=-1),
        PlanItem("vae_image", image=img, enable_cfg=True, frame=-1),
        PlanItem("vae_image", image=img.flip(-1), loss=True, frame=1),
    ], source or f"tiny:{seed}")


@pytest.fixture
def tiny_tokens():
    from loom.data.tokenizer import SpecialTokens, load_tokenizer

    return SpecialTokens.from_tokenizer(load_tokenizer(FIXTURE))
