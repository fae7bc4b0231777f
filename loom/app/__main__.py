"""`loom serve --model DIR`: the web demo on http://127.0.0.1:PORT (Gradio; `pip install -e '.[app]'`).

    loom serve --model models/BAGEL-7B-MoT
    loom serve --model tests/fixtures/bagel-tiny --config configs/infer/tiny_cpu.yaml --port 7861

Any `loom generate` sampling / placement flag (--config, --timesteps, --resolution, --device, --dtype, …) sets the
server's defaults; the page can change seed, timesteps, resolution and step counts per request. Requests run one
at a time (one model in memory). Each result is also saved as an output folder under --out-root.
Exit status: 0 after a clean shutdown, 2 bad input (nothing started).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loom serve", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="a BAGEL release folder or a loom export")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--out-root", help="where finished generations are saved (default: a new temp folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)

    def fail(msg: str) -> int:
        print(f"loom serve: error: {msg}", file=sys.stderr)
        return 2

    try:
        import gradio  # noqa: F401
    except ImportError:
        return fail("the web demo needs Gradio: pip install -e '.[app]'")
    from ..infer.__main__ import build_parser as generate_parser
    from ..infer.__main__ import settings_from_args
    from ..infer.pipeline import InputError, Pipeline

    # the generation flags are `loom generate`'s own (one parser, one meaning per flag)
    gen = generate_parser().parse_args(["tutorial", "--model", args.model, "--out", "-", *rest])
    try:
        defaults = settings_from_args(gen)
    except InputError as e:
        return fail(str(e))
    if gen.threads:
        import torch

        torch.set_num_threads(gen.threads)
    try:
        pipe = Pipeline.from_pretrained(args.model, device=gen.device, dtype=gen.dtype, device_map=gen.device_map,
                                        max_memory_gib=gen.max_memory_gib, offload_folder=gen.offload_folder,
                                        attn_backend=gen.attn_backend, verbose=not gen.no_progress)
    except (FileNotFoundError, ValueError) as e:
        return fail(f"cannot load --model {args.model}: {e}")
    from .ui import DemoApp, build_app

    out_root = Path(args.out_root) if args.out_root else Path(tempfile.mkdtemp(prefix="loom-serve-"))
    demo = build_app(DemoApp(pipe, defaults, out_root), str(args.model))
    demo.queue(default_concurrency_limit=1)
    print(f"[loom] serving {args.model} on http://{args.host}:{args.port} (results under {out_root})", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=True,
                quiet=True, ssr_mode=False, mcp_server=False, allowed_paths=[str(out_root)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
