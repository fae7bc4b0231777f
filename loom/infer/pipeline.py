"""Tasks on top of the engine: tutorial (text / text + image → interleaved), composition, decomposition, style
transfer, and BAGEL's plain t2i / edit / understanding.

    pipe = Pipeline.from_pretrained("models/BAGEL-7B-MoT")        # or a loom export
    res = pipe.run("tutorial", "How to fold a paper crane", settings=GenerationSettings(seed=1))
    write_result(res, "out/crane")                                # frame_01.png …, result.json, index.html

Contexts come from the training builders (`loom.data.builders`, via `loom.infer.loop`), so every task is laid out
exactly as it was trained. Per-task sampling defaults are those of the paper's scripts and BAGEL's notebook
(`TASK_DEFAULTS`, bagel-spec §7.5, loom-reference-code §3.2); every value can be overridden.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.builders import BuildConfig, SampleError, reference_prompt_items, split_placeholders
from ..data.builders.base import layout_items, text_item
from ..data.builders.tutorial import plan_item, scaffold_text, tutorial_prefix
from ..data.records import PLACEHOLDER_RE
from ..data.transforms import ImageTransform
from .engine import Engine, ImageSamplerConfig
from .entity_cfg import EntityGuidance, guided_velocity, mask_from_pixels, parse_layers
from .loop import (
    Frame,
    InputError,
    ItemContexts,
    RenderStats,
    frame_seed,
    inference_build_context,
    model_plan,
    render_frame,
    render_outputs,
    render_tutorial,
)
from .planner import PlanResult
from .sampling import RENORM_TYPES

TASKS = ("tutorial", "compose", "decompose", "style", "t2i", "edit", "understand")
IMAGE_TASKS = ("tutorial", "compose", "decompose", "style", "t2i", "edit")
ENTITY_TASKS = ("tutorial", "compose", "decompose", "style")  # tasks whose prompts carry entity tokens
# (min, max) input images per task (max None = the model's reference slots)
NUM_INPUTS = {"tutorial": (0, 1), "compose": (1, None), "decompose": (1, 1), "style": (2, 2), "t2i": (0, 0),
              "edit": (1, 1), "understand": (0, None)}

# Sampling defaults per task. tutorial / compose / decompose / style: the paper's inference scripts
# (Inferencer_Interleaved_Output / _Input: text 4.0, image 2.0, interval [0, 1], global renorm min 0, shift 3,
# 50 steps, 1024², plan sampled at temperature 0.3, ≤ 1000 tokens). t2i / edit / understand: BAGEL's notebook.
TASK_DEFAULTS: dict[str, dict] = {
    "tutorial": dict(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="global"),
    "compose": dict(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="global"),
    "decompose": dict(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="global"),
    "style": dict(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="global"),
    "t2i": dict(cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval=(0.4, 1.0), cfg_renorm_type="global"),
    "edit": dict(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="text_channel"),
    "understand": dict(),
}


class LayoutOverrideWarning(UserWarning):
    """A generation setting overrides the sequence layout the model was trained with (loom_config.json)."""


@dataclass
class GenerationSettings:
    """Everything that shapes one generation. `None` fields take the task default (`TASK_DEFAULTS`)."""

    seed: int = 0
    # (W, H) pixels; None: the model's trained VAE max side, squared (BAGEL and the Loom recipes: 1024²; tutorial,
    # t2i), or the input's size
    resolution: tuple[int, int] | None = None
    num_timesteps: int = 50
    timestep_shift: float = 3.0
    cfg_text_scale: float | None = None
    cfg_img_scale: float | None = None
    cfg_interval: tuple[float, float] | None = None
    cfg_renorm_type: str | None = None
    cfg_renorm_min: float = 0.0
    # planning (tutorial)
    num_steps: int | None = None  # cap on the plan length (≤ N_max); None: as many as the model writes
    plan_temperature: float = 0.3
    plan_top_p: float = 1.0
    max_plan_tokens: int = 1000
    strict_plan: bool = False
    k_max: int | None = None  # history budget; None: the model's (loom_config.json) or 4
    feedback: str = "latent"  # how frames re-enter the context: "latent" (no pixel round trip) or "pixel"
    # decomposition
    num_outputs: int | None = None  # None: number of distinct entity tokens in the prompt
    # understanding
    max_answer_tokens: int = 1000
    answer_temperature: float = 0.0
    # localised entity CFG (tasks with entity tokens; Loom appendix A.1)
    entity_scale: float | None = None  # s_entity inside the entity's region; None = off
    entity_mask: str | None = None  # "auto" (default): from the entity tokens' attention; or a PNG, white = region
    entity_token: str | None = None  # which entity token(s), comma-separated; None: all in the prompt
    # (decompose: output m uses the m-th)
    entity_layers: str | None = None  # LLM layers whose attention defines the region: "all" (None), "8-20", "4,5"
    entity_threshold: float | None = None  # on the min-max normalised map; None: 0.5 (unless a top fraction)
    entity_top_fraction: float | None = None  # instead of a threshold: the top fraction of latent tokens
    entity_step: int = 0  # attention is averaged over denoising steps 0..entity_step; the mask applies from there
    entity_smooth: int = 3  # odd box-blur kernel on the token grid before thresholding (1 = none)
    # input preprocessing (max, min) for the VAE / ViT resize rules; None: the model's trained ones (loom_config.json
    # "build"), else BAGEL's — clamped to the model tables
    vae_transform: tuple[int, int] | None = None
    vit_transform: tuple[int, int] | None = None

    def resolved(self, task: str) -> GenerationSettings:
        d = TASK_DEFAULTS.get(task, {})
        out = dataclasses.replace(self, **{k: v for k, v in d.items() if getattr(self, k) is None})
        if out.cfg_renorm_type is not None and out.cfg_renorm_type not in RENORM_TYPES:
            raise InputError(f"unknown cfg renorm type {out.cfg_renorm_type!r}; choose from {RENORM_TYPES}")
        if out.num_timesteps < 2:
            raise InputError(f"--timesteps must be ≥ 2, got {out.num_timesteps}")
        return out

    def sampler(self) -> ImageSamplerConfig:
        return ImageSamplerConfig(num_timesteps=self.num_timesteps, timestep_shift=self.timestep_shift,
                                  cfg_text_scale=self.cfg_text_scale, cfg_img_scale=self.cfg_img_scale,
                                  cfg_interval=tuple(self.cfg_interval), cfg_renorm_type=self.cfg_renorm_type,
                                  cfg_renorm_min=self.cfg_renorm_min)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


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


# ---- inputs ----------------------------------------------------------------------------------------------------
def load_image_file(path: str | Path) -> Image.Image:
    """Open and fully decode an image, or raise `InputError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"input image {p} does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read input image {p}: {type(e).__name__}: {e}") from None


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """"1024" → (1024, 1024); "768x1024" → (W=768, H=1024)."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x×,]\s*(\d+))?\s*", str(text))
    if not m:
        raise InputError(f"--resolution must look like 1024 or WIDTHxHEIGHT, got {text!r}")
    w = int(m.group(1))
    return (w, int(m.group(2)) if m.group(2) else w)


def check_inputs(task: str, prompt: str, images: list, max_references: int) -> None:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty; pass --prompt TEXT")
    lo, hi = NUM_INPUTS[task]
    hi = max_references if hi is None else hi
    if not lo <= len(images) <= hi:
        want = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
        raise InputError(f"task {task!r} takes {want} input image(s) (--image), got {len(images)}")
    bad = sorted({int(m.group(1)) for m in PLACEHOLDER_RE.finditer(prompt)} - set(range(1, len(images) + 1)))
    if bad:
        raise InputError(f"the prompt refers to <image {bad[0]}> but {len(images)} image(s) were given "
                         f"(<image k> counts the --image arguments from 1)")


# ---- the pipeline ------------------------------------------------------------------------------------------------
class Pipeline:
    """`build`: the sequence layout (transforms, K_max, scaffold …; default: BAGEL's transforms, loom's knobs);
    `trained`: the settings the model's export recorded (`Loaded.layout`) — a request that differs is honoured
    with a `LayoutOverrideWarning` (and a result note) naming the trained and the requested value."""

    _hooks: tuple = (None, None)  # (on_plan, on_frame) of the running `run` call

    def __init__(self, engine: Engine, build: BuildConfig | None = None, model_info: dict | None = None,
                 trained: dict | None = None) -> None:
        from .load import default_transforms

        self.engine = engine
        self.build = build or BuildConfig(max_frames=engine.cfg.max_frames, max_references=engine.cfg.max_references,
                                          use_temporal=engine.cfg.temporal_embedding,
                                          n_max=min(BuildConfig.n_max, engine.cfg.max_frames),
                                          **default_transforms(engine.cfg))
        self.trained = dict(trained or {})
        self.model_info = model_info or {}
        self._base_transforms = (engine.vae_transform, engine.vit_transform)

    @classmethod
    def from_pretrained(cls, path: str | Path, **load_kwargs) -> Pipeline:
        from .load import load_pretrained

        ld = load_pretrained(path, **load_kwargs)
        return cls(Engine(ld.model, ld.vae, ld.tokenizer), ld.build, ld.describe(), ld.layout)

    # ---- geometry -----------------------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.engine.cfg.pixels_per_latent_token

    def max_pixels_side(self) -> int:
        return self.engine.cfg.max_latent_size * self.stride

    def _check_trained(self, res: GenerationResult, key: str, requested, flag: str) -> None:
        """Loudly honour a request that differs from the layout the model was trained with."""
        def show(v) -> str:  # transforms compare as (max, min); the stride is the model's
            return ",".join(map(str, list(v)[:2])) if isinstance(v, (list, tuple)) else str(v)

        trained = self.trained.get(key)
        if trained is not None and requested is not None and show(trained) != show(requested):
            msg = (f"{flag} {show(requested)} overrides the trained {key} {show(trained)} (the model's "
                   "loom_config.json): this sequence layout was never trained")
            warnings.warn(msg, LayoutOverrideWarning, stacklevel=3)
            res.notes.append(msg)

    def _set_transforms(self, s: GenerationSettings) -> None:
        """The build's resize rules (the trained ones for an export; BAGEL's VAE 1024/512/16, ViT 980/224/14
        otherwise), clamped to what the model's tables cover."""
        vit_lim = self.engine.cfg.vit_max_num_patch_per_side * self.engine.cfg.vit.patch_size
        (vae_max, vae_min), (vit_max, vit_min) = self.build.vae_transform[:2], self.build.vit_transform[:2]
        vae_max, vit_max = min(vae_max, self.max_pixels_side()), min(vit_max, vit_lim)
        vae = s.vae_transform or (vae_max, min(vae_min, vae_max))
        vit = s.vit_transform or (vit_max, min(vit_min, vit_max))
        for name, (mx, mn), lim in (("vae", vae, self.max_pixels_side()), ("vit", vit, vit_lim)):
            if not 0 < mn <= mx <= lim:
                raise InputError(f"--{name}-transform {mx},{mn}: need 0 < min ≤ max ≤ {lim} for this model")
        self.engine.vae_transform = ImageTransform(vae[0], vae[1], self.stride)
        self.engine.vit_transform = ImageTransform(vit[0], vit[1], self.engine.cfg.vit.patch_size)

    def latent_grid(self, resolution: tuple[int, int]) -> tuple[int, int]:
        w, h = resolution
        s, lim = self.stride, self.max_pixels_side()
        if w % s or h % s or not (s <= w <= lim and s <= h <= lim):
            raise InputError(f"--resolution {w}x{h}: width and height must be multiples of {s} between {s} and "
                             f"{lim} for this model")
        return h // s, w // s

    def _output_grid(self, task: str, s: GenerationSettings, images: list[Image.Image]) -> tuple[int, int]:
        if s.resolution is not None:
            return self.latent_grid(s.resolution)
        if images and task in ("compose", "decompose", "style", "edit"):
            # the paper's script: output size = the last reference after the VAE resize rule
            im = self.engine.prepare_image(images[-1])
            return self.latent_grid(im.size)
        # the trained targets' side (the build's VAE max; BAGEL: 1024), clamped to the model tables
        side = min(self.build.vae_transform[0], self.max_pixels_side()) // self.stride * self.stride
        return self.latent_grid((side, side))

    # ---- entry point --------------------------------------------------------------------------------------------
    def run(self, task: str, prompt: str, images: list[Image.Image] | None = None,
            settings: GenerationSettings | None = None, planner=None, progress: bool = False,
            input_paths: list[str] | None = None, on_plan: Callable[[PlanResult], None] | None = None,
            on_frame: Callable[[Frame], None] | None = None) -> GenerationResult:
        """Generate one item. `planner` (tutorial only): None = the model plans (default), or an
        `ExternalPlanner` / `FixedPlanner`. `on_plan(plan)` / `on_frame(frame)` are called as soon as the plan /
        each frame exists (streaming front ends: `loom serve`)."""
        images = list(images or [])
        check_inputs(task, prompt, images, self.build.max_references)
        s = (settings or GenerationSettings()).resolved(task)
        if task != "tutorial" and planner is not None:
            raise InputError(f"a planner only applies to the tutorial task, not {task!r}")
        if s.entity_scale is not None and task not in ENTITY_TASKS:
            raise InputError(f"--entity-scale applies to {', '.join(ENTITY_TASKS)}, not {task!r}")
        if s.num_steps is not None and not 1 <= s.num_steps <= self.build.n_max:
            raise InputError(f"--steps {s.num_steps}: this model renders 1 to N_max = {self.build.n_max} steps")
        self._set_transforms(s)
        t0 = time.perf_counter()
        n0 = self.engine.num_forwards
        res = GenerationResult(task, prompt, s, inputs=images, input_paths=list(input_paths or []),
                               model=dict(self.model_info))
        self._check_trained(res, "vae_transform", s.vae_transform, "--vae-transform")
        self._check_trained(res, "vit_transform", s.vit_transform, "--vit-transform")
        if task == "tutorial":
            self._check_trained(res, "k_max", s.k_max, "--k-max")
        self._hooks = (on_plan, on_frame)
        try:
            getattr(self, f"_run_{task}")(res, planner, progress)
        except SampleError as e:  # layout problems found by the builders (e.g. <image k> beyond the inputs)
            raise InputError(str(e)) from None
        finally:
            self._hooks = (None, None)
        res.timings["total_seconds"] = time.perf_counter() - t0
        res.timings["num_forwards"] = self.engine.num_forwards - n0
        return res

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _progress(self, enabled: bool, sampler_steps: int, label: str):
        if not enabled:
            return None
        from tqdm.auto import tqdm

        def start(t: int, n: int, hist: list[int]):
            bar = tqdm(total=sampler_steps - 1, desc=f"{label} {t}/{n}", unit="step", leave=True)

            def cb(i: int, total: int) -> None:
                bar.update(1)
                if i == total:
                    bar.close()
            return cb
        return start

    def _entity_tags(self, s: GenerationSettings, text: str) -> list[str]:
        """The entity tokens localised CFG follows: --entity-token (checked against the text), else every entity
        token the text contains, in order of first appearance."""
        found = sorted({t for t in self.build.entity_tokens if t in text}, key=text.index)
        if s.entity_token is not None:
            want = [t.strip() for t in s.entity_token.split(",") if t.strip()]
            missing = [t for t in want if t not in text]
            if not want or missing:
                raise InputError(f"--entity-token {s.entity_token}: {', '.join(missing) or 'nothing'} not in the "
                                 "prompt")
            return want
        if not found:
            raise InputError(f"--entity-scale needs an entity token in the prompt ({', '.join(self.build.entity_tokens)})")
        return found

    def _user_mask(self, path: str, h: int, w: int) -> torch.Tensor:
        m = load_image_file(path).convert("L")
        m = m.resize((w * self.stride, h * self.stride), Image.NEAREST)
        return mask_from_pixels(torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0), h, w)

    def _entity_hook(self, s: GenerationSettings, prompt: str, h: int, w: int):
        """Velocity hook for localised entity CFG with a user mask (s_entity inside, the text scale outside), for
        callers that drive `Engine.generate_image` themselves; the tasks pass `EntityGuidance` instead."""
        if s.entity_scale is None:
            return None
        self._entity_tags(s, prompt)
        if s.entity_mask in (None, "auto"):
            raise InputError("a velocity hook needs --entity-mask PNG; attention masks come from the sampler")
        mask = self._user_mask(s.entity_mask, h, w)
        rt, rmin = s.cfg_renorm_type, s.cfg_renorm_min

        def hook(v_c, v_t, v_i, s_t, s_i):
            return guided_velocity(v_c, v_t, v_i, s_t, s_i, s.entity_scale, mask.to(v_c.device), rt, rmin)
        return lambda items: hook

    def _entity_for(self, s: GenerationSettings, contexts: ItemContexts, text: str, h: int, w: int,
                    frame_texts: list[str] | None = None):
        """`entity_for(items, k)` for the render loops: frame k's `EntityGuidance` (None = ordinary CFG), or None
        when localised entity CFG is off. Without --entity-token, frame k follows the entity tokens of
        `frame_texts[k-1]` when it names any (tutorial: step k's text; decompose: the k-th token), else all."""
        entity_knobs = (s.entity_mask, s.entity_token, s.entity_layers, s.entity_threshold, s.entity_top_fraction)
        if s.entity_scale is None:
            if any(v is not None for v in entity_knobs):
                raise InputError("--entity-mask / --entity-token / --entity-layers / --entity-threshold need "
                                 "--entity-scale")
            return None
        tags = self._entity_tags(s, text)
        if s.entity_mask not in (None, "auto"):
            mask = self._user_mask(s.entity_mask, h, w)
            return lambda items, k: EntityGuidance(s.entity_scale, mask=mask, tags=tuple(tags))
        try:
            layers = parse_layers(s.entity_layers, self.engine.cfg.llm.num_hidden_layers)
        except ValueError as e:
            raise InputError(str(e)) from None
        threshold = s.entity_threshold
        if threshold is None and s.entity_top_fraction is None:
            threshold = 0.5
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InputError(f"--entity-threshold must be in [0, 1] (on the normalised map), got {threshold}")
        if s.entity_top_fraction is not None and not 0.0 < s.entity_top_fraction <= 1.0:
            raise InputError(f"--entity-top-fraction must be in (0, 1], got {s.entity_top_fraction}")
        if not 0 <= s.entity_step < s.num_timesteps - 1:
            raise InputError(f"--entity-step must be in 0..{s.num_timesteps - 2} (a denoising step), got "
                             f"{s.entity_step}")
        if s.entity_smooth < 1 or s.entity_smooth % 2 == 0:
            raise InputError(f"entity_smooth must be an odd kernel ≥ 1, got {s.entity_smooth}")
        def make(items, k: int) -> EntityGuidance | None:
            use = tags
            if s.entity_token is None and frame_texts is not None and k <= len(frame_texts):
                use = [t for t in tags if t in frame_texts[k - 1]] or tags
            pos, total = contexts.token_positions(items, use)
            if not pos:
                return None
            return EntityGuidance(s.entity_scale, positions=pos, layers=layers, step=s.entity_step,
                                  threshold=threshold if s.entity_top_fraction is None else None,
                                  top_fraction=s.entity_top_fraction, smooth=s.entity_smooth, tags=tuple(use),
                                  context_len=total)
        return make

    # ---- tasks ----------------------------------------------------------------------------------------------------
    def _run_tutorial(self, res: GenerationResult, planner, progress: bool) -> None:
        s, eng = res.settings, self.engine
        k_max = self.build.k_max if s.k_max is None else s.k_max
        if k_max < 0:
            raise InputError(f"--k-max must be ≥ 0, got {k_max}")
        res.k_max = k_max
        h, w = self._output_grid("tutorial", s, res.inputs)
        bctx, images, mem = inference_build_context(eng, dataclasses.replace(self.build, k_max=k_max))
        refs = []
        for k, im in enumerate(res.inputs, 1):
            mem.images[f"input{k}"] = im
            refs.append(f"input{k}")
        contexts = ItemContexts(eng, rope_gaps=True)
        prefix = tutorial_prefix(bctx, images, res.prompt, refs)
        n_max = self.build.n_max
        if planner is None:
            plan, item = model_plan(eng, contexts, bctx, prefix, s.max_plan_tokens, s.plan_temperature, s.plan_top_p,
                                    frame_seed(s.seed, 0), n_max, s.num_steps, s.strict_plan)
        else:
            plan = planner(res.prompt, res.inputs, scaffold_text(bctx.config, res.prompt), n_max, s.num_steps,
                           s.strict_plan)
            item = plan_item(bctx, plan.steps)
        res.plan = plan
        if self._hooks[0] is not None:
            self._hooks[0](plan)
        res.timings["plan_seconds"] = plan.seconds
        out = render_tutorial(eng, contexts, bctx, images, mem, prefix, item, plan.steps, h, w, s.sampler(), s.seed,
                              k_max, s.feedback, self._progress(progress, s.num_timesteps, "frame"),
                              entity_for=self._entity_for(s, contexts, res.prompt + " " + plan.text, h, w,
                                                          plan.steps), on_frame_end=self._hooks[1])
        res.frames, res.stats = out.frames, out.stats

    def _multi(self, res: GenerationResult, num_outputs: int, progress: bool) -> None:
        s, eng = res.settings, self.engine
        h, w = self._output_grid(res.task, s, res.inputs)
        bctx, images, mem = inference_build_context(eng, self.build)
        refs = []
        for k, im in enumerate(res.inputs, 1):
            mem.images[f"input{k}"] = im
            refs.append(f"input{k}")
        if num_outputs > self.build.max_frames:
            raise InputError(f"{num_outputs} outputs but the model has {self.build.max_frames} frame slots")
        contexts = ItemContexts(eng, rope_gaps=True)
        prefix = reference_prompt_items(bctx, images, res.prompt, refs)
        out = render_outputs(eng, contexts, bctx, images, mem, prefix, num_outputs, h, w, s.sampler(), s.seed,
                             s.feedback, self.build.use_vit_for_references,
                             self._progress(progress, s.num_timesteps, "output"),
                             entity_for=self._entity_for(s, contexts, res.prompt, h, w, self._decompose_parts(res)),
                             on_frame_end=self._hooks[1])
        res.frames, res.stats = out.frames, out.stats

    def _decompose_parts(self, res: GenerationResult) -> list[str] | None:
        """Decompose: output m isolates the m-th entity token of the prompt (frame texts for `_entity_for`)."""
        if res.task != "decompose":
            return None
        return sorted({t for t in self.build.entity_tokens if t in res.prompt}, key=res.prompt.index)

    def _run_compose(self, res, planner, progress):
        self._multi(res, 1, progress)

    def _run_style(self, res, planner, progress):
        self._multi(res, 1, progress)

    def _run_decompose(self, res, planner, progress):
        m = res.settings.num_outputs
        if m is None:
            tags = sorted({t for t in self.build.entity_tokens if t in res.prompt}, key=res.prompt.index)
            if not tags:
                raise InputError("decompose: pass --num-outputs M (or name the parts with entity tokens such as "
                                 "<upper>, <lower> in the prompt)")
            m = len(tags)
            res.notes.append(f"num_outputs = {m} from the entity tokens {' '.join(tags)}")
        if m < 1:
            raise InputError(f"--num-outputs must be ≥ 1, got {m}")
        self._multi(res, m, progress)

    def _bagel_single(self, res: GenerationResult, items, progress: bool, h: int, w: int) -> None:
        """t2i / edit with BAGEL's own inference contexts (no RoPE gaps, fixture parity), slot 0."""
        s, eng = res.settings, self.engine
        contexts = ItemContexts(eng, rope_gaps=False)
        stats = RenderStats()
        cb = self._progress(progress, s.num_timesteps, "image")
        t0 = time.perf_counter()
        seed = frame_seed(s.seed, 1)
        tokens, pil = render_frame(eng, contexts, items, h, w, s.sampler(), 0, seed, stats,
                                   cb(1, 1, []) if cb else None, None)
        stats.frame_seconds.append(time.perf_counter() - t0)
        res.frames = [Frame(1, "", pil, tokens, [], seed, stats.frame_seconds[0], contexts.build(items).kv_len)]
        if self._hooks[1] is not None:
            self._hooks[1](res.frames[0])
        res.stats = stats

    def _run_t2i(self, res, planner, progress):
        bctx, images, _ = inference_build_context(self.engine, self.build)
        h, w = self._output_grid("t2i", res.settings, [])
        self._bagel_single(res, [text_item(bctx, res.prompt, cfg=True, name="prompt")], progress, h, w)

    def _run_edit(self, res, planner, progress):
        bctx, images, mem = inference_build_context(self.engine, self.build)
        mem.images["input1"] = res.inputs[0]
        layout = split_placeholders(res.prompt, 1, "before", "edit")
        items = layout_items(bctx, images, layout, ["input1"], lambda _: 0, True, True, vit=True)
        h, w = self._output_grid("edit", res.settings, res.inputs)
        self._bagel_single(res, items, progress, h, w)

    def _run_understand(self, res, planner, progress):
        s, eng = res.settings, self.engine
        bctx, images, mem = inference_build_context(eng, self.build)
        refs = []
        for k, im in enumerate(res.inputs, 1):
            mem.images[f"input{k}"] = im
            refs.append(f"input{k}")
        layout = split_placeholders(res.prompt, len(refs), "before", "understand")
        items = layout_items(bctx, images, layout, refs, lambda _: 0, False, False, vit=True, vae=False)
        ctx = ItemContexts(eng, rope_gaps=False).build(items)
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(frame_seed(s.seed, 0))
        ids, _, _ = eng.generate_text(ctx, max_length=s.max_answer_tokens, temperature=s.answer_temperature,
                                      generator=gen)
        res.answer = eng.decode_text(ids)
        res.timings["answer_seconds"] = time.perf_counter() - t0
