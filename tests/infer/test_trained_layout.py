"""Train → export → load: the export records every sequence-shaping build setting and inference uses them by
default (the trained ViT resolution, not BAGEL's 980 px); an explicit setting still overrides, loudly."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from infer_helpers import FIXTURE, pattern_image

from loom.data.builders import BuildConfig
from loom.infer.load import load_pretrained
from loom.infer.pipeline import GenerationSettings, LayoutOverrideWarning, Pipeline
from loom.infer.planner import FixedPlanner
from loom.train.export import LAYOUT_KEYS, TRAIN_ONLY_KEYS

sys.path.insert(0, str(Path(__file__).parents[1]))
from train.conftest import make_cfg  # noqa: E402


def test_every_build_field_is_recorded_or_training_only():
    names = [f.name for f in dataclasses.fields(BuildConfig)]
    assert sorted(LAYOUT_KEYS + TRAIN_ONLY_KEYS) == sorted(names)
    assert not set(LAYOUT_KEYS) & set(TRAIN_ONLY_KEYS)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from loom.train.trainer import Trainer

    run = tmp_path_factory.mktemp("layout") / "r"
    Trainer(make_cfg(run, "run.total_steps=1", "data.build.vit_transform=[42,28,14]",
                     "data.build.vae_transform=[32,16,4]", "data.build.k_max=1", "data.build.stepwise_prompt=false",
                     "data.whole_text_cond_dropout=0.1", "data.whole_image_cond_dropout=0.2")).run()
    return run / "exports" / "step-0000001"


def _vit_shapes(pipe: Pipeline) -> list[tuple[int, ...]]:
    seen = []
    real = pipe.engine.vit_block

    def spy(ctx, image, frame=0):
        seen.append(tuple(image.shape))
        return real(ctx, image, frame)
    pipe.engine.vit_block = spy
    return seen


def test_export_records_layout_and_inference_uses_it(export, tmp_path):
    meta = json.loads((export / "loom_config.json").read_text())
    assert meta["build"]["vit_transform"] == [42, 28, 14] and meta["build"]["vae_transform"] == [32, 16, 4]
    assert meta["build"]["k_max"] == 1 and meta["build"]["stepwise_prompt"] is False
    assert set(meta["build"]) == set(LAYOUT_KEYS)
    assert meta["cfg_dropout"]["whole_text"] == 0.1 and meta["cfg_dropout"]["whole_image"] == 0.2
    ld = load_pretrained(export, device="cpu", verbose=False)
    assert ld.build.vit_transform == (42, 28, 14) and ld.build.k_max == 1 and not ld.build.stepwise_prompt
    assert ld.layout["vit_transform"] == (42, 28, 14)

    pipe = Pipeline.from_pretrained(export, device="cpu", verbose=False)
    shapes = _vit_shapes(pipe)
    img = pattern_image(3, (64, 64))
    s = GenerationSettings(num_timesteps=3, seed=1)
    res = pipe.run("tutorial", "Paint this", [img], settings=s, planner=FixedPlanner(["a", "b"]))
    # the 64 px reference at the trained ViT max side, 42 px = 3×3 patches (BAGEL's 980/224 rule would upscale
    # it to 224 px = 256 patches); the fed-back 32 px frame 1 at the trained min, 28 px
    assert shapes == [(3, 42, 42)] * 2 + [(3, 28, 28)] * 2  # cond + text-uncond branch each
    assert (pipe.engine.vit_transform.max_size, pipe.engine.vae_transform.max_size) == (42, 32)
    assert res.frames[0].image.size == (32, 32)  # default output side = the trained VAE max
    assert [f.history for f in res.frames] == [[], [1]] and not res.notes

    shapes.clear()
    with pytest.warns(LayoutOverrideWarning, match=r"--vit-transform 28,14 overrides the trained vit_transform 42,28"):
        res = pipe.run("tutorial", "Paint this", [img], settings=dataclasses.replace(s, vit_transform=(28, 14)),
                       planner=FixedPlanner(["a"]))
    assert set(shapes) == {(3, 28, 28)}  # the reference too
    assert any("42,28" in n and "28,14" in n for n in res.notes)
    with pytest.warns(LayoutOverrideWarning, match="--k-max 3 overrides the trained k_max 1"):
        pipe.run("tutorial", "Paint this", [img], settings=dataclasses.replace(s, k_max=3),
                 planner=FixedPlanner(["a"]))


def test_release_without_record_uses_bagel_transforms():
    ld = load_pretrained(FIXTURE, device="cpu", verbose=False)
    assert ld.layout == {}
    cfg = ld.config
    vit_lim = cfg.vit_max_num_patch_per_side * cfg.vit.patch_size
    assert ld.build.vit_transform == (min(980, vit_lim), min(224, vit_lim), cfg.vit.patch_size)
