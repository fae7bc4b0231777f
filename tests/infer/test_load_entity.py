"""Loading (dtype defaults, loom_config.json knobs, disk offload through accelerate) and localised entity CFG."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from infer_helpers import FIXTURE

from loom.infer.cache import Context
from loom.infer.engine import Engine
from loom.infer.load import default_dtype, load_pretrained, parse_dtype, plan_device_map
from loom.infer.pipeline import GenerationSettings, InputError
from loom.infer.sampling import combine_cfg


def test_dtype_defaults():
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.bfloat16
    assert parse_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int3", torch.device("cpu"))


def test_export_knobs_and_errors(tmp_path):
    exp = tmp_path / "export"
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("cases.*", "images", "README.md"))
    (exp / "loom_config.json").write_text(json.dumps({"max_frames": 8, "build": {"k_max": 3, "n_max": 5}}))
    ld = load_pretrained(exp, device="cpu", verbose=False)
    assert (ld.build.k_max, ld.build.n_max, ld.dtype) == (3, 5, torch.float32)
    assert ld.describe()["kind"] == "loom export"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere", device="cpu", verbose=False)


def test_disk_offload_matches_plain(loaded, tmp_path):
    """accelerate-dispatched layers (streamed from disk) give the same logits as the plain model."""
    off = load_pretrained(FIXTURE, device="cpu", device_map="disk", offload_folder=str(tmp_path / "off"),
                          verbose=False)
    plain = load_pretrained(FIXTURE, device="cpu", verbose=False)
    assert off.device_map["language_model.model.layers.0"] == "disk"
    assert off.model.language_model.model.layers[0].self_attn.q_proj.weight.device.type == "meta"
    outs = []
    for ld in (plain, off):
        eng = Engine(ld.model, ld.vae, ld.tokenizer)
        ids, logits, _ = eng.generate_text(eng.add_text(Context(), "a small test"), max_length=4)
        outs.append((ids, logits))
    assert outs[0][0] == outs[1][0]
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="CUDA"):
        if not torch.cuda.is_available():
            plan_device_map(plain.model, "balanced")


def test_entity_cfg_hook(pipe, tmp_path):
    from PIL import Image

    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # left half of a 2×2 token grid → tokens 0 and 2
    mp = tmp_path / "mask.png"
    mask.save(mp)
    s = GenerationSettings(entity_scale=7.0, entity_mask=str(mp), cfg_renorm_min=1.0).resolved("compose")
    pipe._set_transforms(s)
    hook = pipe._entity_hook(s, "the <model> wearing <image 1>", 2, 2)([])
    g = torch.Generator().manual_seed(0)
    v_c, v_t, v_i = (torch.randn(4, 64, generator=g) for _ in range(3))
    v = hook(v_c, v_t, None, 4.0, 1.0)
    plain = combine_cfg(v_c, v_t, None, 4.0, 1.0, "global", 1.0)
    inside = v_t + 7.0 * (v_c - v_t)
    torch.testing.assert_close(v[[1, 3]], plain[[1, 3]])  # outside the mask: ordinary guidance
    torch.testing.assert_close(v[[0, 2]], inside[[0, 2]])  # inside: s_entity
    same = GenerationSettings(entity_scale=4.0, entity_mask=str(mp)).resolved("compose")
    h2 = pipe._entity_hook(same, "<model>", 2, 2)([])
    torch.testing.assert_close(h2(v_c, v_t, v_i, 4.0, 2.0), combine_cfg(v_c, v_t, v_i, 4.0, 2.0, "global", 0.0))
    with pytest.raises(InputError, match="entity token"):
        pipe._entity_hook(s, "no tags here", 2, 2)


@pytest.mark.parametrize("num_gpus", [2, 3, 4, 8])
def test_balanced_map_from_accelerate_peaks_no_higher_than_an_even_split(num_gpus):
    """accelerate's `infer_auto_device_map` places the decoder layers (planning only: 28-layer tiny-width model on
    the meta device, GPU sizes given): every layer whole and placed, embeddings / heads / ViT on GPU 0, devices in
    layer order, and the most loaded GPU holds no more than under the old even split by layer count."""
    from collections import Counter

    from accelerate.utils import compute_module_sizes

    from loom.config import merge_into
    from loom.model.configs import preset
    from loom.model.loom import Loom

    with torch.device("meta"):
        model = Loom(merge_into(preset("loom-tiny"), {"llm": {"num_hidden_layers": 28}}))
    dm = plan_device_map(model, "balanced", gpu_memory_gib={i: 80.0 for i in range(num_gpus)})
    layers = [dm[f"language_model.model.layers.{i}"] for i in range(28)]
    assert layers == sorted(layers) and set(layers) <= set(range(num_gpus))
    assert dm["language_model.lm_head"] == dm["vit_model"] == dm["language_model.model.embed_tokens"] == 0
    sizes = compute_module_sizes(model)
    per_layer = sizes["language_model.model.layers.0"]
    fixed = sizes[""] - sizes["language_model.model.layers"]

    def peak(counts: Counter) -> int:
        return max(counts[g] * per_layer + (fixed if g == 0 else 0) for g in range(num_gpus))

    per = -(-28 // num_gpus)  # the old plan: ceil(28 / n) consecutive layers per GPU
    assert peak(Counter(layers)) <= peak(Counter(i // per for i in range(28)))


def test_offload_map_keeps_fixed_modules_and_spills_in_order(loaded):
    dm = plan_device_map(loaded.model, "offload")  # CPU machine: every layer streamed from CPU RAM
    assert {dm[f"language_model.model.layers.{i}"] for i in range(2)} == {"cpu"}
    assert dm["language_model.lm_head"] == "cpu"
    dd = plan_device_map(loaded.model, "disk")
    assert {dd[f"language_model.model.layers.{i}"] for i in range(2)} == {"disk"}
