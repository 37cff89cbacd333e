"""`--mcp` values and the registry's per-prefix swap: no process, no network."""

from __future__ import annotations

import pytest

from dispatcher.tools import ToolRegistry, ToolSpec
from dispatcher.tools.mcp import McpStartError, parse_mcp_value


async def _nothing(args: dict[str, object]) -> None:
    return None


def spec(name: str) -> ToolSpec:
    return ToolSpec(name=name, func=_nothing, schema={"type": "object"})


@pytest.mark.parametrize(
    ("value", "prefix", "command", "url"),
    [
        ("fs=stdio:npx -y srv /tmp", "fs", ("npx", "-y", "srv", "/tmp"), ""),
        ("stdio:mcp-server-git --repo .", "mcp-server-git", ("mcp-server-git", "--repo", "."), ""),
        ("stdio:node node_modules/@m/server-filesystem/dist/index.js /d", "server-filesystem", None, ""),
        ("stdio:python3 tools/weather.py", "weather", ("python3", "tools/weather.py"), ""),
        ("web=http:http://127.0.0.1:8000/mcp", "web", (), "http://127.0.0.1:8000/mcp"),
        ("http:https://mcp.example.com/mcp", "mcp_example_com", (), "https://mcp.example.com/mcp"),
    ],
)
def test_values_parse_with_a_given_or_derived_prefix(
    value: str, prefix: str, command: tuple[str, ...] | None, url: str
) -> None:
    parsed = parse_mcp_value(value)
    assert parsed.prefix == prefix
    if command is not None:
        assert parsed.command == command
    assert parsed.url == url


@pytest.mark.parametrize("value", ["", "fs", "ftp:x", "stdio:", "http:not-a-url", "a b=stdio:x", "stdio:'open"])
def test_bad_values_are_one_line_errors(value: str) -> None:
    with pytest.raises(McpStartError, match="--mcp"):
        parse_mcp_value(value)


def test_replace_prefix_swaps_only_that_prefixs_tools() -> None:
    registry = ToolRegistry()
    for name in ("calculator", "fs.read", "fs.write", "fsx.other"):
        registry.register(spec(name))
    registry.replace_prefix("fs", [spec("fs.read"), spec("fs.list")])
    assert registry.names() == ["calculator", "fs.list", "fs.read", "fsx.other"]
    with pytest.raises(ValueError, match="not under the prefix"):
        registry.replace_prefix("fs", [spec("calculator")])
    assert registry.names() == ["calculator", "fs.list", "fs.read", "fsx.other"]  # unchanged on error
    registry.replace_prefix("fs", [])
    assert registry.names() == ["calculator", "fsx.other"]
