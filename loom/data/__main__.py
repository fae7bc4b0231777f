"""`loom data …` (also `python -m loom.data …`): build and check training manifests (data/README.md).

  validate       check every row — schema, files exist and decode, plan steps match frames, every built instance
                 fits the token budget — and print a summary; exit status 1 when any row has an error
  frames         videos / image folders / blog pages → 4–6 distinct frames each (frames.jsonl)
  caption        frames.jsonl → tutorial manifest, a VLM writes the prompt and one caption per frame
  filter         manifests → filtered manifest (≥ 3 steps, CLIP alignment, visual change, near-duplicates,
                 overlap with held-out data) and a funnel report
  compose-pairs  isolated-subject images → composition + decomposition rows with entity tokens
  destylize      stylised references → (style, content, output) style-transfer rows via an image-edit endpoint
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _context(args):
    """(tokenizer, geometry, BuildConfig, max tokens per sample) from --train-config or the explicit flags."""
    from ..model.configs import preset
    from .manifest import build_config
    from .packing import PackGeometry
    from .tokenizer import load_tokenizer

    build = dict(kv.split("=", 1) for kv in args.build)
    build = {k: json.loads(v) if v[:1] in "[{0123456789-" or v in ("true", "false", "null") else v
             for k, v in build.items()}
    cap = args.max_tokens
    if args.train_config:
        from ..train.config import load_train_config

        cfg = load_train_config(args.train_config, ["run.dir=/dev/null", "run.total_steps=1", *args.overrides])
        kind, _, path = cfg.model.init.partition(":")
        if kind == "scratch":
            from ..config import merge_into

            mcfg, tok_dir = merge_into(preset(cfg.model.preset), cfg.model.overrides), cfg.model.tokenizer
        else:
            from ..model.weights import config_from_release

            mcfg, tok_dir = config_from_release(path), cfg.model.tokenizer or path
        build = {**cfg.data.build, **build}
        cap = cap or cfg.data.max_tokens_per_sample
    else:
        mcfg, tok_dir = preset(args.preset), args.tokenizer
    tok = load_tokenizer(tok_dir) if tok_dir else None
    bcfg = build_config(build, (mcfg.max_frames, mcfg.max_references))
    if tok is not None:  # as the trainer does: each entity tag is one token (`<object>` …), not a warning
        from .entities import register_entity_tokens

        register_entity_tokens(tok, bcfg.entity_tokens)
    return tok, PackGeometry.from_config(mcfg), bcfg, cap


def validate_main(args) -> int:
    from .validate import validate_manifest

    tok, geometry, build, cap = _context(args)
    if tok is None:
        print("note: no tokenizer given (--tokenizer / --train-config): checking schema and images only, "
              "not token lengths", file=sys.stderr)
    report = validate_manifest(args.manifest, tok, build, geometry, cap, args.limit, format=args.format)
    print(report.summary())
    if args.json:
        from ..config import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1))
    return 1 if report.errors else 0


def main(argv: list[str] | None = None) -> int:
    from .construct.cli import add_parsers
    from .construct.stage import StageError

    ap = argparse.ArgumentParser(prog="loom data", description="Build and check training manifests "
                                 "(formats and the construction pipeline: data/README.md).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check every row of a manifest and print a summary")
    v.add_argument("manifest", type=Path, help="manifest .jsonl / .parquet / HF datasets folder")
    v.add_argument("--train-config", help="take tokenizer, geometry, data.build and budget from a train YAML")
    v.add_argument("overrides", nargs="*", help="key=value overrides of --train-config")
    v.add_argument("--tokenizer", help="tokenizer folder (without --train-config)")
    v.add_argument("--preset", default="bagel-7b-mot", help="model preset for the geometry (without --train-config)")
    v.add_argument("--build", action="append", default=[], metavar="KEY=VALUE",
                   help="BuildConfig override, e.g. --build vae_transform=[1024,512,16]")
    v.add_argument("--max-tokens", type=int, default=None, help="max tokens per instance")
    v.add_argument("--limit", type=int, default=None, help="check only the first N rows")
    v.add_argument("--format", default="auto", help="auto | jsonl | parquet | hf")
    v.add_argument("--json", help="also write the report as JSON here")
    v.set_defaults(fn=validate_main)
    add_parsers(sub)
    args, extra = ap.parse_known_args(argv)
    # argparse cannot take positionals after an option when the first positional already matched: accept
    # `validate MANIFEST --train-config X key=value …` as well as the overrides before the option
    if extra and args.cmd == "validate" and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides += extra
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.fn(args) or 0)
    except (StageError, ValueError, FileNotFoundError) as e:
        print(f"loom data {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from ..utils.openai_client import EndpointError  # lazily: openai is not needed by validate / frames

        if not isinstance(e, EndpointError):
            raise
        print(f"loom data {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
