"""Generation harness: run a generator over a benchmark into a run folder, resumable and sharded.

A generator is any callable `generate(item, out_dir, seed) -> dict` that writes step images into `out_dir` and
returns the result.json content (prompt, plan, steps[{index, text, image}] with image paths relative to out_dir).
The harness prepares `out_dir/inputs/` (conditioning images) before the call, then adds bookkeeping fields, writes
result.json atomically, and only then counts the item as done, so a killed run resumes at the first unfinished item.

Provided generators: `LoomCLIGenerator` (shells out to `loom generate …`) and `ExternalPlanGenerator` (the paper's
adapted baselines: externally planned step prompts rendered one per turn by a pluggable step renderer).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from loom.eval.benchmarks import BenchItem
from loom.eval.fsio import EvalInputError, atomic_write_json, atomic_write_jsonl, read_json
from loom.eval.results import parse_result
from loom.infer.gallery import write_gallery
from loom.infer.storyboard import write_storyboard


class Generator(Protocol):
    def __call__(self, item: BenchItem, out_dir: Path, seed: int) -> dict[str, Any]: ...


class GenerationError(RuntimeError):
    pass


def shard_items(items: list[BenchItem], shard: int, num_shards: int) -> list[BenchItem]:
    """Round-robin by position: shards stay balanced and disjoint, and their union is the whole list."""
    if not 0 <= shard < num_shards:
        raise EvalInputError(f"--shard must be in [0, {num_shards}), got {shard}")
    return items[shard::num_shards]


def _save_inputs(item: BenchItem, item_dir: Path) -> list[str]:
    rels = []
    for k, im in enumerate(item.inputs, start=1):
        rel = f"inputs/input_{k:02d}.png"
        (item_dir / "inputs").mkdir(parents=True, exist_ok=True)
        im.save(item_dir / rel)
        rels.append(rel)
    return rels


def _jsonable_meta(meta: dict[str, Any], item_dir: Path) -> dict[str, Any]:
    """Ground-truth images in meta (e.g. MakeAnything panels) become files under gt/; the rest is copied."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, list) and v and all(isinstance(x, Image.Image) for x in v):
            (item_dir / "gt").mkdir(parents=True, exist_ok=True)
            out[k] = []
            for i, im in enumerate(v, start=1):
                im.save(item_dir / "gt" / f"{k}_{i:02d}.png")
                out[k].append(f"gt/{k}_{i:02d}.png")
        else:
            out[k] = v
    return out


@dataclass
class HarnessReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_generation(
    items: list[BenchItem],
    generate: Generator,
    run_dir: Path,
    *,
    model_label: str,
    generator_name: str,
    seed: int = 42,
    shard: int = 0,
    num_shards: int = 1,
    log: Callable[[str], None] = print,
) -> HarnessReport:
    """One seed for every item (the released Loom script fixes 42); the seed is recorded per item."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    meta = {
        "bench": items[0].bench if items else None,
        "model": model_label,
        "generator": generator_name,
        "seed": seed,
        "num_items": len(items),
    }
    if meta_path.is_file():
        old = read_json(meta_path, "run metadata")
        clash = {k: (old.get(k), v) for k, v in meta.items() if k != "num_items" and old.get(k) != v}
        if clash:
            raise EvalInputError(
                f"{meta_path} was written with different settings {clash}; use a new --out "
                "folder or delete the old run"
            )
    else:
        atomic_write_json(meta_path, {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    report = HarnessReport()
    for item in shard_items(items, shard, num_shards):
        item_dir = run_dir / "items" / item.item_id
        if (item_dir / "result.json").is_file():
            report.skipped.append(item.item_id)
            continue
        if item_dir.exists():
            shutil.rmtree(item_dir)  # a half-written item from a killed run: start it over
        item_dir.mkdir(parents=True)
        try:
            inputs = _save_inputs(item, item_dir)
            t0 = time.time()
            result = dict(generate(item, item_dir, seed))
            result.update(
                {
                    "item_id": item.item_id,
                    "bench": item.bench,
                    "seed": seed,
                    "inputs": inputs,
                    "generator": generator_name,
                    "model_label": model_label,
                    "meta": _jsonable_meta(item.meta, item_dir),
                    "gen_seconds": round(time.time() - t0, 3),
                }
            )
            result.setdefault("prompt", item.prompt)
            result.setdefault("text_source", "model")
            parsed = parse_result(result, item_dir, f"generator output for {item.item_id}")
            if item.export_path:
                dst = run_dir / item.export_path
                dst.parent.mkdir(parents=True, exist_ok=True)
                Image.open(parsed.steps[-1].image).convert("RGB").save(dst)
            write_storyboard(item_dir, result)  # index.html: frames beside the item's ground truth
            atomic_write_json(item_dir / "result.json", result)  # written last: its presence means "done"
            report.done.append(item.item_id)
            log(f"[{len(report.done)}] {item.item_id} done")
        except Exception as e:  # keep going; failures are listed and the exit code says so
            report.failed[item.item_id] = f"{type(e).__name__}: {e}"
            log(f"FAILED {item.item_id}: {e}\n{traceback.format_exc(limit=3)}")
    if report.failed:
        atomic_write_jsonl(
            run_dir / f"failures.shard{shard}-of-{num_shards}.jsonl",
            [{"item_id": k, "error": v} for k, v in report.failed.items()],
        )
    write_gallery(run_dir, "eval", {it.item_id: it.prompt for it in items})  # RUN/index.html: every item with its status
    return report


# ---- generators ------------------------------------------------------------------------------------------------
@dataclass
class LoomCLIGenerator:
    """`loom generate <task> --model DIR --prompt P --out DIR --seed N [--image PATH ...] [extra args]`.

    The CLI writes frame_01.png… and result.json (prompt, plan, steps[{index, text, image}]) into --out."""

    model_dir: Path
    task: str = "tutorial"
    executable: tuple[str, ...] = ("loom",)
    image_flag: str = "--image"
    extra_args: tuple[str, ...] = ()
    timeout_s: float | None = None

    def command(self, item: BenchItem, out_dir: Path, seed: int) -> list[str]:
        cmd = [
            *self.executable,
            "generate",
            self.task,
            "--model",
            str(self.model_dir),
            "--prompt",
            item.prompt,
            "--out",
            str(out_dir),
            "--seed",
            str(seed),
        ]
        for k in range(1, len(item.inputs) + 1):
            cmd += [self.image_flag, str(out_dir / "inputs" / f"input_{k:02d}.png")]
        return cmd + list(self.extra_args)

    def __call__(self, item: BenchItem, out_dir: Path, seed: int) -> dict[str, Any]:
        cmd = self.command(item, out_dir, seed)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
        if proc.returncode != 0:
            raise GenerationError(
                f"`{shlex.join(cmd[:4])} …` exited {proc.returncode}: {proc.stderr[-2000:]}"
            )
        rj = out_dir / "result.json"
        if not rj.is_file():
            raise GenerationError(f"`{shlex.join(cmd[:4])} …` wrote no {rj}")
        return json.loads(rj.read_text(encoding="utf-8"))


StepRenderer = Callable[[BenchItem, list[str], int, list[Path], Path, int], None]
"""render(item, plan, step_index (1-based), history_images, out_png, seed): write one frame to out_png."""


@dataclass
class ExternalPlanGenerator:
    """The paper's adapted baselines (Bagel, Janus-Pro multi-turn): each turn gets the step prompt from an
    external plan (Loom's own plan, as in the paper) and renders one image; the model writes no paired text, so
    `text_source` is "given"."""

    plans: dict[str, list[str]]
    render: StepRenderer

    def __call__(self, item: BenchItem, out_dir: Path, seed: int) -> dict[str, Any]:
        if item.item_id not in self.plans:
            raise GenerationError(f"no external plan for item {item.item_id}")
        plan = self.plans[item.item_id]
        history: list[Path] = [out_dir / f"inputs/input_{k:02d}.png" for k in range(1, len(item.inputs) + 1)]
        steps = []
        for k, text in enumerate(plan, start=1):
            out_png = out_dir / f"frame_{k:02d}.png"
            self.render(item, plan, k, list(history), out_png, seed)
            if not out_png.is_file():
                raise GenerationError(f"step renderer wrote no {out_png}")
            history.append(out_png)
            steps.append({"index": k, "text": text, "image": out_png.name})
        return {"prompt": item.prompt, "plan": plan, "steps": steps, "text_source": "given"}


def load_plans(source: Path) -> dict[str, list[str]]:
    """Plans from a JSON file {item_id: [step, …]} or from a Loom run folder (each result.json's `plan`)."""
    source = Path(source)
    if source.is_file():
        d = read_json(source, "plan file")
        if not isinstance(d, dict) or not all(isinstance(v, list) for v in d.values()):
            raise EvalInputError(f"{source}: expected a JSON object {{item_id: [step text, ...]}}")
        return {str(k): [str(s) for s in v] for k, v in d.items()}
    items = source / "items"
    if not items.is_dir():
        raise EvalInputError(f"plan source {source} is neither a JSON file nor a run folder with items/")
    plans = {}
    for rj in sorted(items.glob("*/result.json")):
        d = read_json(rj, "result file")
        plans[rj.parent.name] = list(d.get("plan") or [s.get("text", "") for s in d.get("steps", [])])
    return plans


@dataclass
class CommandStepRenderer:
    """Render one step by running a command template (any single-image generator, e.g. a BAGEL script).

    Placeholders: {prompt} (this step's text), {out} (PNG to write), {seed}, {step}, {history} (space-joined
    earlier frames and inputs; empty on the first step of a text-only item)."""

    template: str
    timeout_s: float | None = None

    def __call__(
        self, item: BenchItem, plan: list[str], step: int, history: list[Path], out_png: Path, seed: int
    ) -> None:
        argv = [
            a.format(
                prompt=plan[step - 1],
                out=str(out_png),
                seed=seed,
                step=step,
                history=" ".join(map(str, history)),
            )
            for a in shlex.split(self.template)
        ]
        argv = [a for a in argv if a != ""]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s)
        if proc.returncode != 0:
            raise GenerationError(f"step command exited {proc.returncode}: {proc.stderr[-2000:]}")
