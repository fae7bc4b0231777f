"""loom: Loom (arXiv 2512.18254) on a BAGEL-compatible Mixture-of-Transformers model.

    from loom import LoomPipeline
    pipe = LoomPipeline.from_pretrained("models/BAGEL-7B-MoT", dtype="bf16", device="cuda")
    out = pipe(task="tutorial", prompt="How to fold a paper crane", seed=0)
    out.images, out.plan, out.step_texts

`import loom` is cheap: the public names below are imported on first use (PEP 562), so torch loads only then.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "LoomPipeline": "loom.infer.pipeline",
    "LoomOutput": "loom.infer.pipeline",
    "GenerationSettings": "loom.infer.settings",
    "GenerationInterrupted": "loom.infer.pipeline",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'loom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
