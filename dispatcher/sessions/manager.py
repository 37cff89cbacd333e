"""The one owner of a dispatcher's sessions: it builds them, holds them, runs their tasks and
timers, keeps the commander pool, and ends them all at shutdown.

The two servicers reach it through narrow interfaces: the ChatStream handler through
`StreamSessions` (open a session for a stream, park a pool stream), the control plane through
`SessionDirectory` (find, list, start on the pool). Neither imports the other, nor the runner.
A test builds a `SessionManager` alone and drives a session with any async iterator of packets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Protocol

import structlog

from dispatcher.config import DispatcherConfig
from dispatcher.core.journal import Journal
from dispatcher.core.policies import Policy
from dispatcher.core.session import Session
from dispatcher.metrics.stats import RuntimeStats
from dispatcher.sessions.directory import SessionDirectory
from dispatcher.sessions.outbox import Outbox
from dispatcher.sessions.overload import LoopLag
from dispatcher.sessions.pool import CommanderPool, PoolSlot
from dispatcher.sessions.registry import EndedSession, SessionHandle, SessionRegistry
from dispatcher.sessions.runner import RunnerSettings, SessionRunner
from dispatcher.sessions.tasks import SessionTasks
from dispatcher.sessions.timers import Timers
from dispatcher.store import LiveRecord, MemoryStore, SessionStore
from dispatcher.tools import ToolExecutor, ToolRegistry
from dispatcher.tools.catalog import ToolCatalog
from shared import wire
from shared.errors import (
    AccessDenied,
    AgentRuntimeError,
    AtCapacity,
    NoFreeCommander,
    NotFound,
    SessionConflict,
    SessionEnded,
    ShuttingDown,
)
from shared.model import StopInfo

__all__ = ["SessionManager", "StreamSessions"]

log = structlog.get_logger("dispatcher.sessions")


class StreamSessions(Protocol):
    """What the ChatStream handler needs: sessions for streams, and the pool."""

    @property
    def is_draining(self) -> bool: ...

    @property
    def hop(self) -> str: ...

    def open(
        self,
        session_id: str,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        *,
        peer: str,
        commander: str = "",
        trace_parent: Mapping[str, str] | None = None,
    ) -> SessionRunner: ...

    def start(self, runner: SessionRunner, first: wire.pb.UpstreamPacket) -> None: ...

    def resume(
        self,
        session_id: str,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        hello: wire.pb.Hello,
        *,
        peer: str,
        commander: str = "",
    ) -> tuple[SessionRunner, Outbox]: ...

    def park(self, slot: PoolSlot) -> None: ...

    def unpark(self, slot: PoolSlot) -> None: ...


class SessionManager(SessionDirectory):
    """Implements `StreamSessions` and `SessionDirectory` for one dispatcher process."""

    def __init__(
        self,
        config: DispatcherConfig,
        tools: ToolRegistry,
        stats: RuntimeStats | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self._config = config
        self.store: SessionStore = store if store is not None else MemoryStore()  # where sessions outlive the process
        self.stats = stats or RuntimeStats()  # what ended sessions leave behind for the metrics
        self.hop = f"dispatcher:{config.server.instance}"
        self.registry = SessionRegistry(
            max_open=config.server.max_sessions,
            ended_kept=config.session.ended_sessions_kept,
            journals_kept=config.session.ended_journals_kept,
        )
        self.pool = CommanderPool(max_waiting=config.pool.max_waiting_callers)
        self.timers = Timers()
        self.loop_lag = LoopLag(config.server.shed_loop_lag_ms / 1000)
        self._tasks = SessionTasks()
        # Tool calls that ignored cancellation past their grace: no session waits for them any
        # more, but shutdown still accounts for them.
        self.abandoned: set[asyncio.Task[None]] = set()
        self._policy = Policy(config.policy)
        self._limits = _limits(config)
        tools.approve_matching(config.tools.approve)  # also tools that come later (an MCP server's)
        self._catalog = ToolCatalog(tools)  # what the Welcome and ListTools show
        self._settings = RunnerSettings(
            executor=ToolExecutor(tools, max_result_bytes=_max_result_bytes(config)),
            approval_timeout_s=config.tools.approval_timeout_s,
            timers=self.timers,
            outbox_size=config.session.outbox_size,
            max_tool_calls=config.session.max_concurrent_tool_calls,
            tool_cancel_grace_s=config.session.tool_cancel_grace_ms / 1000,
            on_ended=self._ended,
            abandoned=self.abandoned,
            stats=self.stats,
            replay_max_packets=config.session.replay_max_packets,
            replay_max_bytes=config.session.replay_max_bytes,
            store=self.store,
        )
        self.store.on_durable(self._durable)
        self._draining = False
        self._none_open = asyncio.Event()  # set whenever the last open session ends

    # -- building and starting sessions ------------------------------------------------

    @property
    def is_draining(self) -> bool:
        return self._draining

    @property
    def catalog(self) -> ToolCatalog:
        return self._catalog

    def open(
        self,
        session_id: str,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        *,
        peer: str,
        commander: str = "",
        started_by: str = "",
        assignment: wire.pb.Assignment | None = None,
        tools: frozenset[str] | None = None,
        trace_parent: Mapping[str, str] | None = None,
    ) -> SessionRunner:
        """Build a session and register it (not started: `start` runs it). `tools`: the only
        tools it may call (None: every tool served). `trace_parent`: the caller's W3C trace
        context (traceparent metadata), the session span's parent."""
        if self._draining:
            raise ShuttingDown("dispatcher is shutting down and takes no new sessions; retry on another instance")
        if self.loop_lag.overloaded:
            raise AtCapacity(self.loop_lag.refusal())
        machine = Session(
            session_id=session_id,
            dispatcher_hop=self.hop,
            config=self._config.session,
            policy=self._policy,
            limits=self._limits,
            now=time.monotonic(),
            catalog=self._catalog,
            allowed_tools=tools,
        )
        runner = SessionRunner(
            machine=machine,
            requests=requests,
            settings=self._settings,
            peer=peer,
            commander=commander,
            started_by=started_by,
            assignment=assignment,
            trace_parent=trace_parent,
        )
        self.registry.claim(session_id, runner)
        return runner

    def start(self, runner: SessionRunner, first: wire.pb.UpstreamPacket | None) -> None:
        self._tasks.start(runner.run(first), name=f"session:{runner.session_id}")

    def adopt(self, record: LiveRecord, *, reason: str) -> bool:
        """Hold a session an earlier process held when it died (the store's live record) DETACHED
        for the resume window, as if its stream had just broken: its commander may resume it here.
        False when it cannot be resumed (no "resume" in its Hello, or no window): the caller records
        it as ended by the crash."""
        if self._config.session.resume_window_s <= 0 or not record.hello or self._draining:
            return False
        hello = wire.pb.Hello.FromString(record.hello)
        if "resume" not in hello.features or self.registry.get_open(record.session_id) is not None:
            return False
        info = wire.ctl.SessionInfo.FromString(record.checkpoint_info or record.opened)
        last_seq = max(record.checkpoint_seq, 1)  # the Hello (seq 1) is in the record
        # The journal up to the first event of a packet the store never acked: the commander
        # re-sends those packets, and they are journaled again, once.
        config = self._config.session
        prefix = []
        for event in record.events:
            if Journal.packet_seq_of(event.packed) > last_seq:
                break
            prefix.append((event.seq, event.packed))
        journal = Journal.restore(
            record.session_id, prefix, max_events=config.journal_max_events, max_bytes=config.journal_max_bytes
        )
        machine = Session(
            session_id=record.session_id,
            dispatcher_hop=self.hop,
            config=config,
            policy=self._policy,
            limits=self._limits,
            now=time.monotonic(),
            journal=journal,
            catalog=self._catalog,
            allowed_tools=frozenset(hello.tools) if hello.tools else None,
            opened=False,
        )
        kept = sorted((wire.pb.DownstreamPacket.FromString(data) for data in record.tool_results.values()),
                      key=lambda packet: packet.seq)  # fmt: skip
        answered = {journal_result.call_id for journal_result in _journaled_results(journal)}
        written = {packet.seq for packet in kept if packet.tool_result.call_id in answered}
        interrupted = machine.adopt(
            hello=hello,
            info=info,
            last_seq=last_seq,
            results={packet.tool_result.call_id: packet.tool_result for packet in kept},
            now=time.monotonic(),
            reason=reason,
        )
        runner = SessionRunner(
            machine=machine,
            requests=None,
            settings=self._settings,
            peer=info.commander_peer,
            commander=info.commander,
            started_by=info.started_by,
        )
        runner.adopted(interrupted, kept, written)
        self.registry.claim(record.session_id, runner)
        self.store.session_opened(record.session_id, opened=record.opened, hello=record.hello, journal=journal)
        self.start(runner, None)
        log.info("session.adopted", session_id=record.session_id, last_seq=last_seq, window_s=config.resume_window_s)
        return True

    def resume(
        self,
        session_id: str,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        hello: wire.pb.Hello,
        *,
        peer: str,
        commander: str = "",
    ) -> tuple[SessionRunner, Outbox]:
        """Hand a new stream to the open session it resumes (Hello.resume): the runner and the
        stream's outbox. NotFound / SessionEnded / ResumeRefused / AccessDenied otherwise."""
        if self._draining:
            raise ShuttingDown("dispatcher is shutting down; the session cannot be resumed here")
        handle = self.registry.get_open(session_id)
        if not isinstance(handle, SessionRunner):
            ended = self.registry.get_ended(session_id)
            if ended is not None:
                outcome = ended.outcome
                raise SessionEnded(
                    f"session {session_id!r} has ended {outcome.state.value} ({outcome.reason}); it cannot be resumed"
                )
            raise NotFound(f"session {session_id!r} is not held by this dispatcher; it cannot be resumed")
        if handle.commander and commander != handle.commander:
            raise AccessDenied(f"session {session_id!r} belongs to another commander; it cannot be resumed by this one")
        outbox = handle.attach(requests, hello.resume, peer=peer)
        return handle, outbox

    # -- the commander pool ---------------------------------------------------------------

    @property
    def free_commanders(self) -> int:
        return self.pool.free_count

    def park(self, slot: PoolSlot) -> None:
        if self._draining:
            slot.refuse("dispatcher is shutting down; reconnect to another instance")
            return
        self.pool.add(slot)
        log.info("pool.commander_free", commander=slot.commander, peer=slot.peer, free=self.pool.free_count)

    def unpark(self, slot: PoolSlot) -> None:
        self.pool.remove(slot)

    async def start_on_pool(
        self, assignment: wire.pb.Assignment, wait_s: float, *, tools: frozenset[str] | None = None
    ) -> SessionHandle:
        """Hand a session to a free pool stream and start it; NoFreeCommander within `wait_s`.
        `tools`: the only tools the session may call (None: every tool served)."""
        if self.registry.get_open(assignment.session_id) is not None:
            raise SessionConflict(f"session id {assignment.session_id!r} is already in use by another open stream")
        if self._draining:
            raise ShuttingDown("dispatcher is shutting down and starts no new sessions; retry on another instance")
        if self.loop_lag.overloaded:
            raise AtCapacity(self.loop_lag.refusal())
        slot = await self.pool.take(wait_s)
        if slot is None:
            wait_ms = round(wait_s * 1000)
            raise NoFreeCommander(f"no free commander within {wait_ms} ms; start more `commander serve` or retry")
        try:
            runner = self.open(
                assignment.session_id,
                slot.requests,
                peer=slot.peer,
                commander=slot.commander,
                started_by=assignment.started_by,
                assignment=assignment,
                tools=tools,
            )
        except AgentRuntimeError:
            self.pool.add(slot)  # the commander did nothing yet: it stays free
            raise
        slot.hand(runner)
        self.start(runner, slot.hello)
        return runner

    # -- lookups (SessionDirectory) -------------------------------------------------------

    def get_open(self, session_id: str) -> SessionHandle | None:
        return self.registry.get_open(session_id)

    def get_ended(self, session_id: str) -> EndedSession | None:
        return self.registry.get_ended(session_id)

    def ended_journal(self, session_id: str) -> Journal | None:
        return self.registry.ended_journal(session_id)

    def open_sessions(self) -> Iterator[SessionHandle]:
        return self.registry.open_sessions()

    def ended_sessions(self) -> Iterator[EndedSession]:
        return self.registry.ended_sessions()

    def _durable(self, session_id: str, upstream_seq: int) -> None:
        handle = self.registry.get_open(session_id)
        if isinstance(handle, SessionRunner):
            handle.durable(upstream_seq)

    def _ended(self, ended: EndedSession) -> None:
        self.registry.release(ended)
        if ended.info is not None:  # the outcome and the journal's last events, to the store
            info = ended.info.SerializeToString()
            journal = ended.journal
            if journal is not None and journal.sink is None:  # a store follows the journals it was given
                self.store.session_opened(ended.session_id, opened=info, hello=b"", journal=journal)
            self.store.session_ended(ended.session_id, info)
        if not self.registry.open_count:
            self._none_open.set()

    # -- shutdown -------------------------------------------------------------------------

    def begin_drain(self, stop: StopInfo) -> int:
        """Refuse new sessions, release idle pool streams, stop every open session. Returns how
        many were open."""
        self._draining = True
        self.pool.close("dispatcher is shutting down; reconnect to another instance")
        handles = list(self.registry.open_sessions())
        for handle in handles:
            handle.request_stop(stop)
        return len(handles)

    async def wait_all_ended(self, timeout_s: float) -> int:
        """Wait until every open session has ended, at most `timeout_s`; how many are left."""
        if self.registry.open_count:
            self._none_open.clear()
            try:
                await asyncio.wait_for(self._none_open.wait(), timeout_s)
            except TimeoutError:
                pass
        return self.registry.open_count

    async def aclose(self, grace_s: float) -> list[str]:
        """Cancel every session task and abandoned tool call still running and wait at most
        `grace_s` for them; the names of the tasks that ignored it (the process exits anyway)."""
        left = await self._tasks.aclose(grace_s)
        stubborn = [task for task in self.abandoned if not task.done()]
        for task in stubborn:
            task.cancel()
        if stubborn:
            await asyncio.wait(stubborn, timeout=grace_s)
        left += [task.get_name() for task in stubborn if not task.done()]
        if left:
            log.warning("dispatcher.tasks_abandoned", tasks=left[:20], count=len(left))
        return left


def _journaled_results(journal: Journal) -> Iterator[wire.pb.ToolCallResult]:
    for seq in range(journal.first_seq, journal.next_seq):
        entry = journal.entry(seq)
        if entry is not None and entry.kind == "tool_result":
            yield wire.pb.ToolCallResult.FromString(entry.data)


def _limits(config: DispatcherConfig) -> wire.pb.SessionLimits:
    p, s = config.policy, config.session
    return wire.pb.SessionLimits(
        max_receive_message_bytes=config.server.max_receive_message_bytes,
        max_send_message_bytes=config.server.max_send_message_bytes,
        max_content_chars=p.max_content_chars,
        max_thought_chars=p.max_thought_chars,
        max_tool_calls=p.max_tool_calls,
        max_session_s=int(p.max_session_s),
        idle_timeout_s=int(p.idle_timeout_s),
        max_concurrent_tool_calls=s.max_concurrent_tool_calls,
        stop_grace_ms=s.stop_grace_ms,
        ack_every_packets=s.ack_every_packets,
        ack_interval_ms=s.ack_interval_ms,
    )


def _max_result_bytes(config: DispatcherConfig) -> int:
    # Leave room for the envelope (tool name, call id, error) inside one downstream message.
    return max(1024, config.server.max_send_message_bytes - 4096)
