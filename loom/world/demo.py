"""The shapes-world demo (`python -m loom.demo`, `make demo`): train a tiny Loom from scratch on a CPU within a
wall-clock budget, generate held-out tutorials (text→ and image→), a composition and a style example, score them
with the programmatic judge, and write `report.html` + `metrics.json`.

Everything Loom-specific is the real code path: samples come from the training builders (`build_plans`: scaffold,
plan CE, sparse history, stepwise prompt, temporal embedding, CFG dropout), packing from `pack_sequences`, the
model is `Loom`, and generation is `loom.infer.pipeline.Pipeline` (plan written greedily by the model, then
rendered frame by frame). The training loop is a minimal one (below) rather than `loom.train.Trainer`: the demo
needs a *wall-clock* budget with a schedule over elapsed time, and none of the trainer's checkpoint / FSDP /
resume machinery.

Recipe (all in `DemoConfig`): 32 px canvas, pixel autoencoder (space-to-depth ×2) + latent patch 2 ⇒ 8×8 latent
tokens per frame; MoT width 192, 4 layers; word-level tokenizer over the world's closed vocabulary (two-word cell
names are one token); AdamW lr 1e-3 with warm-up and a cosine decay over the budget; one tutorial frame per visit
plus plan-only instances (the shared prefix [scaffold, plan] of every tutorial instance) so that the plan CE sees
many prompts; training timesteps shifted toward noise (shift 4: where each shape goes is decided at high t, which
BAGEL's logit-normal draw at shift 1 rarely visits). Measured effect of each choice: evals/shapes/demo_scores.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from loom.data.builders import BuildConfig, BuildContext, build_plans
from loom.data.builders.base import ImageCache
from loom.data.builders.tutorial import plan_item, tutorial_prefix
from loom.data.packing import PackGeometry, pack_sequences
from loom.data.records import record_source, tutorial_steps
from loom.data.tokenizer import SpecialTokens
from loom.data.types import SequencePlan
from loom.model.configs import LLMConfig, LoomConfig, VAEConfig, ViTConfig
from loom.model.loom import Loom
from loom.model.vae import build_autoencoder, encode_to_tokens
from loom.world.generate import write_dataset
from loom.world.manifest import read_jsonl

DEMO_SCAFFOLD = "Plan first, then render.\nTask: {prompt}"
TRAIN_TASKS = ("tutorial", "image_tutorial", "compose", "style")


@dataclass
class DemoConfig:
    """One demo run. The training budget is `steps` optimizer steps, capped by `minutes` of wall clock
    (generation and scoring come on top); `steps=None` trains for `minutes`. The default is the smallest step
    budget measured to reach the thresholds (evals/shapes/demo_scores.md): ~17 min on an idle 2-core CPU."""

    steps: int | None = 6000
    minutes: float = 45.0
    seed: int = 0
    size: int = 32  # canvas side in pixels
    # model
    width: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    ffn_mult: int = 2
    vit_width: int = 64
    # data: training items per task and held-out items per task
    n_train: dict[str, int] = field(default_factory=lambda: {
        "tutorial": 3000, "image_tutorial": 600, "compose": 600, "style": 300})
    n_test: dict[str, int] = field(default_factory=lambda: {
        "tutorial": 24, "image_tutorial": 8, "compose": 4, "style": 4})
    # mixture weights (per drawn sample); "plan" = plan-only instances of text→tutorials
    mix: dict[str, float] = field(default_factory=lambda: {
        "tutorial": 4.0, "image_tutorial": 1.0, "compose": 1.0, "style": 0.5, "plan": 12.0})
    frames_per_visit: int = 1
    k_max: int = 4
    use_temporal: bool = True
    stepwise_prompt: bool = True
    # optimisation
    max_tokens: int = 1536  # token budget of one pack (one optimizer step)
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.0
    ce_weight: float = 0.25  # Loom §4.1: CE : MSE = 0.25 : 1
    max_grad_norm: float = 1.0
    timestep_shift: float = 4.0  # train-time shift of t toward noise: layout is decided at high t (see demo_scores.md)
    threads: int = 0  # torch threads; 0 = auto: 2 on an idle machine, 1 when others keep the CPU busy
    device: str = "cpu"
    # generation
    num_timesteps: int = 12
    infer_shift: float = 2.0
    cfg_text_scale: float = 2.0
    cfg_img_scale: float = 1.5
    log_every_s: float = 10.0

    def build_config(self) -> BuildConfig:
        px = self.size
        return BuildConfig(k_max=self.k_max, use_temporal=self.use_temporal, stepwise_prompt=self.stepwise_prompt,
                           frames_per_visit=self.frames_per_visit, scaffold=DEMO_SCAFFOLD,
                           vae_transform=(px, px, 4), vit_transform=(28, 28, 14))


def model_config(cfg: DemoConfig, vocab_size: int) -> LoomConfig:
    """The demo architecture: BAGEL's MoT at toy scale with the lossless pixel autoencoder."""
    rows = 64 * math.ceil(vocab_size / 64)
    return LoomConfig(
        llm=LLMConfig(hidden_size=cfg.width, intermediate_size=cfg.ffn_mult * cfg.width,
                      num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                      num_key_value_heads=cfg.kv_heads, vocab_size=rows, max_position_embeddings=4096,
                      rope_theta=10_000.0),
        vit=ViTConfig(hidden_size=cfg.vit_width, intermediate_size=2 * cfg.vit_width, num_hidden_layers=1,
                      num_attention_heads=2, patch_size=14, image_size=28),
        vae=VAEConfig(kind="pixel", z_channels=12, downsample=2),
        latent_patch_size=2, max_latent_size=cfg.size // 4, vit_max_num_patch_per_side=2,
        temporal_embedding=cfg.use_temporal,
    )


# ---- data ---------------------------------------------------------------------------------------------------
def write_world(root: Path, cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, dict[str, Path]]:
    """Train and test manifests of every demo task under root/{split}/{task} (disjoint element sets)."""
    out: dict[str, dict[str, Path]] = {"train": {}, "test": {}}
    for split, counts in (("train", cfg.n_train), ("test", cfg.n_test)):
        for task, n in counts.items():
            if n <= 0:
                continue
            folder = root / split / task
            path = folder / "manifest.jsonl"
            if not path.exists():
                write_dataset(folder, task, n, split, cfg.seed, cfg.size)
            out[split][task] = path
            log(f"      {split:5s} {task:15s} {n:5d} items → {folder}")
    return out


class _PilCache:
    """`load_image` for the builders that decodes every PNG once per run."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.images = folder, {}

    def __call__(self, rel: str) -> Image.Image:
        if rel not in self.images:
            with Image.open(self.folder / rel) as im:
                self.images[rel] = im.convert("RGB")
        return self.images[rel]


class SampleStream:
    """Weighted task mixture → `SequencePlan`s (one training instance each), drawn from one seeded rng."""

    def __init__(self, manifests: dict[str, Path], tokenizer, build: BuildConfig, mix: dict[str, float],
                 seed: int) -> None:
        self.rng = random.Random(seed)
        self.ctx: dict[str, BuildContext] = {}
        self.rows: dict[str, list[dict]] = {}
        for task, path in manifests.items():
            ctx = BuildContext.from_manifest(path, tokenizer, build)
            ctx.load_image = _PilCache(path.parent)
            rows = read_jsonl(path)
            for i, r in enumerate(rows):
                r["_row"] = i
            self.ctx[task], self.rows[task] = ctx, rows
        self.tasks = [t for t in mix if mix[t] > 0 and (t in self.rows or (t == "plan" and "tutorial" in self.rows))]
        self.weights = [mix[t] for t in self.tasks]
        self.pending: list[SequencePlan] = []

    def _plan_only(self, row: dict) -> SequencePlan:
        """The prefix every tutorial instance shares: [scaffold(prompt) (refs)] [plan, CE]."""
        ctx = self.ctx["tutorial"]
        source = record_source(row, ctx.manifest) + "#plan"
        steps, _ = tutorial_steps(row)
        images = ImageCache(ctx, source)
        items = tutorial_prefix(ctx, images, row["prompt"], list(row.get("input_images", [])))
        return SequencePlan([*items, plan_item(ctx, steps[: ctx.config.n_max])], source=source)

    def next(self) -> SequencePlan:
        if not self.pending:
            task = self.rng.choices(self.tasks, self.weights)[0]
            if task == "plan":
                self.pending = [self._plan_only(self.rng.choice(self.rows["tutorial"]))]
            else:
                row = self.rng.choice(self.rows[task])
                self.pending = build_plans(row, self.ctx[task], self.rng)
        return self.pending.pop()


def plan_length(plan: SequencePlan, geometry: PackGeometry) -> int:
    from loom.data.builders import plan_num_tokens

    return plan_num_tokens(plan, geometry)


# ---- training -----------------------------------------------------------------------------------------------
@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def lr_at(cfg: DemoConfig, step: int, frac: float) -> float:
    """Linear warm-up over steps, then cosine over the elapsed fraction of the time budget."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    cos = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr * warm * cos


def train(model: Loom, vae, stream: SampleStream, tokens: SpecialTokens, cfg: DemoConfig, seconds: float,
          log: Callable[[str], None] = print, max_steps: int | None = None,
          on_checkpoint: Callable[[int, float], None] | None = None,
          checkpoint_steps: tuple[int, ...] = ()) -> TrainLog:
    """Train until `seconds` of wall clock or `max_steps` steps, whichever comes first; the cosine runs over
    the larger of the two elapsed fractions. `on_checkpoint(step, elapsed seconds)` is called after each step
    in `checkpoint_steps` (score-vs-budget curves); its own time is not counted as training time."""
    geometry = PackGeometry.from_config(model.config)
    build = next(iter(stream.ctx.values())).config
    dropout = build.cond_dropout()
    rng = random.Random(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in n or "embed" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), foreach=True)
    tl = TrainLog()
    p = model.config.latent_patch_size
    t0 = time.perf_counter()
    last_log, last_t = -1e9, 0.0
    win: dict[str, float] = {"loss": 0.0, "ce": 0.0, "mse": 0.0, "n": 0}
    step = 0
    model.train()
    while True:
        elapsed = time.perf_counter() - t0
        if on_checkpoint is not None and step in checkpoint_steps:
            model.eval()
            pause = time.perf_counter()
            on_checkpoint(step, elapsed)
            t0 += time.perf_counter() - pause  # scoring time does not count as training time
            model.train()
        if elapsed >= seconds or (max_steps is not None and step >= max_steps):
            break
        plans, n_tok = [], 0
        while n_tok < cfg.max_tokens:
            sp = stream.next()
            plans.append(sp)
            n_tok += plan_length(sp, geometry)
        batch = pack_sequences(plans, tokens, geometry, dropout, rng, gen).to(cfg.device)
        x0 = None
        if batch.num_vae_tokens:
            x0 = torch.cat(encode_to_tokens(vae, batch.vae_images, batch.vae_latent_shapes, p)).float()
            batch.packed_noise = torch.randn(x0.shape, generator=gen).to(cfg.device)
        frac = max(elapsed / seconds, step / max_steps if max_steps else 0.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, frac)
        out = model(batch, x0, timestep_shift=cfg.timestep_shift)
        ce = out.ce.mean() if out.ce.numel() else out.ce.new_zeros(())
        mse = out.mse.mean() if out.mse.numel() else out.mse.new_zeros(())
        loss = cfg.ce_weight * ce + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        step += 1
        win["loss"] += float(loss.detach())
        win["ce"] += float(ce.detach())
        win["mse"] += float(mse.detach())
        win["n"] += 1
        now = time.perf_counter() - t0
        done = now >= seconds or (max_steps is not None and step >= max_steps)
        if now - last_log >= cfg.log_every_s or done:
            n = max(1, win["n"])
            tl.steps.append(step)
            tl.seconds.append(round(now, 2))
            for k in ("loss", "ce", "mse"):
                getattr(tl, k).append(win[k] / n)
            tl.lr.append(opt.param_groups[0]["lr"])
            rate = (now - last_t) / n
            last_t = now
            # progress against whichever budget binds first: the step budget or the wall-clock cap
            of = f"/{max_steps}" if max_steps else ""
            left = min((max_steps - step) * rate if max_steps else float("inf"), seconds - now)
            eta = f" (~{max(left, 0.0) / 60:.1f} left)" if left < 1e8 else ""
            log(f"      step {step:5d}{of}  {now / 60:5.2f} min{eta}  {rate:4.2f} s/step  loss {win['loss'] / n:.4f}  "
                f"plan-CE {win['ce'] / n:.4f}  MSE {win['mse'] / n:.4f}  lr {opt.param_groups[0]['lr']:.2e}")
            win = {"loss": 0.0, "ce": 0.0, "mse": 0.0, "n": 0}
            last_log = now
    model.eval()
    return tl


def build_model(cfg: DemoConfig, tokenizer) -> tuple[Loom, torch.nn.Module]:
    mc = model_config(cfg, len(tokenizer))
    torch.manual_seed(cfg.seed)
    model = Loom(mc).to(cfg.device)
    vae = build_autoencoder(mc.vae).eval().requires_grad_(False).to(cfg.device)
    return model, vae


def _stdout(msg: str) -> None:
    print(msg, flush=True)
    sys.stdout.flush()


# ---- generation and scoring ---------------------------------------------------------------------------------
def make_pipeline(model: Loom, vae, tokenizer, build: BuildConfig):
    from loom.infer.engine import Engine
    from loom.infer.pipeline import Pipeline

    return Pipeline(Engine(model, vae, tokenizer), build=dataclasses.replace(build, frames_per_visit=None))


def generation_settings(cfg: DemoConfig, seed: int = 0):
    from loom.infer.pipeline import GenerationSettings

    return GenerationSettings(
        seed=seed, resolution=(cfg.size, cfg.size), num_timesteps=cfg.num_timesteps, timestep_shift=cfg.infer_shift,
        cfg_text_scale=cfg.cfg_text_scale, cfg_img_scale=cfg.cfg_img_scale, plan_temperature=0.0,
        max_plan_tokens=16 * 6 + 8, vae_transform=(cfg.size, cfg.size), vit_transform=(28, 28))


def generate_folder(pipe, manifest: Path, out_dir: Path, cfg: DemoConfig, limit: int | None = None,
                    log: Callable[[str], None] | None = None, gt_plan: bool = False) -> Path:
    """Run the pipeline on every row of a held-out manifest; write PNGs + `predictions.jsonl` for the judge.
    `gt_plan` (text→tutorials only) renders from the row's ground-truth plan through a `FixedPlanner`, which scores
    the renderer alone (the ablation's renderer-only table); the default is the model's own plan, as in the paper."""
    from loom.infer.planner import FixedPlanner, PlanError
    from loom.world.manifest import write_jsonl

    rows = read_jsonl(manifest)[:limit]
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = []
    for i, row in enumerate(rows):
        inputs = [Image.open(manifest.parent / rel).convert("RGB") for rel in row.get("input_images", [])]
        task = row["task"]
        t0 = time.perf_counter()
        text, paths, error = "", [], None
        try:
            extra = {"planner": FixedPlanner(row["plan"])} if gt_plan and task == "tutorial" else {}
            res = pipe.run(task, row["prompt"], images=inputs, settings=generation_settings(cfg, seed=i), **extra)
            text = res.plan.text if res.plan is not None else ""
            for k, fr in enumerate(res.frames, 1):
                rel = f"{row['id']}_{k}.png"
                fr.image.convert("RGB").save(out_dir / rel)
                paths.append(rel)
        except PlanError as e:  # the model wrote no usable plan: scored as an empty tutorial
            error = str(e).splitlines()[0]
        preds.append({"id": row["id"], "text": text, "images": paths, "seconds": round(time.perf_counter() - t0, 2),
                      **({"error": error} if error else {})})
        if log is not None:
            log(f"      {row['id']}: {len(paths)} image(s) in {time.perf_counter() - t0:.1f}s")
    write_jsonl(out_dir / "predictions.jsonl", preds)
    return out_dir


def evaluate(pipe, test: dict[str, Path], out_dir: Path, cfg: DemoConfig, limits: dict[str, int] | None = None,
             log: Callable[[str], None] | None = None, gt_plan: bool = False) -> dict[str, dict[str, float]]:
    """Generate and judge every held-out task; returns {task kind: {axis: mean, n, missing}}. `gt_plan`: see
    `generate_folder`."""
    from loom.world.judge import judge_folder

    scores: dict[str, dict[str, float]] = {}
    for task, manifest in test.items():
        limit = (limits or {}).get(task)
        pred = generate_folder(pipe, manifest, out_dir / task, cfg, limit, log, gt_plan)
        # judge only the generated rows (a limit scores a prefix of the manifest)
        rows = read_jsonl(manifest)[:limit]
        sub = out_dir / task / "manifest.jsonl"
        from loom.world.manifest import write_jsonl

        write_jsonl(sub, rows)
        # images of the manifest are resolved against the prediction folder; ground truth is read from rows' meta
        scores.update(judge_folder(sub, pred, out_dir / task / "scores.jsonl"))
    return scores


# ---- report -------------------------------------------------------------------------------------------------
def loss_curve_png(tl: TrainLog, path: Path, width: int = 640, height: int = 300) -> Path:
    """Loss / plan-CE / MSE against training minutes, drawn with PIL (log-scaled y)."""
    from PIL import ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 12, 14, height - 34
    d.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    series = [("loss", tl.loss, (30, 30, 30)), ("plan CE", tl.ce, (40, 80, 220)), ("MSE", tl.mse, (220, 40, 40))]
    xs = [s / 60 for s in tl.seconds]
    vals = [v for _, ys, _ in series for v in ys if v > 0]
    if xs and vals:
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
        hi = hi if hi > lo else lo + 1
        x_max = max(xs) or 1.0

        def pt(x: float, y: float) -> tuple[float, float]:
            yy = math.log10(max(y, 10**lo))
            return left + (right - left) * x / x_max, bottom - (bottom - top) * (yy - lo) / (hi - lo)

        for e in range(math.floor(lo), math.ceil(hi) + 1):
            for m in (1, 2, 5):
                v = m * 10**e
                if lo <= math.log10(v) <= hi:
                    _, y = pt(0, v)
                    d.line([left, y, right, y], fill=(235, 235, 235))
                    d.text((4, y - 6), f"{v:g}", fill=(90, 90, 90))
        for k in range(5):
            x = x_max * k / 4
            px, _ = pt(x, 10**lo)
            d.text((px - 10, bottom + 4), f"{x:.1f}" if x_max >= 2 else f"{x:.2f}", fill=(90, 90, 90))
        d.text(((left + right) // 2 - 40, bottom + 18), "training minutes", fill=(90, 90, 90))
        for i, (name, ys, color) in enumerate(series):
            pts = [pt(x, y) for x, y in zip(xs, ys) if y > 0]
            if len(pts) > 1:
                d.line(pts, fill=color, width=2)
            d.text((right - 70, top + 4 + 14 * i), name, fill=color)
    img.save(path)
    return path


def _data_url(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _img(path: Path | None, title: str = "") -> str:
    if path is None or not path.exists():
        return '<span class="missing">–</span>'
    return f'<img src="{_data_url(path)}" title="{title}">'


def _esc(s: str) -> str:
    import html

    return html.escape(s).replace("\n", "<br>")


def write_report(out: Path, metrics: dict, test: dict[str, Path], pred_root: Path, curve: Path) -> Path:
    """Self-contained report.html: per held-out item the prompt, plans and storyboards (generated above ground
    truth), per-item scores; the headline numbers and the loss curve at the top."""
    parts = ["<!doctype html><meta charset='utf-8'><title>Loom shapes-world demo</title><style>",
             "body{font-family:sans-serif;margin:20px;max-width:1200px} img{width:72px;height:72px;"
             "image-rendering:pixelated;border:1px solid #ccc;margin:1px} td,th{padding:4px 8px;vertical-align:top;"
             "border-bottom:1px solid #eee;font-size:13px} .plan{font-family:monospace;font-size:12px;"
             "white-space:nowrap} .ok{color:#186a3b} .bad{color:#a93226} .missing{color:#aaa}"
             " table{border-collapse:collapse}</style>",
             "<h1>Loom on the shapes world (tiny, CPU)</h1>"]
    h = metrics["headline"]
    verdict = "ok" if metrics["passed"] else "bad"
    parts.append(f"<p>Training {metrics['train']['minutes']:.2f} min ({metrics['train']['steps']} steps, "
                 f"{metrics['model']['params_m']:.2f} M parameters); held-out text→tutorials: plan accuracy "
                 f"<b>{h['plan_accuracy']:.3f}</b> (≥ {metrics['thresholds']['plan_accuracy']}), frame instruction "
                 f"following <b>{h['instruction_following']:.3f}</b> (≥ "
                 f"{metrics['thresholds']['instruction_following']}) → <b class='{verdict}'>"
                 f"{'reached' if metrics['passed'] else 'not reached'}</b>.</p>")
    parts.append(f"<img src='{_data_url(curve)}' style='width:640px;height:300px;image-rendering:auto'>")
    parts.append("<h2>Scores (mean over held-out items)</h2><table><tr><th>task</th><th>axis</th><th>score</th></tr>")
    for kind, axes in metrics["scores"].items():
        for axis, v in axes.items():
            if axis not in ("n", "missing"):
                parts.append(f"<tr><td>{kind}</td><td>{axis}</td><td>{v:.3f}</td></tr>")
        parts.append(f"<tr><td>{kind}</td><td>n</td><td>{axes.get('n', 0)}</td></tr>")
    parts.append("</table>")
    from loom.world.text import format_plan

    for task, manifest in test.items():
        pdir = pred_root / task
        if not (pdir / "predictions.jsonl").exists():
            continue
        preds = {p["id"]: p for p in read_jsonl(pdir / "predictions.jsonl")}
        scores = {s["id"]: s for s in read_jsonl(pdir / "scores.jsonl")} if (pdir / "scores.jsonl").exists() else {}
        parts.append(f"<h2>{task}</h2><table>")
        for row in read_jsonl(pdir / "manifest.jsonl"):
            p = preds.get(row["id"], {})
            gen = [pdir / rel for rel in p.get("images", [])]
            truth = [manifest.parent / rel for rel in (row.get("frames") or row.get("targets") or [])]
            inputs = [manifest.parent / rel for rel in row.get("input_images", [])]
            sc = {k: v for k, v in scores.get(row["id"], {}).items() if k not in ("id", "kind")}
            sc_html = "<br>".join(f"{k}: {v:.2f}" for k, v in sc.items())
            plan_html = ""
            if row["task"] == "tutorial":
                plan_html = (f"<div class='plan'><b>generated</b><br>{_esc(p.get('text') or p.get('error', ''))}"
                             f"<br><b>ground truth</b><br>{_esc(format_plan(row['plan']))}</div>")
            n = max(len(gen), len(truth))
            gen_row = "".join(_img(gen[i] if i < len(gen) else None, "generated") for i in range(n))
            gt_row = "".join(_img(truth[i] if i < len(truth) else None, "ground truth") for i in range(n))
            parts.append(f"<tr><td><b>{row['id']}</b><br>{_esc(row['prompt'])}<br>"
                         f"{''.join(_img(x, 'input') for x in inputs)}</td>"
                         f"<td>generated<br>{gen_row}<br>ground truth<br>{gt_row}</td><td>{plan_html}</td>"
                         f"<td>{sc_html}</td></tr>")
        parts.append("</table>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


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


# ---- the whole demo -----------------------------------------------------------------------------------------
THRESHOLDS = {"plan_accuracy": 0.9, "instruction_following": 0.7}


def run_demo(cfg: DemoConfig, out: str | Path = "runs/demo", max_steps: int | None = None,
             log: Callable[[str], None] = _stdout) -> dict:
    """World data → tokenizer → train for `max_steps` (default `cfg.steps`) capped by `cfg.minutes` → generate
    held-out items → judge → `report.html` + `metrics.json` under `out`. Returns the metrics."""
    max_steps = cfg.steps if max_steps is None else max_steps
    threads = torch.get_num_threads()
    torch.set_num_threads(pick_threads(cfg.threads, log))
    flush = torch.set_flush_denormal(True)  # precaution: denormal Adam moments are slow on x86 CPUs
    try:
        return _run_demo(cfg, Path(out), max_steps, log)
    finally:
        torch.set_num_threads(threads)
        if flush:
            torch.set_flush_denormal(False)


def _run_demo(cfg: DemoConfig, out: Path, max_steps: int | None, log: Callable[[str], None]) -> dict:
    import shutil

    from loom.world.vocab import build_world_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log(f"[1/5] shapes world: {cfg.size} px canvas, seed {cfg.seed}")
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    manifests = write_world(data, cfg, log)

    log("[2/5] tokenizer and model")
    tok = build_world_tokenizer(out / "tokenizer", DEMO_SCAFFOLD)
    model, vae = build_model(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    mc = model.config
    log(f"      vocabulary {len(tok)} tokens; MoT width {mc.llm.hidden_size}, {mc.llm.num_hidden_layers} layers, "
        f"{n_params / 1e6:.2f} M parameters; {mc.max_latent_size}×{mc.max_latent_size} latent tokens per frame")

    budget = cfg.minutes * 60
    what = f"{cfg.minutes:g} min" + (f" or {max_steps} steps" if max_steps else "")
    log(f"[3/5] training for {what} (progress every {cfg.log_every_s:g} s)")
    build = cfg.build_config()
    stream = SampleStream(manifests["train"], tok, build, cfg.mix, cfg.seed)
    t_train = time.perf_counter()
    tl = train(model, vae, stream, SpecialTokens.from_tokenizer(tok), cfg, budget, log, max_steps)
    train_s = time.perf_counter() - t_train

    log(f"[4/5] generating and judging {sum(cfg.n_test.values())} held-out items (plan written greedily, then "
        f"{cfg.num_timesteps - 1} Euler steps per frame)")
    pipe = make_pipeline(model, vae, tok, build)
    pred_root = out / "predictions"
    if pred_root.exists():
        shutil.rmtree(pred_root)
    t_gen = time.perf_counter()
    scores = evaluate(pipe, manifests["test"], pred_root, cfg, log=log)
    gen_s = time.perf_counter() - t_gen

    log("[5/5] report")
    curve = loss_curve_png(tl, out / "loss_curve.png")
    text = scores.get("tutorial", {})
    headline = {k: float(text.get(k, 0.0)) for k in THRESHOLDS}
    first, last = (tl.loss[0], tl.loss[-1]) if tl.loss else (float("nan"), float("nan"))
    metrics = {
        "headline": headline,
        "thresholds": THRESHOLDS,
        "passed": all(headline[k] >= v for k, v in THRESHOLDS.items()),
        "scores": scores,
        "train": {"minutes": train_s / 60, "steps": tl.steps[-1] if tl.steps else 0, "budget_minutes": cfg.minutes,
                  "max_steps": max_steps, "loss_first": first, "loss_last": last,
                  "loss_decreased": bool(last < first)},
        "seconds": {"train": train_s, "generate_and_score": gen_s, "total": time.perf_counter() - t_start},
        "model": {"params_m": n_params / 1e6, "width": mc.llm.hidden_size, "layers": mc.llm.num_hidden_layers,
                  "vocab": len(tok), "latent_tokens_per_frame": mc.max_latent_size**2},
        "config": dataclasses.asdict(cfg),
        "loss_curve": tl.to_json(),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    report = write_report(out, metrics, manifests["test"], pred_root, curve)
    for kind, axes in scores.items():
        axes_txt = "  ".join(f"{k} {v:.3f}" for k, v in axes.items() if k not in ("n", "missing"))
        log(f"      {kind:15s} n={axes.get('n', 0):3d}  {axes_txt}")
    log(f"      text→tutorial plan accuracy {headline['plan_accuracy']:.3f} (≥ 0.9), instruction following "
        f"{headline['instruction_following']:.3f} (≥ 0.7): {'reached' if metrics['passed'] else 'not reached'}")
    log(f"wrote {report} and {out / 'metrics.json'} in {metrics['seconds']['total'] / 60:.1f} min")
    return metrics
