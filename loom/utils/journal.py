"""Append-only JSONL journal of finished work items, so long jobs (judge scoring, dataset construction stages)
resume where they stopped and never lose finished work to a crash, an interrupt or a late error.

Each line is `{"key": …, "record": …}`, flushed and fsynced as the item finishes. On load, later lines win (an
item retried after a transient failure is journaled again) and a torn last line — the process was killed
mid-write — is ignored, so at most the item in flight is redone.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._checked_tail = False

    def load(self) -> dict[str, Any]:
        """key → record of every complete line (empty when the file does not exist)."""
        done: dict[str, Any] = {}
        if not self.path.is_file():
            return done
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    done[str(entry["key"])] = entry["record"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a kill mid-write: that item is simply redone
        return done

    def append(self, key: str, record: Any) -> None:
        line = json.dumps({"key": key, "record": record}, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._checked_tail:  # a torn line left by a kill must not swallow the next record
                self._checked_tail = True
                if self.path.is_file() and self.path.stat().st_size:
                    with open(self.path, "rb") as f:
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":
                            line = "\n" + line
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
