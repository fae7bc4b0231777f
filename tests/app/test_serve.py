"""`loom serve` end to end on the tiny release: a real server process, driven with gradio_client (plan first, one
frame per update, every task) and in headless Chromium (click, frames appear, screenshot not blank).

The server runs under LOOM_SERVE_PYTHON (`make test` points it at .venv-app, where Gradio lives: it pins
Pillow < 13, see the Makefile), else under this interpreter; without Gradio there the tests fail with the fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest
from browser import assert_not_blank, page, publish, screenshot
from PIL import Image

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"
PLAN = "Step 1: a red circle\nStep 2: add a blue square & a short line\nStep 3: add a green triangle"
STEPS = ["a red circle", "add a blue square & a short line", "add a green triangle"]


def _server_python() -> str:
    py = os.environ.get("LOOM_SERVE_PYTHON") or sys.executable
    ok = subprocess.run([py, "-c", "import gradio"], capture_output=True).returncode == 0
    if not ok:
        pytest.fail(f"Gradio is not importable by {py}: run `make app` (builds .venv-app with .[app]) and set "
                    "LOOM_SERVE_PYTHON=.venv-app/bin/python, or `make test`, which does both", pytrace=False)
    return py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp / "server.log", "w+")
    proc = subprocess.Popen([_server_python(), "-m", "loom", "serve", "--model", str(FIXTURE), "--config",
                             str(ROOT / "configs/infer/tiny_cpu.yaml"), "--port", str(port), "--no-progress",
                             "--out-root", str(tmp / "results")], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"loom serve exited {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("loom serve did not answer within 300 s")
            time.sleep(1)
        yield {"url": url, "results": tmp / "results", "tmp": tmp}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False, download_files=str(server["tmp"] / "downloads"))


def _frames(update) -> int:
    return len(update[1] or [])


def test_tutorial_streams_plan_first_then_each_frame(client, server):
    job = client.submit("How to draw shapes", None, PLAN, 0, 1, 4, "32", api_name="/tutorial")
    plan, gallery, status, gif = job.result(timeout=300)
    updates = job.outputs()
    # the plan is shown before any frame, then frames arrive one by one
    first_plan = next(i for i, u in enumerate(updates) if u[0])
    assert _frames(updates[first_plan]) == 0 and "Rendering frame 1/3" in updates[first_plan][2]
    counts = [_frames(u) for u in updates[first_plan:]]
    assert counts == sorted(counts) and {1, 2, 3} <= set(counts)
    assert plan == "\n".join(f"{k}. {s}" for k, s in enumerate(STEPS, 1))
    assert [g["caption"] for g in gallery] == [f"Step {k}: {s}" for k, s in enumerate(STEPS, 1)]
    for g in gallery:
        assert Image.open(g["image"]).size == (256, 256)  # 32 px frames enlarged ×8 (nearest)
    assert status.startswith("Done: 3 image(s)")
    with av.open(gif) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4  # the downloadable GIF: title card + 3 steps
    (saved,) = [p for p in server["results"].iterdir() if p.name.endswith("-tutorial-001")]
    assert {"frame_01.png", "frame_03.png", "result.json", "index.html", "animation.gif"} <= {
        p.name for p in saved.iterdir()}


def test_compose_decompose_style(client, tmp_path):
    from gradio_client import handle_file

    paths = []
    for k, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        paths.append(tmp_path / f"in{k}.png")
        Image.new("RGB", (32, 32), color).save(paths[-1])
    _, gallery, status, _ = client.predict("The <model> of <image 1> holding the <bag> of <image 2>",
                                           [handle_file(p) for p in paths], 0, 4, "", api_name="/compose")
    assert [g["caption"] for g in gallery] == ["Output 1"] and status.startswith("Done")
    _, gallery, _, _ = client.predict("Extract the <upper> and the <lower> from <image 1>", handle_file(paths[0]),
                                      0, 0, 4, "", api_name="/decompose")
    assert [g["caption"] for g in gallery] == ["Output 1 · <upper>", "Output 2 · <lower>"]
    _, gallery, _, _ = client.predict("Apply the <style> of <image 1> to <image 2>.", handle_file(paths[0]),
                                      handle_file(paths[1]), 0, 4, "", api_name="/style")
    assert len(gallery) == 1


def test_bad_input_is_a_clear_error(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="The prompt is empty"):
        client.predict("   ", None, "", 0, 1, 4, "", api_name="/tutorial")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(AppError, match="refers to <image 2> but 1 image"):
        client.predict("Show <image 2>", [handle_file(tmp_path / "a.png")], 1, 4, "", api_name="/compose")


def test_web_page_in_chromium(server, chromium, tmp_path):
    with page(chromium, 1280, 1000) as p:
        p.goto(server["url"], wait_until="networkidle")
        p.locator("#prompt textarea").fill("How to draw simple shapes")
        p.locator("#own-plan textarea").fill(PLAN)
        p.locator("#run-tutorial").click()
        p.wait_for_function("document.querySelectorAll('#frames img').length >= 3", timeout=120_000)
        p.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=120_000)
        assert p.locator("#plan textarea").input_value().splitlines()[1] == f"2. {STEPS[1]}"
        shot = screenshot(p, tmp_path / "web.png")
    assert_not_blank(shot)
    publish(shot, "web-demo.png")
