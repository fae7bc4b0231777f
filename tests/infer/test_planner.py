"""External planner against a fake OpenAI-compatible server on 127.0.0.1 (started by the test)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from infer_helpers import FIXTURE, TINY_ARGS

from loom.infer.__main__ import main
from loom.infer.planner import ExternalPlanner, PlanError


class FakeOpenAI:
    """Answers POST /v1/chat/completions with `answer`; records every request body."""

    def __init__(self, answer: str, status: int = 200) -> None:
        self.answer, self.status, self.requests = answer, status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if outer.status != 200:
                    payload = json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode()
                else:
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": outer.answer}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake():
    servers = []

    def start(answer: str, status: int = 200) -> FakeOpenAI:
        s = FakeOpenAI(answer, status)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.close()


def test_external_planner_parses_and_sends_images(fake):
    srv = fake("**Step 1:** sketch the crane. **Step 2:** fold the wings.")
    from infer_helpers import pattern_image

    p = ExternalPlanner(srv.url, "planner-x", api_key="k", retries=0)
    res = p("Fold a crane", [pattern_image(1)], "SCAFFOLD Fold a crane", 6, None)
    assert res.steps == ["sketch the crane.", "fold the wings."]
    assert res.source == f"external:planner-x@{srv.url}"
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    user = req["body"]["messages"][1]["content"]
    assert user[0] == {"type": "text", "text": "SCAFFOLD Fold a crane"}
    assert user[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_external_planner_errors_are_clear(fake):
    bad = fake("I cannot help with that.")
    with pytest.raises(PlanError, match="no usable plan"):
        ExternalPlanner(bad.url, "m", retries=0)("x", [], "x", 6, None)
    down = fake("", status=500)
    with pytest.raises(PlanError, match="external planner 'm' at .* failed"):
        ExternalPlanner(down.url, "m", retries=0)("x", [], "x", 6, None)


def test_cli_external_planner(fake, tmp_path):
    srv = fake("Step 1: draw the body\nStep 2: add wings\nStep 3: colour it")
    out = tmp_path / "bird"
    rc = main(["tutorial", "--model", str(FIXTURE), "--prompt", "Draw a bird", "--out", str(out), "--planner",
               "external", "--planner-url", srv.url, "--planner-model", "fake-gpt", *TINY_ARGS])
    assert rc == 0
    d = json.loads((out / "result.json").read_text())
    assert d["plan"] == ["draw the body", "add wings", "colour it"] and len(d["steps"]) == 3
    assert d["plan_source"].startswith("external:fake-gpt@") and d["text_source"] == "given"
    assert "Draw a bird" in srv.requests[0]["body"]["messages"][1]["content"]
