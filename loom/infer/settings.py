"""What shapes one generation (`GenerationSettings`), the per-task defaults, the names of every knob, and the
checks that need no weights: `loom generate` runs them before loading anything (`ModelLimits.read` reads only
the model's config files), `LoomPipeline` again on the loaded model.

Names (README "Names"): a settings field is also the key of `configs/infer/*.yaml` and of a `--batch` row; its
command-line flag is `FLAGS[field]` (the counted thing: `--timesteps`, `--plan-steps`), with the diffusers
spellings as aliases (`DIFFUSERS_ALIASES`: `--num-inference-steps`, `--guidance-scale`, …).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from .loop import InputError

TASKS = ("tutorial", "compose", "decompose", "style", "t2i", "edit", "understand")
IMAGE_TASKS = ("tutorial", "compose", "decompose", "style", "t2i", "edit")
ENTITY_TASKS = ("tutorial", "compose", "decompose", "style")  # tasks whose prompts carry entity tokens
RENORM_TYPES = ("global", "channel", "text_channel")  # = loom.infer.sampling.RENORM_TYPES
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

# settings field → command-line flag (where the two differ only by `_` → `-`, the flag is `--field`)
FLAGS = {"num_timesteps": "--timesteps", "num_plan_steps": "--plan-steps"}
# diffusers spelling → settings field (flags and `LoomPipeline.__call__` keywords); height / width → resolution
DIFFUSERS_ALIASES = {"num_inference_steps": "num_timesteps", "guidance_scale": "cfg_text_scale",
                     "image_guidance_scale": "cfg_img_scale", "negative_prompt": "negative_prompt"}


def flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


@dataclass
class GenerationSettings:
    """Everything that shapes one generation. `None` fields take the task default (`TASK_DEFAULTS`)."""

    seed: int = 0
    # (W, H) pixels; None: the model's trained VAE max side, squared (BAGEL and the Loom recipes: 1024²; tutorial,
    # t2i), or the input's size
    resolution: tuple[int, int] | None = None
    num_timesteps: int = 50  # denoising steps (diffusers: num_inference_steps)
    timestep_shift: float = 3.0
    cfg_text_scale: float | None = None  # diffusers: guidance_scale
    cfg_img_scale: float | None = None  # diffusers: image_guidance_scale
    cfg_interval: tuple[float, float] | None = None
    cfg_renorm_type: str | None = None
    cfg_renorm_min: float = 0.0
    negative_prompt: str | None = None  # the text-unconditional branch reads this instead of no text
    # planning (tutorial)
    num_plan_steps: int | None = None  # cap on the plan length (≤ N_max); None: as many as the model writes
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
        out.check_values()
        return out

    def sampler(self):
        from .engine import ImageSamplerConfig

        return ImageSamplerConfig(num_timesteps=self.num_timesteps, timestep_shift=self.timestep_shift,
                                  cfg_text_scale=self.cfg_text_scale, cfg_img_scale=self.cfg_img_scale,
                                  cfg_interval=tuple(self.cfg_interval), cfg_renorm_type=self.cfg_renorm_type,
                                  cfg_renorm_min=self.cfg_renorm_min)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    # ---- checks without a model ---------------------------------------------------------------------------
    def check_values(self) -> None:
        """Types and ranges that hold for every model (raises `InputError` naming the flag)."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        if not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be in [0, 2^63), got {self.seed}")
        if self.num_timesteps < 2:
            raise InputError(f"--timesteps (--num-inference-steps) must be ≥ 2, got {self.num_timesteps}")
        if self.timestep_shift <= 0:
            raise InputError(f"--timestep-shift must be > 0, got {self.timestep_shift}")
        if self.cfg_renorm_type is not None and self.cfg_renorm_type not in RENORM_TYPES:
            raise InputError(f"unknown --cfg-renorm-type {self.cfg_renorm_type!r}; choose from "
                             f"{', '.join(RENORM_TYPES)}")
        if self.cfg_interval is not None:
            lo, hi = self.cfg_interval
            if not 0.0 <= lo <= hi <= 1.0:
                raise InputError(f"--cfg-interval {lo},{hi}: need 0 ≤ LO ≤ HI ≤ 1")
        for name in ("num_plan_steps", "num_outputs", "max_plan_tokens", "max_answer_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"{flag(name)} must be ≥ 1, got {v}")
        if self.k_max is not None and self.k_max < 0:
            raise InputError(f"--k-max must be ≥ 0, got {self.k_max}")
        if self.feedback not in ("latent", "pixel"):
            raise InputError(f"--feedback must be latent or pixel, got {self.feedback!r}")
        if self.plan_temperature < 0 or self.answer_temperature < 0:
            raise InputError("--plan-temperature / answer_temperature must be ≥ 0")
        if not 0.0 < self.plan_top_p <= 1.0:
            raise InputError(f"plan_top_p must be in (0, 1], got {self.plan_top_p}")
        if self.resolution is not None and min(self.resolution) < 1:
            raise InputError(f"--resolution {self.resolution[0]}x{self.resolution[1]}: sides must be positive")
        if self.negative_prompt is not None and not self.negative_prompt.strip():
            raise InputError("--negative-prompt is empty (leave it unset for BAGEL's text-free branch)")
        if self.entity_threshold is not None and not 0.0 <= self.entity_threshold <= 1.0:
            raise InputError(f"--entity-threshold must be in [0, 1] (on the normalised map), got "
                             f"{self.entity_threshold}")
        if self.entity_top_fraction is not None and not 0.0 < self.entity_top_fraction <= 1.0:
            raise InputError(f"--entity-top-fraction must be in (0, 1], got {self.entity_top_fraction}")
        if not 0 <= self.entity_step < self.num_timesteps - 1:
            raise InputError(f"--entity-step must be in 0..{self.num_timesteps - 2} (a denoising step), got "
                             f"{self.entity_step}")
        if self.entity_smooth < 1 or self.entity_smooth % 2 == 0:
            raise InputError(f"entity_smooth must be an odd kernel ≥ 1, got {self.entity_smooth}")
        knobs = (self.entity_mask, self.entity_token, self.entity_layers, self.entity_threshold,
                 self.entity_top_fraction)
        if self.entity_scale is None and any(v is not None for v in knobs):
            raise InputError("--entity-mask / --entity-token / --entity-layers / --entity-threshold need "
                             "--entity-scale")
        if self.entity_mask not in (None, "auto") and not Path(self.entity_mask).is_file():
            raise InputError(f"--entity-mask {self.entity_mask} does not exist (a PNG, or 'auto')")

    def check(self, task: str, limits: ModelLimits) -> None:
        """Everything about these settings that can be known from the task and the model's config files."""
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        self.check_values()
        if self.entity_scale is not None and task not in ENTITY_TASKS:
            raise InputError(f"--entity-scale applies to {', '.join(ENTITY_TASKS)}, not {task!r}")
        if self.num_plan_steps is not None and self.num_plan_steps > limits.n_max:
            raise InputError(f"--plan-steps {self.num_plan_steps}: this model renders 1 to N_max = "
                             f"{limits.n_max} steps")
        if self.num_outputs is not None and self.num_outputs > limits.max_frames:
            raise InputError(f"--num-outputs {self.num_outputs}: the model has {limits.max_frames} frame slots")
        if self.resolution is not None:
            limits.check_resolution(self.resolution)
        limits.transforms(self)
        if self.entity_layers is not None:
            from .entity_cfg import parse_layers

            try:
                parse_layers(self.entity_layers, limits.num_layers)
            except ValueError as e:
                raise InputError(f"--entity-layers: {e}") from None


def _check_type(name: str, v, label: str | None = None) -> None:
    """No silent coercion: ints are ints (not 1.5, not True), floats are numbers, strings are strings."""
    if v is None:
        return
    ints = {"seed", "num_timesteps", "num_plan_steps", "max_plan_tokens", "k_max", "num_outputs",
            "max_answer_tokens", "entity_step", "entity_smooth"}
    strs = {"cfg_renorm_type", "negative_prompt", "feedback", "entity_mask", "entity_token", "entity_layers"}
    pairs = {"resolution": int, "vae_transform": int, "vit_transform": int, "cfg_interval": float}
    if name in ints:
        ok = isinstance(v, int) and not isinstance(v, bool)
        want = "an integer"
    elif name in strs:
        ok, want = isinstance(v, str), "a string"
    elif name == "strict_plan":
        ok, want = isinstance(v, bool), "true or false"
    elif name in pairs:
        kind = pairs[name]
        ok = (isinstance(v, (tuple, list)) and len(v) == 2
              and all(isinstance(x, (int, float) if kind is float else int) and not isinstance(x, bool)
                      for x in v))
        want = "two integers" if kind is int else "two numbers"
    else:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        want = "a number"
    if not ok:
        raise InputError(f"{label or flag(name)} must be {want}, got {v!r}")


def check_inputs(task: str, prompt: str, images: list, max_references: int) -> None:
    """Task, prompt and input-image count, and every `<image k>` of the prompt names a given image."""
    from ..data.records import PLACEHOLDER_RE

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


def parse_resolution(text: str | int | None) -> tuple[int, int] | None:
    """"1024" → (1024, 1024); "768x1024" → (W=768, H=1024)."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x×,]\s*(\d+))?\s*", str(text))
    if not m or isinstance(text, bool):
        raise InputError(f"--resolution must look like 1024 or WIDTHxHEIGHT, got {text!r}")
    w = int(m.group(1))
    return (w, int(m.group(2)) if m.group(2) else w)


@dataclass(frozen=True)
class ModelLimits:
    """What a model allows, from its config files alone (no weights): output sizes, plan length, slots, and the
    resize rules its sequences use by default (the export's trained ones, else BAGEL's)."""

    stride: int  # pixels per latent token side
    max_side: int  # largest output side in pixels (latent position table)
    vit_lim: int  # largest ViT input side the position table covers
    vit_patch: int
    n_max: int
    max_frames: int
    max_references: int
    num_layers: int
    vae_default: tuple[int, int]  # (max, min) sides: the build's VAE / ViT transforms
    vit_default: tuple[int, int]

    @classmethod
    def from_config(cls, cfg, build) -> ModelLimits:
        stride = cfg.pixels_per_latent_token
        return cls(stride, cfg.max_latent_size * stride, cfg.vit_max_num_patch_per_side * cfg.vit.patch_size,
                   cfg.vit.patch_size, build.n_max, build.max_frames, build.max_references,
                   cfg.llm.num_hidden_layers, tuple(build.vae_transform[:2]), tuple(build.vit_transform[:2]))

    @classmethod
    def read(cls, path: str | Path) -> ModelLimits:
        """From a release / export folder's config files (safetensors headers only)."""
        from ..model.weights import config_from_release
        from .load import build_config_from_export

        cfg = config_from_release(path)
        build, _ = build_config_from_export(Path(path), cfg)
        return cls.from_config(cfg, build)

    @property
    def default_side(self) -> int:
        """Square output side when none is asked for: the trained targets' (the build's VAE max), in the tables."""
        return min(self.vae_default[0], self.max_side) // self.stride * self.stride

    def check_resolution(self, resolution: tuple[int, int]) -> None:
        w, h = resolution
        s, lim = self.stride, self.max_side
        if w % s or h % s or not (s <= w <= lim and s <= h <= lim):
            raise InputError(f"--resolution {w}x{h}: width and height must be multiples of {s} between {s} and "
                             f"{lim} for this model")

    def transforms(self, s: GenerationSettings) -> tuple[tuple[int, int], tuple[int, int]]:
        """(vae, vit) (max, min) resize sides: the requested ones, else the build's clamped to the tables."""
        vae_max, vit_max = min(self.vae_default[0], self.max_side), min(self.vit_default[0], self.vit_lim)
        vae = s.vae_transform or (vae_max, min(self.vae_default[1], vae_max))
        vit = s.vit_transform or (vit_max, min(self.vit_default[1], vit_max))
        for name, (mx, mn), lim in (("vae", vae, self.max_side), ("vit", vit, self.vit_lim)):
            if not 0 < mn <= mx <= lim:
                raise InputError(f"--{name}-transform {mx},{mn}: need 0 < min ≤ max ≤ {lim} for this model")
        return tuple(vae), tuple(vit)
