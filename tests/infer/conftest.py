"""Fixtures for the inference tests: the golden BAGEL-tiny release with a *random* temporal table (a BAGEL release
loads it as zeros, which would hide frame-id wiring mistakes), small input transforms and tiny frames."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import FIXTURE, TINY, pattern_image

from loom.data.transforms import ImageTransform
from loom.infer.engine import Engine
from loom.infer.load import load_pretrained
from loom.infer.pipeline import GenerationSettings, Pipeline


@pytest.fixture(scope="session")
def loaded():
    torch.manual_seed(0)
    ld = load_pretrained(FIXTURE, device="cpu", verbose=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        w = ld.model.temporal_embed.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    return ld


@pytest.fixture()
def engine(loaded) -> Engine:
    return Engine(loaded.model, loaded.vae, loaded.tokenizer, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))


@pytest.fixture()
def pipe(loaded) -> Pipeline:
    return Pipeline(Engine(loaded.model, loaded.vae, loaded.tokenizer), loaded.build, loaded.describe())


@pytest.fixture()
def tiny_settings():
    def make(**kw) -> GenerationSettings:
        return GenerationSettings(**{**TINY, **kw})
    return make


@pytest.fixture()
def images(tmp_path):
    """Three small PNG files on disk (paths)."""
    paths = []
    for k in range(3):
        p = tmp_path / f"in{k + 1}.png"
        pattern_image(10 + k).save(p)
        paths.append(str(p))
    return paths
