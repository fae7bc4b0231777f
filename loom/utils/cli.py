"""Small pieces every `loom` command shares: one-line errors, one clean line per warning, and printing only on
the main process under torchrun / accelerate (RANK)."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings


def rank() -> int:
    """This process's global rank from the launcher's environment (0 without a launcher)."""
    for var in ("RANK", "PROCESS_INDEX"):
        v = os.environ.get(var)
        if v is not None and v.strip().lstrip("-").isdigit():
            return int(v)
    return 0


def is_main() -> bool:
    return rank() == 0


def fail(prog: str, msg: str, code: int = 2, main_only: bool = False) -> int:
    """Print `prog: error: msg` on one line (first line of msg kept whole) to stderr; return `code`.
    `main_only`: errors every rank hits identically (a config typo) are printed by rank 0 only."""
    if not main_only or is_main():
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    return code


@contextlib.contextmanager
def clean_warnings(prog: str):
    """Python warnings raised inside print as `prog: warning: message`, each distinct message once — no file
    name, no source line (a user cannot act on loom's own source)."""
    seen: set[str] = set()
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip()
        if text in seen:
            return
        seen.add(text)
        print(f"{prog}: warning: {text}", file=file or sys.stderr, flush=True)

    with warnings.catch_warnings():  # Python's own filters stay (ResourceWarning etc. remain hidden)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = old
