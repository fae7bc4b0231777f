"""The training loop: micro-batches → global-count loss → clip → AdamW → EMA; log, sample, save, export.

Reproducibility contract: given the config, a run is a pure function of (step, data position). Model init uses
`run.seed`; every per-sample random choice (CFG dropout, timestep, flow noise) is seeded by the sample's key
(loom.data.loader); the resume state holds model, optimizer, EMA, scheduler, RNG and data position, so N steps
straight equal N/2 + resume + N/2 bit for bit (tests/train/test_resume.py).

Entity tokens (Loom §3.3): right after the model is built, `data.build.entity_tokens` are registered with
`add_entity_tokens` (new ids take BAGEL's spare rows, mean-initialised; a no-op for an export that already has
them). Under `optim.freeze.und/llm` or LoRA their rows stay trainable through a row gradient mask
(`optim.RowGradMask`). Checkpoints save the tokenizer (`tokenizer/`) and a resume reloads it, so ids never
shift; exports save it with `save_pretrained` and record the vocabulary and the inference layout knobs in
`loom_config.json` ("entities", "build").
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import math
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import atomic_write_text, merge_into, to_dict, to_yaml
from ..data.builders import BuildConfig
from ..data.entities import EntityVocab, add_entity_tokens
from ..data.loader import DataError, PlanSource, ResumableLoader, TrainBatch, build_sources, flow_noise
from ..data.manifest import build_config
from ..data.packing import PackGeometry
from ..data.tokenizer import SpecialTokens, load_tokenizer
from ..model.configs import LoomConfig, preset
from ..model.loom import Loom
from ..model.vae import build_autoencoder, encode_to_tokens
from ..utils.rng import preserved_rng
from . import parallel
from .checkpoint import CheckpointManager, step_dir_name
from .config import ModelInitConfig, TrainConfig
from .ema import EMA
from .export import layout_json, write_export
from .losses import StepCounts, local_counts, micro_loss, reported
from .metrics import MetricsSink, peak_memory_gb, peak_tflops, train_flops
from .optim import (
    RowGradMask,
    apply_freeze,
    apply_lora,
    build_optimizer,
    build_scheduler,
    fill_missing_grads,
    merge_lora_state_dict,
    trainable_groups,
    unfreeze_entity_rows,
)
from .sampling import sampling_model

log = logging.getLogger("loom.train")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TrainingError(RuntimeError):
    pass


def build_model(mc: ModelInitConfig, seed: int, device: torch.device | str = "cpu"
                ) -> tuple[Loom, nn.Module, object, LoomConfig, Path, Path | None]:
    """(model, vae, tokenizer, config, tokenizer folder, source folder) for `model.init`. Released weights are
    assigned straight onto `device` (each rank's GPU), so no rank holds a full fp32 host copy."""
    kind, _, path = mc.init.partition(":")
    if kind == "scratch":
        if not mc.tokenizer:
            raise ValueError("model.init=scratch needs model.tokenizer=<folder with tokenizer files>")
        cfg = merge_into(preset(mc.preset), mc.overrides)
        torch.manual_seed(seed)
        model = Loom(cfg)
        tok_dir = Path(mc.tokenizer)
        if cfg.vae.kind == "flux":
            from ..model.weights import load_vae

            vae = load_vae(tok_dir, cfg)  # a FLUX VAE is never trained: its weights must exist
        else:
            vae = build_autoencoder(cfg.vae).eval().requires_grad_(False)
        return model, vae, load_tokenizer(tok_dir), cfg, tok_dir, (tok_dir if cfg.vae.kind == "flux" else None)
    if kind in ("bagel", "export") and path:
        from ..model.weights import config_from_release, load_bagel

        src = Path(path)
        cfg = merge_into(config_from_release(src), mc.overrides)
        model, vae, tok, cfg = load_bagel(src, device=device, dtype=_DTYPES[mc.dtype], config=cfg)
        return model, vae, tok, cfg, Path(mc.tokenizer) if mc.tokenizer else src, src
    raise ValueError(f"model.init must be scratch, bagel:<dir> or export:<dir>, got {mc.init!r}")


def _import(path: str):
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def build_export_meta(build: BuildConfig, entities: EntityVocab | None, dropout=None) -> dict:
    """What an export records in loom_config.json beyond the architecture: every sequence-shaping setting of the
    training BuildConfig ("build", `export.LAYOUT_KEYS`, read by `loom.infer.load.build_config_from_export`),
    the trained condition dropout ("cfg_dropout", a `CondDropout`) and the entity vocabulary ("entities")."""
    meta = {"build": layout_json(build)}
    if dropout is not None:
        meta["cfg_dropout"] = dataclasses.asdict(dropout)
    meta["entities"] = entities.to_dict() if entities is not None else {"entity_tokens": {}}
    return meta


def _setup_logging(run_dir: Path, rank: int, level: str = "info") -> None:
    """Each rank logs to its own file; the console shows `level` and up, and only rank 0 prints below ERROR
    (every rank sees the same collective events — skipped steps, SIGTERM — so other ranks would repeat them)."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"log.level={level!r}: choose debug, info, warning or error")
    root = logging.getLogger("loom")
    root.setLevel(min(lvl, logging.INFO))  # the log files keep info even when the console is quieter
    for h in list(root.handlers):
        if getattr(h, "_loom", False):
            root.removeHandler(h)
            h.close()  # the previous run's log file
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    fh = logging.FileHandler(run_dir / "logs" / f"train-rank{rank:05d}.log")
    sh = logging.StreamHandler()
    sh.setLevel(lvl if rank == 0 else max(lvl, logging.ERROR))
    for h in (fh, sh):
        h.setFormatter(fmt)
        h._loom = True
        root.addHandler(h)
    root.propagate = False


def _git_info() -> str:
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        st = subprocess.run(["git", "status", "--short"], cwd=here, capture_output=True, text=True, timeout=10)
        return f"commit {sha.stdout.strip()}\n{st.stdout}"
    except (OSError, subprocess.SubprocessError):
        return "git unavailable\n"


class Trainer:
    def __init__(self, cfg: TrainConfig, sources: dict[str, PlanSource] | None = None) -> None:
        self.cfg = cfg
        self.info = parallel.init_distributed()
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _setup_logging(self.run_dir, self.info.rank, cfg.log.level)
        self.config_yaml = to_yaml(cfg)
        if self.info.is_main:
            atomic_write_text(self.run_dir / "config.yaml", self.config_yaml)
            atomic_write_text(self.run_dir / "git.txt", _git_info())

        self.ckpt = CheckpointManager(self.run_dir, cfg.checkpoint, self.info)
        self._resume_path = self.ckpt.find_resume()
        model, self.vae, self.tokenizer, self.model_cfg, self.tokenizer_dir, self.source_dir = build_model(
            cfg.model, cfg.run.seed, self.info.device)
        saved_tok = self._resume_path / "tokenizer" if self._resume_path is not None else None
        if saved_tok is not None and saved_tok.is_dir():  # a resume keeps exactly the tokenizer it trained with
            self.tokenizer = load_tokenizer(saved_tok)
        self.build_config = build_config(cfg.data.build, (self.model_cfg.max_frames, self.model_cfg.max_references))
        self.entities = add_entity_tokens(model, self.tokenizer, self.build_config.entity_tokens)
        if self.entities.added:
            log.info("registered entity tokens %s (ids %d–%d, mean-initialised rows; %d vocabulary rows)",
                     " ".join(self.entities.added), self.entities.ids[self.entities.added[0]],
                     self.entities.ids[self.entities.added[-1]], self.model_cfg.llm.vocab_size)
        model.to(_DTYPES[cfg.model.dtype])
        apply_freeze(model, cfg.optim.freeze)
        if cfg.optim.lora.enabled:
            model = apply_lora(model, cfg.optim.lora)
        row_masks = (unfreeze_entity_rows(model, sorted(self.entities.ids.values()))
                     if cfg.optim.train_entity_rows else {})
        if row_masks:
            log.info("entity rows of %s stay trainable under the freeze (row gradient mask)", ", ".join(row_masks))
        self._log_trainable(model, row_masks)

        world = self.info.world_size
        self.grad_accum, self.samples_per_step = cfg.optim.grad_accum, 0
        if cfg.optim.global_batch_size > 0:
            if cfg.optim.global_batch_size % world:
                raise ValueError(f"optim.global_batch_size={cfg.optim.global_batch_size} is not a multiple of "
                                 f"the {world} ranks")
            self.samples_per_step = cfg.optim.global_batch_size // world
            log.info("optim.global_batch_size=%d: %d samples per rank per step, packed into micro-batches of "
                     "≤ %d samples / %d tokens (optim.grad_accum ignored)", cfg.optim.global_batch_size,
                     self.samples_per_step, cfg.data.batch_size, cfg.data.max_tokens)

        self.model = parallel.apply_parallel(model, cfg.parallel, self.info)
        self.vae = self.vae.to(self.info.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.row_mask = RowGradMask(self.model, row_masks)
        self.ema = EMA(self.model, cfg.ema.decay) if cfg.ema.enabled else None
        self.optimizer = build_optimizer(self.model, cfg.optim, no_decay=set(row_masks))
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.run.total_steps)

        self.tokens = SpecialTokens.from_tokenizer(self.tokenizer)
        self.geometry = PackGeometry.from_config(self.model_cfg)
        if sources is None:
            sources = build_sources(cfg.data, self.tokenizer, self.tokens, self.geometry,
                                    self.model_cfg.llm.vocab_size,
                                    (self.model_cfg.max_frames, self.model_cfg.max_references))
        ensure_vit = self.info.distributed and self.model_cfg.visual_und
        self.loader = ResumableLoader(sources, cfg.data, self.tokens, self.geometry, self.info.rank, world,
                                      ensure_vit=ensure_vit, samples_per_step=self.samples_per_step)

        self.sink = MetricsSink(self.run_dir, cfg.log, cfg.run.name or self.run_dir.name, to_dict(cfg),
                                self.info.is_main)
        self.step = 0
        self.num_nonfinite = 0
        self.consecutive_nonfinite = 0
        self.num_samples = 0
        self._stop = False
        self._sample_warned = False
        self._eval_warned = False
        self._resumed_step = -1
        self._skipped: dict[str, list[str]] = {"corrupt": [], "too_long": []}  # sources, for the end summary
        self._resume()

    # ---- resume / save / export ------------------------------------------------------------------------------
    def _resume(self) -> None:
        path = self._resume_path
        if path is None:  # a rerun killed before its first checkpoint logged steps that run again
            self.sink.truncate_after(0)
            return
        st = self.ckpt.load(path, self.model, self.optimizer, self.ema)
        self.step = st["step"]
        self.scheduler.load_state_dict(st["scheduler"])
        self.num_nonfinite = st["num_nonfinite"]
        self.consecutive_nonfinite = st["consecutive_nonfinite"]
        self.num_samples = st["num_samples"]
        if not self.cfg.checkpoint.reset_data:
            data = st["data"]
            if len(data) != self.info.world_size:
                raise DataError(f"{path}: data state for {len(data)} ranks, running {self.info.world_size}; "
                                "set checkpoint.reset_data=true to restart the data stream")
            self.loader.load_state_dict(data[self.info.rank])
        self.sink.truncate_after(self.step)
        self._resumed_step = self.step
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Path:
        data = parallel.gather_objects(self.loader.state_dict(), self.info)
        st = {"step": self.step, "scheduler": self.scheduler.state_dict(), "num_nonfinite": self.num_nonfinite,
              "consecutive_nonfinite": self.consecutive_nonfinite, "num_samples": self.num_samples,
              "world_size": self.info.world_size, "data": data, "entities": self.entities.to_dict()}
        path = self.ckpt.save(self.step, self.model, self.optimizer, self.ema, st, self.config_yaml, self.tokenizer)
        log.info("saved checkpoint %s", path)
        return path

    def export_weights(self, use_ema: bool) -> dict[str, torch.Tensor]:
        """Full state dict under release keys (rank 0; collective under FSDP)."""
        sd = parallel.full_state_dict(self.model, self.info)
        if use_ema and self.ema is not None:
            for name, t in self.ema.shadow.items():
                full = parallel.to_local_full(t).detach().cpu()
                if self.info.is_main:
                    sd[name] = full
        if self.cfg.optim.lora.enabled and self.info.is_main:
            sd = merge_lora_state_dict(sd, self.cfg.optim.lora, self.model_cfg)
        return sd

    def export(self) -> Path | None:
        use_ema = self.cfg.checkpoint.export_weights == "ema"
        sd = self.export_weights(use_ema)
        out = self.run_dir / "exports" / step_dir_name(self.step)
        if self.info.is_main:
            dtype = _DTYPES[self.cfg.checkpoint.export_dtype]
            write_export(out, sd, self.model_cfg, self.tokenizer_dir, self.source_dir, self.config_yaml, dtype,
                         tokenizer=self.tokenizer, loom_extra=build_export_meta(self.build_config, self.entities,
                                                                   self.cfg.data.cond_dropout()))
            log.info("exported %s weights to %s", "EMA" if use_ema else "raw", out)
        parallel.barrier(self.info)
        return out

    # ---- one optimizer step ----------------------------------------------------------------------------------
    def _encode(self, batch) -> torch.Tensor | None:
        if not batch.vae_images:
            return None
        with parallel.autocast(self.info, self.cfg.parallel):
            toks = encode_to_tokens(self.vae, batch.vae_images, batch.vae_latent_shapes,
                                    self.model_cfg.latent_patch_size)
        return torch.cat(toks).float()

    def train_step(self, micro: list[TrainBatch]) -> dict:
        cfg, info = self.cfg, self.info
        local = [0.0, 0.0]
        for tb in micro:
            c, m = local_counts(tb.packed.ce_loss_weights, int(tb.packed.mse_loss_indexes.numel()), cfg.loss)
            local[0] += c
            local[1] += m
        g = parallel.all_reduce_sum(local, info)
        counts = StepCounts(g[0], g[1])
        ce_sum = mse_sum = 0.0
        tokens = len_sq = 0.0
        bad = False
        self.model.train()
        for i, tb in enumerate(micro):
            batch = tb.packed.to(info.device)
            x0 = self._encode(batch)
            batch.packed_noise = flow_noise(tb.packed, tb.sample_seeds, self.model_cfg.latent_token_dim).to(
                info.device)
            parallel.set_gradient_sync(self.model, i == len(micro) - 1)
            with parallel.autocast(info, cfg.parallel):
                out = self.model(batch, x0, timestep_shift=cfg.loss.timestep_shift)
            loss, cs, ms = micro_loss(out.ce, out.mse, batch.ce_loss_weights, counts, cfg.loss, info.world_size,
                                      out.unused)
            if parallel.all_reduce_max([0.0 if math.isfinite(float(loss.detach())) else 1.0], info)[0] > 0:
                bad = True
                log.warning("step %d: non-finite loss (sources: %s); skipping the step", self.step + 1,
                            ", ".join(tb.packed.sample_sources))
                break
            loss.backward()
            ce_sum += cs
            mse_sum += ms
            tokens += batch.sequence_length
            len_sq += sum(n * n for n in batch.sample_lens)
        grad_norm = float("nan")
        if not bad:
            fill_missing_grads(self.params)  # every parameter steps every step (see loom.train.optim)
            if self.row_mask:
                self.row_mask()  # frozen vocabulary tensors: only the entity rows keep their gradient
            grad_norm = parallel.clip_grad_norm(self.params, cfg.optim.max_grad_norm)
            if not math.isfinite(grad_norm):
                bad = True
                log.warning("step %d: non-finite gradient norm; skipping the step", self.step + 1)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.num_nonfinite += 1
            self.consecutive_nonfinite += 1
            self.sink.event({"kind": "nonfinite_step", "step": self.step + 1,
                             "sources": [s for tb in micro for s in tb.packed.sample_sources]})
            r = cfg.robust
            if self.num_nonfinite > r.max_nonfinite_steps or self.consecutive_nonfinite > r.max_consecutive_nonfinite:
                raise TrainingError(f"{self.num_nonfinite} steps skipped for NaN/inf ({self.consecutive_nonfinite}"
                                    f" in a row) > robust limits {r.max_nonfinite_steps}/"
                                    f"{r.max_consecutive_nonfinite}: stopping")
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
            self.consecutive_nonfinite = 0
        with warnings.catch_warnings():  # a skipped step steps the schedule without an optimizer step
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        samples = sum(tb.num_samples for tb in micro)
        s = parallel.all_reduce_sum([ce_sum, mse_sum, tokens, len_sq, samples], info)
        rec = reported(s[0], s[1], counts, cfg.loss)
        rec.update(grad_norm=grad_norm, tokens=s[2], len_sq=s[3], samples=s[4], skipped=bad,
                   ce_tokens=counts.ce, mse_tokens=counts.mse, micro_batches=len(micro))
        return rec

    # ---- data: micro-batches, skipped samples -----------------------------------------------------------------
    def _next_micro_batches(self) -> list[TrainBatch]:
        """This rank's micro-batches of the next step. With `optim.global_batch_size` the count varies with the
        token budget; under FSDP every rank then pads to the largest count with loss-free filler packs."""
        micro = self.loader.next_step(self.grad_accum)
        if self.samples_per_step and self.info.distributed:
            n = int(parallel.all_reduce_max([len(micro)], self.info)[0])
            micro += [self.loader.filler() for _ in range(n - len(micro))]
        return micro

    def _record_skips(self, micro: list[TrainBatch]) -> tuple[int, int]:
        """Write every rank's skip events of this step to events.jsonl (rank 0), then stop with a one-line
        DataError past data.max_bad_samples / max_too_long_samples. Returns the all-rank (corrupt, too long)
        totals."""
        cfg, info = self.cfg, self.info
        events = [{**e, "step": self.step + 1, "rank": info.rank} for tb in micro for e in tb.events]
        bad, too_long, n_events = parallel.all_reduce_sum(
            [self.loader.num_bad, self.loader.num_too_long, len(events)], info)
        if n_events:
            for rank_events in parallel.gather_objects(events, info):
                for e in rank_events:
                    self.sink.event(e)
                    if e.get("kind") in self._skipped:
                        self._skipped[e["kind"]].append(e["source"])
        where = self.run_dir / "events.jsonl"
        for what, n, limit in (("corrupt", bad, cfg.data.max_bad_samples),
                               ("too long", too_long, cfg.data.max_too_long_samples)):
            if n > limit:
                key = "max_bad_samples" if what == "corrupt" else "max_too_long_samples"
                raise DataError(f"{int(n)} {what} samples skipped on all ranks > data.{key}={limit}: stopping; "
                                f"the list (manifest:line:id and reason per sample) is in {where}")
        return int(bad), int(too_long)

    def _log_skip_summary(self) -> None:
        """End of run: name the samples this run skipped (the full list is in events.jsonl)."""
        for kind, sources in self._skipped.items():
            if sources:
                more = f" … and {len(sources) - 10} more" if len(sources) > 10 else ""
                log.warning("%d %s samples skipped this run: %s%s (all in %s)", len(sources), kind.replace("_", " "),
                            ", ".join(sources[:10]), more, self.run_dir / "events.jsonl")

    def _log_trainable(self, model: nn.Module, row_masks: dict[str, torch.Tensor]) -> None:
        n_all = sum(p.numel() for p in model.parameters())
        groups = trainable_groups(model, row_masks)
        log.info("model %s: %.2fM params, %.2fM trainable (%d tensors frozen)", self.cfg.model.init, n_all / 1e6,
                 sum(groups.values()) / 1e6, sum(not p.requires_grad for p in model.parameters()))
        for name, n in groups.items():
            log.info("  trains %-48s %12d params", name, n)

    # ---- hooks -----------------------------------------------------------------------------------------------
    def maybe_sample(self) -> None:
        sc = self.cfg.sample
        if sc.every <= 0 or self.step % sc.every:
            return
        try:
            fn = _import(sc.fn)
        except (ImportError, AttributeError) as e:
            if not self._sample_warned:
                log.warning("sample hook %s unavailable (%s); skipping sample generation", sc.fn, e)
                self._sample_warned = True
            return
        options = {"build": self.build_config, "task": sc.task, "num_timesteps": sc.num_timesteps,
                   "resolution": sc.resolution, "max_plan_tokens": sc.max_plan_tokens}
        params = inspect.signature(fn).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            options = {k: v for k, v in options.items() if k in params}
        try:
            # under FSDP: a rank-0 copy from the gathered weights (loom.train.sampling); other ranks get None
            with sampling_model(self, sc.use_ema) as model, torch.no_grad(), preserved_rng():
                if model is not None:  # writes <run.dir>/samples/step-XXXXXXX/<prompt folder>/
                    fn(model=model, vae=self.vae, tokenizer=self.tokenizer, prompts=list(sc.prompts),
                       out_dir=self.run_dir / "samples", step=self.step, seed=sc.seed, **options)
        except Exception as e:  # sampling must never stop training
            log.warning("sample generation failed at step %d: %s", self.step, e)

    def maybe_eval(self) -> None:
        """`eval.fn` every `eval.every` steps on rank 0 (EMA weights by default); scores → metrics.jsonl."""
        ec = self.cfg.eval
        if ec.every <= 0 or self.step % ec.every or not ec.fn:
            return
        if self.info.distributed:
            if not self._eval_warned:
                log.warning("eval hook under FSDP is not supported; skipping (score an export instead)")
                self._eval_warned = True
            return
        fn = _import(ec.fn)
        ctx = self.ema.swapped_in(self.model) if ec.use_ema and self.ema else contextlib.nullcontext()
        t0 = time.perf_counter()
        try:
            self.model.eval()
            with ctx, torch.no_grad(), preserved_rng():
                scores = fn(model=self.model, vae=self.vae, tokenizer=self.tokenizer, build=self.build_config,
                            step=self.step, out_dir=self.run_dir / "evals" / step_dir_name(self.step), **ec.args)
        finally:
            self.model.train()
        scores = {k: float(v) for k, v in (scores or {}).items()}
        self.sink.write({"step": self.step, "kind": "eval", **scores, "eval_seconds": time.perf_counter() - t0})

    def _on_sigterm(self, signum, frame) -> None:
        log.warning("SIGTERM received: finishing the current step, then saving")
        self._stop = True

    # ---- the loop --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, info = self.cfg, self.info
        old = signal.signal(signal.SIGTERM, self._on_sigterm) if cfg.checkpoint.save_on_sigterm else None
        fault = os.environ.get("LOOM_FAULT", "")
        peak = peak_tflops(info.device, cfg.log.peak_tflops)
        window = {"tokens": 0.0, "len_sq": 0.0, "t0": time.perf_counter()}
        last_saved = self._resumed_step
        status, rec = "finished", {}
        from .progress import Progress

        progress = Progress(info.is_main and cfg.log.progress, cfg.run.total_steps, self.step, cfg.run.max_minutes)
        console = contextlib.ExitStack()
        try:
            console.enter_context(progress.redirect_logging())
            while self.step < cfg.run.total_steps:
                micro = self._next_micro_batches()
                bad_total, too_long_total = self._record_skips(micro)  # events first, then the thresholds
                rec = self.train_step(micro)
                self.step += 1
                self.num_samples += int(rec["samples"])
                window["tokens"] += rec["tokens"]
                window["len_sq"] += rec["len_sq"]
                if self.step % cfg.log.every == 0 or self.step == cfg.run.total_steps:
                    dt = max(time.perf_counter() - window["t0"], 1e-9)
                    flops = train_flops(self.model_cfg.llm, window["tokens"], window["len_sq"])
                    tps = window["tokens"] / dt
                    mem = parallel.all_reduce_max([peak_memory_gb(info.device)], info)[0]
                    self.sink.write({
                        "step": self.step, "loss": rec["loss"], "ce": rec["ce"], "mse": rec["mse"],
                        "lr": self.scheduler.get_last_lr()[0], "grad_norm": rec["grad_norm"],
                        "tokens_per_s": tps, "tflops": flops / dt / 1e12,
                        "mfu": flops / dt / 1e12 / (peak * info.world_size) if peak > 0 else None,  # no known peak
                        "mem_gb": mem, "samples": self.num_samples, "ce_tokens": rec["ce_tokens"],
                        "mse_tokens": rec["mse_tokens"], "skipped_steps": self.num_nonfinite,
                        "bad_samples": bad_total, "too_long": too_long_total,
                        "micro_batches": rec["micro_batches"], "step_samples": int(rec["samples"]),
                        "total_steps": cfg.run.total_steps,
                    })
                    window = {"tokens": 0.0, "len_sq": 0.0, "t0": time.perf_counter()}
                if fault == f"sigterm:{self.step}":
                    os.kill(os.getpid(), signal.SIGTERM)
                stop = parallel.all_reduce_max([1.0 if self._stop else 0.0], info)[0] > 0
                if cfg.checkpoint.every > 0 and self.step % cfg.checkpoint.every == 0:
                    self.save()
                    last_saved = self.step
                if cfg.checkpoint.export_every > 0 and self.step % cfg.checkpoint.export_every == 0:
                    self.export()
                self.maybe_sample()
                self.maybe_eval()
                progress.update(rec)
                if stop:
                    status = "terminated"
                    break
                if progress.over_time() and self.step < cfg.run.total_steps:
                    status = "time_limit"
                    log.warning("run.max_minutes=%g reached after %.1f min: stopping EARLY at step %d of %d "
                                "(checkpoint saved, no export); rerun with a larger cap or 0 to finish",
                                cfg.run.max_minutes, progress.minutes(), self.step, cfg.run.total_steps)
                    break
            if last_saved != self.step:
                self.save()
            if status == "finished" and cfg.checkpoint.export_at_end:
                if not (cfg.checkpoint.export_every > 0 and self.step % cfg.checkpoint.export_every == 0):
                    self.export()
        finally:
            progress.close()
            console.close()
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            self._log_skip_summary()
            self.sink.close()
        return {"status": status, "step": self.step, **{k: rec.get(k) for k in ("loss", "ce", "mse")}}
