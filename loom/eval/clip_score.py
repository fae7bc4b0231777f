"""CLIP score for Table 1: mean raw cosine between each step image and its text, on the paper's scale (0.269).

eval-protocols §2.4: ViT-L/14 with OpenAI weights; raw cosine of L2-normalised embeddings, no 100× scale and no
clip at 0. Primary variant "step": each step image vs its own step text with the "Step k:" label removed, averaged
over a tutorial's steps, then over tutorials. Variant "prompt": each step image vs the tutorial prompt.

Preprocessing is done here, once, for both backends (open_clip's eval transform: bicubic resize of the short side,
center crop, OpenAI mean/std), so `transformers` and `open_clip` see identical pixels and differ only in the
model code; no torchvision needed. Text is truncated at 77 tokens by both tokenizers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from loom.eval.images import open_rgb
from loom.eval.results import TutorialResult

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_DEFAULT = "openai/clip-vit-large-patch14"
OPEN_CLIP_DEFAULT = ("ViT-L-14", "openai")

_STEP_LABEL = re.compile(r"^\s*[*_#\s]*(?:step\s*\d+|\d+)\s*[*_]*\s*[:.)\-–]\s*[*_]*\s*", re.IGNORECASE)


def strip_step_label(text: str) -> str:
    """'Step 2: Cut the beef' / '**Step2:** Cut' / '2: Cut' → 'Cut the beef' (the label is not content)."""
    return _STEP_LABEL.sub("", text, count=1).strip()


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """[3, size, size] float tensor; matches open_clip's `image_transform(size, is_train=False)` on PIL input."""
    image = image.convert("RGB")
    w, h = image.size
    # torchvision Resize(int): short side → size, long side truncated with int(), as open_clip's transform does.
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize(new, Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision CenterCrop rounding
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(OPENAI_MEAN)[:, None, None]) / torch.tensor(OPENAI_STD)[:, None, None]


class ClipBackend(Protocol):
    name: str
    image_size: int

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...  # [B,3,S,S] → [B,D]
    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...  # B strings → [B,D]


def _features(out: Any) -> torch.Tensor:
    # transformers ≥ 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class TransformersClip:
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def load(cls, name_or_path: str = HF_DEFAULT, device: str = "cpu") -> TransformersClip:
        from transformers import CLIPModel, CLIPTokenizer

        return cls(
            CLIPModel.from_pretrained(name_or_path), CLIPTokenizer.from_pretrained(name_or_path), device
        )

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.device))).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(
            self.device
        )
        return _features(
            self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        ).float()


class OpenClip:
    name = "open_clip"

    def __init__(
        self, model: Any, tokenizer: Callable[[list[str]], torch.Tensor], device: str = "cpu"
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = device
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)

    @classmethod
    def load(
        cls, arch: str = OPEN_CLIP_DEFAULT[0], pretrained: str = OPEN_CLIP_DEFAULT[1], device: str = "cpu"
    ) -> OpenClip:
        import open_clip  # optional: needs torchvision, so it is only installed on GPU nodes

        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
        return cls(model, open_clip.get_tokenizer(arch), device)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device)).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()


def load_backend(backend: str, weights: str | None = None, device: str = "cpu") -> ClipBackend:
    if backend == "transformers":
        return TransformersClip.load(weights or HF_DEFAULT, device)
    if backend == "open_clip":
        arch, _, tag = (weights or ":".join(OPEN_CLIP_DEFAULT)).partition(":")
        return OpenClip.load(arch, tag or "openai", device)
    raise ValueError(f"unknown CLIP backend {backend!r}; use 'transformers' or 'open_clip'")


def cosine_pairs(
    backend: ClipBackend, images: list[Path], texts: list[str], batch_size: int = 16
) -> list[float]:
    """Raw cosine of each (image, text) pair, in order."""
    out: list[float] = []
    for i in range(0, len(images), batch_size):
        px = torch.stack([preprocess(open_rgb(p), backend.image_size) for p in images[i : i + batch_size]])
        ie = torch.nn.functional.normalize(backend.encode_images(px), dim=-1)
        te = torch.nn.functional.normalize(backend.encode_texts(texts[i : i + batch_size]), dim=-1)
        out.extend((ie * te).sum(-1).tolist())
    return out


@dataclass
class ClipReport:
    variant: str
    mean: float
    per_item: dict[str, float]
    num_pairs: int


def clip_score(
    backend: ClipBackend, results: list[TutorialResult], variant: str = "step", batch_size: int = 16
) -> ClipReport:
    """Mean over tutorials of the mean over steps (a tutorial with more steps does not weigh more)."""
    if variant not in ("step", "prompt"):
        raise ValueError(f"variant must be 'step' or 'prompt', got {variant!r}")
    images, texts, owners = [], [], []
    for r in results:
        for s in r.steps:
            images.append(s.image)
            texts.append(strip_step_label(s.text) if variant == "step" else r.prompt)
            owners.append(r.item_id)
    cos = cosine_pairs(backend, images, texts, batch_size)
    per: dict[str, list[float]] = {}
    for o, c in zip(owners, cos):
        per.setdefault(o, []).append(c)
    per_item = {k: sum(v) / len(v) for k, v in per.items()}
    return ClipReport(variant, sum(per_item.values()) / len(per_item), per_item, len(cos))


def write_clip_scores(
    run_dir: Path,
    backend: ClipBackend,
    variants: tuple[str, ...] = ("step", "prompt"),
    weights: str | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score a run folder and write `scores/clip.json` (read by Table 1)."""
    from loom.eval.fsio import atomic_write_json
    from loom.eval.results import load_run

    results = load_run(run_dir)
    out: dict[str, Any] = {
        "backend": backend.name,
        "weights": weights,
        "metric": "mean raw cosine",
        "variants": {},
    }
    for v in variants:
        r = clip_score(backend, results, v, batch_size)
        out["variants"][v] = {
            "mean": r.mean,
            "num_items": len(r.per_item),
            "num_pairs": r.num_pairs,
            "per_item": r.per_item,
        }
    atomic_write_json(Path(run_dir) / "scores" / "clip.json", out)
    return out
