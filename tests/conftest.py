"""Shared test fixtures: the golden BAGEL-tiny release copied into the repo (tests/fixtures/bagel-tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "bagel-tiny"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def bagel_tiny():
    """(model, vae, tokenizer, cfg) of the fixture release, loaded once."""
    from loom.model.weights import load_bagel

    torch.manual_seed(0)
    model, vae, tok, cfg = load_bagel(FIXTURE, verbose=False)
    return model.eval(), vae, tok, cfg


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium (Debian's `chromium` through Playwright), launched once; see tests/browser.py."""
    from browser import launch

    with launch() as ctx:
        yield ctx
