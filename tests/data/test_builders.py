"""Each sample builder produces the token diagram its docstring documents, checked on the packed batch."""

import json
import random

import pytest
from PIL import Image

from loom.data.builders import BuildConfig, BuildContext, build_plans, plan_num_tokens
from loom.data.entities import register_entity_tokens
from loom.data.packing import CondDropout, PackGeometry, pack_sequences
from loom.data.plan import format_plan
from loom.data.records import SampleError
from loom.data.tokenizer import load_tokenizer

GEOM = PackGeometry(vit_patch=14, vit_grid=70, latent_stride=16, latent_grid=16)
STEPS = [f"Draw shape {k} in the corner." for k in range(1, 7)]


@pytest.fixture(scope="module")
def tok():
    t = load_tokenizer("tests/fixtures/bagel-tiny")
    register_entity_tokens(t)
    return t


@pytest.fixture()
def folder(tmp_path):
    for i in range(12):
        Image.new("RGB", (64, 64), (20 * i, 100, 200 - 10 * i)).save(tmp_path / f"im{i}.png")
    return tmp_path


def ctx_for(tok, folder, **cfg):
    (folder / "m.jsonl").write_text("")
    return BuildContext.from_manifest(folder / "m.jsonl", tok, BuildConfig(**cfg), GEOM)


def tutorial(n=6, ref=True):
    return {"id": "tut", "task": "tutorial", "prompt": "Create a tutorial for drawing this picture.",
            "plan": STEPS[:n], "frames": [f"im{k}.png" for k in range(1, n + 1)],
            "input_images": ["im0.png"] if ref else [], "meta": {}, "_row": 3}


def splits(batch):
    """[(mode, rope ids of the split)] in sequence order."""
    out, s = [], 0
    for n, mode in zip(batch.split_lens, batch.attn_modes):
        out.append((mode, batch.packed_position_ids[s:s + n].tolist(), s))
        s += n
    return out


def test_tutorial_instance_diagram(tok, folder):
    ctx = ctx_for(tok, folder, k_max=2, rotate_history=False)
    plans = build_plans(tutorial(), ctx, random.Random(0))
    assert [p.source.rsplit("#", 1)[1] for p in plans] == [f"frame{t}" for t in range(1, 7)]  # one per frame
    assert plans[0].source.endswith("m.jsonl:4:tut#frame1")  # `_row` 3 (0-based index) is line 4
    p6 = plans[5]
    assert [it.name for it in p6.items] == [
        "scaffold", "input1/vae", "input1/vit", "plan", "history1/vae", "history1/vit",
        "history3/vae", "history3/vit", "step6", "frame6"]  # H = {floor(5/3), floor(10/3)} = {1, 3}
    b = pack_sequences([p6], ctx.tokens, GEOM)
    sp = splits(b)
    assert [m for m, _, _ in sp] == ["causal", "full", "full", "causal", "full", "full", "full", "full",
                                     "causal", "noise"]
    # rope: text consecutive, each clean image one id (+1), the noisy target the next id and no advance
    flat = []
    for mode, ids, _ in sp:
        if mode == "causal":
            assert ids == list(range(ids[0], ids[0] + len(ids)))
        else:
            assert len(set(ids)) == 1
        flat.append(ids[0])
    n0, n_plan, n_step = (len(sp[i][1]) for i in (0, 3, 8))
    assert flat == [0, n0, n0 + 1, n0 + 2, n0 + 2 + n_plan, n0 + 3 + n_plan, n0 + 4 + n_plan, n0 + 5 + n_plan,
                    n0 + 6 + n_plan, n0 + 6 + n_plan + n_step]
    assert b.sample_lens == [plan_num_tokens(p6, GEOM)]
    # temporal slots: reference -1, history e_1, e_3, target e_6
    assert b.packed_vae_frame_ids.unique_consecutive().tolist() == [-1, 1, 3, 6]
    assert b.packed_vit_frame_ids.unique_consecutive().tolist() == [-1, 1, 3]
    # loss sets: CE exactly on the plan (ids + <|im_end|>), MSE exactly on the target's 4x4 latents
    plan_start = sp[3][2]
    assert b.ce_loss_indexes.tolist() == list(range(plan_start, plan_start + n_plan - 1))
    assert tok.decode(b.packed_label_ids[:-1].tolist()) == format_plan(STEPS)
    assert int(b.packed_label_ids[-1]) == ctx.tokens.eos
    tgt_start = sp[9][2]
    assert b.mse_loss_indexes.tolist() == list(range(tgt_start + 1, tgt_start + 17))
    inside_step = (b.packed_text_indexes > sp[8][2]) & (b.packed_text_indexes < sp[9][2] - 1)
    step_ids = b.packed_text_ids[inside_step]
    assert tok.decode(step_ids.tolist()) == f"Step 6: {STEPS[5]}"


def test_same_plan_for_every_frame_and_frame1_has_no_history(tok, folder):
    ctx = ctx_for(tok, folder, k_max=2, rotate_history=False)
    plans = build_plans(tutorial(ref=False), ctx, random.Random(0))
    plan_ids = {tuple(p.items[1].text_ids) for p in plans}
    assert len(plan_ids) == 1 and all(p.items[1].loss and not p.items[1].enable_cfg for p in plans)
    assert [it.name for it in plans[0].items] == ["scaffold", "plan", "step1", "frame1"]
    hist = [[int(it.name[7:].split("/")[0]) for it in p.items if it.name.endswith("/vae")] for p in plans]
    assert hist == [[], [1], [1, 2], [1, 2], [1, 2], [1, 3]]


def test_rotation_offset_in_training(tok, folder):
    ctx = ctx_for(tok, folder, k_max=2, frames_per_visit=1)
    seen = set()
    for seed in range(40):
        (p,) = build_plans(tutorial(ref=False), ctx, random.Random(seed))
        if p.source.endswith("#frame6"):
            seen.add(tuple(it.frame for it in p.items if it.name.endswith("/vae")))
    assert seen == {(1, 3), (2, 4), (3, 5)}  # t = 5 prior, K = 2: o in {0, 1, 2}


@pytest.mark.parametrize("switch,absent", [
    ({"stepwise_prompt": False}, "step"), ({"k_max": 0}, "history"),
    ({"use_vit_for_history": False}, "/vit")])
def test_ablation_switches(tok, folder, switch, absent):
    ctx = ctx_for(tok, folder, **switch)
    for p in build_plans(tutorial(ref=False), ctx, random.Random(0)):
        names = [it.name for it in p.items]
        assert not any(absent in n for n in names), names
        assert names[-1].startswith("frame")


def test_no_temporal_embedding_switch(tok, folder):
    ctx = ctx_for(tok, folder, use_temporal=False)
    plans = build_plans(tutorial(), ctx, random.Random(0))
    assert {it.frame for p in plans for it in p.items} == {0}


def test_cfg_dropout_never_drops_plan_or_target(tok, folder):
    ctx = ctx_for(tok, folder, rotate_history=False)
    p = build_plans(tutorial(), ctx, random.Random(0))[3]
    full = pack_sequences([p], ctx.tokens, GEOM)
    b = pack_sequences([p], ctx.tokens, GEOM, CondDropout(1.0, 1.0, 1.0), random.Random(0))
    assert b.attn_modes == ["causal", "noise"]  # only the plan (CE) and the target (MSE) survive
    assert b.ce_loss_indexes.numel() == full.ce_loss_indexes.numel()
    assert b.mse_loss_indexes.numel() == 16


def test_compose_diagram_with_entity_tokens(tok, folder):
    ctx = ctx_for(tok, folder)
    rec = {"id": "c1", "task": "compose",
           "prompt": "Show the <model> from <image 1> holding the <bag> from <image 2>.",
           "input_images": ["im1.png", "im2.png"], "targets": ["im3.png"], "meta": {}}
    (p,) = build_plans(rec, ctx, random.Random(0))
    assert [(it.name, it.frame) for it in p.items] == [
        ("prompt", 0), ("input1/vae", -1), ("input1/vit", -1), ("prompt", 0), ("input2/vae", -2),
        ("input2/vit", -2), ("prompt", 0), ("target", 1)]
    texts = [tok.decode(it.text_ids) for it in p.items if it.type == "text"]
    assert texts == ["Show the <model> from", "holding the <bag> from", "."]
    model_id = tok.convert_tokens_to_ids("<model>")
    assert model_id >= 507 and model_id in p.items[0].text_ids  # one entity id, not sub-tokens
    b = pack_sequences([p], ctx.tokens, GEOM)
    assert b.attn_modes == ["causal", "full", "full", "causal", "full", "full", "causal", "noise"]
    assert b.ce_loss_indexes.numel() == 0 and b.mse_loss_indexes.numel() == 16
    assert all(it.enable_cfg for it in p.items[:-1]) and not p.items[-1].enable_cfg


def test_decompose_feeds_outputs_back_clean(tok, folder):
    ctx = ctx_for(tok, folder)
    rec = {"id": "d1", "task": "decompose", "prompt": "Decompose <image 1> into its <object> elements.",
           "input_images": ["im1.png"], "targets": ["im2.png", "im3.png", "im4.png"]}
    (p,) = build_plans(rec, ctx, random.Random(0))
    b = pack_sequences([p], ctx.tokens, GEOM)
    sp = splits(b)
    assert [m for m, _, _ in sp] == ["causal", "full", "full", "causal",
                                     "noise", "full", "full", "noise", "full", "full", "noise"]
    r = [ids[0] for _, ids, _ in sp]
    assert r[4] == r[5] and r[6] == r[5] + 1 and r[7] == r[8] == r[6] + 1 and r[10] == r[9] + 1
    assert b.packed_vae_frame_ids.unique_consecutive().tolist() == [-1, 1, 2, 3]
    assert b.mse_loss_indexes.numel() == 3 * 16


def test_style_slots(tok, folder):
    ctx = ctx_for(tok, folder)
    rec = {"id": "s1", "task": "style", "prompt": "Apply the <style> of <image 1> to <image 2>.",
           "input_images": ["im5.png", "im6.png"], "targets": ["im7.png"]}
    (p,) = build_plans(rec, ctx, random.Random(0))
    assert [(it.name, it.frame) for it in p.items if it.type != "text"] == [
        ("input1/vae", -1), ("input1/vit", -1), ("input2/vae", -2), ("input2/vit", -2), ("target", 1)]


def test_bagel_families(tok, folder):
    ctx = ctx_for(tok, folder)
    (t2i,) = build_plans({"id": "a", "task": "t2i", "prompt": "a red square", "targets": ["im1.png"]}, ctx,
                         random.Random(0))
    assert [(it.type, it.loss, it.enable_cfg, it.frame) for it in t2i.items] == [
        ("text", False, True, 0), ("vae_image", True, False, 0)]
    (edit,) = build_plans({"id": "b", "task": "edit", "prompt": "make it blue", "input_images": ["im1.png"],
                           "targets": ["im2.png"]}, ctx, random.Random(0))
    assert [(it.type, it.loss, it.enable_cfg, it.frame) for it in edit.items] == [
        ("vae_image", False, True, 0), ("vit_image", False, True, 0), ("text", False, True, 0),
        ("vae_image", True, False, 0)]
    (und,) = build_plans({"id": "c", "task": "understand", "prompt": "What colour is <image 1>?",
                          "input_images": ["im1.png"], "answer": "Blue."}, ctx, random.Random(0))
    b = pack_sequences([und], ctx.tokens, GEOM)
    assert b.attn_modes == ["causal", "full", "causal", "causal"] and not b.vae_images
    assert not any(it.enable_cfg for it in und.items)
    assert tok.decode(b.packed_label_ids.tolist()) == "Blue.<|im_end|>"


def test_errors_name_the_sample(tok, folder):
    ctx = ctx_for(tok, folder)
    bad = tutorial()
    bad["frames"] = bad["frames"][:4]
    with pytest.raises(SampleError, match=r"m\.jsonl:4:tut: .*more steps than images"):
        build_plans(bad, ctx, random.Random(0))
    missing = tutorial()
    missing["frames"][2] = "nope.png"
    with pytest.raises(SampleError, match=r":4:tut#?.*nope\.png"):
        build_plans(missing, ctx, random.Random(0))
    unparsable = {**tutorial(2), "plan": "just a sentence"}
    with pytest.raises(SampleError, match="plan unparsable"):
        build_plans(unparsable, ctx, random.Random(0))
    with pytest.raises(SampleError, match=r"<image 3>"):
        build_plans({"id": "x", "task": "compose", "prompt": "Put <image 3> left.",
                     "input_images": ["im1.png"], "targets": ["im2.png"]}, ctx, random.Random(0))
    capped = ctx_for(tok, folder, max_tokens_per_sample=100)
    with pytest.raises(SampleError, match="exceeds max_tokens_per_sample"):
        build_plans(tutorial(), capped, random.Random(0))


def test_long_tutorial_truncated_to_n_max(tok, folder):
    rec = {**tutorial(6, ref=False), "plan": STEPS + ["x7.", "x8."],
           "frames": [f"im{k}.png" for k in range(1, 9)]}
    plans = build_plans(rec, ctx_for(tok, folder), random.Random(0))
    assert len(plans) == 6 and tok.decode(plans[0].items[1].text_ids) == format_plan(STEPS)
    json.dumps(rec)  # rows stay JSON
