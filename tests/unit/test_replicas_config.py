"""`--store redis://...` and the replicas' settings: what is accepted, what each refusal says."""

from __future__ import annotations

import pytest

from dispatcher.cluster.redis_replicas import _lost
from dispatcher.cluster.store_url import parse_redis_url
from dispatcher.config import DispatcherConfig, ReplicasConfig, StoreConfig
from shared import wire
from shared.settings import describe

pytestmark = pytest.mark.timeout(10)


def test_a_redis_url_is_read_into_its_parts_and_shown_without_its_password() -> None:
    url = parse_redis_url("redis://:s3cret@cache.internal:6380/2")
    assert (url.host, url.port, url.db) == ("cache.internal", 6380, 2)
    assert url.shown == "redis://cache.internal:6380/2"
    assert parse_redis_url("rediss://cache").shown == "rediss://cache:6379/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://", "names no host"),
        ("redis://cache:port/0", "the port is not a number"),
        ("redis://cache:6379/zero", "the database must be a number"),
        ("redis://cache:6379/0?timeout=1", "no query or fragment"),
    ],
)
def test_a_bad_store_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StoreConfig(url=url)


def test_a_password_in_a_bad_url_is_not_repeated() -> None:
    with pytest.raises(ValueError) as refused:
        parse_redis_url("http://user:s3cret@cache:6379/0")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"advertise": "no-port"}, "replica-advertise must be HOST:PORT"),
        ({"lease_ms": 100}, "replica-lease-ms must be between 300 and 600000"),
        ({"ended_ttl_s": 0.5}, "store-ended-ttl-s must be >= 1"),
        ({"ended_ttl_s": float("nan")}, "store-ended-ttl-s must be >= 1"),
    ],
)
def test_replica_settings_out_of_range_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReplicasConfig(**fields)  # type: ignore[arg-type]


def test_a_lost_session_ends_cancelled_replica_lost_with_nothing_running() -> None:
    info = wire.ctl.SessionInfo(session_id="s", state=wire.ctl.SESSION_STATE_AWAITING_TOOL, tool_calls_running=2)
    lost = _lost(info, 1234)
    assert lost.state == wire.ctl.SESSION_STATE_CANCELLED and lost.tool_calls_running == 0
    outcome = lost.outcome
    assert (outcome.state, outcome.reason, outcome.error_code, outcome.status, outcome.ended_at_ms) == (
        wire.ctl.SESSION_STATE_CANCELLED, "replica lost", "REPLICA_LOST", "UNAVAILABLE", 1234,
    )  # fmt: skip


def test_the_store_url_is_not_printed_with_the_configuration() -> None:
    shown = describe(DispatcherConfig(store=StoreConfig(url="redis://:s3cret@cache:6379/0")))
    assert shown["store"]["url"] == "***"
