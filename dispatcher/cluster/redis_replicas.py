"""Replicas sharing a Redis (`--store redis://HOST:PORT/DB`): membership, the session
directory, free capacity, lost replicas. The `Membership` of dispatcher/cluster/membership.py.

What is in Redis (all under `sw:`; docs/architecture.md, "Replicas"):

| key | value | lifetime |
| --- | --- | --- |
| `sw:replicas` | set of replica instance ids (an index; a member whose lease is gone was lost) | - |
| `sw:replica:{id}` | JSON `{address, hop, free}`: where to dial it, its free pool commanders | lease |
| `sw:session:{sid}` | the id of the replica holding the session | lease |
| `sw:info:{sid}` | its last `SessionInfo` (for "replica lost") | ended TTL |
| `sw:held:{id}` | set of the session ids a replica holds | ended TTL |
| `sw:ended:{sid}` | `{id}\\n` + the ended session's `SessionInfo` | ended TTL |
| `sw:lost` | sorted set: session ids recorded "replica lost", by time | members trimmed by TTL |
| `sw:swept:{id}` | which replica recorded a lost replica's sessions (written once) | ended TTL |

One task (`run`, owned by the app) does every write, in one pipeline per step: every lease
interval (a third of `--replica-lease-ms`) the replica's key and every live session's lease
with its info; between those, sessions opened since (`opened`, woken at most every
`_MIN_GAP_S`) and a changed free-commander count. Nothing here runs per packet. Each full
step also records the sessions of replicas whose lease has gone as ended CANCELLED "replica
lost" (once: the first replica to claim `sw:swept:{id}` writes them).

Redis down: the failing step marks the store unavailable and new sessions are refused
(`refusal`, UNAVAILABLE); running sessions go on, untouched. redis-py reconnects on the next
command; the first step that succeeds clears the mark and re-publishes the whole directory
(after a Redis restart with nothing saved, everything is back within one step). Lookups made
while it is down fall back to asking every replica last seen, as the folder membership does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass

import grpc
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from dispatcher.cluster.store_url import RedisUrl, parse_redis_url
from dispatcher.config import ReplicasConfig
from dispatcher.core.journal import Journal
from dispatcher.sessions.directory import SessionDirectory
from dispatcher.store.redis import RedisStore, follow_stream, journal_key
from shared import wire
from shared.model import now_ms

__all__ = ["LOST_REASON", "RedisReplicas", "redis_client"]

log = structlog.get_logger("dispatcher.cluster.replicas")

LOST_REASON = "replica lost"
_PREFIX = "sw:"
_REPLICAS = f"{_PREFIX}replicas"
_LOST = f"{_PREFIX}lost"
# Between two steps of the publisher at least this long: bounds how often a burst of opened
# sessions or a flapping free count writes to Redis (at most 20 pipelines a second).
_MIN_GAP_S = 0.05
# How often the publisher looks at the free-commander count (a changed count is published then).
_TICK_S = 0.1


def redis_client(url: RedisUrl, lease_ms: int) -> Redis:
    """A client whose every wait is a fraction of the lease: a Redis that does not answer is
    noticed within one lease interval, not after the OS's TCP timeout."""
    timeout_s = _timeout_s(lease_ms)
    return Redis.from_url(
        url.url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # A dropped connection is redialled and the command retried once, jittered; more would
        # outlast the lease interval. What still fails is the step's to handle (store down).
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=timeout_s), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=max(1, lease_ms // 1000),
        decode_responses=False,
    )


def _timeout_s(lease_ms: int) -> float:
    return max(0.05, min(2.0, lease_ms / 6000))


@dataclass(frozen=True, slots=True)
class _Replica:
    instance: str
    address: str
    hop: str
    free: int


class RedisReplicas:
    """This replica's membership, its sessions' directory entries and its free capacity in Redis."""

    def __init__(
        self,
        config: ReplicasConfig,
        sessions: SessionDirectory,
        *,
        url: str,
        instance: str,
        hop: str,
        dial: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
        client: Redis | None = None,
        journals: RedisStore | None = None,
    ) -> None:
        self._url = parse_redis_url(url)
        self._redis = client or redis_client(self._url, config.lease_ms)
        self._block_ms = max(10, round(_timeout_s(config.lease_ms) * 500))  # half the socket timeout
        self._sessions = sessions
        self._journals = journals  # the sessions' journals into Redis Streams, when given
        self._instance = instance
        self._hop = hop
        self._dial = dial
        self._lease_ms = config.lease_ms
        self._interval_s = config.lease_ms / 3000  # three refreshes per lease: one lost write is survived
        self._ttl_ms = round(config.ended_ttl_s * 1000)
        self._address = ""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._known: dict[str, _Replica] = {}  # the other replicas as last read (used while Redis is down)
        self._published: set[str] = set()  # sessions whose directory entry is in Redis
        self._new: set[str] = set()  # opened since the last step
        self._free_published = -1
        self._wake = asyncio.Event()
        self._down: str | None = "not yet connected"

    @property
    def url(self) -> str:
        return self._url.shown

    # -- Membership ---------------------------------------------------------------------

    async def join(self, address: str) -> None:
        """Advertise `address`; a Redis that is down now only delays it (`run` retries)."""
        self._address = address
        await self._step(full=True)

    async def run(self) -> None:
        next_full = time.monotonic() + self._interval_s
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), _TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            full = now >= next_full
            if full:
                next_full = now + self._interval_s
            # O(1) unless there is something to write: the pool's count is read, not hooked.
            if full or self._new or self._sessions.free_commanders != self._free_published:
                try:
                    await self._step(full=full)
                except Exception:  # a bug of ours: logged, and the leases go on being refreshed
                    log.exception("replicas.step_failed")
            await asyncio.sleep(_MIN_GAP_S)  # the bound on the publish rate, not a synchronisation

    def refusal(self) -> str | None:
        if self._down is None:
            return None
        return f"session store unavailable: {self._url.shown}: {self._down}; retry shortly or on another replica"

    def opened(self, session_id: str) -> None:
        self._new.add(session_id)
        self._wake.set()

    async def others(self) -> list[wire.SessionControlServiceStub]:
        replicas = await self._live_replicas()
        return [self._stub(replica.address) for replica in replicas.values()]

    async def holders(self, session_id: str) -> list[wire.SessionControlServiceStub]:
        """The replica the directory names (open, or ended with its journal); none when the
        directory has no entry; every replica last seen while Redis is down."""
        if self._down is not None:
            return [self._stub(replica.address) for replica in self._known.values()]
        try:
            holder = _raw(await self._redis.get(f"{_PREFIX}session:{session_id}"))
            if holder is None:
                ended = _raw(await self._redis.get(f"{_PREFIX}ended:{session_id}"))
                holder = ended.split(b"\n", 1)[0] if ended is not None else None
            if holder is None or holder.decode() == self._instance:
                return []
            raw = _raw(await self._redis.get(f"{_PREFIX}replica:{holder.decode()}"))
        except RedisError as exc:
            self._mark_down(exc)
            return [self._stub(replica.address) for replica in self._known.values()]
        replica = _parse_replica(holder.decode(), raw)
        return [] if replica is None else [self._stub(replica.address)]

    async def placements(self) -> list[wire.SessionControlServiceStub]:
        if self._down is not None:
            return []  # new sessions are refused anyway
        replicas = sorted((await self._live_replicas()).values(), key=lambda r: (-r.free, r.instance))
        return [self._stub(replica.address) for replica in replicas if replica.free > 0]

    async def recorded(self, session_id: str) -> wire.ctl.SessionInfo | None:
        if self._down is not None:
            return None
        try:
            ended = _raw(await self._redis.get(f"{_PREFIX}ended:{session_id}"))
            if ended is None and await self._redis.exists(f"{_PREFIX}info:{session_id}"):
                # Its lease is gone but nobody recorded why yet: the sweep may not have run.
                await self._sweep()
                ended = _raw(await self._redis.get(f"{_PREFIX}ended:{session_id}"))
        except RedisError as exc:
            self._mark_down(exc)
            return None
        if ended is None:
            return None
        return wire.ctl.SessionInfo.FromString(ended.partition(b"\n")[2])

    async def recorded_lost(self) -> list[wire.ctl.SessionInfo]:
        if self._down is not None:
            return []
        try:
            await self._sweep()
            await self._redis.zremrangebyscore(_LOST, "-inf", now_ms() - self._ttl_ms)
            ids = [_text(sid) for sid in await self._redis.zrange(_LOST, 0, -1)]
            if not ids:
                return []
            values = await self._redis.mget([f"{_PREFIX}ended:{sid}" for sid in ids])
        except RedisError as exc:
            self._mark_down(exc)
            return []
        found = [_raw(value) for value in values]
        return [wire.ctl.SessionInfo.FromString(v.partition(b"\n")[2]) for v in found if v is not None]

    def stored_events(
        self, session_id: str, from_seq: int, kinds: Collection[int]
    ) -> AsyncIterator[wire.ctl.SessionEvent] | None:
        """The session's journal as Redis keeps it (a lost replica's session), or None without one."""
        if self._journals is None:
            return None
        ended = (f"{_PREFIX}ended:{session_id}",)
        return follow_stream(self._redis, session_id, from_seq, kinds, end_keys=ended, block_ms=self._block_ms)

    async def close(self) -> None:
        """Withdraw: the replica key goes at once (its sessions ended in the drain before)."""
        try:
            if self._down is None:
                await self._step(full=True)  # the drain's outcomes
                pipe = self._redis.pipeline(transaction=False)
                pipe.delete(f"{_PREFIX}replica:{self._instance}", f"{_PREFIX}held:{self._instance}")
                pipe.srem(_REPLICAS, self._instance)
                await pipe.execute()
        except RedisError as exc:
            log.warning("replicas.withdraw_failed", detail=str(exc))
        finally:
            for channel in self._channels.values():
                await channel.close()
            self._channels.clear()
            await self._redis.aclose()

    # -- the publisher --------------------------------------------------------------------

    async def _step(self, *, full: bool) -> None:
        """One pipeline: the replica's key, and the sessions' leases (all, or the new ones)."""
        if not self._address:
            return
        recovering = self._down is not None
        full = full or recovering
        free = self._sessions.free_commanders
        live = {handle.session_id: handle for handle in self._sessions.open_sessions()}
        fresh = live.keys() if full else self._new & live.keys()
        # Ended since: every published one at a full step; one opened and ended between two
        # steps at once (it never had a lease, its outcome is still worth recording).
        gone = (self._published | self._new) - live.keys() if full else self._new - live.keys()
        pipe = self._redis.pipeline(transaction=False)
        self._replica_key(pipe, free)
        held = f"{_PREFIX}held:{self._instance}"
        for session_id in fresh:
            self._follow(session_id, live[session_id].journal)
            pipe.set(f"{_PREFIX}session:{session_id}", self._instance, px=self._lease_ms)
            pipe.set(f"{_PREFIX}info:{session_id}", live[session_id].info().SerializeToString(), px=self._ttl_ms)
        if fresh:
            pipe.sadd(held, *fresh)
        pipe.pexpire(held, self._ttl_ms)
        if recovering and live:
            self._unmark_lost(pipe, live.keys())  # written by a replica that lost sight of us
        for session_id in gone:
            self._record_end(pipe, session_id)
        new = set(self._new)
        try:
            await pipe.execute()
            if full:
                await self._sweep()
        except RedisError as exc:
            self._mark_down(exc)
            return
        self._published = (self._published | set(fresh)) - gone
        self._new -= new
        self._free_published = free
        if recovering:
            log.info("replicas.store_available", store=self._url.shown, sessions=len(live), address=self._address)
            self._down = None

    def _replica_key(self, pipe: Pipeline, free: int) -> None:
        value = json.dumps({"address": self._address, "hop": self._hop, "free": free})
        pipe.set(f"{_PREFIX}replica:{self._instance}", value, px=self._lease_ms)
        pipe.sadd(_REPLICAS, self._instance)
        pipe.delete(f"{_PREFIX}swept:{self._instance}")

    def _record_end(self, pipe: Pipeline, session_id: str) -> None:
        """The session ended here: its outcome is kept for the TTL, its lease goes."""
        ended = self._sessions.get_ended(session_id)
        if ended is not None and ended.info is not None:
            info = ended.info.SerializeToString()
            pipe.set(f"{_PREFIX}ended:{session_id}", self._instance.encode() + b"\n" + info, px=self._ttl_ms)
            # Its journal and outcome reach the store (self._journals) through the session manager.
        pipe.delete(f"{_PREFIX}session:{session_id}", f"{_PREFIX}info:{session_id}")
        pipe.srem(f"{_PREFIX}held:{self._instance}", session_id)

    def _follow(self, session_id: str, journal: Journal) -> None:
        """Hand a session's journal to the store once (unless something else already follows it)."""
        journals = self._journals
        if journals is not None and journal.sink is None and not journals.follows(session_id):
            journals.session_opened(session_id, opened=b"", hello=b"", journal=journal)

    def _unmark_lost(self, pipe: Pipeline, session_ids: Iterable[str]) -> None:
        ids = list(session_ids)
        pipe.delete(*(f"{_PREFIX}ended:{sid}" for sid in ids))
        pipe.zrem(_LOST, *ids)

    def _mark_down(self, exc: Exception) -> None:
        if self._down is None:  # logged once per outage, not once per step
            log.error("replicas.store_unavailable", store=self._url.shown, detail=str(exc) or type(exc).__name__,
                      effect="new sessions refused until it answers; running sessions go on")  # fmt: skip
        self._down = str(exc) or type(exc).__name__

    # -- lost replicas --------------------------------------------------------------------

    async def _live_replicas(self) -> dict[str, _Replica]:
        """The other replicas whose lease holds, read now (also kept for when Redis is down)."""
        if self._down is not None:
            return dict(self._known)
        try:
            ids = sorted(_text(member) for member in await self._redis.smembers(_REPLICAS))
            others = [instance for instance in ids if instance != self._instance]
            values = await self._redis.mget([f"{_PREFIX}replica:{i}" for i in others]) if others else []
        except RedisError as exc:
            self._mark_down(exc)
            return dict(self._known)
        live = {}
        for instance, raw in zip(others, values, strict=True):
            replica = _parse_replica(instance, _raw(raw))
            if replica is not None:
                live[instance] = replica
        self._known = live
        return live

    async def _sweep(self) -> None:
        """Record the sessions of every replica whose lease has gone as ended "replica lost"."""
        ids = [_text(member) for member in await self._redis.smembers(_REPLICAS)]
        others = [instance for instance in ids if instance != self._instance]
        if not others:
            return
        values = await self._redis.mget([f"{_PREFIX}replica:{i}" for i in others])
        for instance, raw in zip(others, values, strict=True):
            if raw is None:
                await self._sweep_one(instance)

    async def _sweep_one(self, instance: str) -> None:
        claimed = await self._redis.set(f"{_PREFIX}swept:{instance}", self._instance, nx=True, px=self._ttl_ms)
        if not claimed:
            return  # another replica records them (or did)
        held = f"{_PREFIX}held:{instance}"
        session_ids = sorted(_text(sid) for sid in await self._redis.smembers(held))
        infos = await self._redis.mget([f"{_PREFIX}info:{sid}" for sid in session_ids]) if session_ids else []
        at = now_ms()
        pipe = self._redis.pipeline(transaction=False)
        for session_id, packed in zip(session_ids, infos, strict=True):
            packed = _raw(packed)
            if packed is None:
                continue  # ended and recorded by its replica, or expired
            info = _lost(wire.ctl.SessionInfo.FromString(packed), at)
            value = instance.encode() + b"\n" + info.SerializeToString()
            pipe.set(f"{_PREFIX}ended:{session_id}", value, px=self._ttl_ms, nx=True)
            pipe.zadd(_LOST, {session_id: at})
            pipe.delete(f"{_PREFIX}info:{session_id}", f"{_PREFIX}session:{session_id}")
            pipe.pexpire(journal_key(session_id), self._ttl_ms)  # its replica never will
        pipe.delete(held)
        pipe.srem(_REPLICAS, instance)
        await pipe.execute()
        log.warning("replicas.replica_lost", replica=instance, sessions=len(session_ids), recorded_by=self._instance,
                    lease_ms=self._lease_ms)  # fmt: skip

    # -- channels -------------------------------------------------------------------------

    def _stub(self, address: str) -> wire.SessionControlServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._dial(address)
        return wire.SessionControlServiceStub(channel)


def _raw(value: object) -> bytes | None:
    """A value as redis-py returns it (bytes: decode_responses is off; its types also say str)."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _text(value: object) -> str:
    return (_raw(value) or b"").decode()


def _parse_replica(instance: str, raw: bytes | None) -> _Replica | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return _Replica(instance, str(value["address"]), str(value["hop"]), int(value["free"]))
    except (ValueError, KeyError, TypeError):
        log.warning("replicas.bad_entry", replica=instance)  # not ours to fix: skip it
        return None


def _lost(info: wire.ctl.SessionInfo, at_ms: int) -> wire.ctl.SessionInfo:
    """The session as it ended with its replica: CANCELLED, "replica lost"."""
    info.state = wire.ctl.SESSION_STATE_CANCELLED
    info.tool_calls_running = 0
    info.outcome.CopyFrom(
        wire.ctl.SessionOutcome(
            state=wire.ctl.SESSION_STATE_CANCELLED,
            reason=LOST_REASON,
            ended_by="dispatcher",
            status="UNAVAILABLE",
            error_code="REPLICA_LOST",
            ended_at_ms=at_ms,
        )
    )
    return info
