"""What a generation returns: `GenerationResult` (everything `result.json` records), `LoomOutput` (the
diffusers-shaped view `LoomPipeline.__call__` returns) and `GenerationInterrupted` (Ctrl-C, with the frames
finished before it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .loop import Frame, RenderStats
from .planner import PlanResult
from .settings import GenerationSettings


@dataclass
class GenerationResult:
    task: str
    prompt: str
    settings: GenerationSettings
    frames: list[Frame] = field(default_factory=list)
    plan: PlanResult | None = None
    answer: str | None = None
    inputs: list[Image.Image] = field(default_factory=list)
    input_paths: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    stats: RenderStats | None = None
    model: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    k_max: int | None = None
    interrupted: bool = False  # Ctrl-C: `frames` holds only the frames finished before it


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during `LoomPipeline.run`; `.result` holds the plan and every frame finished before it."""

    def __init__(self, result: GenerationResult) -> None:
        super().__init__(f"interrupted after {len(result.frames)} finished frame(s)")
        self.result = result


@dataclass
class LoomOutput:
    """What `pipe(...)` returns: the frames as PIL images (diffusers' `.images`), the plan and each frame's text."""

    images: list[Image.Image]
    plan: list[str]  # the plan the model (or the given planner) wrote; [] for single-image tasks
    step_texts: list[str]  # the text rendered with each image (tutorial: its plan step; else "")
    answer: str | None  # understand: the model's answer
    result: GenerationResult  # everything else: seeds, history per frame, timings, settings

    def save(self, out: str | Path, overwrite: bool = False) -> dict:
        """Write frames, result.json and index.html into `out` (atomically, as `loom generate` does)."""
        from .output import write_result

        return write_result(self.result, out, overwrite)
