"""Entity tokens at load time: a plain BAGEL release gets them registered (mean rows, warned as untrained); a loom
export that has them loads them as saved."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from infer_helpers import FIXTURE, TINY_ARGS, pattern_image

from loom.data.entities import DEFAULT_ENTITY_TOKENS, add_entity_tokens
from loom.infer.__main__ import main
from loom.infer.load import UntrainedEntityWarning, load_pretrained
from loom.model.weights import load_bagel
from loom.train.export import write_export

EMB, HEAD = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"


@pytest.fixture(scope="module")
def plain():
    with pytest.warns(UntrainedEntityWarning, match="untrained") as rec:
        ld = load_pretrained(FIXTURE, device="cpu", verbose=False)
    assert "<object>" in str(rec[0].message)
    return ld


def test_bagel_release_gets_mean_initialised_entity_rows(plain):
    ref, _, ref_tok, _ = load_bagel(FIXTURE, verbose=False)
    assert len(ref_tok) == 507 and "<object>" not in ref_tok.get_vocab()
    ids = list(range(507, 507 + len(DEFAULT_ENTITY_TOKENS)))
    assert plain.entities.ids == dict(zip(DEFAULT_ENTITY_TOKENS, ids))
    assert plain.untrained_entities == DEFAULT_ENTITY_TOKENS and plain.entities.base_len == 507
    assert plain.config.llm.vocab_size == 576  # the spare rows above the tokenizer: nothing grew
    assert plain.tokenizer.encode("the <object> here", add_special_tokens=False)[2] == 512
    assert len(plain.tokenizer.encode("<object><style>", add_special_tokens=False)) == 2
    sd, rsd = plain.model.state_dict(), ref.state_dict()
    for k in (EMB, HEAD):
        torch.testing.assert_close(sd[k][ids], rsd[k][:507].mean(0).expand(len(ids), -1), rtol=0, atol=1e-6)
        keep = [i for i in range(576) if i not in ids]
        assert torch.equal(sd[k][keep], rsd[k][keep])  # every other row bit-identical
    assert all(torch.equal(v, rsd[k]) for k, v in sd.items() if k not in (EMB, HEAD))


def test_generate_compose_with_entity_token_on_bagel_release(tmp_path, capsys):
    imgs = []
    for k in range(2):
        imgs += ["--image", str(tmp_path / f"in{k}.png")]
        pattern_image(k).save(tmp_path / f"in{k}.png")
    out = tmp_path / "out"
    rc = main(["compose", "--model", str(FIXTURE), "--out", str(out), *TINY_ARGS, "--prompt",
               "Put the <object> of <image 1> on the <scene> of <image 2>", *imgs])
    assert rc == 0
    # the UntrainedEntityWarning reaches the user once, as one clean line (no file name, no source line)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "lacks the entity tokens" in ln]
    assert len(lines) == 1 and lines[0].startswith("loom generate: warning: "), err
    assert "UntrainedEntityWarning" not in err and "load_pretrained(" not in err
    d = json.loads((out / "result.json").read_text())
    assert [s["image"] for s in d["steps"]] == ["frame_01.png"] and (out / "frame_01.png").is_file()


def _export(tmp_path, rows: torch.Tensor | None = None):
    model, _, tok, cfg = load_bagel(FIXTURE, verbose=False)
    ev = add_entity_tokens(model, tok, ("<object>", "<scene>", "<sketch>"))
    with torch.no_grad():  # "trained" rows: anything but the mean
        model.language_model.model.embed_tokens.weight[list(ev.ids.values())] = rows
    out = write_export(tmp_path / "exp", model.state_dict(), cfg, FIXTURE, FIXTURE, tokenizer=tok,
                       loom_extra={"entities": ev.to_dict(), "build": {"k_max": 2}})
    return out, ev, model


def test_export_with_entity_tokens_loads_them_as_saved(tmp_path):
    rows = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    exp, ev, model = _export(tmp_path, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedEntityWarning)
        ld = load_pretrained(exp, device="cpu", verbose=False, entity_tokens=("<object>", "<scene>", "<sketch>"))
    assert ld.untrained_entities == () and ld.entities.ids == ev.ids == {"<object>": 507, "<scene>": 508,
                                                                         "<sketch>": 509}
    assert ld.build.k_max == 2
    emb = ld.model.state_dict()[EMB]
    assert torch.equal(emb[[507, 508, 509]], rows)  # trained rows kept, never re-initialised
    assert torch.equal(emb, model.state_dict()[EMB])
    # the default tokens the export lacks are added after the saved ones (and warned about)
    with pytest.warns(UntrainedEntityWarning, match="<model>"):
        ld2 = load_pretrained(exp, device="cpu", verbose=False)
    assert ld2.entities.ids["<object>"] == 507 and ld2.entities.ids["<model>"] == 510
    assert torch.equal(ld2.model.state_dict()[EMB][[507, 508, 509]], rows)


def test_export_with_mismatched_entity_ids_is_refused(tmp_path):
    exp, ev, _ = _export(tmp_path, torch.zeros(3, 64))
    meta = json.loads((exp / "loom_config.json").read_text())
    meta["entities"]["entity_tokens"]["<object>"] = 508
    (exp / "loom_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differ from loom_config.json"):
        load_pretrained(exp, device="cpu", verbose=False)
