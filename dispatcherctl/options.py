"""Pieces every `dispatcherctl` command shares: option callbacks, the client from the context."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from dispatcherctl.client import ClientConfig, ControlClient
from dispatcherctl.names import parse_stop_code

__all__ = ["json_option", "meta_callback", "names_callback", "open_client", "stdout_is_tty", "stop_code_callback"]


def json_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def names_callback(parse: Callable[[Sequence[str]], list[str]]) -> Callable[..., list[str]]:
    def callback(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
        try:
            return parse(values)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc

    return callback


def stop_code_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return parse_stop_code(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def meta_callback(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        metadata[key.strip()] = value
    return metadata


def stdout_is_tty() -> bool:
    """Tables and colours for a terminal; plain text for pipes and files."""
    return sys.stdout.isatty()


@contextmanager
def open_client(ctx: click.Context) -> Iterator[ControlClient]:
    """A client for the group's options (`ctx.obj`), closed when the block ends."""
    config: ClientConfig = ctx.obj
    with ControlClient(config) as client:
        yield client
