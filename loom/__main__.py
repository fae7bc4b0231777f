"""The `loom` console script: an argparse sub-command parser over each subpackage's `main(argv)`.

Adding a command is one entry in `COMMANDS`: name → (module with `main(argv: list[str]) -> int`, one-line help).
Modules are imported only when their command runs, so `loom --help` / `loom generate --help` never import the
trainer (and vice versa); each command parses its own arguments (`loom COMMAND --help`)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("loom.infer.__main__", "generate images / interleaved tutorials from a model"),
    "train": ("loom.train.__main__", "train or fine-tune (configs/train/*.yaml)"),
    "data": ("loom.data.__main__", "validate and inspect training manifests"),
    "eval": ("loom.eval.__main__", "generate-then-score benchmarks (the paper's tables)"),
    "export-video": ("loom.infer.video", "a generated tutorial as GIF / MP4 with step captions"),
    "serve": ("loom.app.__main__", "web demo (Gradio, 127.0.0.1): tutorial, compose, decompose, style"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="loom", description="Loom (arXiv 2512.18254) on BAGEL: interleaved "
                                "plan-then-render generation.", epilog="`loom COMMAND --help` shows a command's "
                                "options.")
    p.add_argument("--version", action="version", version=f"loom {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, help_) in COMMANDS.items():
        # the command's own parser reads the rest (add_help=False: its --help is the module's)
        sub.add_parser(name, help=help_, description=help_, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] == "help":
        parser.print_help()
        return 0
    # only the first word goes through this parser: options after the command belong to the command
    first = [argv[0]] if argv[0] in COMMANDS else argv
    try:
        args = parser.parse_args(first)
    except SystemExit as e:  # --help / --version (0) or an unknown command (2, usage printed by argparse)
        return int(e.code or 0)
    module_name = COMMANDS[args.command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            print(f"loom: `loom {args.command}` is not available in this build ({module_name} is missing)",
                  file=sys.stderr)
            return 2
        raise
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"loom: `loom {args.command}` is not available in this build ({module_name} has no main())",
              file=sys.stderr)
        return 2
    try:
        ret = entry(argv[1:])
    except SystemExit as e:  # the command's argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return int(ret) if isinstance(ret, int) else 0


if __name__ == "__main__":
    sys.exit(main())
