"""Issue 13 item 7 / issue 18 item 4: a misbehaving endpoint never crashes the judge or a scoring run.

Adversarial 200 replies are retried like a 5xx and then make the item invalid; finished items are journaled as they
complete, so a run stopped by a fatal error resumes without re-asking them; Retry-After is honoured, capped and
jittered (retries go through tenacity in loom.utils.openai_client, shared with the captioning VLM).
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import pytest
from conftest import make_client, make_run, rubric_reply, user_text

from loom.eval.fakes import RawReply
from loom.eval.judge import JudgeClient, JudgeConfig, JudgeError
from loom.eval.results import load_run
from loom.eval.rubrics import TUTORIAL, build_messages, validate_reply
from loom.eval.scoring import judge_file, score_run

_COMPLETION = {"id": "x", "object": "chat.completion", "created": 1, "model": "m"}
ADVERSARIAL = {
    "html_page": RawReply(b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    "empty_body": RawReply(b""),
    "truncated_json": RawReply(b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "mess'),
    "empty_choices": {**_COMPLETION, "choices": []},
    "error_body_status_200": {"error": {"message": "The server is overloaded", "type": "server_error"}},
    "null_content": {**_COMPLETION, "choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                                                 "finish_reason": "content_filter"}]},
    "choice_without_message": {**_COMPLETION, "choices": [{"index": 0, "finish_reason": "stop"}]},
    "non_text_content": {**_COMPLETION, "choices": [{"index": 0, "message": {"role": "assistant", "content": [1]}}]},
    "json_list_body": [1, 2, 3],
    "plain_text_body": RawReply(b"OK", "text/plain"),
}


def _ask(client: JudgeClient, res, repeat: int = 0):
    return client.ask_json(build_messages(TUTORIAL, res), lambda o: validate_reply(TUTORIAL, o), repeat=repeat)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_reply_is_retried_then_invalid(tmp_path, judge_server, name):
    bad = [True]
    srv = judge_server(lambda body: (200, ADVERSARIAL[name], 0.0) if bad[0] else (200, rubric_reply(4, 4, 4), 0.0))
    client = make_client(srv, cache=tmp_path / "cache", max_attempts=3)
    res = load_run(make_run(tmp_path / "run", {"r1": ["a", "b", "c"]}))[0]
    out = _ask(client, res)
    assert not out.valid and out.parsed is None and out.failure == "malformed"
    assert out.error.startswith("malformed: gave up after 3 attempts")
    assert len(srv.requests) == 3 and client.usage.retries == 2 and client.usage.invalid == 1
    assert not list((tmp_path / "cache").rglob("*.json"))  # a malformed reply is never cached
    bad[0] = False
    assert _ask(client, res).parsed["scores"] == {"TC": 4, "IF": 4, "NC": 4}  # the rerun asks again


def test_malformed_then_good_reply_recovers_within_one_call(tmp_path, judge_server):
    script = [ADVERSARIAL["html_page"], ADVERSARIAL["empty_choices"]]
    srv = judge_server(lambda body: (200, script.pop(0) if script else rubric_reply(2, 3, 4), 0.0))
    client = make_client(srv)
    out = _ask(client, load_run(make_run(tmp_path / "run", {"r1": ["a", "b", "c"]}))[0])
    assert out.valid and not out.reasked and out.parsed["scores"] == {"TC": 2, "IF": 3, "NC": 4}
    assert len(srv.requests) == 3 and client.usage.retries == 2


def test_scoring_run_survives_every_adversarial_class(tmp_path, judge_server):
    """One item per adversarial class plus two healthy items: the run finishes and writes every record."""
    names = sorted(ADVERSARIAL)
    items = {f"bad{k}": ["a", "b", "c"] for k in range(len(names))} | {"ok1": ["a", "b", "c"], "ok2": ["d", "e", "f"]}
    run = make_run(tmp_path / "run", items)

    def handler(body):
        text = user_text(body)
        for k, name in enumerate(names):
            if f"making bad{k}." in text:
                return 200, ADVERSARIAL[name], 0.0
        return 200, rubric_reply(5, 4, 3), 0.0

    client = make_client(judge_server(handler), max_attempts=2, workers=4)
    summary = score_run(run, TUTORIAL, client, repeats=1)
    rows = [json.loads(x) for x in judge_file(run, TUTORIAL, client.cfg.model).read_text().splitlines()]
    assert len(rows) == len(names) + 2
    valid = {r["item_id"] for r in rows if r["valid"]}
    assert valid == {"ok1", "ok2"} and summary["invalid_records"] == len(names)
    assert all(r["error"].startswith("malformed") for r in rows if not r["valid"])
    assert summary["criteria"]["TC"]["mean"] == 5.0
    assert not list((run / "scores").glob("*.partial"))  # the journal is removed once the file is complete


def test_finished_items_survive_a_fatal_error_and_are_not_asked_again(tmp_path, judge_server):
    items = {f"it{k}": ["a", "b", "c"] for k in range(5)}
    run = make_run(tmp_path / "run", items)
    revoked = {"on": True}

    def handler(body):
        if revoked["on"] and "making it3." in user_text(body):  # the key is revoked mid-run
            return 401, {"error": {"message": "invalid api key"}}, 0.0
        return 200, rubric_reply(3, 3, 3), 0.0

    srv = judge_server(handler)
    client = make_client(srv, workers=1)
    with pytest.raises(JudgeError, match="HTTP 401"):
        score_run(run, TUTORIAL, client, repeats=1)
    journal = judge_file(run, TUTORIAL, client.cfg.model).with_name(
        judge_file(run, TUTORIAL, client.cfg.model).name + ".partial"
    )
    saved = [json.loads(x)["key"] for x in journal.read_text().splitlines()]
    assert saved == ["it0:0", "it1:0", "it2:0"]  # everything finished before the error is on disk
    asked_before = len(srv.requests)
    revoked["on"] = False
    summary = score_run(run, TUTORIAL, make_client(srv, workers=1), repeats=1)
    assert len(srv.requests) - asked_before == 2  # only it3 and it4 are asked on the rerun
    assert summary["invalid_records"] == 0 and summary["num_items"] == 5 and not journal.exists()


def _retry_waits(tmp_path, judge_server, headers: dict[str, str], **cfg) -> list[float]:
    replies = [(429, {"error": {"message": "slow down"}}, 0.0, headers)] * 2
    srv = judge_server(lambda body: replies.pop(0) if replies else (200, rubric_reply(3, 3, 3), 0.0))
    waits: list[float] = []
    client = JudgeClient(JudgeConfig(model="m", base_url=srv.base_url, api_key_env="LOOM_TEST_KEY", **cfg),
                         sleep=waits.append)
    assert _ask(client, load_run(make_run(tmp_path / "run", {"r1": ["a", "b", "c"]}))[0]).valid
    assert client.usage.retries == 2 and len(srv.requests) == 3
    return waits


def test_retry_after_seconds_is_honoured(tmp_path, judge_server):
    waits = _retry_waits(tmp_path, judge_server, {"Retry-After": "7"}, backoff_base_s=0.5, jitter_s=0.25)
    assert all(7 <= w <= 7.25 for w in waits)  # at least what the server asked, plus jitter


def test_retry_after_is_capped(tmp_path, judge_server):
    waits = _retry_waits(tmp_path, judge_server, {"Retry-After": "3600"}, max_wait_s=5.0, jitter_s=0.5)
    assert all(5 <= w <= 5.5 for w in waits)  # a server asking for an hour is not obeyed


def test_retry_after_ms_and_http_date(tmp_path, judge_server):
    waits = _retry_waits(tmp_path, judge_server, {"retry-after-ms": "2500"}, backoff_base_s=0.1, jitter_s=0.1)
    assert all(2.5 <= w <= 2.6 for w in waits)
    date = formatdate(time.time() + 30, usegmt=True)
    waits = _retry_waits(tmp_path / "b", judge_server, {"Retry-After": date}, backoff_base_s=0.1, jitter_s=0.1)
    assert all(27 <= w <= 30.2 for w in waits)  # an HTTP date is turned into seconds from now (1 s resolution)


def test_backoff_is_bounded_and_jittered(tmp_path, judge_server):
    srv = judge_server(lambda body: (503, {"error": {"message": "down"}}, 0.0))
    waits: list[float] = []
    client = JudgeClient(JudgeConfig(model="m", base_url=srv.base_url, api_key_env="LOOM_TEST_KEY", max_attempts=8,
                                     backoff_base_s=1.0, jitter_s=1.0, max_wait_s=10.0), sleep=waits.append)
    out = _ask(client, load_run(make_run(tmp_path / "run", {"r1": ["a", "b", "c"]}))[0])
    assert out.failure == "transport" and len(waits) == 7 and len(srv.requests) == 8
    floors = [1, 2, 4, 8, 10, 10, 10]  # 2^(k-1), capped at max_wait_s
    assert all(f <= w <= f + 1 for f, w in zip(floors, waits))
    assert len({round(w - f, 9) for f, w in zip(floors, waits)}) > 1  # jitter: not one fixed offset


def test_per_item_refusal_is_invalid_not_fatal(tmp_path, judge_server):
    srv = judge_server(lambda body: (400, {"error": {"message": "context length exceeded"}}, 0.0))
    client = make_client(srv)
    out = _ask(client, load_run(make_run(tmp_path / "run", {"r1": ["a", "b", "c"]}))[0])
    assert out.failure == "refused" and "HTTP 400" in out.error and len(srv.requests) == 1
