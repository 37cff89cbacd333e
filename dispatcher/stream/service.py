"""The AgentInteraction servicer: admits a stream, hands it to the session manager, and is the
stream's only writer.

`ChatStream` is an async generator (OpenTelemetry's aio interceptor wraps only those): it
yields what the session's outbox hands it, in the order the outbox decided, and reports each
packet once it is written. A refusal passes the one error boundary (`dispatcher/boundary.py`);
a session's outcome becomes the stream's final status and `x-*` trailers (`trailers.py`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from dispatcher.auth import AccessPolicy
from dispatcher.boundary import await_first_write, refuse
from dispatcher.sessions.manager import StreamSessions
from dispatcher.sessions.outbox import Outbox
from dispatcher.sessions.pool import PoolSlot
from dispatcher.sessions.runner import SessionRunner
from dispatcher.stream.trailers import set_final_status
from shared import wire
from shared.errors import ProtocolViolation, ShuttingDown
from shared.model import valid_session_id
from shared.tracing import carrier_from_metadata
from shared.wire import MetadataKey, encode_metadata_value

__all__ = ["AgentInteractionService", "describe_peer"]

log = structlog.get_logger("dispatcher.stream")

Context = grpc.aio.ServicerContext[Any, Any]


class AgentInteractionService(wire.AgentInteractionServicer):  # type: ignore[misc]
    def __init__(self, *, sessions: StreamSessions, access: AccessPolicy | None = None) -> None:
        self._sessions = sessions
        self._access = access or AccessPolicy({})

    async def ChatStream(  # noqa: N802 - the proto's name
        self, request_iterator: AsyncIterator[wire.pb.UpstreamPacket], context: Context
    ) -> AsyncIterator[wire.pb.DownstreamPacket]:
        admitted = await self._admit(request_iterator, context)
        if admitted is None:
            return
        runner, outbox = admitted
        # Whatever ends the RPC (client cancel, deadline, connection loss, grpc killing it), the
        # runner learns of it here, even if grpc never resumes this generator. Bound to this
        # stream's outbox: once a resume has replaced the stream, its end changes nothing.
        context.add_done_callback(functools.partial(_rpc_ended, runner, outbox))  # type: ignore[arg-type]
        in_flight: wire.pb.DownstreamPacket | None = None
        try:
            while (packet := await outbox.get()) is not None:
                in_flight = packet
                yield packet  # grpc resumes us once the write has completed
                in_flight = None
                runner.written(packet, outbox)
        finally:
            runner.writer_gone(in_flight, outbox)
        if runner.outbox is not outbox and not runner.settled.is_set():
            context.set_code(grpc.StatusCode.ABORTED)
            context.set_details(f"session {runner.session_id} was resumed on another stream")
            return
        if runner.is_detached:
            return  # this stream is gone; the session waits for a resume
        await runner.settled.wait()
        set_final_status(context, runner.outcome, runner.session_id)

    async def _admit(
        self, requests: AsyncIterator[wire.pb.UpstreamPacket], context: Context
    ) -> tuple[SessionRunner, Outbox] | None:
        peer = describe_peer(context)
        try:
            if self._sessions.is_draining:
                await await_first_write(requests)
                raise ShuttingDown("dispatcher is shutting down and takes no new sessions; retry on another instance")
            try:
                first = await anext(aiter(requests), None)
            except DecodeError as exc:
                raise ProtocolViolation(f"the first packet is not a valid UpstreamPacket: {exc}") from exc
            if first is None:
                return None  # the commander half-closed before saying anything: no session
            commander = self._commander_name(first, context)
            if first.WhichOneof("payload") == "hello" and first.hello.awaits_assignment:
                pooled = await self._await_assignment(PoolSlot(first, requests, peer, commander), context)
                return None if pooled is None else (pooled, pooled.outbox)
            session_id = _choose_session_id(first, context)
            if first.WhichOneof("payload") == "hello" and first.hello.HasField("resume"):
                return await self._resume(session_id, first.hello, requests, context, peer=peer, commander=commander)
            runner = self._sessions.open(
                session_id, requests, peer=peer, commander=commander,
                trace_parent=carrier_from_metadata(context.invocation_metadata()),
            )  # fmt: skip
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as error:
            await refuse(context, error, session_id="", method="ChatStream", event="session.refused")
        try:  # before the session starts: nothing may be written on the stream before it
            await context.send_initial_metadata(
                (
                    (MetadataKey.SESSION_ID, session_id),
                    (MetadataKey.DISPATCHER_ID, encode_metadata_value(self._sessions.hop)),
                )
            )
        finally:  # if that failed the call is over: the session then ends at once, recorded
            self._sessions.start(runner, first)
        return runner, runner.outbox

    async def _resume(
        self,
        session_id: str,
        hello: wire.pb.Hello,
        requests: AsyncIterator[wire.pb.UpstreamPacket],
        context: Context,
        *,
        peer: str,
        commander: str,
    ) -> tuple[SessionRunner, Outbox] | None:
        """A commander resumes its session on this new stream (Hello.resume)."""
        try:
            runner, outbox = self._sessions.resume(session_id, requests, hello, peer=peer, commander=commander)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as error:
            await refuse(context, error, session_id=session_id, method="ChatStream", event="session.resume_refused")
        try:
            await context.send_initial_metadata(
                (
                    (MetadataKey.SESSION_ID, session_id),
                    (MetadataKey.DISPATCHER_ID, encode_metadata_value(self._sessions.hop)),
                )
            )
        except Exception:  # the new call is already over: the session stays detached
            runner.rpc_ended(outbox=outbox)
            return None
        return runner, outbox

    async def _await_assignment(self, slot: PoolSlot, context: Context) -> SessionRunner | None:
        """Park a pool stream until a session is assigned to it (or the dispatcher drains)."""
        await context.send_initial_metadata(((MetadataKey.DISPATCHER_ID, encode_metadata_value(self._sessions.hop)),))
        context.add_done_callback(slot.on_rpc_done)  # type: ignore[arg-type]
        self._sessions.park(slot)
        try:
            await slot.assigned.wait()
        finally:
            self._sessions.unpark(slot)
        if slot.runner is None:
            log.info("pool.commander_released", commander=slot.commander, reason=slot.refusal)
            await context.abort(grpc.StatusCode.UNAVAILABLE, slot.refusal)
        return slot.runner

    def _commander_name(self, first: wire.pb.UpstreamPacket, context: Context) -> str:
        """The commander's identity: its token's name, else what its Hello calls it."""
        principal = self._access.principal(context)
        if principal.role is not None:
            return principal.name
        return first.hello.agent_name if first.WhichOneof("payload") == "hello" else ""


def _rpc_ended(runner: SessionRunner, outbox: Outbox, _context: object) -> None:
    runner.rpc_ended(outbox=outbox)


def describe_peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # pragma: no cover - peer() only fails on a dead call
        return "unknown"


def _choose_session_id(first: wire.pb.UpstreamPacket, context: Context) -> str:
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
