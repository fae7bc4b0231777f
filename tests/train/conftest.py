"""Shared tiny-run helpers: a loom-tiny config on CPU and small hand-built sequence plans."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from loom.data.types import PlanItem, SequencePlan

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bagel-tiny"
EXAMPLES = Path(__file__).resolve().parents[2] / "data" / "examples"
SYNTHETIC = ("data.sources.syn.path=synthetic", "data.sources.syn.num_rows=8", "data.sources.syn.image_size=16")


def tiny_overrides(run_dir: Path, *extra: str, sources: tuple[str, ...] = SYNTHETIC) -> list[str]:
    return [
        f"run.dir={run_dir}", "run.total_steps=4", "model.init=scratch", "model.preset=loom-tiny",
        f"model.tokenizer={FIXTURE}", "data.batch_size=2", "data.max_tokens=512", "data.max_tokens_per_sample=512",
        "data.shuffle=false", "data.text_cond_dropout=0.0", "data.vit_cond_dropout=0.0",
        "data.vae_cond_dropout=0.0", "optim.lr=1e-3", "parallel.activation_checkpointing=false",
        "checkpoint.every=0", "checkpoint.export_dtype=fp32", "log.every=1", "ema.decay=0.9",
        *sources, *extra,
    ]


def example_manifest(folder: Path, ids: list[str], name: str = "manifest.jsonl") -> Path:
    """A manifest of data/examples rows in the order of `ids` (repeats get a `~k` id suffix), images copied."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        shutil.copytree(EXAMPLES / "images", folder / "images")
    rows = {r["id"]: r for r in map(json.loads, (EXAMPLES / "manifest.jsonl").read_text().splitlines())}
    out, seen = [], {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append({**rows[i], "id": i if seen[i] == 1 else f"{i}~{seen[i]}"})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def manifest_sources(path: Path, name: str = "m") -> tuple[str, ...]:
    """Overrides for one manifest source, one instance per tutorial row (so rank sharding pairs rows exactly)."""
    return (f"data.sources.{name}.path={path}", "data.build.frames_per_visit=1", "data.max_tokens=2048",
            "data.max_tokens_per_sample=2048")


@pytest.fixture
def two_threads():
    """Run at 2 intra-op threads (where CPU kernels can reorder floating-point sums), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def make_cfg(run_dir: Path, *extra: str, sources: tuple[str, ...] = SYNTHETIC):
    from loom.train.config import load_train_config

    return load_train_config(None, tiny_overrides(run_dir, *extra, sources=sources))


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
