"""Config loading (defaults < TOML < env < flags), click options, keepalive and grpc options."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from dispatcher.config import AuthConfig, DispatcherConfig, PolicyConfig, ServerConfig
from shared.keepalive import KeepaliveConfig
from shared.settings import ConfigError, config_options, describe, load_config

pytestmark = pytest.mark.timeout(10)

PREFIX = "DISPATCHER_"


def load(
    *, toml: str | None = None, tmp_path: Path | None = None, env: dict[str, str] | None = None, **flags: Any
) -> DispatcherConfig:
    toml_path = None
    if toml is not None:
        assert tmp_path is not None
        toml_path = tmp_path / "dispatcher.toml"
        toml_path.write_text(toml)
    return load_config(DispatcherConfig, env_prefix=PREFIX, toml_path=toml_path, environ=env or {}, flags=flags)


# -- precedence -------------------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    config = load()
    assert config == DispatcherConfig()
    assert config.server.listen == "127.0.0.1:50051"
    assert config.policy.block_patterns == ()


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    config = load(
        tmp_path=tmp_path,
        toml='[server]\nlisten = "0.0.0.0:6000"\n[keepalive]\ntime_ms = 30_000\n'
        '[policy]\nblock_patterns = ["a", "b,c"]\nscan_thoughts = true\n',
    )
    assert config.server.listen == "0.0.0.0:6000"
    assert config.keepalive.time_ms == 30_000
    assert config.policy.block_patterns == ("a", "b,c")
    assert config.policy.scan_thoughts is True
    assert config.session == DispatcherConfig().session  # untouched sections keep their defaults


def test_env_overrides_toml(tmp_path: Path) -> None:
    config = load(
        tmp_path=tmp_path,
        toml='[server]\nlisten = "0.0.0.0:6000"\ninstance_id = "from-toml"\n',
        env={"DISPATCHER_LISTEN": "0.0.0.0:7000"},
    )
    assert config.server.listen == "0.0.0.0:7000"
    assert config.server.instance_id == "from-toml"


def test_flags_override_env_and_toml(tmp_path: Path) -> None:
    config = load(
        tmp_path=tmp_path,
        toml='[server]\nlisten = "0.0.0.0:6000"\n[keepalive]\ntime_ms = 30000\n',
        env={"DISPATCHER_LISTEN": "0.0.0.0:7000", "DISPATCHER_KEEPALIVE_TIME_MS": "40000"},
        server__listen="0.0.0.0:8000",
        keepalive__time_ms=None,  # None = flag not given: env wins
    )
    assert config.server.listen == "0.0.0.0:8000"
    assert config.keepalive.time_ms == 40_000


def test_empty_tuple_flag_means_not_given() -> None:
    config = load(env={"DISPATCHER_APPROVE": "x,y"}, tools__approve=())
    assert config.tools.approve == ("x", "y")


def test_false_bool_flag_is_given() -> None:
    config = load(env={"DISPATCHER_SCAN_THOUGHTS": "true"}, policy__scan_thoughts=False)
    assert config.policy.scan_thoughts is False


def test_base_config_is_the_starting_point() -> None:
    base = DispatcherConfig.for_tests()
    config = load_config(DispatcherConfig, env_prefix=PREFIX, environ={"DISPATCHER_MAX_TOOL_CALLS": "3"}, base=base)
    assert config.server.listen == "127.0.0.1:0"
    assert config.policy.max_tool_calls == 3
    assert config.policy.max_session_s == base.policy.max_session_s


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a,b , c", ("a", "b", "c")),
        ("single", ("single",)),
        ("", ()),
        ('["x,y", "z"]', ("x,y", "z")),
        ("[]", ()),
    ],
    ids=["comma-list", "single", "empty", "json-list", "json-empty"],
)
def test_tuple_setting_from_env(raw: str, expected: tuple[str, ...]) -> None:
    assert load(env={"DISPATCHER_APPROVE": raw}).tools.approve == expected


def test_bad_json_list_in_env_is_config_error() -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_APPROVE"):
        load(env={"DISPATCHER_APPROVE": '["unterminated'})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(?i)launch codes", ("(?i)launch codes",)),
        ("a{1,3}b", ("a{1,3}b",)),  # the comma is the regex's own
        ("(x|y),z", ("(x|y),z",)),
        ('["a{1,3}", "launch, codes"]', ("a{1,3}", "launch, codes")),  # several: a JSON list
        ("[Ll]aunch codes", ("[Ll]aunch codes",)),  # starts like JSON, is a pattern
        ("", ()),
    ],
    ids=["plain", "quantifier", "comma", "json-list", "char-class", "empty"],
)
def test_a_block_pattern_from_env_keeps_its_commas(raw: str, expected: tuple[str, ...]) -> None:
    config = load(env={"DISPATCHER_BLOCK_PATTERN": raw})
    assert config.policy.block_patterns == expected


def test_a_block_pattern_in_a_toml_string_keeps_its_commas(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[policy]\nblock_patterns = "a{1,3}"\n')
    config = load_config(DispatcherConfig, env_prefix=PREFIX, toml_path=path, environ={})
    assert config.policy.block_patterns == ("a{1,3}",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False), ("False", False), ("no", False)],
)
def test_bool_parsing_from_env(raw: str, expected: bool) -> None:
    assert load(env={"DISPATCHER_SCAN_THOUGHTS": raw}).policy.scan_thoughts is expected


def test_bad_bool_in_env_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"DISPATCHER_SCAN_THOUGHTS: expected a boolean, got 'maybe'"):
        load(env={"DISPATCHER_SCAN_THOUGHTS": "maybe"})


def test_int_with_underscores_from_env() -> None:
    assert load(env={"DISPATCHER_KEEPALIVE_TIME_MS": "25_000"}).keepalive.time_ms == 25_000


def test_bad_int_in_env_is_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^DISPATCHER_KEEPALIVE_TIME_MS: "):
        load(env={"DISPATCHER_KEEPALIVE_TIME_MS": "soon"})


def test_bool_for_int_in_toml_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[session\] ack_every_packets in .*dispatcher\.toml: expected an integer"):
        load(tmp_path=tmp_path, toml="[session]\nack_every_packets = true\n")


def test_float_setting_from_env() -> None:
    assert load(env={"DISPATCHER_MAX_SESSION_S": "1.5"}).policy.max_session_s == 1.5


# -- TOML errors ------------------------------------------------------------------------


def test_unknown_toml_section_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['servr'\]"):
        load(tmp_path=tmp_path, toml='[servr]\nlisten = "0.0.0.0:1"\n')


def test_unknown_toml_key_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lisen'\] in \[server\]"):
        load(tmp_path=tmp_path, toml='[server]\nlisen = "0.0.0.0:1"\n')


def test_malformed_toml_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load(tmp_path=tmp_path, toml="[server\nlisten = \n")


def test_missing_toml_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_config(DispatcherConfig, env_prefix=PREFIX, toml_path=tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize("toml", ["server = 5\n", 'server = "listen"\n'], ids=["int", "string"])
def test_section_that_is_not_a_table_is_config_error(tmp_path: Path, toml: str) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path=tmp_path, toml=toml)


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DISPATCHER_LISTEN": "localhost"}, "listen must be HOST:PORT"),
        ({"DISPATCHER_MAX_CONTENT_CHARS": "-1"}, "policy max_content_chars must be >= 0"),
        ({"DISPATCHER_MAX_TOOL_CALLS": "-5"}, "policy max_tool_calls must be >= 0"),
        ({"DISPATCHER_SESSION_ACK_EVERY_PACKETS": "0"}, "session ack_every_packets must be >= 1"),
        ({"DISPATCHER_KEEPALIVE_TIME_MS": "0"}, "keepalive time_ms and timeout_ms must be positive"),
        ({"DISPATCHER_LOG_LEVEL": "loud"}, "log level must be"),
        ({"DISPATCHER_BLOCK_PATTERN": "(open"}, "is not a valid regular expression"),
    ],
)
def test_invalid_values_surface_as_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(env=env)


def test_invalid_flag_value_surfaces_as_config_error() -> None:
    with pytest.raises(ConfigError, match="listen must be HOST:PORT"):
        load(server__listen="no-port-here")


def test_config_constructors_raise_value_error() -> None:
    with pytest.raises(ValueError, match="listen must be HOST:PORT"):
        ServerConfig(listen="127.0.0.1")
    with pytest.raises(ValueError, match="policy max_thought_chars must be >= 0"):
        PolicyConfig(max_thought_chars=-1)


def test_describe_lists_every_section() -> None:
    described = describe(DispatcherConfig())
    sections = {"server", "keepalive", "session", "policy", "pool", "auth", "tools", "log", "metrics", "tls"}
    sections.add("store")
    sections.add("replicas")
    assert set(described) == sections
    assert described["server"]["listen"] == "127.0.0.1:50051"


def test_describe_hides_secret_settings() -> None:
    config = DispatcherConfig(auth=AuthConfig(tokens="operator alice sha256:" + "0" * 64))
    assert describe(config)["auth"]["tokens"] == "***"
    assert describe(DispatcherConfig())["auth"]["tokens"] == ""  # nothing to hide


# -- click options ----------------------------------------------------------------------


def _command() -> click.Command:
    @click.command()
    @config_options(DispatcherConfig, env_prefix=PREFIX)
    def run(**flags: Any) -> None:
        config = load_config(DispatcherConfig, env_prefix=PREFIX, environ={}, flags=flags)
        click.echo(f"listen={config.server.listen}")
        click.echo(f"patterns={list(config.policy.block_patterns)}")
        click.echo(f"time_ms={config.keepalive.time_ms}")
        click.echo(f"scan={config.policy.scan_thoughts}")

    return run


def test_config_options_help_lists_flags_with_env_names() -> None:
    result = CliRunner().invoke(_command(), ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for flag, env in [
        ("--listen", "DISPATCHER_LISTEN"),
        ("--block-pattern", "DISPATCHER_BLOCK_PATTERN"),
        ("--keepalive-time-ms", "DISPATCHER_KEEPALIVE_TIME_MS"),
    ]:
        assert flag in text
        assert f"env {env};" in text
    assert "--scan-thoughts / --no-scan-thoughts" in text
    assert "(repeatable)" in text


def test_config_options_values_reach_load_config() -> None:
    args = [
        "--listen",
        "0.0.0.0:9000",
        "--block-pattern",
        "a",
        "--block-pattern",
        "b,c",
        "--keepalive-time-ms",
        "45000",
        "--scan-thoughts",
    ]
    result = CliRunner().invoke(_command(), args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "listen=0.0.0.0:9000",
        "patterns=['a', 'b,c']",
        "time_ms=45000",
        "scan=True",
    ]


def test_config_options_unset_flags_keep_defaults() -> None:
    result = CliRunner().invoke(_command(), [])
    assert result.exit_code == 0, result.output
    assert "listen=127.0.0.1:50051" in result.output
    assert "time_ms=20000" in result.output
    assert "scan=False" in result.output


def test_config_options_reject_bad_int() -> None:
    result = CliRunner().invoke(_command(), ["--keepalive-time-ms", "soon"])
    assert result.exit_code == 2
    assert "keepalive-time-ms" in result.output


# -- keepalive and grpc options ---------------------------------------------------------


def test_keepalive_server_options() -> None:
    options = dict(
        KeepaliveConfig(
            time_ms=21_000, timeout_ms=9_000, permit_without_calls=False, min_ping_interval_ms=4_000, max_ping_strikes=3
        ).server_options()
    )
    assert options == {
        "grpc.keepalive_time_ms": 21_000,
        "grpc.keepalive_timeout_ms": 9_000,
        "grpc.http2.ping_timeout_ms": 9_000,  # what bounds an unanswered keepalive PING in grpcio 1.85
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.min_ping_interval_without_data_ms": 4_000,
        "grpc.http2.max_ping_strikes": 3,
    }


def test_keepalive_client_options() -> None:
    options = dict(KeepaliveConfig().client_options())
    assert options == {
        "grpc.keepalive_time_ms": 20_000,
        "grpc.keepalive_timeout_ms": 10_000,
        "grpc.http2.ping_timeout_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    assert "grpc.http2.min_ping_interval_without_data_ms" not in options  # a server-only policy


def test_keepalive_accepts_client() -> None:
    server = KeepaliveConfig(min_ping_interval_ms=5_000)
    assert server.accepts_client(KeepaliveConfig(time_ms=5_000))
    assert server.accepts_client(KeepaliveConfig(time_ms=20_000))
    assert not server.accepts_client(KeepaliveConfig(time_ms=4_999))
    assert KeepaliveConfig().accepts_client(KeepaliveConfig())  # the defaults agree with each other


@pytest.mark.parametrize(
    "fields",
    [{"time_ms": 0}, {"timeout_ms": -1}, {"min_ping_interval_ms": -1}, {"max_ping_strikes": -1}],
)
def test_keepalive_rejects_invalid_values(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="keepalive"):
        KeepaliveConfig(**fields)


def test_dispatcher_grpc_options_include_message_limits_and_keepalive() -> None:
    config = DispatcherConfig(
        server=ServerConfig(max_receive_message_bytes=1_000, max_send_message_bytes=2_000),
        keepalive=KeepaliveConfig(time_ms=33_000, min_ping_interval_ms=7_000),
    )
    options = dict(config.grpc_options())
    assert options["grpc.max_receive_message_length"] == 1_000
    assert options["grpc.max_send_message_length"] == 2_000
    assert options["grpc.keepalive_time_ms"] == 33_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 7_000
    assert options["grpc.http2.max_ping_strikes"] == 2
    for key, value in config.keepalive.server_options():
        assert options[key] == value
    keys = [key for key, _ in config.grpc_options()]
    assert len(keys) == len(set(keys))  # no channel arg given twice


def test_dispatcher_grpc_options_connection_age_only_when_set() -> None:
    default = dict(DispatcherConfig().grpc_options())
    assert "grpc.max_connection_age_ms" not in default
    assert default["grpc.max_connection_idle_ms"] == 300_000
    aged = dict(DispatcherConfig(server=ServerConfig(max_connection_age_ms=60_000)).grpc_options())
    assert aged["grpc.max_connection_age_ms"] == 60_000
    assert aged["grpc.max_connection_age_grace_ms"] == 900_000
