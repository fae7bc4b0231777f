"""Typed config glue (codebase-anchors §3.2): a dataclass schema, YAML for values, `key=value` overrides.

Precedence: dataclass defaults ← YAML file ← CLI dotlist. OmegaConf's struct mode makes an unknown key (a typo)
an error, values are type-checked against the schema, and required fields use `MISSING`. The resolved config is
written with `write_yaml` (atomic) into the run directory and into every checkpoint and export.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .utils.io import atomic_write_text  # noqa: F401  (re-exported)

__all__ = ["MISSING", "ConfigError", "load", "merge_into", "to_dict", "to_yaml", "write_yaml", "atomic_write_text"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config could not be resolved: unknown key, wrong type, or a required value left unset."""


def _structured(schema: type[T] | T) -> DictConfig:
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    _open_maps(base)
    return base


def _open_maps(node: DictConfig) -> None:
    """Struct mode everywhere except `dict[...]` fields (e.g. `data.sources`), whose keys are user-chosen names;
    their values are still validated against the value type."""
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if child._metadata.object_type in (dict, None) and not child._is_missing() and not child._is_none():
                OmegaConf.set_struct(child, False)
            if not child._is_missing() and not child._is_none():
                _open_maps(child)


def load(schema: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Resolve `schema` defaults ← YAML `path` ← dotlist `overrides` (`optim.lr=1e-4`) into a dataclass instance."""
    try:
        cfg = _structured(schema)
        if path is not None:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(str(path)))
            _open_maps(cfg)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"required config values not set: {', '.join(missing)} (set them in the YAML or as k=v)")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        where = f" (from {path})" if path else ""
        raise ConfigError(f"invalid config{where}: {e}") from None


def merge_into(obj: T, values: dict[str, Any] | None) -> T:
    """Strictly merge a plain mapping onto a dataclass instance (e.g. `model.overrides` onto a preset)."""
    if not values:
        return obj
    try:
        cfg = OmegaConf.merge(_structured(obj), OmegaConf.create(values))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot apply overrides {values} to {type(obj).__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass (or DictConfig) → plain nested dict of builtins."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


def write_yaml(cfg: Any, path: str | Path) -> None:
    atomic_write_text(path, to_yaml(cfg))
