"""Every command the READMEs show, executed at tiny scale (tests/docs/test_doc_commands.py).

Extraction: fenced ```bash / sh / shell / console blocks (line continuations joined, comments dropped, `export`
lines kept as session variables, `for x in a b; do … done` expanded), ```python blocks (each one program; a
document's blocks share one namespace) and inline `code` spans in prose that start with a command word and have
arguments. Each command is matched against an ordered table of `Cover` entries
(regex → runner); a command no entry covers fails the test, so a README cannot show a command nothing runs.

Runners execute in one workspace per document (cwd; copies of configs/, data/, evals/, scripts/ so nothing in the
checkout is written), with tiny substitutions: the fixture model for MODEL_DIR / $BAGEL_DIR / $LOOM_MODEL, tiny
images for missing input files, toy datasets for benchmark names, a loopback fake OpenAI server for judges and
planners, and small sizes appended to generation / training commands. Entry points run in-process (`main(argv)`),
so a command costs its work, not an interpreter start.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
# an inline `span` in prose is a command when it starts with one of these words and has arguments
COMMAND_WORDS = ("loom", "python", "python3", "make", "accelerate", "torchrun", "pip", "pytest", "wandb",
                 "bash", ".ci/run", "export", "scripts/")


@dataclass
class Command:
    doc: str  # path relative to the repo
    line: int  # 1-based line in the document
    text: str  # one line, variables not yet expanded (python: the whole block)
    inline: bool = False  # from a `code span` in prose (often a synopsis)
    lang: str = "sh"  # "python" for a ```python block (run as one program)
    section: str = ""  # the "## …" heading above it

    def __str__(self) -> str:
        head = self.text.splitlines()[0] if self.text else ""
        return f"{self.doc}:{self.line}: {head}" + (" …" if "\n" in self.text else "")


@dataclass
class Cover:
    """One table entry: commands matching `pattern` (regex, searched in the command text) run with `runner`."""

    pattern: str
    runner: object  # callable(session, command) -> None; raises / asserts on failure
    why: str = ""  # what the tiny-scale substitution is, in words
    section: str | None = None  # only fenced commands under this "## heading" (of any document)

    def matches(self, cmd: Command) -> bool:
        """Searched in the command with its quoted strings blanked (a prompt's `<image 1>` is not syntax)."""
        if self.section is not None and (not cmd.section.startswith(self.section) or cmd.inline):
            return False
        return re.search(self.pattern, re.sub(r"'[^']*'|\"[^\"]*\"", '""', cmd.text)) is not None


# ---- extraction -------------------------------------------------------------------------------------------------
def _strip_comment(line: str) -> str:
    """Drop a `# comment` outside quotes (shlex-aware)."""
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).rstrip()


def _shell_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line, command) of a fenced shell block: continuations joined, comments and prompts dropped."""
    out, cur, start = [], "", 0
    for n, raw in block:
        line = _strip_comment(raw.rstrip())
        if line.startswith("$ "):
            line = line[2:]
        if not cur:
            start = n
        if line.endswith("\\"):
            cur += line[:-1].rstrip() + " "
            continue
        cur += line.strip()
        if cur.strip():
            out.append((start, _squash(cur)))
        cur = ""
    if cur.strip():
        out.append((start, _squash(cur)))
    return out


def _squash(text: str) -> str:
    """Runs of blanks outside quotes → one space (so table patterns need not care about alignment)."""
    out, quote, prev_space = [], None, False
    for ch in text.strip():
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch.isspace():
            if not prev_space:
                out.append(" ")
            prev_space = True
            continue
        prev_space = False
        out.append(ch)
    return "".join(out)


def _expand_loops(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """`for v in a b; do` … `done` → the body once per value with $v / ${v} substituted."""
    out, i = [], 0
    while i < len(lines):
        n, text = lines[i]
        m = re.fullmatch(r"for (\w+) in (.+?); do", text)
        if not m:
            out.append((n, text))
            i += 1
            continue
        var, values = m.group(1), shlex.split(m.group(2))
        j = i + 1
        while j < len(lines) and lines[j][1] != "done":
            j += 1
        body = lines[i + 1:j]
        for v in values:
            out += [(bn, re.sub(rf"\$\{{{var}\}}|\${var}\b", v, bt)) for bn, bt in body]
        i = j + 1
    return out


def extract(doc: str | Path) -> list[Command]:
    path = ROOT / doc
    rel = str(Path(doc))
    lines = path.read_text(encoding="utf-8").splitlines()
    cmds: list[Command] = []
    fence, lang, block, section = None, "", [], ""
    for n, line in enumerate(lines, 1):
        if fence is None and line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", line)
        if m and fence is None:
            fence, lang, block = m.group(2), m.group(3).lower(), []
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                if lang in SHELL_LANGS:
                    cmds += [Command(rel, ln, t, section=section) for ln, t in _expand_loops(_shell_lines(block))]
                elif lang in ("python", "py"):
                    cmds.append(Command(rel, block[0][0] if block else n, "\n".join(t for _, t in block),
                                        lang="python", section=section))
                fence = None
            else:
                block.append((n, line))
            continue
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):
            span = span.strip()
            words = span.split()
            if any(w.endswith(":") for w in words[:2]):  # a message the program prints, not a command
                continue
            if len(words) >= 2 and any(span == w or span.startswith(w + " ") or
                                       (w.endswith("/") and words[0].startswith(w) and words[0].endswith(".py"))
                                       for w in COMMAND_WORDS):
                cmds.append(Command(rel, n, span, inline=True, section=section))
    return cmds


# ---- shell-like expansion ---------------------------------------------------------------------------------------
def expand(text: str, env: dict[str, str]) -> str:
    """$VAR / ${VAR} from the session environment; unknown variables stay as written."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


# placeholder words the READMEs use for "your model folder"; tokens equal to one become the fixture
PLACEHOLDERS = {"MODEL_DIR": str(FIXTURE), "EXPORT": str(FIXTURE)}


def split(text: str, env: dict[str, str]) -> list[str]:
    return [PLACEHOLDERS.get(t, t) for t in shlex.split(expand(text, env))]


@dataclass
class Session:
    """One document's workspace: cwd, environment, lazily built fakes, and what ran."""

    doc: str
    ws: Path
    env: dict[str, str] = field(default_factory=dict)
    cache: dict = field(default_factory=dict)  # shared across documents: identical tiny commands run once
    local: dict = field(default_factory=dict)  # this document's fakes (servers, toy data)
    ran: list[str] = field(default_factory=list)
    closers: list = field(default_factory=list)

    def path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.ws / p

    def close(self) -> None:
        for c in reversed(self.closers):
            c()


def run_session(doc: str, commands: list[Command], table: list[Cover], ws: Path, base_env: dict[str, str],
                cache: dict, monkeypatch) -> Session:
    """Run `commands` in order (a document reads as a session: later commands use earlier outputs)."""
    s = Session(doc, ws, dict(base_env), cache)
    monkeypatch.chdir(ws)
    for k, v in base_env.items():
        monkeypatch.setenv(k, v)
    try:
        for cmd in commands:
            cover = next(c for c in table if c.matches(cmd))
            t0 = time.perf_counter()
            try:
                cover.runner(s, cmd)
            except BaseException as e:  # name the command that failed
                raise AssertionError(f"{cmd}\n  covered by {cover.pattern!r} ({cover.why})\n  "
                                     f"failed: {type(e).__name__}: {e}") from e
            s.ran.append(f"{time.perf_counter() - t0:6.1f}s  {cmd}")
    finally:
        s.close()
    return s
