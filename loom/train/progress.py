"""Rank-0 progress of a training run: a tqdm bar over the step budget (rate, ETA, latest losses) and the
opt-in wall-clock cap `run.max_minutes`.

The budget of a run is its step count (`run.total_steps`): a busy machine takes longer and trains the same model.
`run.max_minutes` only exists for users who must stop by a deadline; a run it stops is reported as
`time_limit` (a checkpoint is saved, nothing is exported as if it had finished) and says so loudly.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import AbstractContextManager, nullcontext

log = logging.getLogger("loom.train")


class Progress:
    def __init__(self, enabled: bool, total: int, initial: int, max_minutes: float = 0.0) -> None:
        self.total, self.max_minutes = total, max_minutes
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            # stderr like the logging handlers; mininterval keeps redirected logs short (one update per 2 s)
            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                            mininterval=2.0, file=sys.stderr, smoothing=0.05)

    def redirect_logging(self) -> AbstractContextManager:
        """Console log lines are written through tqdm so they do not tear the bar."""
        if self.bar is None:
            return nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm(loggers=[logging.getLogger("loom")])

    def update(self, rec: dict) -> None:
        if self.bar is None:
            return
        post = {k: f"{rec[k]:.4g}" for k in ("loss", "ce", "mse") if isinstance(rec.get(k), float)}
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def minutes(self) -> float:
        return (time.perf_counter() - self.t0) / 60

    def over_time(self) -> bool:
        return self.max_minutes > 0 and self.minutes() >= self.max_minutes

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
