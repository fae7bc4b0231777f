"""Can this training config start? Checked before the run folder is created or a weight is loaded: the model
source, the tokenizer, every data source and an explicit resume checkpoint exist. A message names the config
key and, when a path came from an unset environment variable's default (`${oc.env:BAGEL_DIR,…}`), that
variable — the usual cause is a missing `export BAGEL_DIR=…`. Used by `loom train` and `loom data validate
--train-config`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import ConfigError
from .config import TrainConfig

# which environment variable the shipped configs use for which key
ENV_FOR = {"model.init": "BAGEL_DIR", "data.sources": "LOOM_DATA"}


def _hint(key: str, config_text: str, overrides: list[str] | tuple[str, ...]) -> str:
    var = ENV_FOR.get(key)
    if var is None or var in os.environ or f"oc.env:{var}" not in config_text:
        return ""
    if any(o.split("=", 1)[0].startswith(key) for o in overrides):
        return ""
    return f" — {var} is not set, so the config's default was used: export {var}=/path (or override {key})"


def preflight(cfg: TrainConfig, config_path: str | Path | None = None,
              overrides: list[str] | tuple[str, ...] = (), check_data: bool = True) -> None:
    """Raise `ConfigError` listing every missing input of `cfg` (all on one line). `check_data=False`: only the
    model side (`loom data validate --train-config` checks a manifest of its own)."""
    text = Path(config_path).read_text(encoding="utf-8") if config_path and Path(config_path).is_file() else ""
    problems = []
    kind, _, path = cfg.model.init.partition(":")
    if kind == "scratch":
        if cfg.model.tokenizer and not Path(cfg.model.tokenizer).is_dir():
            problems.append(f"model.tokenizer={cfg.model.tokenizer} is not a folder")
    elif kind in ("bagel", "export") and path:
        if not (Path(path) / "llm_config.json").is_file():
            what = "a BAGEL release" if kind == "bagel" else "a loom export"
            problems.append(f"model.init={cfg.model.init}: {path} is not {what} folder (no llm_config.json)"
                            + _hint("model.init", text, overrides))
    for name, sc in cfg.data.sources.items() if check_data else ():
        if sc.path == "synthetic" or sc.format in ("synthetic", "hf"):
            continue
        if not Path(sc.path).exists():
            problems.append(f"data.sources.{name}.path={sc.path} does not exist"
                            + _hint("data.sources", text, overrides))
    if cfg.checkpoint.resume_from and not (Path(cfg.checkpoint.resume_from) / "trainer_state.json").is_file():
        problems.append(f"checkpoint.resume_from={cfg.checkpoint.resume_from} is not a complete checkpoint folder")
    if problems:
        # one variable's hint once, not per source
        seen: set[str] = set()
        out = []
        for p in problems:
            m = re.search(r" — (\w+) is not set.*$", p)
            if m and m.group(1) in seen:
                p = p[: m.start()]
            elif m:
                seen.add(m.group(1))
            out.append(p)
        raise ConfigError("; ".join(out))
