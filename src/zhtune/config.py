"""Typed configs: one dataclass per command, YAML presets, CLI overrides, validation.

Every field is declared with :func:`arg`, which carries its help text and (optionally) the
allowed values. ``load_config`` resolves ``defaults < YAML preset < CLI flags`` and the
dataclass ``__post_init__`` validates the result; ``save_config`` writes the resolved
config as ``config.yaml`` into the output directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from zhtune.errors import ConfigError

T = TypeVar("T")


def arg(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with help text and (for strings) the allowed values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def validate_choices(cfg: Any) -> None:
    """Check every field that declares ``choices``; call from ``__post_init__``."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(
                f"config field '{f.name}': got {value!r}, allowed: {', '.join(choices)}"
            )


def check(cond: bool, field: str, message: str) -> None:
    """Raise a one-line ConfigError naming ``field`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"config field '{field}': {message}")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _convert(name: str, tp: Any, value: Any) -> Any:
    """Convert a CLI string or YAML value to the field's type, with a clear error."""
    inner, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typing.get_origin(inner) is list:
            (item,) = typing.get_args(inner)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return [item(v) for v in value]
        if inner is float:
            return float(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if inner is str:
            return str(value)
    except (TypeError, ValueError):
        tname = getattr(inner, "__name__", str(inner))
        raise ConfigError(f"config field '{name}': {value!r} is not a valid {tname}") from None
    return value


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--field-name`` flag per dataclass field."""
    parser.add_argument(
        "--config", metavar="YAML", help="YAML preset; flags given on the command line win"
    )
    types_ = field_types(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (also settable in the YAML)")
    for f in dataclasses.fields(cls):
        default = (
            f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        )
        help_ = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_ += f" [{'|'.join(choices)}]"
        help_ += f" (default: {default!r})"
        inner, _ = _base_type(types_[f.name])
        metavar = (
            "BOOL" if inner is bool else ("A,B,..." if typing.get_origin(inner) is list else None)
        )
        flag = "--" + f.name.replace("_", "-")
        if inner is bool:
            _add_bool_flag(parser, group, flag, f.name, help_)
            continue
        group.add_argument(flag, dest=f.name, default=None, help=help_, metavar=metavar)


def _add_bool_flag(parser: Any, group: Any, flag: str, dest: str, help_: str) -> None:
    """``--flag`` alone (true), ``--flag true|false`` and ``--no-flag`` (false), unless the
    command already defines ``--no-flag`` itself."""
    no_flag = "--no-" + flag[2:]
    has_no = no_flag in parser._option_string_actions
    forms = f"{flag} [true|false]" + ("" if has_no else f", {no_flag}")
    group.add_argument(flag, dest=dest, default=None, nargs="?", const="true",
                       metavar="BOOL", help=f"{help_}; {forms}")  # fmt: skip
    if not has_no:
        group.add_argument(no_flag, dest=dest, action="store_const", const="false",
                           default=None, help=argparse.SUPPRESS)  # fmt: skip


def load_config(cls: type[T], yaml_path: str | Path | None = None, **overrides: Any) -> T:
    """Build ``cls`` from defaults, an optional YAML file and overrides (None = not given)."""
    values: dict[str, Any] = {}
    types_ = field_types(cls)
    if yaml_path:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value")
        for key, value in loaded.items():
            if key.startswith("_"):  # metadata written by save_config
                continue
            if key not in types_:
                raise ConfigError(
                    f"{path}: unknown config field '{key}' for {cls.__name__}; "
                    f"known fields: {', '.join(sorted(types_))}"
                )
            values[key] = value
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in types_:
            raise ConfigError(f"unknown config field '{key}' for {cls.__name__}")
        values[key] = value
    converted = {k: _convert(k, types_[k], v) for k, v in values.items()}
    return cls(**converted)


def config_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    overrides = {k: v for k, v in vars(ns).items() if k in names}
    return load_config(cls, getattr(ns, "config", None), **overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, out_dir: str | Path) -> Path:
    """Write the resolved config as ``config.yaml`` (with the command's class name)."""
    path = Path(out_dir) / "config.yaml"
    body = {"_config_class": type(cfg).__name__, **to_dict(cfg)}
    path.write_text(yaml.safe_dump(body, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
