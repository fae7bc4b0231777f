"""The shapes-world demo (`python -m loom.demo`, `make demo`): a recipe over the real pieces, stage by stage.

    [1/5] world data    loom/world writes train / held-out JSONL manifests (+ PNGs) and its tokenizer folder
    [2/5] training      `loom.train.Trainer` on configs/train/shapes_demo.yaml (the real loader, checkpoints, export)
    [3/5] model         the trainer's export, copied to <out>/model — loads like any loom export
    [4/5] generation    `Pipeline.from_pretrained(<out>/model)` + `loom.infer.batch.run_batch` (= `loom generate
                        --batch`) on the held-out prompts: plan written by the model, then rendered frame by frame
    [5/5] judging       `loom.world.judge` → metrics.json + report.html

Nothing here trains or samples by itself: the recipe (model size, mixture, schedule, timestep shift, token budget)
is the YAML; generation settings are `GENERATION` below. The budget is a number of optimizer steps, so a busy
machine takes longer and trains the same model. Rerunning the same command after Ctrl-C / SIGTERM resumes training
from the newest checkpoint (data is rebuilt only if its recipe changed; finished generations are kept).

`world` (`python -m loom.demo --world mechanisms`) picks the shapes world (loom/world/generate.py WORLDS); a world
may add training-config overrides (before the user's `--set`) and generation settings (`WORLD_RECIPES` below).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loom.utils.io import atomic_write_text
from loom.world.generate import WORLDS, write_dataset
from loom.world.manifest import read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = REPO / "configs" / "train" / "shapes_demo.yaml"
THRESHOLDS = {"plan_accuracy": 0.9, "instruction_following": 0.7}  # exact figures, held-out text→tutorials
# Sampling of held-out items (GenerationSettings fields): greedy plan, few Euler steps on 8×8 latent tokens
GENERATION: dict = {"num_timesteps": 12, "timestep_shift": 2.0, "cfg_text_scale": 2.0, "cfg_img_scale": 1.5,
                    "plan_temperature": 0.0, "max_plan_tokens": 104}
# What a world changes in the recipe. mechanisms (loom/world/program.py): plans of up to 12 steps, so N_max = 12 and
# 12 timeline slots in the temporal table. A plan has at most 156 tokens, end token included (12 "Step k: …" lines of
# at most 13 tokens; the longest of 400 sampled plans had 151), so 200 plan tokens leave a margin like basic's 104 for its
# 6 × 13. Its longest training sample measured 643 tokens (all frame instances of 400 tutorials, K_max = 4), well
# under the recipe's max_tokens_per_sample = 1536, which therefore stays.
WORLD_RECIPES: dict[str, dict] = {
    "basic": {"overrides": [], "generation": {}},
    "mechanisms": {"overrides": ["data.build.n_max=12", "model.overrides.max_frames=12"],
                   "generation": {"max_plan_tokens": 200}},
}


@dataclass
class DemoConfig:
    """One demo run: the world data, the training config and its overrides, and held-out generation."""

    seed: int = 0  # data, model init and sampling seed
    world: str = "basic"  # which shapes world (generate.WORLDS): "basic" or "mechanisms"
    train_steps: int | None = None  # optimizer steps; None: the training config's run.total_steps
    size: int = 32  # canvas side in pixels
    n_train: dict[str, int] = field(default_factory=lambda: {
        "tutorial": 3000, "image_tutorial": 600, "compose": 600, "style": 300})
    n_test: dict[str, int] = field(default_factory=lambda: {
        "tutorial": 24, "image_tutorial": 8, "compose": 4, "style": 4})
    train_config: str = str(TRAIN_CONFIG)
    overrides: list[str] = field(default_factory=list)  # extra `section.key=value` for the training config
    generation: dict = field(default_factory=lambda: dict(GENERATION))
    threads: int = 0  # torch threads; 0 = auto (pick_threads)

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"unknown world {self.world!r}; choose from {', '.join(WORLDS)}")


def demo_scaffold(train_config: str | Path = TRAIN_CONFIG) -> str:
    """The planning scaffold of the demo recipe (data.build.scaffold); the world tokenizer is built for it."""
    from loom.train.config import load_train_config

    return load_train_config(train_config, []).data.build["scaffold"]


def _stdout(msg: str) -> None:
    print(msg, flush=True)


# ---- [1/5] data ------------------------------------------------------------------------------------------------
def write_world(root: Path, cfg: DemoConfig, log: Callable[[str], None] = _stdout) -> dict[str, dict[str, Path]]:
    """Train / test manifests of every demo task under root/{split}/{task}; rebuilt when the recipe changed
    (recorded in root/world.json), reused otherwise (the generator is deterministic)."""
    recipe = {"seed": cfg.seed, "size": cfg.size, "n_train": cfg.n_train, "n_test": cfg.n_test}
    if cfg.world != "basic":  # keeps the stamp of existing basic-world folders unchanged
        recipe["world"] = cfg.world
    stamp = root / "world.json"
    if stamp.exists() and json.loads(stamp.read_text()) != recipe:
        shutil.rmtree(root)
    out: dict[str, dict[str, Path]] = {"train": {}, "test": {}}
    for split, counts in (("train", cfg.n_train), ("test", cfg.n_test)):
        for task, n in counts.items():
            if n <= 0:
                continue
            folder = root / split / task
            path = folder / "manifest.jsonl"
            if not path.exists():
                write_dataset(folder, task, n, split, cfg.seed, cfg.size, cfg.world)
            out[split][task] = path
            log(f"      {split:5s} {task:15s} {n:5d} items → {folder}")
    atomic_write_text(stamp, json.dumps(recipe))
    return out


def train_overrides(cfg: DemoConfig, out: Path, manifests: dict[str, Path], tokenizer: Path | None = None
                    ) -> list[str]:
    """Point the training config at this demo's folders, seed and step budget."""
    from loom.train.config import load_train_config

    base = load_train_config(cfg.train_config, [])
    ov = [f"run.dir={out / 'train'}", f"model.tokenizer={tokenizer or out / 'tokenizer'}", f"run.seed={cfg.seed}",
          f"data.seed={cfg.seed}"]
    for name, src in base.data.sources.items():
        task = Path(src.path).parent.name  # .../train/<task>/manifest.jsonl
        if task not in manifests:
            raise FileNotFoundError(f"{cfg.train_config}: source {name!r} reads task {task!r}, which the demo "
                                    f"world does not write (n_train: {sorted(cfg.n_train)})")
        ov.append(f"data.sources.{name}.path={manifests[task]}")
    if cfg.train_steps is not None:
        ov.append(f"run.total_steps={cfg.train_steps}")
    return ov + WORLD_RECIPES[cfg.world]["overrides"] + list(cfg.overrides)


# ---- [3/5] model -----------------------------------------------------------------------------------------------
def publish_export(export: Path, target: Path) -> Path:
    """Copy the trainer's export to a stable folder (`<out>/model`), atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


# ---- [4/5] generation and [5/5] judging ------------------------------------------------------------------------
def generation_settings(cfg: DemoConfig | None = None, **extra):
    """Sampler settings of held-out generation; sizes and resize rules are the trained ones (the export's
    loom_config.json, or the trainer's build config for the in-training eval hook)."""
    from loom.infer.pipeline import GenerationSettings

    return GenerationSettings(**{**generation_dict(cfg), **extra})


def generation_dict(cfg: DemoConfig | None = None) -> dict:
    """GENERATION, then the world's settings, then the run's own."""
    if cfg is None:
        return dict(GENERATION)
    return {**GENERATION, **WORLD_RECIPES[cfg.world]["generation"], **cfg.generation}


def batch_items(manifest: Path, limit: int | None = None) -> list:
    """Held-out rows as `loom generate --batch` items (input images by absolute path)."""
    from loom.infer.batch import BatchItem

    items = []
    for row in read_jsonl(manifest)[:limit]:
        images = [str((manifest.parent / rel).resolve()) for rel in row.get("input_images", [])]
        items.append(BatchItem(row["id"], row["task"], row["prompt"], images, seed=0))
    return items


def predictions_from_results(manifest: Path, gen_root: Path, pred_dir: Path, limit: int | None = None) -> Path:
    """`predictions.jsonl` for the judge from the batch folders (a missing folder = no prediction, scored 0)."""
    preds = []
    for row in read_jsonl(manifest)[:limit]:
        res = gen_root / row["id"] / "result.json"
        if not res.exists():
            continue
        d = json.loads(res.read_text())
        images = [str((gen_root / row["id"] / st["image"]).resolve()) for st in d.get("steps", [])]
        preds.append({"id": row["id"], "text": d.get("plan_text", ""), "images": images})
    pred_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(pred_dir / "predictions.jsonl", preds)
    write_jsonl(pred_dir / "manifest.jsonl", [{**r, "frames": [str((manifest.parent / f).resolve()) for f in
                                                              r.get("frames", [])],
                                              "targets": [str((manifest.parent / f).resolve()) for f in
                                                          r.get("targets", [])]}
                                             for r in read_jsonl(manifest)[:limit]])
    return pred_dir


def generate_and_judge(pipe, test: dict[str, Path], out: Path, settings, limits: dict[str, int] | None = None,
                       gt_plan: bool = False, log: Callable[[str], None] | None = None
                       ) -> dict[str, dict[str, float]]:
    """Held-out items of every task through `run_batch` (resumable) and the judge; {task kind: {axis: mean}}.
    `gt_plan`: tutorials are rendered from their ground-truth plan (a `FixedPlanner` per item) — the renderer
    alone; the default is the model's own plan, as in the paper."""
    from loom.infer.batch import run_batch
    from loom.infer.planner import FixedPlanner
    from loom.world.judge import judge_folder

    scores: dict[str, dict[str, float]] = {}
    quiet = log or (lambda _: None)
    for task, manifest in test.items():
        limit = (limits or {}).get(task)
        gen_root = out / "generations" / task
        items = batch_items(manifest, limit)
        if gt_plan:
            plans = {r["id"]: r.get("plan") for r in read_jsonl(manifest)}
            failed = {}
            for it in items:
                planner = FixedPlanner(plans[it.item_id]) if plans.get(it.item_id) else None
                failed.update(run_batch(pipe, [it], gen_root, settings, planner=planner, log=quiet).failed)
        else:
            failed = run_batch(pipe, items, gen_root, settings, log=quiet).failed
        if log is not None and failed:
            log(f"      {task}: {len(failed)} item(s) produced nothing (scored 0): "
                f"{next(iter(failed.values()))[:160]}")
        pred = predictions_from_results(manifest, gen_root, out / "judged" / task, limit)
        scores.update(judge_folder(pred / "manifest.jsonl", pred, pred / "scores.jsonl"))
    return scores


def score_heldout(model, vae, tokenizer, build, step: int, out_dir: Path, manifest: str, limit: int = 12,
                  **generation) -> dict[str, float]:
    """`eval.fn` of the trainer: the first `limit` held-out text→tutorials generated from the in-memory model
    and judged; returns every axis of the tutorial kind (for score-vs-steps curves)."""
    from loom.infer.engine import Engine
    from loom.infer.pipeline import Pipeline

    pipe = Pipeline(Engine(model, vae, tokenizer), build=dataclasses.replace(build, frames_per_visit=None))
    scores = generate_and_judge(pipe, {"tutorial": Path(manifest)}, Path(out_dir), generation_settings(**generation),
                                {"tutorial": limit})
    return {k: v for k, v in scores.get("tutorial", {}).items() if k != "missing"}


def pick_threads(requested: int, log: Callable[[str], None] = _stdout) -> int:
    """`requested` > 0 as is; 0 = auto: min(2, cores), or 1 when the 1-minute load average says the cores are
    already busy — intra-op threads that wait for descheduled siblings made steps up to 10× slower here."""
    if requested > 0:
        return requested
    import os

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    n = 1 if load >= 0.75 * cores else min(2, cores)
    log(f"      torch threads: {n} ({cores} cores, load average {load:.1f})")
    return n


# ---- the whole demo ----------------------------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, out: str | Path = "runs/demo", log: Callable[[str], None] = _stdout,
             stages: tuple[str, ...] = ("data", "train", "generate")) -> dict:
    """Run the stages (data → train → generate + judge + report) under `out`; returns metrics.json's dict (or {}
    when generation is not among `stages`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(pick_threads(cfg.threads, log))
    try:
        return _run_demo(cfg, Path(out), log, stages)
    finally:
        torch.set_num_threads(threads)


def prepare(cfg: DemoConfig, out: Path, data_root: Path | None = None, log: Callable[[str], None] = _stdout):
    """World data + tokenizer under `data_root` (default `out`; the ablation shares one per seed) and the training
    config pointed at them with `out/train` as its run folder. Returns (manifests, train config, overrides)."""
    from loom.data.plan import DEFAULT_N_MAX
    from loom.train.config import load_train_config
    from loom.world.vocab import build_world_tokenizer

    data_root = data_root or out
    manifests = write_world(data_root / "data", cfg, log)
    overrides = train_overrides(cfg, out, manifests["train"], data_root / "tokenizer")
    tcfg = load_train_config(cfg.train_config, overrides)
    tok = build_world_tokenizer(data_root / "tokenizer", tcfg.data.build["scaffold"],
                                n_max=tcfg.data.build.get("n_max", DEFAULT_N_MAX), world=cfg.world)
    log(f"      tokenizer: {len(tok)} word-level tokens → {data_root / 'tokenizer'}")
    return manifests, tcfg, overrides


def train_stage(tcfg, out: Path, log: Callable[[str], None] = _stdout) -> dict:
    """`loom.train.Trainer(tcfg).run()`; on success the export is published as `out/model`."""
    from loom.train import parallel
    from loom.train.trainer import Trainer

    try:
        result = Trainer(tcfg).run()
    finally:
        parallel.shutdown()
    if result["status"] != "finished":
        log(f"      training {result['status']} at step {result['step']} of {tcfg.run.total_steps}: rerun the same "
            "command to resume from the newest checkpoint")
        return result
    export = Path(tcfg.run.dir) / "exports" / f"step-{tcfg.run.total_steps:07d}"
    result["model"] = str(publish_export(export, out / "model"))
    log(f"[3/5] model: {export} → {result['model']}")
    return result


def write_generation_config(cfg: DemoConfig, out: Path, log: Callable[[str], None] = _stdout) -> Path:
    """`<out>/generation.yaml`: the demo's sampler settings as a `loom generate --config` file, so the follow-up
    commands on `<out>/model` sample like the demo did (flags given after it still win)."""
    import yaml

    path = out / "generation.yaml"
    atomic_write_text(path, "# written by python -m loom.demo: use with loom generate ... --config this-file\n"
                      + yaml.safe_dump(generation_dict(cfg), sort_keys=False))
    log(f"      try it: loom generate tutorial --model {_rel(out / 'model')} --config {_rel(path)} --prompt "
        f"\"{tutorial_prompt_example(cfg.world)}\" --out {_rel(out / 'try')}")
    return path


def tutorial_prompt_example(world: str = "basic") -> str:
    """A text→tutorial prompt in the world's wording (the README's first follow-up command)."""
    from loom.world.program import Step, program_prompt
    from loom.world.shapes import Element
    from loom.world.text import tutorial_prompt

    elements = [Element("red", "circle", "top left"), Element("blue", "square", "center"),
                Element("green", "triangle", "bottom right")]
    if world == "mechanisms":
        return program_prompt([Step("draw", elements[0]), Step("move", direction="right"),
                               Step("copy", direction="down"), Step("recolour", color="blue")])
    return tutorial_prompt(elements)


def _run_demo(cfg: DemoConfig, out: Path, log: Callable[[str], None], stages: tuple[str, ...]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    log(f"[1/5] shapes world ({cfg.world}): {cfg.size} px canvas, seed {cfg.seed}")
    manifests, tcfg, overrides = prepare(cfg, out, log=log)
    seconds["data"] = time.perf_counter() - t
    if "train" not in stages:
        return {}
    t = time.perf_counter()
    log(f"[2/5] training: python -m loom.train {_rel(Path(cfg.train_config))} {' '.join(overrides)}")
    result = train_stage(tcfg, out, log)
    seconds["train"] = time.perf_counter() - t
    if result["status"] != "finished":
        return {"status": result["status"], "step": result["step"]}
    write_generation_config(cfg, out, log)
    if "generate" not in stages:
        return {"status": "trained", "step": result["step"]}
    return finish(cfg, out, tcfg, Path(result["model"]), manifests["test"], seconds, log)


def finish(cfg: DemoConfig, out: Path, tcfg, model_dir: Path, test: dict[str, Path], seconds: dict[str, float],
           log: Callable[[str], None]) -> dict:
    """[4/5] generate + judge the held-out items from the export, [5/5] metrics.json + report.html."""
    from loom.infer.pipeline import Pipeline

    t = time.perf_counter()
    n_items = sum(cfg.n_test.values())
    log(f"[4/5] generating {n_items} held-out items from {model_dir} (plan written greedily by the model, then "
        f"{generation_dict(cfg)['num_timesteps'] - 1} Euler steps per frame)")
    pipe = Pipeline.from_pretrained(model_dir, device="cpu", verbose=False)
    scores = generate_and_judge(pipe, test, out, generation_settings(cfg))
    seconds["generate_and_judge"] = time.perf_counter() - t

    log("[5/5] report")
    text = scores.get("tutorial", {})
    headline = {k: float(text.get(k, 0.0)) for k in THRESHOLDS}
    curve = [json.loads(ln) for ln in (Path(tcfg.run.dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train_rows = [r for r in curve if r.get("kind") != "eval" and "loss" in r]
    metrics = {
        "headline": headline,
        "thresholds": THRESHOLDS,
        "passed": all(headline[k] >= v for k, v in THRESHOLDS.items()),
        "scores": scores,
        "train": {"steps": tcfg.run.total_steps, "config": _rel(Path(cfg.train_config)),
                  "overrides": list(cfg.overrides),
                  "loss_first": train_rows[0]["loss"] if train_rows else None,
                  "loss_last": train_rows[-1]["loss"] if train_rows else None},
        "seconds": seconds,
        "model": str(model_dir),
        "generation": generation_dict(cfg),
        "world": cfg.world,
        "demo": dataclasses.asdict(cfg),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    from loom.world.report import write_report

    report = write_report(out, metrics, test, train_rows)
    for kind, axes in scores.items():
        axes_txt = "  ".join(f"{k} {v:.3f}" for k, v in axes.items() if k not in ("n", "missing"))
        log(f"      {kind:15s} n={axes.get('n', 0):3d}  {axes_txt}")
    log(f"      held-out text→tutorials: plan accuracy {headline['plan_accuracy']:.3f} (≥ 0.9), instruction "
        f"following {headline['instruction_following']:.3f} (≥ 0.7), both exact: "
        f"{'reached' if metrics['passed'] else 'NOT reached'}")
    log(f"wrote {report} and {out / 'metrics.json'}; the model is {model_dir}")
    return metrics


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m loom.demo")
