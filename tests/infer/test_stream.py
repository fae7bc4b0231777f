"""Streaming hooks: `Pipeline.run(on_plan=, on_frame=)` report the plan before any frame and every frame as it
finishes, for every task; `loom.app.stream.stream_run` turns them into events (what `loom serve` shows)."""

from __future__ import annotations

from infer_helpers import pattern_image

from loom.app.stream import stream_run
from loom.infer.pipeline import InputError
from loom.infer.planner import FixedPlanner


def test_hooks_order_for_every_task(pipe, tiny_settings):
    for task, prompt, images, n, planner in (
            ("tutorial", "Draw an owl", [], 3, FixedPlanner(["outline", "ink", "colour"])),
            ("decompose", "Extract the <upper> and the <lower> from <image 1>", [pattern_image(1)], 2, None),
            ("compose", "The <model> of <image 1> with the <bag> of <image 2>", [pattern_image(1), pattern_image(2)],
             1, None),
            ("t2i", "a red square", [], 1, None)):
        seen: list[tuple] = []
        res = pipe.run(task, prompt, images, tiny_settings(), planner=planner,
                       on_plan=lambda p, seen=seen: seen.append(("plan", list(p.steps))),
                       on_frame=lambda f, seen=seen: seen.append(("frame", f.index)))
        frames = [e for e in seen if e[0] == "frame"]
        assert [e[1] for e in frames] == list(range(1, n + 1)), task
        assert [f.index for f in res.frames] == list(range(1, n + 1))
        if task == "tutorial":
            assert seen[0] == ("plan", ["outline", "ink", "colour"])  # the plan comes before any frame
        else:
            assert all(e[0] == "frame" for e in seen)
    assert pipe._hooks == (None, None)  # hooks never outlive their run


def test_stream_run_events_and_errors(pipe, tiny_settings):
    events = list(stream_run(pipe, "tutorial", "Draw an owl", [], tiny_settings(), FixedPlanner(["a", "b"])))
    assert [k for k, _ in events] == ["plan", "frame", "frame", "done"]
    assert [f.index for k, f in events if k == "frame"] == [1, 2] and len(events[-1][1].frames) == 2
    (kind, err), = stream_run(pipe, "style", "Apply <image 1>", [], tiny_settings())
    assert kind == "error" and isinstance(err, InputError)
    events = list(stream_run(pipe, "t2i", "a red square", [], tiny_settings()))  # the lock was released
    assert [k for k, _ in events] == ["frame", "done"]
