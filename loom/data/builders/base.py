"""Shared pieces of the sample builders: `BuildConfig`, `BuildContext`, image loading, plan-item helpers, the
`<image k>` prompt layout, and the token-length estimate.

Temporal slots (Loom Eq. 3, `PlanItem.frame`): outputs sit on the timeline (tutorial frame t → t,
decomposition output m → m, the single output of composition / style → 1); input images sit on reference
slots (<image k> → −k), so a reference is never confused with a timeline frame. BAGEL's own families (t2i,
edit, understanding) use 0 (no e_t), so mixing them in trains exactly BAGEL's computation.
`use_temporal=False` (ablation "w/o Time Embedding") sets every slot to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from torch import Tensor

from ..entities import DEFAULT_ENTITY_TOKENS
from ..packing import CondDropout, PackGeometry
from ..plan import DEFAULT_N_MAX, DEFAULT_SCAFFOLD, check_scaffold
from ..records import PLACEHOLDER_RE, SampleError, describe_ref
from ..tokenizer import SpecialTokens, encode
from ..transforms import ImageTransform
from ..types import PlanItem, SequencePlan


@dataclass
class BuildConfig:
    """How manifest rows become sequence plans. The ablation switches of Table 4 are marked."""

    # history budget K_max (Eq. 4); the paper never states it, 4 is its appendix example.
    # 0 = ablation "w/o Reference Sampling"
    k_max: int = 4
    n_max: int = DEFAULT_N_MAX  # plans and frames truncated at N_max = 6 (appendix A.1)
    use_temporal: bool = True  # False = ablation "w/o Time Embedding": every frame slot 0
    stepwise_prompt: bool = True  # False = ablation "w/o Stepwise Prompt": no S_t, global instruction only
    # tutorial: None = one instance per target frame; n = n sampled ones; 0 = one plan-only instance (the prefix
    # [scaffold, references, plan] that every frame instance shares: plan CE without rendering a frame)
    frames_per_visit: int | None = None
    rotate_history: bool = True  # training rotation offset (Eq. 6); False = o = 0 (the inference rule)
    scaffold: str = DEFAULT_SCAFFOLD  # planning skeleton; fields {prompt}, {n_max}, {num_steps}
    vae_transform: tuple[int, int, int] = (64, 32, 16)  # (max, min, stride); BAGEL: (1024, 512, 16)
    vit_transform: tuple[int, int, int] = (56, 28, 14)  # (max, min, stride); BAGEL: (980 or 518, 224, 14)
    use_vit_for_history: bool = True  # history frames ViT + VAE (dual pathway, §3.2) or VAE only
    use_vit_for_references: bool = True  # input images ViT + VAE or VAE only
    cfg_text: bool = True  # instruction / step texts may be dropped for CFG (enable_cfg)
    cfg_images: bool = True  # conditioning images (refs, history, fed-back outputs) may be dropped
    text_dropout: float = 0.1  # BAGEL ModelArguments defaults (bagel-spec §4.2), applied by the packer
    vit_dropout: float = 0.3
    vae_dropout: float = 0.3
    max_frames: int = 8  # must match LoomConfig.max_frames / max_references (temporal table rows)
    max_references: int = 4
    max_tokens_per_sample: int | None = None  # raise SampleError above this (needs BuildContext.geometry)
    entity_tokens: tuple[str, ...] = field(default_factory=lambda: DEFAULT_ENTITY_TOKENS)

    def __post_init__(self) -> None:
        check_scaffold(self.scaffold)
        fpv = self.frames_per_visit
        if self.k_max < 0 or self.n_max < 1 or (fpv is not None and fpv < 0):
            raise ValueError("need k_max ≥ 0, n_max ≥ 1 and frames_per_visit None or ≥ 0")
        if self.n_max > self.max_frames:
            raise ValueError(f"n_max {self.n_max} exceeds the model's {self.max_frames} frame slots")

    def cond_dropout(self) -> CondDropout:
        """Per-item CFG dropout probabilities for `pack_sequences`."""
        return CondDropout(self.text_dropout, self.vit_dropout, self.vae_dropout)


def make_image_loader(folder: str | Path) -> Callable[[str], Image.Image]:
    """`load(relpath)` → fully loaded PIL image from `folder` (FileNotFoundError names the full path)."""
    root = Path(folder)

    def load(rel: str) -> Image.Image:
        p = root / rel
        if not p.is_file():
            raise FileNotFoundError(f"image file {p} does not exist")
        with Image.open(p) as im:
            im.load()
            return im.copy()

    return load


@dataclass
class BuildContext:
    tokenizer: Any
    tokens: SpecialTokens
    config: BuildConfig
    load_image: Callable[[Any], Image.Image]  # relative path (or bytes / struct) → PIL image
    manifest: str = ""  # named in every SampleError / SequencePlan.source
    geometry: PackGeometry | None = None  # needed only for max_tokens_per_sample

    @classmethod
    def from_manifest(cls, path: str | Path, tokenizer, config: BuildConfig | None = None,
                      geometry: PackGeometry | None = None) -> BuildContext:
        p = Path(path)
        folder = p if p.is_dir() else p.parent
        return cls(tokenizer, SpecialTokens.from_tokenizer(tokenizer), config or BuildConfig(),
                   make_image_loader(folder), str(p), geometry)

    def __post_init__(self) -> None:
        self._vae_tf = ImageTransform(*self.config.vae_transform)
        self._vit_tf = ImageTransform(*self.config.vit_transform)

    def frame(self, slot: int) -> int:
        return slot if self.config.use_temporal else 0

    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)


def _key(ref: Any) -> Any:
    return ref if isinstance(ref, (str, bytes)) else id(ref)


class ImageCache:
    """Loads each image reference of one row once and keeps its VAE and ViT tensors (tutorials reuse frames).
    A reference is a relative path, or whatever else `ctx.load_image` accepts (bytes, structs, PIL images)."""

    def __init__(self, ctx: BuildContext, source: str) -> None:
        self.ctx, self.source, self._pil, self._t = ctx, source, {}, {}

    def pil(self, ref: Any) -> Image.Image:
        k = _key(ref)
        if k not in self._pil:
            try:
                self._pil[k] = self.ctx.load_image(ref)
            except (OSError, ValueError, TypeError) as e:  # FileNotFoundError, PIL.UnidentifiedImageError …
                raise SampleError(f"{self.source}: cannot load image {describe_ref(ref)}: {e}") from e
        return self._pil[k]

    def vae(self, ref: Any) -> Tensor:
        return self._tensor(ref, "vae", self.ctx._vae_tf)

    def vit(self, ref: Any) -> Tensor:
        return self._tensor(ref, "vit", self.ctx._vit_tf)

    def _tensor(self, ref: Any, kind: str, tf: ImageTransform) -> Tensor:
        k = (_key(ref), kind)
        if k not in self._t:
            self._t[k] = tf(self.pil(ref))
        return self._t[k]


# ---- plan items -----------------------------------------------------------------------------------------
def text_item(ctx: BuildContext, text: str, loss: bool = False, cfg: bool = False,
              name: str = "") -> PlanItem:
    """`<|im_start|> text <|im_end|>`; CE on the ids and the closing marker when `loss`."""
    return PlanItem("text", text_ids=ctx.encode(text), loss=loss, enable_cfg=cfg, name=name)


def clean_image_items(ctx: BuildContext, images: ImageCache, ref: Any, slot: int, cfg: bool, vit: bool,
                      name: str) -> list[PlanItem]:
    """A conditioning image: clean VAE latents (t = 0) then ViT tokens, both with e_slot (BAGEL's order)."""
    f = ctx.frame(slot)
    items = [PlanItem("vae_image", image=images.vae(ref), enable_cfg=cfg, frame=f, name=f"{name}/vae")]
    if vit:
        items.append(PlanItem("vit_image", image=images.vit(ref), enable_cfg=cfg, frame=f,
                              name=f"{name}/vit"))
    return items


def target_item(ctx: BuildContext, images: ImageCache, ref: Any, slot: int, name: str) -> PlanItem:
    """The noisy target: VAE latents at a sampled t, MSE on the velocity, attention mode `noise`."""
    return PlanItem("vae_image", image=images.vae(ref), loss=True, frame=ctx.frame(slot), name=name)


Layout = list[str | int]  # text segments and 0-based input-image indices, in sequence order


def split_placeholders(prompt: str, num_images: int, unreferenced: Literal["before", "after"] = "before",
                       source: str = "") -> Layout:
    """Lay a prompt out with input images inline at their first `<image k>` placeholder (the placeholder
    text is replaced by the image; later mentions stay text). Images never mentioned go before the text
    (BAGEL's edit / VLM order) or after it (Loom's image→interleaved: instruction, then reference)."""
    out: Layout = []
    seen: set[int] = set()
    pos = 0
    for m in PLACEHOLDER_RE.finditer(prompt):
        k = int(m.group(1))
        if not 1 <= k <= num_images:
            raise SampleError(f"{source}: prompt refers to <image {k}> but there are {num_images} "
                              "input images")
        if k in seen:
            continue
        out += [prompt[pos:m.start()], k - 1]
        seen.add(k)
        pos = m.end()
    out.append(prompt[pos:])
    out = [s.strip() if isinstance(s, str) else s for s in out]
    out = [s for s in out if s != ""]
    rest: Layout = [i for i in range(num_images) if i + 1 not in seen]
    return rest + out if unreferenced == "before" else out + rest


def layout_items(ctx: BuildContext, images: ImageCache, layout: Layout, refs: list[Any],
                 slot: Callable[[int], int], text_cfg: bool, image_cfg: bool, vit: bool, vae: bool = True,
                 name: str = "prompt") -> list[PlanItem]:
    """Plan items of a layout: each text segment one text item (no loss), each image its clean blocks."""
    items: list[PlanItem] = []
    for seg in layout:
        if isinstance(seg, str):
            items.append(text_item(ctx, seg, cfg=text_cfg, name=name))
        elif vae:
            items += clean_image_items(ctx, images, refs[seg], slot(seg), image_cfg, vit, f"input{seg + 1}")
        else:  # understanding: ViT only (BAGEL's VLM path)
            items.append(PlanItem("vit_image", image=images.vit(refs[seg]), enable_cfg=image_cfg,
                                  frame=ctx.frame(slot(seg)), name=f"input{seg + 1}/vit"))
    return items


def reference_slot(index: int) -> int:
    """Temporal slot of input image `index` (0-based): −1, −2, … (never a timeline slot)."""
    return -(index + 1)


def plan_num_tokens(plan: SequencePlan, geometry: PackGeometry) -> int:
    """Exact packed length of a plan with nothing dropped (an upper bound under CFG dropout):
    text len+2, ViT (H/p)(W/p)+2, VAE (H/s)(W/s)+2 — the markers included."""
    n = 0
    for it in plan.items:
        if it.type == "text":
            n += len(it.text_ids) + 2
        else:
            s = geometry.vit_patch if it.type == "vit_image" else geometry.latent_stride
            n += (it.image.shape[1] // s) * (it.image.shape[2] // s) + 2
    return n


def check_length(ctx: BuildContext, plan: SequencePlan) -> None:
    cap = ctx.config.max_tokens_per_sample
    if cap is not None:
        if ctx.geometry is None:
            raise ValueError("BuildConfig.max_tokens_per_sample needs BuildContext.geometry")
        n = plan_num_tokens(plan, ctx.geometry)
        if n > cap:
            raise SampleError(f"{plan.source}: {n} tokens exceeds max_tokens_per_sample = {cap}")


def check_slots(ctx: BuildContext, source: str, num_frames: int = 0, num_refs: int = 0) -> None:
    c = ctx.config
    if c.use_temporal and (num_frames > c.max_frames or num_refs > c.max_references):
        raise SampleError(f"{source}: needs {num_frames} frame / {num_refs} reference slots, the model has "
                          f"{c.max_frames} / {c.max_references}")
