"""The Python API a diffusers user expects: `from loom import LoomPipeline`, `from_pretrained(path, dtype=, device=)`,
`pipe(task=, prompt=, images=, seed=)` → PIL frames + plan + per-step texts, identical to `pipe.run`."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import FIXTURE, TINY, pattern_image
from PIL import Image

from loom import LoomPipeline
from loom.infer.loop import InputError
from loom.infer.planner import FixedPlanner
from loom.infer.settings import GenerationSettings

TINY_KW = dict(vae_transform=(64, 32), vit_transform=(56, 28))


@pytest.fixture(scope="module")
def api_pipe():
    return LoomPipeline.from_pretrained(FIXTURE, dtype=torch.float32, device="cpu", verbose=False)


def test_call_returns_pil_frames_plan_and_texts(api_pipe, tmp_path):
    out = api_pipe(task="tutorial", prompt="How to fold a paper crane", seed=3,
                   planner=FixedPlanner(["Fold the square", "Make the base", "Shape the neck"]),
                   num_inference_steps=3, height=32, width=32, **TINY_KW)
    assert len(out.images) == 3 and all(isinstance(im, Image.Image) and im.size == (32, 32) for im in out.images)
    assert out.plan == ["Fold the square", "Make the base", "Shape the neck"] == out.step_texts
    assert out.answer is None and out.result.settings.num_timesteps == 3
    # the same generation through run(): identical pixels (one code path)
    ref = api_pipe.run("tutorial", "How to fold a paper crane", settings=GenerationSettings(
        seed=3, num_timesteps=3, resolution=(32, 32), **TINY_KW),
        planner=FixedPlanner(["Fold the square", "Make the base", "Shape the neck"]))
    assert [f.image.tobytes() for f in ref.frames] == [im.tobytes() for im in out.images]
    d = out.save(tmp_path / "crane")
    assert [s["text"] for s in d["steps"]] == out.step_texts and (tmp_path / "crane" / "frame_03.png").is_file()


def test_images_as_paths_or_pil_and_diffusers_names(api_pipe, tmp_path):
    p = tmp_path / "in.png"
    pattern_image(5).save(p)
    a = api_pipe(task="edit", prompt="make it blue", images=[str(p)], seed=1, guidance_scale=4.0,
                 image_guidance_scale=1.5, num_inference_steps=2, **TINY_KW)
    b = api_pipe(task="edit", prompt="make it blue", images=[Image.open(p)], seed=1,
                 settings=GenerationSettings(cfg_text_scale=4.0, cfg_img_scale=1.5, num_timesteps=2, **TINY_KW))
    assert a.images[0].tobytes() == b.images[0].tobytes() and a.step_texts == [""] and a.plan == []
    assert a.result.input_paths == [str(p)]
    with pytest.raises(TypeError, match="unknown generation setting 'guidance'"):
        api_pipe(task="t2i", prompt="x", guidance=3.0)
    with pytest.raises(InputError, match="both height and width"):
        api_pipe(task="t2i", prompt="x", height=32)


def test_understand_answer(api_pipe):
    out = api_pipe(task="understand", prompt="What is in <image 1>?", images=[pattern_image(2)],
                   max_answer_tokens=4, **{k: v for k, v in TINY.items() if k.endswith("transform")})
    assert isinstance(out.answer, str) and out.images == []
