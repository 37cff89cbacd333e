"""The AgentInteraction servicer: admits a stream, starts its runner, drains its outbox.

Status mapping happens here and only here: an `AgentRuntimeError` raised while admitting
becomes its class's status; a session's outcome becomes the stream's final status and
`x-*` trailers; anything unexpected is INTERNAL with a generic message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from dispatcher.auth import AccessPolicy
from dispatcher.config import DispatcherConfig
from dispatcher.core.policies import Policy
from dispatcher.core.session import Session, SessionOutcome
from dispatcher.sessions.pool import CommanderPool, PoolSlot
from dispatcher.sessions.registry import SessionRegistry
from dispatcher.sessions.runner import SessionRunner, describe_peer
from dispatcher.sessions.timers import Timers
from dispatcher.tools import ToolExecutor
from shared import wire
from shared.errors import AgentRuntimeError, ProtocolViolation, ShuttingDown
from shared.wire import MetadataKey, encode_metadata_value

__all__ = ["AgentInteractionService", "valid_session_id"]

log = structlog.get_logger("dispatcher.stream.service")

_REFUSAL_READ_WAIT_S = 0.5
_SESSION_ID = re.compile(r"[\x21-\x7e]{1,128}")
Spawn = Callable[[SessionRunner, wire.pb.UpstreamPacket], None]  # starts the session's task


class AgentInteractionService(wire.AgentInteractionServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        config: DispatcherConfig,
        registry: SessionRegistry,
        executor: ToolExecutor,
        spawn: Spawn,
        is_draining: Callable[[], bool],
        access: AccessPolicy | None = None,
        pool: CommanderPool | None = None,
        timers: Timers,
    ) -> None:
        self._config = config
        self._registry = registry
        self._executor = executor
        self._spawn = spawn
        self._is_draining = is_draining
        self._access = access or AccessPolicy({})
        self._timers = timers
        self.pool = pool or CommanderPool(max_waiting=config.pool.max_waiting_callers)
        self._policy = Policy(config.policy)
        self.hop = f"dispatcher:{config.server.instance}"
        self._limits = _limits(config)

    async def ChatStream(  # noqa: N802 - the proto's name
        self, request_iterator: AsyncIterator[wire.pb.UpstreamPacket], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[wire.pb.DownstreamPacket]:
        runner = await self._admit(request_iterator, context)
        if runner is None:
            return
        # Whatever ends the RPC (client cancel, deadline, connection loss), the runner
        # learns of it here, even if grpc never resumes this generator.
        context.add_done_callback(_on_rpc_done(runner))  # type: ignore[arg-type]  # grpc-stubs protocol quirk
        outbox = runner.outbox
        counts = runner.packets_out
        try:
            if runner.assignment is not None:  # a pool stream: the assignment goes first
                counts["assignment"] = 1
                yield wire.pb.DownstreamPacket(assignment=runner.assignment)
            while (packet := await outbox.get()) is not None:
                # This is where downstream order becomes final: once the stop is out (from
                # here, or written by the session task), only acks follow (a result decided a
                # moment before the stop may be queued after it).
                if runner.stop_written and not packet.HasField("ack"):
                    continue
                kind = packet.WhichOneof("signal")
                if kind == "stop":
                    runner.stop_written = True
                counts[kind] = counts.get(kind, 0) + 1
                yield packet
        finally:
            outbox.close()
        await runner.done.wait()
        _set_final_status(context, runner.outcome, runner.session_id)

    async def _admit(
        self, requests: AsyncIterator[wire.pb.UpstreamPacket], context: grpc.aio.ServicerContext[Any, Any]
    ) -> SessionRunner | None:
        try:
            if self._is_draining():
                await _await_first_packet_briefly(requests)
                raise ShuttingDown("dispatcher is shutting down and takes no new sessions; retry on another instance")
            try:
                first = await anext(aiter(requests), None)
            except DecodeError as exc:
                raise ProtocolViolation(f"the first packet is not a valid UpstreamPacket: {exc}") from exc
            if first is None:
                return None  # the commander half-closed before saying anything: no session
            if self._is_draining():
                raise ShuttingDown("dispatcher is shutting down and takes no new sessions; retry on another instance")
            commander = self._commander_name(first, context)
            if first.WhichOneof("payload") == "hello" and first.hello.awaits_assignment:
                return await self._await_assignment(
                    PoolSlot(first, requests, describe_peer(context), commander), context
                )
            session_id = _choose_session_id(first, context)
            runner = self.open_session(
                session_id, first_requests=requests, peer=describe_peer(context), commander=commander
            )
        except AgentRuntimeError as exc:
            log.warning("session.refused", code=exc.status_code.name, detail=str(exc), peer=describe_peer(context))
            await context.abort(exc.status_code, str(exc))
            raise AssertionError("unreachable") from None  # abort() always raises
        await context.send_initial_metadata(
            ((MetadataKey.SESSION_ID, session_id), (MetadataKey.DISPATCHER_ID, encode_metadata_value(self.hop)))
        )
        runner.attach_writer(context.write)
        self._spawn(runner, first)
        return runner

    def open_session(
        self,
        session_id: str,
        *,
        first_requests: AsyncIterator[wire.pb.UpstreamPacket],
        peer: str,
        commander: str,
        started_by: str = "",
        assignment: wire.pb.Assignment | None = None,
    ) -> SessionRunner:
        """Build a session's machine and runner and register it (not started yet)."""
        machine = Session(
            session_id=session_id,
            dispatcher_hop=self.hop,
            config=self._config.session,
            policy=self._policy,
            limits=self._limits,
            now=time.monotonic(),
        )
        runner = SessionRunner(
            machine=machine,
            requests=first_requests,
            executor=self._executor,
            registry=self._registry,
            outbox_size=self._config.session.outbox_size,
            max_concurrent_tool_calls=self._config.session.max_concurrent_tool_calls,
            peer=peer,
            commander=commander,
            started_by=started_by,
            assignment=assignment,
            timers=self._timers,
        )
        try:
            self._registry.claim(session_id, runner)
        except AgentRuntimeError:
            runner.discard()
            raise
        return runner

    def assign(self, slot: PoolSlot, assignment: wire.pb.Assignment, started_by: str) -> SessionRunner:
        """Hand a session to a free pool stream and start it (the stream's handler sends the
        Assignment first, then drains the session's outbox as for any session)."""
        runner = self.open_session(
            assignment.session_id,
            first_requests=slot.requests,
            peer=slot.peer,
            commander=slot.commander,
            started_by=started_by,
            assignment=assignment,
        )
        slot.hand(runner)
        self._spawn(runner, slot.hello)
        return runner

    async def _await_assignment(
        self, slot: PoolSlot, context: grpc.aio.ServicerContext[Any, Any]
    ) -> SessionRunner | None:
        """Park a pool stream until a session is assigned to it (or the dispatcher drains)."""
        await context.send_initial_metadata(((MetadataKey.DISPATCHER_ID, encode_metadata_value(self.hop)),))
        context.add_done_callback(slot.on_rpc_done)  # type: ignore[arg-type]
        self.pool.add(slot)
        log.info("pool.commander_free", commander=slot.commander, peer=slot.peer, free=self.pool.free_count)
        try:
            await slot.assigned.wait()
        finally:
            self.pool.remove(slot)
        if slot.runner is None:
            log.info("pool.commander_released", commander=slot.commander, reason=slot.refusal)
            await context.abort(grpc.StatusCode.UNAVAILABLE, slot.refusal)
        return slot.runner

    def _commander_name(self, first: wire.pb.UpstreamPacket, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The commander's identity: its token's name, else what its Hello calls it."""
        principal = self._access.principal(context)
        if principal.role is not None:
            return principal.name
        return first.hello.agent_name if first.WhichOneof("payload") == "hello" else ""


async def _await_first_packet_briefly(requests: AsyncIterator[wire.pb.UpstreamPacket]) -> None:
    """Before refusing, let the client's first write land: aborting while it is in flight can
    surface as INTERNAL instead of our status on the client (grpc/grpc#36066)."""
    with contextlib.suppress(TimeoutError, StopAsyncIteration, grpc.aio.AioRpcError):
        await asyncio.wait_for(anext(aiter(requests)), _REFUSAL_READ_WAIT_S)


def _on_rpc_done(runner: SessionRunner) -> Callable[[Any], None]:
    def done(_context: Any) -> None:
        runner.peer_gone("the commander cancelled or disconnected")

    return done


def _choose_session_id(first: wire.pb.UpstreamPacket, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The id the commander asked for (Hello, then the packet, then metadata), else a new one."""
    wanted = ""
    if first.WhichOneof("payload") == "hello":
        wanted = first.hello.session_id
    wanted = wanted or first.session_id
    if not wanted:
        for key, value in context.invocation_metadata() or ():
            if key == MetadataKey.SESSION_ID and isinstance(value, str):
                wanted = value
    if not wanted:
        return str(uuid.uuid4())
    if not valid_session_id(wanted):
        raise ProtocolViolation("session_id must be 1-128 printable ASCII characters without spaces")
    return wanted


def valid_session_id(session_id: str) -> bool:
    return _SESSION_ID.fullmatch(session_id) is not None


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


def _set_final_status(
    context: grpc.aio.ServicerContext[Any, Any], outcome: SessionOutcome | None, session_id: str
) -> None:
    if outcome is None:  # pragma: no cover - the runner always records one
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details("session ended without an outcome")
        return
    trailers: list[tuple[str, str]] = [
        (MetadataKey.SESSION_ID, session_id),
        (MetadataKey.SESSION_STATE, outcome.state.value),
    ]
    stop = outcome.stop
    if stop is not None:
        trailers += [
            (MetadataKey.STOP_CODE, stop.code.name),
            (MetadataKey.STOP_REASON, encode_metadata_value(stop.reason)),
            (MetadataKey.STOP_PATH, encode_metadata_value(",".join(stop.path))),
            (MetadataKey.STOP_ID, stop.stop_id),
            (MetadataKey.STOP_CONFIRMED, "true" if outcome.stop_confirmed else "false"),
        ]
        if outcome.stop_to_confirm_ms is not None:
            trailers.append((MetadataKey.STOP_TO_CONFIRM_MS, f"{outcome.stop_to_confirm_ms:.3f}"))
        if stop.cause:
            trailers.append((MetadataKey.STOP_CAUSE, encode_metadata_value(stop.cause)))
    context.set_trailing_metadata(tuple(trailers))
    if outcome.status != "OK":
        context.set_code(grpc.StatusCode[outcome.status])
        if stop is not None:
            context.set_details(f"session {outcome.state.value}: {stop.describe()}")
        else:
            context.set_details(f"session {outcome.state.value}: {outcome.reason}")
