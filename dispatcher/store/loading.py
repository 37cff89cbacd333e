"""`--store URL` -> a `SessionStore`: one small table of URL schemes.

- `memory://`: nothing outlives the process (the default; tests and demos).
- `sqlite:///PATH`: an SQLite file, SQLAlchemy's convention: `sqlite:///relative/path.db` is
  relative to the working directory, `sqlite:////absolute/path.db` (four slashes) absolute.
- `redis://HOST:PORT/DB` (`rediss://` for TLS): replicas' shared Redis (dispatcher/store/redis.py;
  the membership and directory on it are dispatcher/cluster/redis_replicas.py).

Another backend adds one entry to `_SCHEMES`.
"""

from __future__ import annotations

from collections.abc import Callable

from dispatcher.config import DispatcherConfig
from dispatcher.store.base import SessionStore
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sqlite import SqliteStore

__all__ = ["open_store", "store_schemes"]


def _memory(url: str, rest: str, config: DispatcherConfig) -> SessionStore:
    if rest:
        raise ValueError(f"--store {url!r}: memory:// takes nothing after it")
    return MemoryStore()


def _sqlite(url: str, rest: str, config: DispatcherConfig) -> SessionStore:
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            f"--store {url!r}: an SQLite store is sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = rest[1:]  # sqlite:///a.db -> a.db, sqlite:////var/a.db -> /var/a.db
    if "?" in path or "#" in path:
        raise ValueError(
            f"--store {url!r}: no query or fragment (the options are --store-sync, --store-commit-interval-ms)"
        )
    return SqliteStore(
        path,
        commit_interval_ms=config.store.commit_interval_ms,
        ended_kept=config.session.ended_sessions_kept,
        journals_kept=config.session.ended_journals_kept,
        sync=config.store.sync,
        url=url,
    )


def _redis(url: str, rest: str, config: DispatcherConfig) -> SessionStore:
    from dispatcher.store.redis import RedisStore  # redis-py only for those who use it

    return RedisStore(url, ended_ttl_s=config.replicas.ended_ttl_s, max_events=config.session.journal_max_events)


# scheme -> builder(url, what follows "scheme://", config)
_SCHEMES: dict[str, Callable[[str, str, DispatcherConfig], SessionStore]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
}


def store_schemes() -> list[str]:
    return sorted(_SCHEMES)


def open_store(url: str, config: DispatcherConfig) -> SessionStore:
    """The store `url` names (not opened yet: `await store.open()`); ValueError naming `--store`
    for a URL it does not know."""
    scheme, sep, rest = url.partition("://")
    build = _SCHEMES.get(scheme) if sep else None
    if build is None:
        known = ", ".join(f"{name}://" for name in store_schemes())
        raise ValueError(f"--store {url!r}: unknown store; use one of {known} (e.g. sqlite:///sessions.db)")
    return build(url, rest, config)
