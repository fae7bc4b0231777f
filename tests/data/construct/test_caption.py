"""`loom data caption` against a fake OpenAI-compatible VLM on 127.0.0.1: request format, schema validation,
re-ask, the judge's retry policy (one client module), pending items, fatal errors, --recaption."""

from __future__ import annotations

import json
from pathlib import Path

from construct_helpers import KEY_ENV, caption_json, endpoint_args, is_reask, request_images
from PIL import Image

from loom.data.__main__ import main as data_main
from loom.eval.fakes import RawReply


def _frames_manifest(root: Path, rows: dict[str, int], prompt: str = "", plan: bool = False) -> Path:
    lines = []
    for i, (rid, n) in enumerate(rows.items()):
        frames = []
        for k in range(n):
            p = root / "frames" / rid / f"{k + 1:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 24), (40 * k, 100, 10 * i)).save(p)  # distinct requests (the cache is keyed on them)
            frames.append(p.relative_to(root).as_posix())
        row = {"id": rid, "task": "tutorial", "prompt": prompt, "plan": [], "frames": frames, "input_images": [],
               "meta": {"source": f"{rid}.mp4"}}
        if plan:
            row["plan"] = [f"old caption {k + 1}" for k in range(n)]
        lines.append(json.dumps(row))
    (root / "frames.jsonl").write_text("\n".join(lines) + "\n")
    return root / "frames.jsonl"


def _caption(man: Path, srv, tmp_path: Path, *extra: str) -> int:
    return data_main(["caption", str(man), "--out", str(man.parent / "captioned.jsonl"),
                      *endpoint_args(srv, "vlm", tmp_path), *extra])


def _rows(man: Path) -> list[dict]:
    return [json.loads(x) for x in (man.parent / "captioned.jsonl").read_text().splitlines()]


def test_request_schema_and_row(tmp_path, fake_server):
    man = _frames_manifest(tmp_path / "d", {"a": 4})
    srv = fake_server(lambda body: (200, json.dumps({
        "prompt": "Create a tutorial for making toast.",
        "steps": ["Step 1: Slice the bread.", "**Step 2:** Toast it.", "Butter it.", "Serve it."]}), 0.0))
    assert _caption(man, srv, tmp_path) == 0
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions" and req["model"] == "fake-vlm" and req["auth"] == "Bearer sk-test"
    assert req["temperature"] == 0 and req["response_format"] == {"type": "json_object"}
    system, user = req["messages"]
    assert "exactly 4 strings" in system["content"] and '"steps"' in system["content"]  # the JSON schema
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["text"] + ["text", "image_url"] * 4 and user["content"][3]["text"] == "Frame 2:"
    assert [im.getpixel((0, 0)) for im in request_images(req)] == [(40 * k, 100, 0) for k in range(4)]
    (row,) = _rows(man)
    assert row["prompt"] == "Create a tutorial for making toast."
    assert row["plan"] == ["Slice the bread.", "Toast it.", "Butter it.", "Serve it."]  # labels stripped
    assert row["frames"] == [f"frames/a/{k:02d}.png" for k in range(1, 5)]
    assert row["meta"]["caption"] == {"model": "fake-vlm", "model_served": "fake-judge-2025-01-01",
                                      "reasked": False, "mode": "caption"}


def test_reask_then_rejections_are_named(tmp_path, fake_server):
    man = _frames_manifest(tmp_path / "d", {"twice_wrong": 3, "fixed": 3, "bad_steps": 3, "prose": 3})
    script = {
        0: [caption_json(2), caption_json(4)],  # twice_wrong: a wrong step count, twice
        1: [caption_json(2), caption_json(3)],  # fixed on the re-ask
        2: [json.dumps({"prompt": "Make it.", "steps": ["a", " ", "d"]}),  # an empty step
            json.dumps({"prompt": "Make it.", "steps": ["a", 2, "d"]})],  # not a string
        3: ["I think the tutorial shows cooking."] * 2,
    }
    order: dict[str, int] = {}
    srv = fake_server(lambda body: (200, _next(script, body, order), 0.0))
    assert _caption(man, srv, tmp_path, "--workers", "1") == 0
    rep = json.loads((man.parent / "captioned.jsonl.funnel.json").read_text())
    assert {r["key"]: r["reason"] for r in rep["removed"]} == {
        "twice_wrong": "vlm_wrong_step_count", "bad_steps": "vlm_reply_invalid", "prose": "vlm_reply_not_json"}
    (row,) = _rows(man)
    assert row["id"] == "fixed" and row["meta"]["caption"]["reasked"] is True
    assert len(srv.requests) == 8  # every item asked exactly twice (one re-ask), never more
    reask = srv.requests[1]["messages"]
    assert "wrong number of steps: 2 given, 3 expected" in reask[-1]["content"]
    assert "plan step 2 is empty" in srv.requests[5]["messages"][-1]["content"]
    assert "schema: field steps.1" in rep["removed"][1]["detail"]


def _next(script: dict[int, list[str]], body: dict, order: dict[str, int]) -> str:
    """Items are asked in manifest order with --workers 1: item i's replies are script[i] in turn."""
    if not is_reask(body):
        order["item"] = order.get("item", -1) + 1
    return script[order["item"]].pop(0)


def test_retries_outage_pending_and_rerun(tmp_path, fake_server, capsys):
    man = _frames_manifest(tmp_path / "d", {"a": 3, "b": 3})
    state = {"mode": "outage", "calls": 0}

    def vlm(body):
        state["calls"] += 1
        if state["mode"] == "outage":
            return 200, RawReply(b"<html>Bad gateway</html>", "text/html"), 0.0  # malformed 200
        if state["mode"] == "slow_down" and state["calls"] == 1:
            return 429, {"error": {"message": "rate limited"}}, 0.0, {"Retry-After": "0"}
        return 200, caption_json(3), 0.0

    srv = fake_server(vlm)
    assert _caption(man, srv, tmp_path) == 1  # both pending: retried (2 attempts each), never cached
    assert len(srv.requests) == 4
    rep = json.loads((man.parent / "captioned.jsonl.funnel.json").read_text())
    assert [p["reason"] for p in rep["pending"]] == ["vlm_unavailable"] * 2 and rep["num_out"] == 0
    assert "malformed" in rep["pending"][0]["detail"] and "rerun the same command" in capsys.readouterr().err
    state.update(mode="slow_down", calls=0)
    assert _caption(man, srv, tmp_path, "--workers", "1") == 0  # a 429 is retried through the shared client
    assert len(_rows(man)) == 2 and state["calls"] == 3


def test_fatal_endpoint_error_stops_with_one_line(tmp_path, fake_server, capsys, monkeypatch):
    man = _frames_manifest(tmp_path / "d", {"a": 3, "b": 3, "c": 3})
    served = {"n": 0}

    def vlm(body):
        served["n"] += 1
        if served["n"] >= 2:
            return 401, {"error": {"message": "invalid api key"}}, 0.0
        return 200, caption_json(3), 0.0

    srv = fake_server(vlm)
    assert _caption(man, srv, tmp_path, "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "HTTP 401" in err and "\n" not in err
    journal = next((man.parent / "captioned.jsonl.work").glob("journal-*.jsonl"))
    assert [json.loads(x)["key"] for x in journal.read_text().splitlines()] == ["a"]  # finished work kept
    monkeypatch.delenv(KEY_ENV)
    assert _caption(man, srv, tmp_path) == 2
    assert KEY_ENV in capsys.readouterr().err


def test_recaption_keeps_the_prompt_and_records_the_old_plan(tmp_path, fake_server):
    man = _frames_manifest(tmp_path / "d", {"p": 4}, prompt="Create a 4-step tutorial that ends at the given image: a fox.",
                           plan=True)
    srv = fake_server(lambda body: (200, caption_json(4, "fox"), 0.0))
    assert _caption(man, srv, tmp_path, "--recaption") == 0
    system = srv.requests[0]["messages"][0]["content"]
    assert "Existing captions" in system and "Step 3: old caption 3" in system
    (row,) = _rows(man)
    assert row["prompt"].startswith("Create a 4-step tutorial that ends at the given image")  # eval prompt kept
    assert row["plan"][0] == "Draw shape 1 of the fox picture."
    assert row["meta"]["caption"]["previous_plan"][0] == "old caption 1"
    assert row["meta"]["caption"]["vlm_prompt"] == "Create a tutorial for drawing the fox picture."
