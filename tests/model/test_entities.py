"""Entity tokens (Loom §3.3): registered without shrinking the vocabulary; old ids and logits unchanged."""

import pytest
import torch

from loom.data.entities import (
    DEFAULT_ENTITY_TOKENS,
    add_entity_tokens,
    entity_positions,
    num_vocab_rows,
    register_entity_tokens,
    unknown_tags,
)
from loom.data.packing import PackGeometry, pack_sequences
from loom.data.tokenizer import SpecialTokens, encode, load_tokenizer
from loom.data.types import PlanItem, SequencePlan
from loom.model.weights import load_bagel

ROOT = "tests/fixtures/bagel-tiny"
TEXT = "the quick brown fox jumps over the lazy dog, then a red circle in the top left"


@pytest.fixture()
def model_tok():
    model, _, tok, cfg = load_bagel(ROOT, verbose=False, with_vae=False)
    return model.eval(), tok, cfg


def _logits(model, tok, cfg, text=TEXT):
    plan = SequencePlan([PlanItem("text", text_ids=encode(tok, text), loss=True)])
    batch = pack_sequences([plan], SpecialTokens.from_tokenizer(tok), PackGeometry.from_config(cfg))
    with torch.no_grad():
        return model(batch, return_logits=True).logits


def test_registration_uses_spare_rows_and_keeps_logits_bit_identical(model_tok):
    model, tok, cfg = model_tok
    before_ids = encode(tok, TEXT)
    before = _logits(model, tok, cfg)
    emb0 = model.language_model.model.embed_tokens.weight.clone()
    head0 = model.language_model.lm_head.weight.clone()
    vocab = add_entity_tokens(model, tok)
    assert vocab.base_len == 507 and len(tok) == 507 + len(DEFAULT_ENTITY_TOKENS)
    assert sorted(vocab.ids.values()) == list(range(507, 507 + len(DEFAULT_ENTITY_TOKENS)))
    assert num_vocab_rows(model) == 576 and cfg.llm.vocab_size == 576  # spare rows used, nothing resized
    assert encode(tok, TEXT) == before_ids  # existing ids unchanged
    after = _logits(model, tok, cfg)
    assert torch.equal(after[:, :507], before[:, :507])  # every original logit bit-identical
    new = list(vocab.ids.values())
    untouched = [i for i in range(576) if i not in new]
    assert torch.equal(model.language_model.model.embed_tokens.weight[untouched], emb0[untouched])
    assert torch.equal(model.language_model.lm_head.weight[untouched], head0[untouched])
    # mean initialisation of the new rows (input and output side)
    torch.testing.assert_close(model.language_model.model.embed_tokens.weight[new[0]], emb0[:507].mean(0))
    torch.testing.assert_close(model.language_model.lm_head.weight[new[-1]], head0[:507].mean(0))
    for t, i in vocab.ids.items():
        assert encode(tok, f"a {t} wearing") == encode(tok, "a ") + [i] + encode(tok, " wearing")
    assert tok.decode([vocab.ids["<garment>"]], skip_special_tokens=True) == "<garment>"  # not special


def test_growth_only_when_spare_rows_run_out(model_tok):
    model, tok, cfg = model_tok
    before = _logits(model, tok, cfg)
    vocab = add_entity_tokens(model, tok, [f"<thing_{k}>" for k in range(100)])
    assert len(tok) == 607 and num_vocab_rows(model) == 640 and cfg.llm.vocab_size == 640  # multiple of 64
    assert model.language_model.lm_head.weight.shape == (640, cfg.llm.hidden_size)
    after = _logits(model, tok, cfg)
    assert torch.equal(after[:, :507], before[:, :507])
    assert max(vocab.ids.values()) == 606


def test_reregistration_keeps_trained_rows_and_tokenizer_round_trip(model_tok, tmp_path):
    model, tok, cfg = model_tok
    vocab = add_entity_tokens(model, tok)
    with torch.no_grad():  # pretend training moved a row
        model.language_model.model.embed_tokens.weight[vocab.ids["<bag>"]] = 7.0
    again = add_entity_tokens(model, tok)
    assert again.added == () and again.ids == vocab.ids
    assert bool((model.language_model.model.embed_tokens.weight[vocab.ids["<bag>"]] == 7.0).all())
    tok.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert register_entity_tokens(reloaded).ids == vocab.ids and register_entity_tokens(reloaded).added == ()
    assert encode(reloaded, "the <model> in <scene>") == encode(tok, "the <model> in <scene>")


def test_helpers():
    tok = load_tokenizer(ROOT)
    vocab = register_entity_tokens(tok, ["<model>", "<upper>"])
    ids = encode(tok, "a <model> in an <upper> and a <model>")
    model_id = vocab.ids["<model>"]
    assert entity_positions(ids, vocab, "<model>") == [i for i, t in enumerate(ids) if t == model_id]
    assert len(entity_positions(ids, vocab)) == 3
    assert unknown_tags("the <modle> of <image 2> with <upper>", {"<upper>"}) == ["<modle>"]
    with pytest.raises(ValueError):
        register_entity_tokens(tok, ["model>"])  # the public code's typo is rejected
