"""Judge client against a loopback fake OpenAI server: request format, retries, re-ask, validation, cache."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import pytest
from conftest import make_client, make_run, rubric_reply
from PIL import Image

from loom.eval.judge import JudgeClient, JudgeConfig, JudgeError, extract_json_object
from loom.eval.results import load_run
from loom.eval.rubrics import PAINTING, TUTORIAL, build_messages, validate_reply


def _tutorial(tmp_path: Path, n_steps: int = 4):
    run = make_run(tmp_path / "run", {"r1": [f"Step {k}: do thing {k}" for k in range(1, n_steps + 1)]})
    return load_run(run)[0]


def _ask(client: JudgeClient, res, repeat: int = 0):
    return client.ask_json(
        build_messages(TUTORIAL, res), lambda o: validate_reply(TUTORIAL, o), repeat=repeat
    )


def test_request_format(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, rubric_reply(4, 3, 5), 0.0))
    res = _tutorial(tmp_path)
    out = _ask(make_client(srv), res)
    assert out.valid and out.parsed["scores"] == {"TC": 4, "IF": 3, "NC": 5}
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-test-123"  # key from the environment
    assert req["model"] == "gpt-4o-2024-08-06"
    assert req["temperature"] == 0 and req["max_tokens"] == 1500
    assert req["response_format"] == {"type": "json_object"}
    system, user = req["messages"]
    assert system["role"] == "system" and "STRICT multimodal content evaluator" in system["content"]
    assert "Narrative Consistency (NC)" in system["content"] and '"step_4"' in system["content"]
    assert '"step_5"' not in system["content"] and "Good (3/4)" in system["content"]
    parts = user["content"]
    assert parts[0] == {"type": "text", "text": "Instruction: Create a tutorial for making r1."}
    # interleaved: step text, then its image, in order
    kinds = [p["type"] for p in parts[2:]]
    assert kinds == ["text", "image_url"] * 4
    assert parts[2]["text"] == "Step 1: Step 1: do thing 1"
    url = parts[3]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size == (16, 16) and img.getpixel((0, 0)) == (0, 30, 100)


def test_rubric_extends_to_n_steps_and_long_images_are_resized(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, rubric_reply(1, 1, 1), 0.0))
    run = make_run(tmp_path / "run", {"x": ["a", "b", "c", "d", "e", "f"]}, size=2048)
    out = _ask(make_client(srv), load_run(run)[0])
    assert out.valid
    system, user = srv.requests[0]["messages"]
    assert '"step_6"' in system["content"] and "Excellent (6/6)" in system["content"]
    url = user["content"][3]["image_url"]["url"]
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (1024, 1024)


def test_painting_rubric_sends_reference_first(tmp_path, judge_server):
    fields = PAINTING.fields
    srv = judge_server(lambda body: (200, rubric_reply(2, 3, 4, fields), 0.0))
    run = make_run(tmp_path / "run", {"p1": ["sketch", "lines", "color", "detail"]}, reference=True)
    res = load_run(run)[0]
    out = make_client(srv).ask_json(build_messages(PAINTING, res), lambda o: validate_reply(PAINTING, o))
    assert out.parsed["scores"] == {"TC": 2, "RF": 3, "SA": 4}
    parts = srv.requests[0]["messages"][1]["content"]
    assert parts[1]["text"].startswith("Reference image")
    ref = Image.open(io.BytesIO(base64.b64decode(parts[2]["image_url"]["url"].split(",", 1)[1])))
    assert ref.getpixel((0, 0)) == (255, 0, 0)
    assert "Reference Faithfulness (RF)" in srv.requests[0]["messages"][0]["content"]


def test_429_and_500_are_retried(tmp_path, judge_server):
    script = [
        (429, {"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limit_exceeded"}}),
        (500, {"error": {"message": "boom", "type": "server_error"}}),
        (503, {"error": {"message": "unavailable"}}),
    ]
    srv = judge_server(lambda body: (*script.pop(0), 0.0) if script else (200, rubric_reply(3, 3, 3), 0.0))
    client = make_client(srv)
    out = _ask(client, _tutorial(tmp_path))
    assert out.valid and out.parsed["overall"] == 3.0
    assert len(srv.requests) == 4
    assert client.usage.retries == 3 and client.usage.requests == 4


def test_timeout_is_retried(tmp_path, judge_server):
    calls = []

    def handler(body):
        calls.append(1)
        return (200, rubric_reply(2, 2, 2), 1.0 if len(calls) == 1 else 0.0)

    srv = judge_server(handler)
    client = make_client(srv, timeout_s=0.3)
    out = _ask(client, _tutorial(tmp_path))
    assert out.valid and client.usage.retries == 1 and len(calls) == 2


def test_backoff_schedule_is_exponential_with_jitter(tmp_path, judge_server):
    srv = judge_server(lambda body: (500, {"error": {"message": "down"}}, 0.0))
    waits: list[float] = []
    cfg = JudgeConfig(
        model="m",
        base_url=srv.base_url,
        api_key_env="LOOM_TEST_KEY",
        max_attempts=4,
        backoff_base_s=1.0,
        jitter_s=1.0,
    )
    client = JudgeClient(cfg, sleep=waits.append)
    out = _ask(client, _tutorial(tmp_path))
    # transport exhaustion → invalid, never a score; 4 attempts and 3 waits of 2^k + U(0,1)
    assert not out.valid and out.parsed is None and out.error.startswith("transport")
    assert len(srv.requests) == 4 and len(waits) == 3
    for k, w in enumerate(waits):
        assert 2**k <= w <= 2**k + 1


def test_exhausted_transport_is_not_cached(tmp_path, judge_server):
    fail = [True]
    srv = judge_server(
        lambda body: (429, {"error": {"message": "x"}}, 0.0) if fail[0] else (200, rubric_reply(5, 5, 5), 0.0)
    )
    client = make_client(srv, cache=tmp_path / "cache", max_attempts=2)
    res = _tutorial(tmp_path)
    assert not _ask(client, res).valid
    fail[0] = False
    assert _ask(client, res).parsed["scores"]["TC"] == 5  # the rerun retried instead of replaying a failure


def test_malformed_json_reasks_once_then_succeeds(tmp_path, judge_server):
    replies = ["Sure! Here are my scores: TC four", rubric_reply(4, 4, 2)]
    srv = judge_server(lambda body: (200, replies.pop(0), 0.0))
    out = _ask(make_client(srv), _tutorial(tmp_path))
    assert out.valid and out.reasked and out.parsed["scores"] == {"TC": 4, "IF": 4, "NC": 2}
    second = srv.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "Sure! Here are my scores: TC four"}
    assert "ONLY the JSON object" in second[-1]["content"] and "not a JSON object" in second[-1]["content"]


@pytest.mark.parametrize(
    "bad",
    [
        rubric_reply(6, 3, 3),
        rubric_reply(0, 3, 3),
        json.dumps({"temporal_coherence": "4", "instruction_following": 3, "narrative_consistency": 3}),
        json.dumps({"temporal_coherence": 4.5, "instruction_following": 3, "narrative_consistency": 3}),
        json.dumps({"temporal_coherence": True, "instruction_following": 3, "narrative_consistency": 3}),
        json.dumps({"temporal_coherence": 4, "instruction_following": 3}),
        "not json at all",
        "[4, 3, 5]",
    ],
)
def test_invalid_twice_marks_item_invalid(tmp_path, judge_server, bad):
    srv = judge_server(lambda body: (200, bad, 0.0))
    client = make_client(srv)
    out = _ask(client, _tutorial(tmp_path))
    assert not out.valid and out.parsed is None and out.error.startswith("invalid after re-ask")
    assert len(srv.requests) == 2 and client.usage.invalid == 1  # exactly one re-ask, then give up


def test_out_of_range_reask_message_names_the_field(tmp_path, judge_server):
    replies = [rubric_reply(6, 3, 3), rubric_reply(5, 3, 3)]
    srv = judge_server(lambda body: (200, replies.pop(0), 0.0))
    out = _ask(make_client(srv), _tutorial(tmp_path))
    assert out.parsed["scores"]["TC"] == 5
    assert "'temporal_coherence' = 6 is outside 1-5" in srv.requests[1]["messages"][-1]["content"]


def test_overall_is_recomputed_not_trusted(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, rubric_reply(1, 2, 4, overall=5.0), 0.0))
    out = _ask(make_client(srv), _tutorial(tmp_path))
    assert out.parsed["overall"] == pytest.approx(7 / 3)
    assert out.parsed["judge_overall"] == 5.0 and out.parsed["overall_mismatch"] is True


def test_fenced_json_is_accepted_without_reask(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, "```json\n" + rubric_reply(2, 3, 4) + "\n```", 0.0))
    out = _ask(make_client(srv), _tutorial(tmp_path))
    assert out.valid and not out.reasked and len(srv.requests) == 1
    assert extract_json_object('text {"a": 1} more') == {"a": 1}
    assert extract_json_object("[1, 2]") is None


def test_cache_hit_makes_no_request(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, rubric_reply(3, 4, 5), 0.0))
    cache = tmp_path / "cache"
    res = _tutorial(tmp_path)
    c1 = make_client(srv, cache=cache)
    assert _ask(c1, res).valid and len(srv.requests) == 1
    c2 = make_client(srv, cache=cache)  # a fresh process: only the disk cache is shared
    out = _ask(c2, res)
    assert out.parsed["scores"] == {"TC": 3, "IF": 4, "NC": 5}
    assert len(srv.requests) == 1 and c2.usage.cache_hits == 1 and c2.usage.requests == 0
    _ask(c2, res, repeat=1)  # another repeat index is another key
    assert len(srv.requests) == 2
    make_client(srv, cache=cache, model="gpt-4o-2024-11-20").ask_json(
        build_messages(TUTORIAL, res), lambda o: validate_reply(TUTORIAL, o)
    )
    assert len(srv.requests) == 3  # another judge model is another key
    files = list(cache.rglob("*.json"))
    assert len(files) == 3
    entry = json.loads(files[0].read_text())
    assert {"text", "model_served", "prompt_tokens", "completion_tokens", "created"} <= set(entry)


def test_cache_key_depends_on_image_bytes(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, rubric_reply(3, 3, 3), 0.0))
    res = _tutorial(tmp_path)
    client = make_client(srv, cache=tmp_path / "cache")
    _ask(client, res)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(res.steps[0].image)
    _ask(client, res)
    assert len(srv.requests) == 2


def test_non_retryable_error_raises(tmp_path, judge_server):
    srv = judge_server(lambda body: (401, {"error": {"message": "bad key", "type": "auth"}}, 0.0))
    with pytest.raises(JudgeError, match="HTTP 401"):
        _ask(make_client(srv), _tutorial(tmp_path))
    assert len(srv.requests) == 1


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(JudgeError, match="NO_SUCH_KEY_VAR"):
        JudgeClient(JudgeConfig(model="m", api_key_env="NO_SUCH_KEY_VAR"))


def test_usage_summary_and_cost(tmp_path, judge_server):
    srv = judge_server(lambda body: (200, rubric_reply(3, 3, 3), 0.0))
    client = make_client(srv, price_in_per_mtok=2.5, price_out_per_mtok=10.0)
    res = _tutorial(tmp_path)
    for r in range(3):
        _ask(client, res, repeat=r)
    s = client.usage.summary(client.cfg)
    # fake server bills 100 prompt + 20 completion tokens per call
    assert s["prompt_tokens"] == 300 and s["completion_tokens"] == 60
    assert s["estimated_cost_usd"] == pytest.approx(300 / 1e6 * 2.5 + 60 / 1e6 * 10.0)
    assert s["models_served"] == ["fake-judge-2025-01-01"]
    assert "api_key_env" in client.cfg.public() and "cache_dir" not in client.cfg.public()


def test_thread_pool_keeps_order_and_runs_concurrently(judge_server):
    srv = judge_server(lambda body: (200, "{}", 0.2))
    client = make_client(srv, workers=8)
    t0 = time.time()
    out = client.judge_many(
        lambda i: (i, client.complete([{"role": "user", "content": f"JSON {i}"}]).text), range(8)
    )
    assert [o[0] for o in out] == list(range(8))
    assert time.time() - t0 < 1.0  # 8 × 0.2 s sequential would take 1.6 s
