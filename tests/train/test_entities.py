"""Entity tokens through training: registration at init, trainable rows under a freeze, export / resume round trips,
and periodic sample generation that leaves training untouched."""

import json

import torch

from loom.data.entities import DEFAULT_ENTITY_TOKENS, register_entity_tokens
from loom.data.loader import ListSource
from loom.data.tokenizer import load_tokenizer
from loom.data.types import PlanItem, SequencePlan
from loom.infer.cache import Context
from loom.infer.engine import Engine
from loom.infer.load import load_pretrained
from loom.model.weights import load_bagel
from loom.train.trainer import Trainer

from .conftest import FIXTURE, make_cfg, read_metrics, tiny_plan

EMB, HEAD = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"
# 70 extra tokens: 507 + 9 + 70 = 586 ids > the 576 rows of loom-tiny → the vocabulary grows to 640
EXTRA = tuple(f"<e{i}>" for i in range(70))


def entity_ids(tokens=DEFAULT_ENTITY_TOKENS) -> dict[str, int]:
    return register_entity_tokens(load_tokenizer(FIXTURE), tokens).ids


def entity_plan(seed: int, ids: list[int]) -> SequencePlan:
    """tiny_plan whose prompt and answer both contain entity tokens (input rows and output rows get gradient)."""
    p = tiny_plan(seed)
    p.items[0] = PlanItem("text", text_ids=[11, ids[0], 12, ids[1]], enable_cfg=True)
    p.items[1] = PlanItem("text", text_ids=[13, ids[1], 14, ids[0], 15], loss=True)
    return p


def test_freeze_llm_trains_only_entity_rows(tmp_path):
    ids = entity_ids()
    used = [ids["<object>"], ids["<scene>"]]
    cfg = make_cfg(tmp_path / "r", "run.total_steps=2", "optim.freeze.llm=true", "optim.weight_decay=0.1",
                   "checkpoint.export_at_end=false", "ema.enabled=false")
    tr = Trainer(cfg, sources={"e": ListSource([entity_plan(0, used), entity_plan(1, used)])})
    assert tr.entities.ids == ids and tr.entities.added == DEFAULT_ENTITY_TOKENS
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    emb0 = before[EMB]
    torch.testing.assert_close(emb0[list(ids.values())], emb0[:507].mean(0).expand(9, -1))  # mean init
    tr.run()
    after = tr.model.state_dict()
    rows = {k: (after[k] != before[k]).any(1).nonzero().flatten().tolist() for k in (EMB, HEAD)}
    assert rows[EMB] == sorted(used)  # only the entity rows that occurred in the input moved …
    assert rows[HEAD] == sorted(ids.values())  # … every entity row of the head (softmax over all rows)
    llm = [k for k in after if k.startswith("language_model.") and k not in (EMB, HEAD)]
    assert llm and all(torch.equal(after[k], before[k]) for k in llm)  # the frozen LLM did not move
    assert not torch.equal(after["llm2vae.weight"], before["llm2vae.weight"])  # the rest trains


def test_export_with_grown_vocab_round_trips(tmp_path):
    tokens = (*DEFAULT_ENTITY_TOKENS, *EXTRA)
    ids = entity_ids(tokens)
    assert max(ids.values()) == 585
    build = "data.build.entity_tokens=[" + ",".join(f"'{t}'" for t in tokens) + "]"
    cfg = make_cfg(tmp_path / "r", "run.total_steps=2", build, "checkpoint.export_weights=raw",
                   "data.build.k_max=3", "data.build.stepwise_prompt=false")
    tr = Trainer(cfg, sources={"e": ListSource([entity_plan(0, [ids["<object>"], ids["<e69>"]])])})
    assert tr.model_cfg.llm.vocab_size == 640 and tr.model.language_model.lm_head.weight.shape[0] == 640
    tr.run()
    exp = tmp_path / "r" / "exports" / "step-0000002"
    assert json.loads((exp / "llm_config.json").read_text())["vocab_size"] == 640
    meta = json.loads((exp / "loom_config.json").read_text())
    assert meta["entities"] == {"entity_tokens": ids}
    assert meta["build"]["k_max"] == 3 and meta["build"]["stepwise_prompt"] is False
    assert meta["build"]["n_max"] == 6 and meta["build"]["use_temporal"] is True and "scaffold" in meta["build"]
    assert meta["build"]["entity_tokens"] == list(tokens)

    model, _, tok, cfg2 = load_bagel(exp, verbose=False)
    assert cfg2 == tr.model_cfg and len(tok) == 586
    assert {t: tok.convert_tokens_to_ids(t) for t in tokens} == ids
    text = "the <object> and the <e69> meet"
    assert tok.encode(text, add_special_tokens=False) == tr.tokenizer.encode(text, add_special_tokens=False)
    assert all(torch.equal(v, tr.model.state_dict()[k]) for k, v in model.state_dict().items())
    outs = []
    for m, t in ((tr.model, tr.tokenizer), (model, tok)):
        eng = Engine(m, tr.vae, t)
        ids_out, logits, _ = eng.generate_text(eng.add_text(Context(), text), max_length=3)
        outs.append((ids_out, logits))
    assert outs[0][0] == outs[1][0]
    # same weights and ids; not bit-equal only because safetensors hands back unaligned buffers, for which
    # CPU matmul kernels may sum in another order (cloning the loaded weights makes them bit-equal)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=1e-5)

    ld = load_pretrained(exp, device="cpu", verbose=False)  # the inference loader: nothing untrained
    assert ld.untrained_entities == () and ld.entities.ids == ids and ld.build.k_max == 3
    assert ld.build.stepwise_prompt is False

    # the export is a valid init: registration is idempotent, rows are not re-initialised
    tr2 = Trainer(make_cfg(tmp_path / "r2", f"model.init=export:{exp}", "run.total_steps=1", build))
    assert tr2.entities.added == () and tr2.entities.ids == ids
    assert torch.equal(tr2.model.state_dict()[EMB], model.state_dict()[EMB])


def test_resume_restores_the_tokenizer(tmp_path):
    first = ("<object>", "<scene>", "<sketch>")
    ids = entity_ids(first)
    run = tmp_path / "r"
    plans = [entity_plan(0, [ids["<sketch>"], ids["<object>"]])]
    tr = Trainer(make_cfg(run, "run.total_steps=1", "data.build.entity_tokens=['<object>','<scene>','<sketch>']",
                          "checkpoint.export_at_end=false"), sources={"e": ListSource(plans)})
    tr.run()
    ck = run / "checkpoints" / "step-0000001"
    assert json.loads((ck / "trainer_state.json").read_text())["entities"] == {"entity_tokens": ids}
    assert load_tokenizer(ck / "tokenizer").convert_tokens_to_ids("<sketch>") == ids["<sketch>"] == 509
    # the config now lists the tokens in another order: a fresh registration would give <sketch> id 507
    tr2 = Trainer(make_cfg(run, "run.total_steps=2", "data.build.entity_tokens=['<sketch>','<scene>','<object>']",
                           "checkpoint.export_at_end=false"), sources={"e": ListSource(plans)})
    assert tr2.step == 1 and tr2.entities.ids == ids and tr2.entities.added == ()
    assert torch.equal(tr2.model.state_dict()[EMB], tr.model.state_dict()[EMB])
    tr2.run()
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


def test_sample_generation_leaves_training_untouched(tmp_path):
    common = ("run.total_steps=2", "checkpoint.export_at_end=false", "ema.decay=0.5", "data.text_cond_dropout=0.3",
              "data.vae_cond_dropout=0.3", "data.batch_size=1", "checkpoint.every=0")
    plain, sampled = tmp_path / "plain", tmp_path / "sampled"
    plans = [tiny_plan(0), tiny_plan(1)]
    ref = Trainer(make_cfg(plain, *common), sources={"p": ListSource(plans)})
    ref.run()
    tr = Trainer(make_cfg(sampled, *common, "sample.every=1", "sample.prompts=[Draw an owl,'t2i: a <object>']",
                          "sample.num_timesteps=2", "sample.max_plan_tokens=16", "sample.resolution=32"),
                 sources={"p": ListSource(plans)})
    tr.run()  # samples after step 1 (with the EMA swapped in) and after step 2
    keys = ("step", "loss", "ce", "mse", "grad_norm")
    ma, mb = read_metrics(plain), read_metrics(sampled)
    assert len(ma) == 2 and [[r[k] for k in keys] for r in ma] == [[r[k] for k in keys] for r in mb]
    assert tr.model.training
    live, ref_live = tr.model.state_dict(), ref.model.state_dict()
    assert all(torch.equal(v, ref_live[k]) for k, v in live.items())  # EMA swapped back out exactly
    assert all(torch.equal(v, ref.ema.shadow[k]) for k, v in tr.ema.shadow.items())
    root = sampled / "samples"
    assert sorted(p.name for p in root.iterdir()) == ["step-0000001", "step-0000002"]
    folders = sorted(p.name for p in (root / "step-0000002").iterdir())
    assert folders == ["00-draw-an-owl", "01-a-object"]
    for f in folders:
        d = json.loads((root / "step-0000002" / f / "result.json").read_text())
        assert d["settings"]["output_size"] == [32, 32] and d["settings"]["num_timesteps"] == 2
        assert (root / "step-0000002" / f / "frame_01.png").is_file()
    assert json.loads((root / "step-0000002" / "01-a-object" / "result.json").read_text())["task"] == "t2i"


def test_und_detach_sets_model_flag():
    """freeze.und_detach switches on BAGEL's activation detach in the model (tested in tests/model/test_mot.py)."""
    from loom.model.configs import preset
    from loom.model.loom import Loom
    from loom.train.optim import FreezeConfig, apply_freeze

    m = Loom(preset("loom-tiny"))
    apply_freeze(m, FreezeConfig(und=True))
    assert m.language_model.freeze_und is False
    frozen = apply_freeze(m, FreezeConfig(und=True, und_detach=True))
    assert m.language_model.freeze_und is True
    assert "language_model.model.layers.0.mlp.up_proj.weight" in frozen
    assert "language_model.model.layers.0.mlp_moe_gen.up_proj.weight" not in frozen
