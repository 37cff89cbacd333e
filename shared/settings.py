"""Frozen, validated configuration built from defaults < TOML file < environment < flags.

A config is a frozen dataclass whose fields are *sections* (themselves frozen
dataclasses). Each leaf field declares its help text with `setting(...)`; from that one
declaration come the TOML key (`[section] name`), the flag (`--section-name`, or the
field's own `flag=`), the environment variable (`PREFIX_` + the flag in upper snake
case) and the `--help` line. Loading happens here only; the rest of the code receives
finished config objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "CLI_CONTEXT",
    "ConfigError",
    "Setting",
    "config_file_option",
    "config_options",
    "describe",
    "load_cli_config",
    "load_config",
    "setting",
]

T = TypeVar("T")
_META = "setting"


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range: the operator's fault."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Meta:
    help: str
    flag: str | None
    secret: bool = False
    split: bool = True


def setting(default: Any, help: str, *, flag: str | None = None, secret: bool = False, split: bool = True) -> Any:
    """Declare a config field with its help text (and optionally its own flag name).

    A `secret` setting is shown as "***" by `describe` (and so in every start-up log line).
    A sequence setting given as one string (an environment variable, a TOML string) is a JSON
    list (`["a", "b"]`) or comma-separated; with `split=False` (regular expressions, whose
    commas are their own: `a{1,3}`) it is a JSON list of strings or else one item.
    """
    meta = {_META: _Meta(help=help, flag=flag, secret=secret, split=split)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence settings")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One leaf field of a config, with every name it is known by."""

    section: str
    name: str
    type: Any
    default: Any
    help: str
    flag: str
    env: str
    split: bool = True

    @property
    def dest(self) -> str:
        return f"{self.section}__{self.name}"


def _sections(cls: type[Any]) -> list[tuple[str, type[Any]]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


def _settings(cls: type[Any], env_prefix: str) -> list[Setting]:
    out: list[Setting] = []
    for section, section_cls in _sections(cls):
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            meta: _Meta | None = f.metadata.get(_META)
            if meta is None:
                continue
            flag = meta.flag or f"{section}-{f.name}".replace("_", "-")
            env = env_prefix + flag.replace("-", "_").upper()
            out.append(Setting(section, f.name, hints[f.name], f.default, meta.help, flag, env, meta.split))
    return out


def _parse(raw: Any, kind: Any, origin: str, *, split: bool = True) -> Any:
    """Convert a TOML/env/flag value to the field's type, or explain why it cannot be."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"expected a boolean, got {raw!r}")
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer, got a boolean")
            return int(str(raw).replace("_", ""))
        if kind is float:
            return float(raw)
        if kind is str:
            return str(raw)
        if typing.get_origin(kind) is tuple:
            if isinstance(raw, (list, tuple)):
                return tuple(str(x) for x in raw)
            text = str(raw).strip()
            if not text:
                return ()
            if not split:  # one item, unless it is a JSON list of strings
                return _json_strings(text) or (text,)
            if text.startswith("["):  # a JSON list: the way to pass items containing commas
                return tuple(str(x) for x in json.loads(text))
            return tuple(part.strip() for part in text.split(",") if part.strip())
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{origin}: {exc}") from exc
    raise ConfigError(f"{origin}: unsupported setting type {kind!r}")


def _json_strings(text: str) -> tuple[str, ...] | None:
    """`text` as a JSON list of strings, or None when it is not one (`[a-z]+` is a pattern)."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


def load_config(
    cls: type[T],
    *,
    env_prefix: str,
    toml_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    base: T | None = None,
) -> T:
    """Build `cls` from `base` (or defaults) < TOML < environment < flags.

    `flags` maps `Setting.dest` to values, None meaning "not given".
    """
    environ = os.environ if environ is None else environ
    flags = flags or {}
    table: dict[str, Any] = {}
    if toml_path:
        try:
            table = tomllib.loads(Path(toml_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {toml_path}: {exc}") from exc
    known_sections = {name for name, _ in _sections(cls)}
    not_tables = sorted(name for name, value in table.items() if not isinstance(value, dict))
    if not_tables:
        raise ConfigError(f"config file {toml_path}: {not_tables} must be tables ([section] headers)")
    unknown = set(table) - known_sections
    if unknown:
        raise ConfigError(f"config file {toml_path}: unknown section(s) {sorted(unknown)}")

    values: dict[str, dict[str, Any]] = {}
    for s in _settings(cls, env_prefix):
        section_table = table.get(s.section, {})
        if s.dest in flags and flags[s.dest] not in (None, ()):
            value = _parse(flags[s.dest], s.type, f"--{s.flag}", split=s.split)
        elif s.env in environ:
            value = _parse(environ[s.env], s.type, s.env, split=s.split)
        elif s.name in section_table:
            value = _parse(section_table[s.name], s.type, f"[{s.section}] {s.name} in {toml_path}", split=s.split)
        else:
            continue
        values.setdefault(s.section, {})[s.name] = value
    for section, section_table in table.items():
        names = {f.name for f in dataclasses.fields(dict(_sections(cls))[section])}
        extra = set(section_table) - names
        if extra:
            raise ConfigError(f"config file {toml_path}: unknown key(s) {sorted(extra)} in [{section}]")

    start: Any = base if base is not None else cls()
    try:
        sections = {
            name: dataclasses.replace(getattr(start, name), **values.get(name, {})) for name, _ in _sections(cls)
        }
        return cls(**sections)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc


def config_options(cls: type[Any], *, env_prefix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click decorator adding one option per setting; values arrive as `Setting.dest` kwargs."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for s in reversed(_settings(cls, env_prefix)):
            shown = ",".join(s.default) if isinstance(s.default, tuple) else s.default
            help_text = f"{s.help} [env {s.env}; default {shown!s}]"
            if typing.get_origin(s.type) is tuple:
                option = click.option(f"--{s.flag}", s.dest, multiple=True, help=help_text + " (repeatable)")
            elif s.type is bool:
                option = click.option(f"--{s.flag}/--no-{s.flag}", s.dest, default=None, help=help_text)
            else:
                click_type = {int: click.INT, float: click.FLOAT, str: click.STRING}[s.type]
                option = click.option(f"--{s.flag}", s.dest, type=click_type, default=None, help=help_text)
            func = option(func)
        return func

    return decorate


# Both CLIs: -h as well as --help, and wide help so long env var names are never split.
CLI_CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "terminal_width": 120, "max_content_width": 120}


def config_file_option(cls: type[Any], *, env_prefix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The `--config FILE` option (env PREFIX_CONFIG), naming the TOML sections of `cls`."""
    sections = ", ".join(f"[{name}]" for name, _ in _sections(cls))
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        envvar=f"{env_prefix}CONFIG",
        help=f"TOML file with {sections} sections [env {env_prefix}CONFIG]",
    )


def load_cli_config(cls: type[T], *, env_prefix: str, config_file: str | None, flags: Mapping[str, Any]) -> T:
    """`load_config` for a CLI: a bad value is a one-line usage error, never a traceback."""
    try:
        return load_config(cls, env_prefix=env_prefix, toml_path=config_file, flags=flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def describe(config: Any) -> dict[str, dict[str, Any]]:
    """The config as nested plain data, for the start-up log line."""
    return {
        name: {
            f.name: _shown(f, getattr(getattr(config, name), f.name)) for f in dataclasses.fields(getattr(config, name))
        }
        for name, _ in _sections(type(config))
    }


def _shown(field: dataclasses.Field[Any], value: Any) -> Any:
    meta: _Meta | None = field.metadata.get(_META)
    return "***" if meta is not None and meta.secret and value else value
