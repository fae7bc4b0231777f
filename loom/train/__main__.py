"""`python -m loom.train CONFIG.yaml [key=value ...]` (also under `accelerate launch -m loom.train` / torchrun)."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loom train", description="Train / fine-tune Loom (configs/train/*.yaml).")
    ap.add_argument("config", help="training YAML (configs/train/...)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-5 run.dir=/runs/x")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    from .config import load_train_config

    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from ..config import to_yaml

        print(to_yaml(cfg))
        return 0
    from ..data.loader import DataError
    from . import parallel
    from .trainer import Trainer, TrainingError

    try:
        result = Trainer(cfg).run()
    except (DataError, TrainingError) as e:  # a stop the run decided on (bad data, NaN steps): one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        parallel.shutdown()
    print(f"[loom] training {result['status']} at step {result['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
