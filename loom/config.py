"""Typed config glue (codebase-anchors §3.2): a dataclass schema, YAML for values, `key=value` overrides.

Precedence: dataclass defaults ← YAML file ← CLI dotlist. OmegaConf's struct mode makes an unknown key (a typo)
an error, values are type-checked against the schema, and required fields use `MISSING`; an error says whether
it came from the YAML file or from a command-line override. The resolved config is written with `write_yaml`
(atomic) into the run directory and into every checkpoint and export.

Paths: a relative path means relative to the current directory. Two resolvers anchor paths instead:
`${loom_root:}` (this loom checkout, so the shipped configs work from any directory) and `${config_dir:}` (the
folder of the YAML being loaded), e.g. `path: ${oc.env:LOOM_DATA,${loom_root:}/data}/style/train.jsonl`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .utils.io import atomic_write_text  # noqa: F401  (re-exported)

__all__ = ["MISSING", "ConfigError", "load", "merge_into", "to_dict", "to_yaml", "write_yaml", "atomic_write_text"]

T = TypeVar("T")
LOOM_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding configs/, data/, tests/fixtures/


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


def _register_resolvers(path: str | Path | None) -> None:
    here = str(Path(path).resolve().parent) if path is not None else str(Path.cwd())
    OmegaConf.register_resolver("loom_root", lambda: str(LOOM_ROOT), replace=True, annotation_validation="off")
    OmegaConf.register_resolver("config_dir", lambda: here, replace=True, annotation_validation="off")


def _why(e: OmegaConfBaseException) -> str:
    """OmegaConf's first message line plus the full key (its message is several lines)."""
    msg = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
    key = getattr(e, "full_key", None)
    return f"{msg} (key {key})" if key and key not in msg else msg


def load(schema: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Resolve `schema` defaults ← YAML `path` ← dotlist `overrides` (`optim.lr=1e-4`) into a dataclass instance."""
    _register_resolvers(path)
    cfg = _structured(schema)
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(str(path)))
            _open_maps(cfg)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"invalid config in {path}: {_why(e)}") from None
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"command-line overrides must look like key=value, got {bad}")
    for o in overrides:  # one at a time, so an error names the override that caused it
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"invalid command-line override {o!r}: {_why(e)}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid command-line override {o!r}: {str(e).splitlines()[0]}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config values not set: {', '.join(missing)} (set them in the YAML or as k=v)")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        where = f" (from {path} and the command line)" if path else ""
        raise ConfigError(f"invalid config{where}: {_why(e)}") from None


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
