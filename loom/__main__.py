"""The `loom` console script: `loom {generate,train,data,eval} …` dispatches to each subpackage's `main(argv)`.

Subpackages are imported lazily, so `loom generate --help` never imports the trainer (and vice versa)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("loom.infer.__main__", "generate images / interleaved tutorials from a model"),
    "train": ("loom.train.__main__", "train or fine-tune (configs/train/*.yaml)"),
    "data": ("loom.data.__main__", "validate and inspect training manifests"),
    "eval": ("loom.eval.__main__", "generate-then-score benchmarks (the paper's tables)"),
    "export-video": ("loom.infer.video", "a generated tutorial as GIF / MP4 with step captions"),
    "serve": ("loom.app.__main__", "web demo (Gradio, 127.0.0.1): tutorial, compose, decompose, style"),
}


def usage() -> str:
    lines = ["usage: loom COMMAND [ARGS …]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`loom COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"loom: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[cmd][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            print(f"loom: `loom {cmd}` is not available in this build ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"loom: `loom {cmd}` is not available in this build ({module_name} has no main())", file=sys.stderr)
        return 2
    ret = entry(rest)
    return int(ret) if isinstance(ret, int) else 0


if __name__ == "__main__":
    sys.exit(main())
