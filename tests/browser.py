"""Headless Chromium for the visual tests: screenshots of pages the tests produce, checked not to be blank.

Chromium is Debian's `chromium` package (`.ci/run` installs it when missing), driven through Playwright's Python
API with the system binary (no browser download). Each launch uses a fresh, empty profile and the flags that keep
Chromium off the network. Without Chromium or Playwright the tests FAIL with the fix in the message; they skip only
when LOOM_ALLOW_NO_BROWSER=1 says so. LOOM_DOCS_SCREENSHOTS=DIR copies each screenshot there (docs/, see
scripts/docs_screenshots.sh).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """The Chromium binary (LOOM_CHROMIUM, else `chromium` on PATH), or fail/skip with the fix."""
    path = os.environ.get("LOOM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    if not path or not os.access(path, os.X_OK):
        problem = (f"Chromium is not installed ({path or 'no `chromium` on PATH'}; `apt-get install -y chromium`, "
                   "or set LOOM_CHROMIUM=/path/to/chromium)")
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "Playwright is not installed (`pip install -e '.[dev,app]'`, as `make test` does)"
    if problem:
        if os.environ.get("LOOM_ALLOW_NO_BROWSER") == "1":
            pytest.skip(f"{problem}; skipped because LOOM_ALLOW_NO_BROWSER=1")
        pytest.fail(f"{problem}. Browser tests never pass silently: install it, or set LOOM_ALLOW_NO_BROWSER=1 to "
                    "skip them explicitly.", pytrace=False)
    return path


@contextmanager
def launch():
    """A headless Chromium browser context with a fresh --user-data-dir (one per test session: `chromium`)."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with tempfile.TemporaryDirectory(prefix="loom-chromium-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=FLAGS[1:])
        try:
            yield ctx
        finally:
            ctx.close()


@contextmanager
def page(ctx, width: int = 1100, height: int = 800):
    """A new page of `ctx` (the `chromium` fixture) with the given viewport, closed afterwards."""
    pg = ctx.new_page()
    pg.set_viewport_size({"width": width, "height": height})
    try:
        yield pg
    finally:
        pg.close()


def screenshot(pg, out: Path) -> Path:
    """Wait until every image is decoded, then save a full-page PNG. Lazy images are switched to eager first: a
    full-page screenshot never scrolls, so frames below the fold would otherwise never load."""
    pg.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    pg.wait_for_function("Array.from(document.images).every(i => i.complete)")
    pg.screenshot(path=str(out), full_page=True)
    return out


def blank_stats(png: Path) -> dict:
    """How much is drawn: fraction of pixels that differ from the most common colour, and distinct colours."""
    arr = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    colors, counts = np.unique(arr, axis=0, return_counts=True)
    return {"ink_fraction": 1.0 - counts.max() / len(arr), "num_colors": len(colors)}


def assert_not_blank(png: Path, min_ink: float = 0.02, min_colors: int = 64) -> dict:
    s = blank_stats(png)
    assert s["ink_fraction"] >= min_ink and s["num_colors"] >= min_colors, f"{png} looks blank: {s}"
    return s


def publish(png: Path, name: str) -> None:
    """Copy a screenshot to LOOM_DOCS_SCREENSHOTS (when set) as `name`."""
    dest = os.environ.get("LOOM_DOCS_SCREENSHOTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, Path(dest) / name)
