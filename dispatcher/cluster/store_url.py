"""`--store redis://HOST:PORT/DB`: the one place the replicas' store URL is read.

Only Redis URLs here (`redis://`, or `rediss://` for TLS to Redis): the session store's own
`--store` table (memory, sqlite) names this parser for its `redis://` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["RedisUrl", "parse_redis_url"]

_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True, slots=True)
class RedisUrl:
    url: str  # as given: redis-py reads it (password, db, TLS)
    host: str
    port: int
    db: int

    @property
    def shown(self) -> str:
        """The URL without its password: for logs and errors."""
        scheme = self.url.split(":", 1)[0]
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisUrl:
    """The parts of a Redis URL; ValueError naming what is wrong (the operator's to fix)."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"store must be redis://HOST:PORT/DB (or rediss://), got {url.split('@')[-1]!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"store {parts.scheme}://{parts.hostname}: the port is not a number") from None
    if not parts.hostname:
        raise ValueError(f"store {url.split('@')[-1]!r} names no host: redis://HOST:PORT/DB")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"store {parts.scheme}://{parts.hostname}:{port}/{path}: the database must be a number")
    if parts.query or parts.fragment:
        raise ValueError("store: no query or fragment in the URL; only redis://[:PASSWORD@]HOST:PORT/DB")
    return RedisUrl(url=url, host=parts.hostname, port=port, db=int(path or 0))
