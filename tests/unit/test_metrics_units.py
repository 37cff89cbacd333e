"""The pieces of --metrics-listen that need no network: address parsing, the console scripts'
GRPC_VERBOSITY default, the stop origin label, the runtime counters folded at a session's end."""

from __future__ import annotations

import pytest

from dispatcher.core.actions import SessionOutcome
from dispatcher.metrics.stats import RuntimeStats, stop_origin
from shared.console import quiet_grpc
from shared.metrics import MetricsConfig, parse_listen
from shared.model import SessionState, StopCode, StopInfo


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":0", ("0.0.0.0", 0)), ("[::1]:80", ("::1", 80)),
     ("metrics.local:9100", ("metrics.local", 9100))],
)  # fmt: skip
def test_listen_addresses_parse(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9464", "127.0.0.1", "127.0.0.1:65536", "a b:1", "127.0.0.1:-1"])
def test_bad_listen_addresses_name_the_value(value: str) -> None:
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        MetricsConfig(listen=value)


def test_metrics_are_off_unless_asked_for() -> None:
    assert MetricsConfig().listen == ""


def test_the_console_scripts_quiet_grpc_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    quiet_grpc()
    import os

    assert os.environ["GRPC_VERBOSITY"] == "ERROR"
    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
    quiet_grpc()
    assert os.environ["GRPC_VERBOSITY"] == "DEBUG"


def test_stop_origins_are_kinds_not_names() -> None:
    assert stop_origin(("operator:alice", "dispatcher:d1")) == "operator"
    assert stop_origin(("policy:content_blocklist",)) == "policy"
    assert stop_origin(()) == "unknown"


def test_an_ended_session_is_folded_in_once_with_its_drops_by_reason() -> None:
    stats = RuntimeStats()
    stop = StopInfo(code=StopCode.OPERATOR, reason="enough", path=("operator:alice",))
    outcome = SessionOutcome(SessionState.STOPPED, "enough", "operator:alice", stop=stop, stop_to_confirm_ms=2.0)
    stats.session_ended(
        outcome, packets_in={"content": 3}, packets_out={"ack": 1}, dropped_in=2, unsent=1, outbox_full=4
    )
    assert stats.packets_in == {"content": 3} and stats.packets_out == {"ack": 1}
    assert stats.sessions_ended == {"STOPPED": 1}
    assert stats.stops == {("OPERATOR", "operator"): 1}
    assert stats.dropped == {"after_stop": 2, "unsent": 1}
    assert stats.outbox_full == 4
