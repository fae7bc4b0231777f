"""A generation as a stream of events, for front ends that show the plan first and each frame as it is rendered.

    for kind, payload in stream_run(pipe, "tutorial", prompt, images, settings):
        kind: "plan" (PlanResult) → "frame" (Frame) … → "done" (GenerationResult) | "error" (Exception)

`Pipeline.run` reports the plan and each finished frame through its `on_plan` / `on_frame` hooks; the run happens
on a worker thread and the hooks feed a queue, so the caller (a Gradio generator) yields between frames. One run
at a time: the engine's caches are not thread-safe, so workers take `RUN_LOCK` (`loom serve` also queues
requests; the lock covers a run still finishing after its client went away).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

RUN_LOCK = threading.Lock()


def stream_run(pipe, task: str, prompt: str, images: list, settings, planner=None) -> Iterator[tuple[str, object]]:
    events: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            with RUN_LOCK:
                res = pipe.run(task, prompt, images, settings, planner=planner,
                               on_plan=lambda p: events.put(("plan", p)),
                               on_frame=lambda f: events.put(("frame", f)))
            events.put(("done", res))
        except BaseException as e:  # handed to the caller, who decides how to show it
            events.put(("error", e))

    worker = threading.Thread(target=work, name=f"loom-{task}", daemon=True)
    worker.start()
    while True:
        kind, payload = events.get()
        yield kind, payload
        if kind in ("done", "error"):
            worker.join()
            return
