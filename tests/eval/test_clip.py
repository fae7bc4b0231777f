"""CLIP score with tiny random CLIPs: our pipeline equals a direct computation with each backend's own API."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_run
from PIL import Image

from loom.eval.clip_score import (
    OPENAI_MEAN,
    OPENAI_STD,
    OpenClip,
    TransformersClip,
    clip_score,
    preprocess,
    strip_step_label,
    write_clip_scores,
)
from loom.eval.fakes import build_tiny_clip
from loom.eval.results import load_run


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_clip(seed=0)


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("Step 2: Cut the beef", "Cut the beef"),
        ("**Step2:** Cut", "Cut"),
        ("step 10. Serve", "Serve"),
        ("3: Fry it", "Fry it"),
        ("Stir well", "Stir well"),
        ("Step up the heat: now", "Step up the heat: now"),
    ],
)
def test_strip_step_label(raw, clean):
    assert strip_step_label(raw) == clean


def test_preprocess_resize_crop_normalize():
    im = Image.new("RGB", (64, 32), (255, 0, 0))
    im.paste((0, 0, 255), (32, 0, 64, 32))  # right half blue
    x = preprocess(im, 16)
    assert x.shape == (3, 16, 16)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    blue = (torch.tensor([0.0, 0.0, 1.0]) - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    # 64×32 → 32×16, centre crop keeps columns 8..23: the left 4 columns are pure red, the right 4 pure blue
    assert torch.allclose(x[:, 8, 0], red, atol=1e-5) and torch.allclose(x[:, 8, 15], blue, atol=1e-5)


def _manual_cos(model, tok, image_path, text, size):
    with torch.no_grad():
        px = preprocess(Image.open(image_path), size)[None]
        ie = model.get_image_features(pixel_values=px)
        ie = ie if isinstance(ie, torch.Tensor) else ie.pooler_output
        enc = tok([text], truncation=True, max_length=77, return_tensors="pt")
        te = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        te = te if isinstance(te, torch.Tensor) else te.pooler_output
    return torch.nn.functional.cosine_similarity(ie, te).item()


def test_transformers_backend_matches_direct_computation(tmp_path, tiny):
    model, tok = tiny
    run = make_run(
        tmp_path / "run",
        {
            "a": ["Step 1: chop onions", "Step 2: fry"],
            "b": ["Step 1: boil", "Step 2: eat", "Step 3: " + "long " * 200],
        },
    )
    results = load_run(run)
    backend = TransformersClip(model, tok)
    rep = clip_score(backend, results, "step", batch_size=2)
    man = {
        r.item_id: [_manual_cos(model, tok, s.image, strip_step_label(s.text), 32) for s in r.steps]
        for r in results
    }
    per_item = {k: sum(v) / len(v) for k, v in man.items()}
    assert rep.per_item == pytest.approx(per_item, abs=1e-5)
    assert rep.mean == pytest.approx((per_item["a"] + per_item["b"]) / 2, abs=1e-5)  # items weigh equally
    assert rep.num_pairs == 5 and all(-1 <= v <= 1 for v in rep.per_item.values())
    prompt = clip_score(backend, results, "prompt")
    assert prompt.per_item["a"] == pytest.approx(
        sum(_manual_cos(model, tok, s.image, results[0].prompt, 32) for s in results[0].steps) / 2, abs=1e-5
    )


def test_write_clip_scores_file(tmp_path, tiny):
    run = make_run(tmp_path / "run", {"a": ["x", "y"]})
    out = write_clip_scores(run, TransformersClip(*tiny), ("step",), weights="tiny")
    assert (run / "scores" / "clip.json").is_file() and out["variants"]["step"]["num_pairs"] == 2
    assert out["backend"] == "transformers"


def _tiny_open_clip():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=16,
        quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=2, width=32, head_width=8, patch_size=8, image_size=32
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=77, vocab_size=49408, width=32, heads=4, layers=2
        ),
    )
    return open_clip, model, open_clip.get_tokenizer("ViT-L-14")  # the BPE vocab ships with the package


def test_open_clip_backend_matches_direct_computation(tmp_path):
    open_clip, model, tok = _tiny_open_clip()
    run = make_run(tmp_path / "run", {"a": ["Step 1: chop onions", "Step 2: fry"]})
    results = load_run(run)
    rep = clip_score(OpenClip(model, tok), results, "step")
    with torch.no_grad():
        cos = []
        for s in results[0].steps:
            ie = model.encode_image(preprocess(Image.open(s.image), 32)[None])
            te = model.encode_text(tok([strip_step_label(s.text)]))
            cos.append(torch.nn.functional.cosine_similarity(ie, te).item())
    assert rep.mean == pytest.approx(sum(cos) / 2, abs=1e-5)


def test_preprocess_matches_open_clip_transform(tmp_path):
    open_clip, _, _ = _tiny_open_clip()
    transform = open_clip.transform.image_transform(224, is_train=False)
    im = Image.new("RGB", (300, 200))
    im.paste((250, 10, 10), (0, 0, 150, 200))
    assert torch.allclose(transform(im), preprocess(im, 224), atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("LOOM_TEST_REAL_CLIP"),
    reason="set LOOM_TEST_REAL_CLIP=1 with both "
    "openai/clip-vit-large-patch14 (HF cache) and open_clip ViT-L-14/openai available",
)
def test_backends_agree_on_real_weights(tmp_path):
    from loom.eval.clip_score import load_backend

    run = make_run(tmp_path / "run", {"a": ["Step 1: a red square", "Step 2: a green square"]}, size=256)
    results = load_run(run)
    hf = clip_score(load_backend("transformers"), results).mean
    oc = clip_score(load_backend("open_clip"), results).mean
    assert hf == pytest.approx(oc, abs=2e-3)
