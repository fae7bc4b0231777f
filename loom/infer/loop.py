"""Plan-then-render (Loom §3.2): contexts replayed from the *training* builders, prefix KV reuse, the loop.

Every context is a list of `PlanItem`s produced by the same helpers that build training samples
(`loom.data.builders`: `tutorial_prefix`, `plan_item`, `history_items`, `step_item`, `reference_prompt_items`,
…), so inference sees exactly the layout training did. `ItemContexts` turns item lists into engine KV caches:

- each item → one engine block (text: `<|im_start|> ids <|im_end|>` causal; clean VAE latents t = 0 full;
  ViT full), frame ids (e_t) from the item;
- every prefix that ends right before a text item is kept (LRU), so the next request with the same prefix
  (the plan, a growing history, a CFG branch) starts from it instead of re-encoding;
- CFG branches follow the items' `enable_cfg` flags, i.e. what training dropout removed: text-uncond drops
  every CFG-eligible text (the plan is never dropped), image-uncond drops every CFG-eligible image. Training
  advances RoPE by 1 for a dropped image (`loom.data.packing`), so the branches do too (`rope_gaps=True`);
  BAGEL's own t2i / edit use `rope_gaps=False`, its inference convention (fixture parity).

`render_tutorial` is the loop: plan once, then for t = 1..N render frame t on [prefix, plan, history(t), S_t]
with history = sparse_history_indices(t − 1, K_max, o = 0) (all frames while t − 1 ≤ K_max). The noisy frame
is never cached (the engine's query is never written); the finished frame is fed back clean (VAE latents +
ViT, e_t) through the same `history_items` helper.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor

from ..data.builders import BuildConfig, BuildContext, ImageCache
from ..data.builders.tutorial import history_items, plan_item, step_item
from ..data.history import sparse_history_indices
from ..data.tokenizer import SpecialTokens
from ..data.types import PlanItem
from .cache import Context
from .engine import Engine, ImageSamplerConfig
from .entity_cfg import EntityGuidance
from .planner import PlanError, PlanResult, parse_or_raise


class InputError(ValueError):
    """Bad user input (missing/unreadable image, empty prompt, unknown <image k>, too many steps …)."""


# ---- items → contexts -----------------------------------------------------------------------------------------
class ItemContexts:
    """Builds engine contexts from builder `PlanItem` lists, reusing cached prefixes.

    `latents` maps id(item.image) → (tokens [h·w, Dl], h, w) for images whose clean latents are known (generated
    frames fed back without a pixel round trip); other VAE images are encoded once and remembered."""

    def __init__(self, engine: Engine, rope_gaps: bool = True, max_cached: int = 16) -> None:
        self.engine, self.rope_gaps, self.max_cached = engine, rope_gaps, max_cached
        self.latents: dict[int, tuple[Tensor, int, int]] = {}
        self._keep_alive: list[Tensor] = []  # ids above stay unique while their tensors live
        self._cache: OrderedDict[tuple, Context] = OrderedDict()
        self.num_prefill_items = 0  # items actually encoded (cache misses), for tests and benchmarks

    @staticmethod
    def key(item: PlanItem | str) -> tuple:
        if isinstance(item, str):
            return (item,)
        if item.type == "text":
            return ("text", tuple(item.text_ids))
        return (item.type, id(item.image), item.frame)

    def _vae_tokens(self, item: PlanItem) -> tuple[Tensor, int, int]:
        k = id(item.image)
        if k not in self.latents:
            self.latents[k] = self.engine.encode_image(item.image)
            self._keep_alive.append(item.image)
        return self.latents[k]

    def set_latents(self, image: Tensor, tokens: Tensor, h: int, w: int) -> None:
        self.latents[id(image)] = (tokens, h, w)
        self._keep_alive.append(image)

    def _extend(self, ctx: Context, item: PlanItem | str) -> Context:
        eng = self.engine
        self.num_prefill_items += 1
        if isinstance(item, str):  # "gap": a CFG-dropped image still advances RoPE by 1 (training packer)
            return dataclasses.replace(ctx, rope=ctx.rope + 1, log=(*ctx.log, item))
        if item.type == "text":
            return eng.extend(ctx, eng.text_block(ctx, list(item.text_ids)))
        if item.type == "vit_image":
            return eng.extend(ctx, eng.vit_block(ctx, item.image, item.frame))
        if item.loss:
            raise ValueError(f"item {item.name!r} is a noisy target; targets are generated, never cached")
        tokens, h, w = self._vae_tokens(item)
        return eng.extend(ctx, eng.latent_block(ctx, tokens, 0.0, h, w, item.frame))

    def build(self, items: list[PlanItem | str]) -> Context:
        keys = [self.key(i) for i in items]
        start, ctx = 0, Context()
        for n in range(len(keys), 0, -1):
            hit = self._cache.get(tuple(keys[:n]))
            if hit is not None:
                self._cache.move_to_end(tuple(keys[:n]))
                start, ctx = n, hit
                break
        for i in range(start, len(items)):
            ctx = self._extend(ctx, items[i])
            nxt = items[i + 1] if i + 1 < len(items) else None
            if nxt is None or (not isinstance(nxt, str) and nxt.type == "text"):
                self.store(keys[: i + 1], ctx)
        return ctx

    def store(self, keys: list[tuple], ctx: Context) -> None:
        key = tuple(keys)
        pages = {id(s.page) for s in ctx.segments}
        for k, c in list(self._cache.items()):
            # a cached prefix of `key` holds the same rows as the start of `ctx`; when `ctx` holds them in other
            # pages (text decoding moved its context to a page with room), point the prefix there: one copy kept
            if len(k) < len(key) and key[:len(k)] == k and c.segments and id(c.segments[-1].page) not in pages:
                self._cache[k] = ctx.truncated(c.kv_len, c.rope, c.log)
        self._cache[key] = ctx
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def retain(self, items: list[PlanItem]) -> None:
        """Forget cached contexts that are no prefix of `items` or of its CFG branches: the loop's later frames
        extend these (sparse history indices never decrease, Eq. 4), so the pages of frames dropped from the
        history are freed instead of waiting for LRU eviction."""
        wanted = [tuple(self.key(i) for i in its) for its in (items, self.drop(items, "text"),
                                                               self.drop(items, "image"))]
        for k in list(self._cache):
            if not any(w[:len(k)] == k for w in wanted):
                del self._cache[k]

    def cached(self) -> list[Context]:
        return list(self._cache.values())

    def token_positions(self, items: list[PlanItem | str], tags: list[str] | tuple[str, ...]
                        ) -> tuple[list[int], int]:
        """(key positions of the text tokens spelling any of `tags` (entity tokens), key length) of the context
        `build(items)` makes, from the items' block sizes alone: text `<|im_start|> ids <|im_end|>`, images
        their tokens between two markers, RoPE gaps nothing."""
        from .entity_cfg import tag_token_positions

        eng, out, off = self.engine, [], 0
        for it in items:
            if isinstance(it, str):
                continue
            if it.type == "text":
                ids = list(it.text_ids)
                out += [off + 1 + j for j in tag_token_positions(eng.tok, ids, tags)]
                off += len(ids) + 2
            else:
                stride = eng.cfg.vit.patch_size if it.type == "vit_image" else eng.cfg.pixels_per_latent_token
                off += (it.image.shape[1] // stride) * (it.image.shape[2] // stride) + 2
        return out, off

    def drop(self, items: list[PlanItem], what: str) -> list[PlanItem | str]:
        """Items of a CFG branch: `what`="text" removes CFG-eligible texts, "image" CFG-eligible images."""
        out: list[PlanItem | str] = []
        for it in items:
            is_text = it.type == "text"
            if it.enable_cfg and ((what == "text" and is_text) or (what == "image" and not is_text)):
                if not is_text and self.rope_gaps:
                    out.append("gap")
                continue
            out.append(it)
        return out

    def branches(self, items: list[PlanItem]) -> tuple[Context, Context | None, Context | None]:
        """(cond, text-uncond, image-uncond). A branch identical to cond is None (guidance would only rescale
        the other branch: the public script's silent 'image CFG without images', loom-reference-code §4.17)."""
        cond = self.build(items)
        t_items, i_items = self.drop(items, "text"), self.drop(items, "image")
        text_uncond = self.build(t_items) if len(t_items) != len(items) else None
        same_img = len([x for x in i_items if not isinstance(x, str)]) == len(items)
        img_uncond = None if same_img else self.build(i_items)
        return cond, text_uncond, img_uncond


# ---- builder context for inference ----------------------------------------------------------------------------
class MemoryImages:
    """`load_image` for the builders: images by key ("input1", "frame3") from memory instead of files."""

    def __init__(self) -> None:
        self.images: dict[str, Image.Image] = {}

    def __call__(self, key: str) -> Image.Image:
        if key not in self.images:
            raise FileNotFoundError(f"no image {key!r} in this generation")
        return self.images[key]


def inference_build_context(engine: Engine, config: BuildConfig, source: str = "generate"
                            ) -> tuple[BuildContext, ImageCache, MemoryImages]:
    """A `BuildContext` whose images come from memory, with the engine's transforms."""
    vae, vit = engine.vae_transform, engine.vit_transform
    cfg = dataclasses.replace(config, vae_transform=(vae.max_size, vae.min_size, vae.stride),
                              vit_transform=(vit.max_size, vit.min_size, vit.stride))
    mem = MemoryImages()
    bctx = BuildContext(engine.tok, SpecialTokens.from_tokenizer(engine.tok), cfg, mem, source)
    return bctx, ImageCache(bctx, source), mem


# ---- frames ---------------------------------------------------------------------------------------------------
@dataclass
class Frame:
    index: int  # 1-based timeline slot
    text: str  # step text (tutorial) or "" (single/multi-output tasks)
    image: Image.Image
    tokens: Tensor  # clean latent tokens [h·w, Dl]
    history: list[int]  # frames conditioning this one
    seed: int
    seconds: float
    num_context_tokens: int
    entity: EntityGuidance | None = None  # localised entity CFG used for this frame (mask, its source)


@dataclass
class RenderStats:
    num_forwards_denoise: int = 0
    num_forwards_prefill: int = 0
    prefill_seconds: float = 0.0
    frame_seconds: list[float] = field(default_factory=list)


def frame_seed(base_seed: int, index: int) -> int:
    """Noise seed of frame `index`: independent of every other frame and of the process layout."""
    return (base_seed * 1_000_003 + 7919 * index) % (2**63 - 1)


def render_frame(engine: Engine, contexts: ItemContexts, items: list[PlanItem], h: int, w: int,
                 sampler: ImageSamplerConfig, frame: int, seed: int, stats: RenderStats | None = None,
                 callback: Callable[[int, int], None] | None = None, velocity_hook=None,
                 entity: EntityGuidance | None = None) -> tuple[Tensor, Image.Image]:
    """Prefill (cached) the three CFG contexts of `items`, then sample an h×w-token image on slot `frame`
    (with localised entity CFG when `entity` is given)."""
    t0, n0 = time.perf_counter(), engine.num_forwards
    cond, text_uncond, img_uncond = contexts.branches(items)
    t1, n1 = time.perf_counter(), engine.num_forwards
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(h * w, engine.cfg.latent_token_dim, generator=gen)
    tokens = engine.generate_image(cond, text_uncond, img_uncond, h, w, sampler, noise=noise, frame=frame,
                                   velocity_hook=velocity_hook, callback=callback, entity=entity)
    _, pil = engine.decode_latents(tokens, h, w)
    if stats is not None:
        stats.num_forwards_prefill += n1 - n0
        stats.num_forwards_denoise += engine.num_forwards - n1
        stats.prefill_seconds += t1 - t0
    return tokens, pil


# ---- planning with the model -----------------------------------------------------------------------------------
def clean_plan_text(text: str, tok) -> str:
    """Drop special-token strings and control characters from decoded plan text: re-encoding the plan must not
    smuggle `<|vision_start|>` & co. into the context as real control tokens."""
    for special in getattr(tok, "all_special_tokens", []):
        text = text.replace(special, " ")
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>"):
        text = text.replace(special, " ")
    return "".join(ch for ch in text if ch in "\n\t" or (ch.isprintable() and ch != "\ufffd"))


def model_plan(engine: Engine, contexts: ItemContexts, bctx: BuildContext, prefix: list[PlanItem],
               max_tokens: int, temperature: float, top_p: float, seed: int, n_max: int, num_steps: int | None,
               strict: bool, streamer=None) -> tuple[PlanResult, PlanItem]:
    """The model writes the whole plan once from [scaffold(prompt), references] (one autoregressive pass;
    `streamer` — e.g. `loom.infer.feedback.plan_streamer` — sees its tokens as they are written).

    The context then holds the canonical plan text (`plan_item`, exactly the training CE target). When the model
    already wrote it canonically, the KV of its own decoding is reused (plus `<|im_end|>`), nothing re-encoded."""
    t0 = time.perf_counter()
    ctx = contexts.build(prefix)
    gen = torch.Generator().manual_seed(seed)
    stream = {"streamer": streamer} if streamer is not None else {}
    ids, _, ctx_gen = engine.generate_text(ctx, max_length=max_tokens, temperature=temperature, top_p=top_p,
                                           generator=gen, **stream)
    text = clean_plan_text(engine.decode_text(ids), engine.tok)
    body = ids[1:]
    hit_max = len(ids) >= max_tokens
    try:
        res = parse_or_raise(text, n_max, num_steps, "model", strict)
    except PlanError as e:
        why = f" (stopped at --max-plan-tokens {max_tokens})" if hit_max else ""
        raise PlanError(f"{e}{why}") from None
    res.token_ids, res.hit_max_tokens = body, hit_max
    if hit_max:
        res.problems.append(f"plan hit max_plan_tokens={max_tokens}; the last step may be cut")
    item = plan_item(bctx, res.steps)
    if list(item.text_ids) == body and not hit_max:  # canonical already: reuse the decoding KV
        eos = engine.text_block(ctx_gen, [engine.tokens.eos], wrap=False)
        contexts.store([contexts.key(i) for i in [*prefix, item]], engine.extend(ctx_gen, eos))
    res.seconds = time.perf_counter() - t0
    return res, item


# ---- the tutorial loop -----------------------------------------------------------------------------------------
@dataclass
class TutorialRender:
    frames: list[Frame]
    stats: RenderStats


def render_tutorial(engine: Engine, contexts: ItemContexts, bctx: BuildContext, images: ImageCache,
                    mem: MemoryImages, prefix: list[PlanItem], plan: PlanItem, steps: list[str], h: int, w: int,
                    sampler: ImageSamplerConfig, seed: int, k_max: int, feedback: str = "latent",
                    on_frame_start: Callable[[int, int, list[int]], Callable[[int, int], None] | None] | None = None,
                    velocity_hook_for: Callable[[list[PlanItem]], object] | None = None,
                    entity_for: Callable[[list[PlanItem], int], EntityGuidance | None] | None = None,
                    on_frame_end: Callable[[Frame], None] | None = None) -> TutorialRender:
    """Render frame t = 1..N on [prefix, plan, history(t), Step t: S_t], feeding each frame back clean.
    `entity_for(items, t)` gives frame t's localised entity CFG (or None); `on_frame_end(frame)` sees each
    finished frame."""
    if feedback not in ("latent", "pixel"):
        raise ValueError(f"feedback must be 'latent' or 'pixel', got {feedback!r}")
    stats = RenderStats()
    frames: list[Frame] = []
    for t, text in enumerate(steps, 1):
        hist = sparse_history_indices(t - 1, k_max, 0)  # o = 0 at inference (Eq. 4)
        items = [*prefix, plan, *history_items(bctx, images, {k: f"frame{k}" for k in hist})]
        if bctx.config.stepwise_prompt:  # ablation "w/o Stepwise Prompt": trained without S_t, rendered without
            items.append(step_item(bctx, t, text))
        contexts.retain(items)
        frame = _render_step(engine, contexts, bctx, items, t, len(steps), text, hist, h, w, sampler, seed, stats,
                             on_frame_start, velocity_hook_for, entity_for)
        mem.images[f"frame{t}"] = frame.image
        if feedback == "latent":  # the history item's VAE tensor stands for the generated latents
            contexts.set_latents(images.vae(f"frame{t}"), frame.tokens, h, w)
        frames.append(frame)
        if on_frame_end is not None:
            on_frame_end(frame)
    return TutorialRender(frames, stats)


def _render_step(engine: Engine, contexts: ItemContexts, bctx: BuildContext, items: list[PlanItem], index: int,
                 total: int, text: str, history: list[int], h: int, w: int, sampler: ImageSamplerConfig, seed: int,
                 stats: RenderStats, on_frame_start, velocity_hook_for, entity_for) -> Frame:
    """One output on its timeline slot `index`: hooks, seeded sampling, timing and the Frame record shared by
    tutorials and composition / decomposition."""
    callback = on_frame_start(index, total, history) if on_frame_start else None
    hook = velocity_hook_for(items) if velocity_hook_for else None
    ent = entity_for(items, index) if entity_for else None
    t0 = time.perf_counter()
    fs = frame_seed(seed, index)
    tokens, pil = render_frame(engine, contexts, items, h, w, sampler, bctx.frame(index), fs, stats, callback, hook,
                               ent)
    secs = time.perf_counter() - t0
    stats.frame_seconds.append(secs)
    return Frame(index, text, pil, tokens, history, fs, secs, contexts.build(items).kv_len, ent)


def render_outputs(engine: Engine, contexts: ItemContexts, bctx: BuildContext, images: ImageCache,
                   mem: MemoryImages, prefix: list[PlanItem], num_outputs: int, h: int, w: int,
                   sampler: ImageSamplerConfig, seed: int, feedback: str = "latent", vit: bool = True,
                   on_frame_start=None, velocity_hook_for=None, entity_for=None, on_frame_end=None) -> TutorialRender:
    """Composition / style (M = 1) and decomposition (M outputs on slots 1..M, each earlier output fed back
    clean — VAE + ViT with e_m — exactly the `build_decompose` layout)."""
    from ..data.builders.base import clean_image_items

    stats = RenderStats()
    frames: list[Frame] = []
    fed: list[PlanItem] = []
    for m in range(1, num_outputs + 1):
        items = [*prefix, *fed]
        frame = _render_step(engine, contexts, bctx, items, m, num_outputs, "", list(range(1, m)), h, w, sampler,
                             seed, stats, on_frame_start, velocity_hook_for, entity_for)
        frames.append(frame)
        if on_frame_end is not None:
            on_frame_end(frame)
        tokens, pil = frame.tokens, frame.image
        if m < num_outputs:
            mem.images[f"output{m}"] = pil
            new = clean_image_items(bctx, images, f"output{m}", m, bctx.config.cfg_images, vit, f"output{m}")
            if feedback == "latent":
                contexts.set_latents(new[0].image, tokens, h, w)
            fed += new
    return TutorialRender(frames, stats)


