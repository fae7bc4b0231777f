"""`python -m loom.train CONFIG.yaml [key=value ...]` (also `loom train`, `accelerate launch -m loom.train`, torchrun).

Setup problems — a missing config file, a typo in the YAML or in an override, a model / data path that does not
exist (naming BAGEL_DIR / LOOM_DATA when their defaults were used) — are one-line errors with exit status 2,
printed once (rank 0), and no run folder is created. Ctrl-C finishes the current step, saves a checkpoint and
exits 130 (a second Ctrl-C stops at once; an unfinished save is removed, the previous checkpoint stays); SIGTERM
does the same with exit 0. A run that stops for a reason (too many bad samples or NaN steps) exits 1 with that
reason on one line.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

from ..config import ConfigError
from ..utils.cli import clean_warnings, fail, is_main

PROG = "loom train"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Train / fine-tune Loom (configs/train/*.yaml).")
    ap.add_argument("config", help="training YAML (configs/train/...)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-5 run.dir=/runs/x")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                    help="console log level (= log.level; the log files keep info)")
    return ap


class _Interrupts:
    """First Ctrl-C: ask the trainer to stop after this step (it saves, as on SIGTERM). Second: stop now."""

    def __init__(self, trainer) -> None:
        self.trainer, self.count = trainer, 0
        self.old = signal.signal(signal.SIGINT, self)

    def __call__(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if is_main():
            print(f"\n{PROG}: Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop without "
                  "saving)", file=sys.stderr, flush=True)
        self.trainer._stop = True

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.old)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with clean_warnings(PROG):
        return _main(args)


def _main(args) -> int:
    from .config import load_train_config
    from .preflight import preflight

    overrides = list(args.overrides) + ([f"log.level={args.log_level}"] if args.log_level else [])
    try:
        cfg = load_train_config(args.config, overrides)
        preflight(cfg, args.config, overrides)
    except ConfigError as e:
        return fail(PROG, str(e), 2, main_only=True)
    if args.print_config:
        from ..config import to_yaml

        if is_main():
            print(to_yaml(cfg))
        return 0

    from ..data.loader import DataError
    from . import parallel
    from .trainer import Trainer, TrainingError

    run_dir = Path(cfg.run.dir)
    existed = run_dir.exists()
    trainer = None
    try:
        try:
            trainer = Trainer(cfg)
        except (ValueError, OSError, ConfigError, DataError) as e:  # setup: nothing trained yet
            if not existed and is_main():
                shutil.rmtree(run_dir, ignore_errors=True)  # the folder this failed start created
            return fail(PROG, f"{e} (nothing was started{'' if existed else '; no run folder left behind'})", 2)
        except KeyboardInterrupt:
            if not existed and is_main():
                shutil.rmtree(run_dir, ignore_errors=True)
            print(f"{PROG}: interrupted during set-up; nothing was trained", file=sys.stderr)
            return 130
        interrupts = _Interrupts(trainer)
        try:
            result = trainer.run()
        except KeyboardInterrupt:  # the second Ctrl-C: a save in progress is dropped, earlier ones stay
            if is_main():
                for tmp in (run_dir / "checkpoints").glob("*.tmp"):
                    shutil.rmtree(tmp, ignore_errors=True)
            return fail(PROG, f"stopped without saving at step {trainer.step}; rerun the same command to resume "
                        "from the last checkpoint", 130, main_only=True)
        except (DataError, TrainingError) as e:
            return fail(PROG, f"training stopped at step {trainer.step}: {e}", 1)
        finally:
            interrupts.restore()
    finally:
        parallel.shutdown()
    if is_main():
        print(f"[loom] training {result['status']} at step {result['step']}")
    if interrupts.count:
        if is_main():
            print(f"{PROG}: interrupted; saved a checkpoint at step {result['step']} — rerun the same command to "
                  "resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
