"""OmniContext scoring: official-scorer emulation (quirks included), fixed mode, and the aggregation by hand."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import pytest
from conftest import make_client
from PIL import Image

from loom.eval import omnicontext as O
from loom.eval import omnicontext_prompts as P
from loom.eval.images import omnicontext_input_size


def _item(task: str = "multi_character", key: str = "k1", lang: str = "en") -> O.OmniItem:
    return O.OmniItem(
        key,
        task,
        "Put the man from image 1 next to the cat from image 2.",
        lang,
        [Image.new("RGB", (1500, 1000), (10, 20, 30)), Image.new("RGB", (100, 70), (200, 0, 0))],
    )


def _kind(body) -> str:
    return "PF" if "fulfills the editing instruction" in body["messages"][0]["content"][0]["text"] else "SC"


def test_prompts_match_official_selection():
    pf = P.prompt_following("do X")
    assert pf.startswith("You are a professional digital artist") and pf.endswith(
        "Editing instruction: do X\n"
    )
    assert "regardless of whether subject identities are preserved" in pf
    assert "scene background" in P.subject_consistency("do X", with_scene=True)
    assert "scene background" not in P.subject_consistency("do X", with_scene=False)
    assert "<instruction>" not in pf and "JSON" not in pf  # why fixed mode cannot use json_object mode


def test_input_resize_rule():
    assert omnicontext_input_size((1500, 1000)) == (
        1248,
        832,
    )  # area cap: int(1500·r), int(1000·r), then //16
    assert omnicontext_input_size((100, 70)) == (96, 64)
    assert omnicontext_input_size((1024, 1024)) == (1024, 1024)


def test_official_mode_message_and_no_break(judge_server):
    srv = judge_server(lambda body: (200, json.dumps({"score": 7, "reasoning": "ok"}), 0.0))
    client = make_client(srv, model="gpt-4.1", temperature=None, json_mode=False, max_tokens=1400)
    out = Image.new("RGB", (64, 48), (0, 255, 0))
    rec = O.score_official(client, _item("scene_character"), out)
    assert rec["PF"] == 7 and rec["SC"] == 7 and rec["overall"] == pytest.approx(7.0) and rec["guessed"] == []
    assert len(srv.requests) == 6  # 3 tries × 2 calls: the official loop has no break on success
    req = srv.requests[0]
    assert "temperature" not in req and "response_format" not in req and req["max_tokens"] == 1400
    assert req["model"] == "gpt-4.1" and len(req["messages"]) == 1
    parts = req["messages"][0]["content"]
    assert [p["type"] for p in parts] == [
        "text",
        "image_url",
        "image_url",
        "image_url",
    ]  # inputs, output last
    sizes = [
        Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).size
        for p in parts[1:]
    ]
    assert sizes == [(1248, 832), (96, 64), (64, 48)]  # output sent as is
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in parts[1:])
    texts = [r["messages"][0]["content"][0]["text"] for r in srv.requests]
    assert sum("scene background" in t for t in texts) == 3  # SC uses the scene prompt for scene tasks
    assert (
        sum("regardless of whether subject identities are preserved" in t for t in texts) == 3
    )  # PF never does


def test_official_mode_last_successful_parse_wins(judge_server):
    n = {"PF": 0, "SC": 0}
    pf_replies = ['{"score": 2, "reasoning": "a"}', '{"score": 5, "reasoning": "b"}', "garbage"]
    sc_replies = ['{"score": 9}', '{"score": 8}', '{"score": 4}']

    def handler(body):
        k = _kind(body)
        n[k] += 1
        return 200, (pf_replies if k == "PF" else sc_replies)[n[k] - 1], 0.0

    client = make_client(judge_server(handler), temperature=None, json_mode=False)
    rec = O.score_official(client, _item(), Image.new("RGB", (8, 8)))
    # try 3: PF fails to parse, so SC is not parsed either (official order) → PF from try 2, SC from try 2
    assert rec["PF"] == 5 and rec["SC"] == 8 and rec["overall"] == pytest.approx(math.sqrt(40))


def test_official_mode_guess_fallback_is_flagged_and_reproducible(judge_server):
    srv = judge_server(lambda body: (200, "I cannot rate this." if _kind(body) == "SC" else "6", 0.0))
    client = make_client(srv, temperature=None, json_mode=False)
    a = O.score_official(client, _item(), Image.new("RGB", (8, 8)), seed=3)
    b = O.score_official(client, _item(), Image.new("RGB", (8, 8)), seed=3)
    assert a["guessed"] == ["SC"] and a["PF"] == 6  # a bare integer is accepted, as officially
    assert 0 <= a["SC"] <= 10 and a["SC"] == b["SC"]
    assert a["SC_reason"].startswith("guess_if_cannot_parse | I cannot rate this.")


def test_official_mode_pf_failure_also_guesses_sc(judge_server):
    # Officially PF is parsed first; when it raises, SC is never parsed in that try, so a PF that never parses
    # turns a perfectly good SC reply into a guess as well.
    srv = judge_server(lambda body: (200, "no" if _kind(body) == "PF" else '{"score": 6}', 0.0))
    rec = O.score_official(
        make_client(srv, temperature=None, json_mode=False), _item(), Image.new("RGB", (8, 8))
    )
    assert rec["guessed"] == ["PF", "SC"]


def test_official_mode_keeps_out_of_range_and_drops_non_numbers(judge_server):
    srv = judge_server(
        lambda body: (200, '{"score": 12}' if _kind(body) == "PF" else '{"score": "nine"}', 0.0)
    )
    client = make_client(srv, temperature=None, json_mode=False)
    rec = O.score_official(client, _item(), Image.new("RGB", (8, 8)))
    assert rec["PF"] == 12 and rec["SC"] is None and not rec["valid"]  # the official statistics would crash


def test_fixed_mode_reasks_and_marks_invalid(judge_server):
    def handler(body):
        if _kind(body) == "PF":
            return 200, '{"score": 8, "reasoning": "fine"}', 0.0
        return 200, '{"score": 11}', 0.0

    srv = judge_server(handler)
    client = make_client(srv, json_mode=False)
    rec = O.score_fixed(client, _item(), Image.new("RGB", (8, 8)))
    assert rec["PF"] == 8 and rec["SC"] is None and not rec["valid"] and rec["guessed"] == []
    assert len(srv.requests) == 3  # PF once, SC twice (one re-ask)
    assert srv.requests[0]["temperature"] == 0


def _rec(task, pf, sc, rep=0, lang="en", valid=True):
    return {
        "key": "k",
        "task_type": task,
        "language": lang,
        "repeat": rep,
        "PF": pf,
        "SC": sc,
        "overall": math.sqrt(pf * sc) if valid else None,
        "valid": valid,
        "guessed": [],
        "out_of_range": False,
    }


def test_aggregate_by_hand():
    recs = [_rec(t, 9, 4) for t in O.TABLE3_TASKS]  # overall 6 in every task
    recs += [
        _rec("multi_character", 1, 1),
        _rec("multi_character", 2, 8, lang="zh"),
        _rec("multi_object", 5, 5, valid=False),
        _rec("single_object", 10, 10),
    ]
    agg = O.aggregate(recs)
    mc = agg["tasks"]["multi_character"]
    assert mc["PF"]["mean"] == pytest.approx(5.0) and mc["SC"]["mean"] == pytest.approx(2.5)
    assert mc["overall"]["mean"] == pytest.approx(3.5)  # mean of sqrt(36), sqrt(1); zh and invalid ignored
    assert agg["tasks"]["multi_object"]["overall"]["mean"] == pytest.approx(6.0)
    assert agg["avg_dagger"]["mean"] == pytest.approx((3.5 + 6 * 5) / 6)
    assert agg["avg_official_overall"]["mean"] == pytest.approx((3.5 + 6 * 5 + 10) / 7)  # the 7 tasks present
    assert agg["num_invalid"] == 1 and agg["avg_dagger"]["std"] is None


def test_aggregate_repeats_mean_and_std():
    recs = [_rec(t, 4, 4, rep=0) for t in O.TABLE3_TASKS] + [_rec(t, 6, 6, rep=1) for t in O.TABLE3_TASKS]
    agg = O.aggregate(recs)
    assert agg["avg_dagger"]["mean"] == pytest.approx(5.0)
    assert agg["avg_dagger"]["std"] == pytest.approx(math.sqrt(2.0))  # sample std of [4, 6]


def test_score_run_end_to_end(tmp_path: Path, judge_server):
    def handler(body):
        return 200, json.dumps({"score": 8 if _kind(body) == "PF" else 2}), 0.0

    srv = judge_server(handler)
    run = tmp_path / "run"
    items = [_item(t, f"k{i}") for i, t in enumerate(O.TABLE3_TASKS)] + [_item("multi_object", "missing")]
    for it in items:
        it.instruction += f" ({it.key})"  # distinct requests; identical ones would share a cache entry
    for it in items[:-1]:
        p = O.output_path(run, it)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16)).save(p)
    client = make_client(srv, json_mode=False, cache=tmp_path / "cache")
    s = O.score_run(run, items, client, mode="fixed", repeats=2)
    assert s["missing_outputs"] == ["multi_object/missing"] and s["num_scored"] == 6
    assert s["avg_dagger"]["mean"] == pytest.approx(4.0) and s["avg_dagger"]["std"] == 0.0
    assert len(srv.requests) == 6 * 2 * 2
    assert (run / "scores" / "summary-omnicontext-fixed__gpt-4o-2024-08-06.json").is_file()
    O.score_run(
        run, items, make_client(srv, json_mode=False, cache=tmp_path / "cache"), mode="fixed", repeats=2
    )
    assert len(srv.requests) == 24  # rerun served from the cache


def test_prompts_are_byte_identical_to_official_0f72fa9():
    # Checked once against VectorSpaceLab/OmniGen2 @ 0f72fa9 omnicontext/prompt_generator.py; any edit breaks
    # comparability with Table 3's baselines, so the hash pins the text.
    import hashlib

    text = P.CONTEXT + P.PF_SINGLE_AND_MULTIPLE + P.PF_SCENE + P.SC_SINGLE_AND_MULTIPLE + P.SC_SCENE
    assert (
        hashlib.sha256(text.encode()).hexdigest()
        == "92538f928103cff3da763448a8697683329ab427555d9c29f2d23414d639d372"
    )
