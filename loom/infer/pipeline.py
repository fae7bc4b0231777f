"""`LoomPipeline`: the tasks on top of the engine — tutorial (text / text + image → interleaved), composition,
decomposition, style transfer, and BAGEL's plain t2i / edit / understanding — with a diffusers-shaped API:

    from loom import LoomPipeline
    pipe = LoomPipeline.from_pretrained("models/BAGEL-7B-MoT", dtype="bf16", device="cuda")  # or a loom export
    out = pipe(task="tutorial", prompt="How to fold a paper crane", seed=1, num_inference_steps=50)
    out.images[0].save("step1.png"); print(out.plan, out.step_texts)
    out.save("out/crane")                                  # frame_01.png …, result.json, index.html (atomic)

Contexts come from the training builders (`loom.data.builders`, via `loom.infer.loop`), so every task is laid out
exactly as it was trained. Per-task sampling defaults are those of the paper's scripts and BAGEL's notebook
(`TASK_DEFAULTS`, bagel-spec §7.5, loom-reference-code §3.2); every value can be overridden. Ctrl-C during a
generation raises `GenerationInterrupted` (a `KeyboardInterrupt`) carrying the frames finished so far.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..data.builders import BuildConfig, SampleError, reference_prompt_items, split_placeholders
from ..data.builders.base import layout_items, text_item
from ..data.builders.tutorial import plan_item, scaffold_text, tutorial_prefix
from ..data.transforms import ImageTransform
from ..data.types import PlanItem
from . import entity_guidance as eg
from .engine import Engine
from .feedback import frame_progress, plan_streamer, print_plan
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
from .result import GenerationInterrupted, GenerationResult, LoomOutput  # noqa: F401  (re-exported)
from .settings import (  # noqa: F401  (re-exported: the names callers import from here)
    DIFFUSERS_ALIASES,
    ENTITY_TASKS,
    IMAGE_TASKS,
    NUM_INPUTS,
    TASK_DEFAULTS,
    TASKS,
    GenerationSettings,
    ModelLimits,
    check_inputs,
    parse_resolution,
)


class LayoutOverrideWarning(UserWarning):
    """A generation setting overrides the sequence layout the model was trained with (loom_config.json)."""


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


class _NegativePromptContexts(ItemContexts):
    """CFG contexts whose text-unconditional branch reads the negative prompt where the (first) CFG-eligible
    text stood, instead of no text at all (BAGEL's branch; diffusers' `negative_prompt`)."""

    def __init__(self, engine: Engine, negative: PlanItem, rope_gaps: bool) -> None:
        super().__init__(engine, rope_gaps=rope_gaps)
        self.negative = negative

    def drop(self, items: list[PlanItem], what: str) -> list[PlanItem | str]:
        first = next((i for i, it in enumerate(items) if it.enable_cfg and it.type == "text"), None)
        if what != "text" or first is None:
            return super().drop(items, what)
        return [*super().drop(items[:first], what), self.negative, *super().drop(items[first + 1:], what)]

    def branches(self, items: list[PlanItem]):
        cond, text_uncond, img_uncond = super().branches(items)
        if any(it.enable_cfg and it.type == "text" for it in items):
            text_uncond = self.build(self.drop(items, "text"))  # same length as cond when one text is swapped
        return cond, text_uncond, img_uncond


# ---- the pipeline ------------------------------------------------------------------------------------------------
class LoomPipeline:
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
        self.limits = ModelLimits.from_config(engine.cfg, self.build)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, *, torch_dtype: torch.dtype | None = None,
                        **load_kwargs) -> LoomPipeline:
        """Load a BAGEL release folder or a loom export. `dtype` ("bf16", torch.bfloat16, …; diffusers'
        `torch_dtype` also works): default bf16 on GPU, fp32 on CPU. `device`: default CUDA when available.
        Other keywords: `loom.infer.load.load_pretrained` (device_map, max_memory_gib, attn_backend, verbose)."""
        from .load import load_pretrained

        if torch_dtype is not None and dtype is not None:
            raise TypeError("pass dtype or torch_dtype, not both")
        ld = load_pretrained(path, device=device, dtype=dtype if dtype is not None else torch_dtype, **load_kwargs)
        return cls(Engine(ld.model, ld.vae, ld.tokenizer), ld.build, ld.describe(), ld.layout)

    # ---- geometry -----------------------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.limits.stride

    def max_pixels_side(self) -> int:
        return self.limits.max_side

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
        vae, vit = self.limits.transforms(s)
        self.engine.vae_transform = ImageTransform(vae[0], vae[1], self.stride)
        self.engine.vit_transform = ImageTransform(vit[0], vit[1], self.limits.vit_patch)

    def latent_grid(self, resolution: tuple[int, int]) -> tuple[int, int]:
        self.limits.check_resolution(resolution)
        w, h = resolution
        return h // self.stride, w // self.stride

    def _output_grid(self, task: str, s: GenerationSettings, images: list[Image.Image]) -> tuple[int, int]:
        if s.resolution is not None:
            return self.latent_grid(s.resolution)
        if images and task in ("compose", "decompose", "style", "edit"):
            # the paper's script: output size = the last reference after the VAE resize rule
            im = self.engine.prepare_image(images[-1])
            return self.latent_grid(im.size)
        return self.latent_grid((self.limits.default_side, self.limits.default_side))

    # ---- entry points -------------------------------------------------------------------------------------------
    def __call__(self, task: str = "tutorial", prompt: str | None = None,
                 images: list[Image.Image | str | Path] | None = None, seed: int | None = None, *,
                 settings: GenerationSettings | None = None, planner=None, progress: bool = False,
                 height: int | None = None, width: int | None = None, **kwargs) -> LoomOutput:
        """Generate one item, diffusers style. `images`: PIL images or paths (`<image k>` in the prompt is
        images[k-1]). Keywords: any `GenerationSettings` field (num_timesteps, cfg_text_scale, num_plan_steps,
        resolution …) or its diffusers spelling (num_inference_steps, guidance_scale, image_guidance_scale,
        negative_prompt, height + width). `planner` (tutorial): None = the model writes the plan."""
        values = dataclasses.asdict(settings) if settings is not None else {}
        names = {f.name for f in dataclasses.fields(GenerationSettings)}
        for k, v in kwargs.items():
            key = DIFFUSERS_ALIASES.get(k, k)
            if key not in names:
                raise TypeError(f"unknown generation setting {k!r}; known: {', '.join(sorted(names))} and "
                                f"{', '.join(sorted(DIFFUSERS_ALIASES))}, height, width")
            values[key] = v
        if (height is None) != (width is None):
            raise InputError("give both height and width (or resolution=(W, H))")
        if height is not None:
            values["resolution"] = (width, height)
        if seed is not None:
            values["seed"] = seed
        pil, paths = [], []
        for im in images or []:
            if isinstance(im, (str, Path)):
                pil.append(load_image_file(im))
                paths.append(str(im))
            else:
                pil.append(im)
        res = self.run(task, prompt, pil, GenerationSettings(**values), planner=planner, progress=progress,
                       input_paths=paths if len(paths) == len(pil) else None)
        return LoomOutput([f.image for f in res.frames], list(res.plan.steps) if res.plan else [],
                          [f.text for f in res.frames], res.answer, res)

    def run(self, task: str, prompt: str, images: list[Image.Image] | None = None,
            settings: GenerationSettings | None = None, planner=None, progress: bool = False,
            input_paths: list[str] | None = None, on_plan: Callable[[PlanResult], None] | None = None,
            on_frame: Callable[[Frame], None] | None = None) -> GenerationResult:
        """Generate one item. `planner` (tutorial only): None = the model plans (default), or an
        `ExternalPlanner` / `FixedPlanner`. `progress`: stream the plan and show per-frame bars on stderr.
        `on_plan(plan)` / `on_frame(frame)` are called as soon as the plan / each frame exists (streaming front
        ends: `loom serve`)."""
        images = list(images or [])
        check_inputs(task, prompt, images, self.build.max_references)
        s = settings or GenerationSettings()
        s.check(task, self.limits)
        s = s.resolved(task)
        if task != "tutorial" and planner is not None:
            raise InputError(f"a planner only applies to the tutorial task, not {task!r}")
        self._set_transforms(s)
        t0 = time.perf_counter()
        n0 = self.engine.num_forwards
        res = GenerationResult(task, prompt, s, inputs=images, input_paths=list(input_paths or []),
                               model=dict(self.model_info))
        self._check_trained(res, "vae_transform", s.vae_transform, "--vae-transform")
        self._check_trained(res, "vit_transform", s.vit_transform, "--vit-transform")
        if task == "tutorial":
            self._check_trained(res, "k_max", s.k_max, "--k-max")
        finished: list[Frame] = []  # what an interrupt keeps

        def frame_done(frame: Frame) -> None:
            finished.append(frame)
            if on_frame is not None:
                on_frame(frame)
        self._hooks = (on_plan, frame_done)
        try:
            getattr(self, f"_run_{task}")(res, planner, progress)
        except SampleError as e:  # layout problems found by the builders (e.g. <image k> beyond the inputs)
            raise InputError(str(e)) from None
        except KeyboardInterrupt:
            res.frames = finished
            res.interrupted = True
            res.notes.append(f"interrupted (Ctrl-C) after {len(res.frames)} finished frame(s)")
            res.timings["total_seconds"] = time.perf_counter() - t0
            raise GenerationInterrupted(res) from None
        finally:
            self._hooks = (None, None)
        res.timings["total_seconds"] = time.perf_counter() - t0
        res.timings["num_forwards"] = self.engine.num_forwards - n0
        return res

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _progress(self, enabled: bool, sampler_steps: int, label: str):
        return frame_progress(sampler_steps, label) if enabled else None

    def _contexts(self, bctx, s: GenerationSettings, rope_gaps: bool) -> ItemContexts:
        if s.negative_prompt is None:
            return ItemContexts(self.engine, rope_gaps=rope_gaps)
        neg = text_item(bctx, s.negative_prompt, cfg=False, name="negative_prompt")
        return _NegativePromptContexts(self.engine, neg, rope_gaps)

    def _entity_tags(self, s: GenerationSettings, text: str) -> list[str]:
        return eg.entity_tags(s, text, self.build.entity_tokens)

    def _entity_hook(self, s: GenerationSettings, prompt: str, h: int, w: int):
        return eg.velocity_hook(s, prompt, h, w, self.stride, self.build.entity_tokens)

    def _entity_for(self, s: GenerationSettings, contexts: ItemContexts, text: str, h: int, w: int,
                    frame_texts: list[str] | None = None):
        return eg.entity_for(s, contexts, text, h, w, self.stride, self.build.entity_tokens,
                             self.limits.num_layers, frame_texts)

    # ---- tasks ----------------------------------------------------------------------------------------------------
    def _run_tutorial(self, res: GenerationResult, planner, progress: bool) -> None:
        s, eng = res.settings, self.engine
        k_max = self.build.k_max if s.k_max is None else s.k_max
        res.k_max = k_max
        h, w = self._output_grid("tutorial", s, res.inputs)
        bctx, images, mem = inference_build_context(eng, dataclasses.replace(self.build, k_max=k_max))
        refs = []
        for k, im in enumerate(res.inputs, 1):
            mem.images[f"input{k}"] = im
            refs.append(f"input{k}")
        contexts = self._contexts(bctx, s, rope_gaps=True)
        prefix = tutorial_prefix(bctx, images, res.prompt, refs)
        n_max = self.build.n_max
        if planner is None:
            plan, item = model_plan(eng, contexts, bctx, prefix, s.max_plan_tokens, s.plan_temperature, s.plan_top_p,
                                    frame_seed(s.seed, 0), n_max, s.num_plan_steps, s.strict_plan,
                                    streamer=plan_streamer(eng.tok) if progress else None)
        else:
            plan = planner(res.prompt, res.inputs, scaffold_text(bctx.config, res.prompt), n_max, s.num_plan_steps,
                           s.strict_plan)
            item = plan_item(bctx, plan.steps)
        res.plan = plan
        if self._hooks[0] is not None:
            self._hooks[0](plan)
        res.timings["plan_seconds"] = plan.seconds
        if progress:
            print_plan(plan.steps, plan.problems)
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
        contexts = self._contexts(bctx, s, rope_gaps=True)
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
        self._multi(res, m, progress)

    def _bagel_single(self, res: GenerationResult, bctx, items, progress: bool, h: int, w: int) -> None:
        """t2i / edit with BAGEL's own inference contexts (no RoPE gaps, fixture parity), slot 0."""
        s, eng = res.settings, self.engine
        contexts = self._contexts(bctx, s, rope_gaps=False)
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
        self._bagel_single(res, bctx, [text_item(bctx, res.prompt, cfg=True, name="prompt")], progress, h, w)

    def _run_edit(self, res, planner, progress):
        bctx, images, mem = inference_build_context(self.engine, self.build)
        mem.images["input1"] = res.inputs[0]
        layout = split_placeholders(res.prompt, 1, "before", "edit")
        items = layout_items(bctx, images, layout, ["input1"], lambda _: 0, True, True, vit=True)
        h, w = self._output_grid("edit", res.settings, res.inputs)
        self._bagel_single(res, bctx, items, progress, h, w)

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


Pipeline = LoomPipeline  # the former name, still imported by loom.world.demo
