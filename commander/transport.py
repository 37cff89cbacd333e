"""The grpc side of the commander: channel, one ChatStream call, its writer and reader.

grpc.aio awaits live only in the two pump tasks here, never in the agent's task:
cancelling a `call.write()` cancels the whole RPC, and an anyio cancel scope around
`call.read()` can let a bare CancelledError escape. So the agent talks to a bounded
memory stream (its `await send()` is the backpressure), one writer task drains it into
the call, one reader task dispatches downstream packets, and the call is ended with
`done_writing()` or, as a last resort, `call.cancel()`.

Resume (fault survival): once the dispatcher's Welcome offers it (`enable_resume`), a call
that breaks without the dispatcher ending it — no `x-session-state` trailer, a transport
status — is not the end: the link redials with jittered backoff (at most `timeout_s`), sends
a Hello naming the session and the last downstream seq processed, and on the resumed
Welcome re-sends the packets the dispatcher does not hold from its bounded retransmit buffer
(every packet written and not yet acked). The writer lives across calls: a packet whose
write failed stays in that buffer; the agent's sends just wait meanwhile (the bounded
outbox). Only the final end (`ended`) reaches the session core.

With a `Coalescer` the writer merges consecutive deltas that are already queued when it
is about to write (see `commander.coalesce`): at saturation fewer, fuller messages; at low
load the queue is empty and every packet still goes out alone, at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import anyio
import grpc
from anyio.abc import TaskStatus

from commander.coalesce import Coalescer
from commander.config import ConnectionConfig
from commander.context import stamp
from shared import wire
from shared.keepalive import KeepaliveConfig
from shared.tls import channel_credentials

__all__ = ["Link", "ResumePolicy", "StreamEnd", "open_channel"]

# How a call ends when its transport broke (not when the dispatcher ended the session).
_TRANSPORT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0
_GOODBYE_S = 0.25


def open_channel(connection: ConnectionConfig, keepalive: KeepaliveConfig) -> grpc.aio.Channel:
    """A channel with keepalive matching the dispatcher's policy; TLS when configured (--tls,
    or implied by --ca-file / --cert-file). ValueError naming the option for a file that does
    not read."""
    options = connection.channel_options(keepalive)
    if not connection.uses_tls:
        return grpc.aio.insecure_channel(connection.target, options=options)
    credentials = channel_credentials(connection.ca_file, connection.cert_file, connection.key_file)
    return grpc.aio.secure_channel(connection.target, credentials, options=options)


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How the call ended, as the dispatcher (or the transport) said."""

    code: grpc.StatusCode
    details: str
    trailers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    """How this link resumes its session (`Link.enable_resume`)."""

    timeout_s: float  # redial for at most this long after a break
    buffer_packets: int  # written, unacked packets kept for re-sending (the writer waits when full)
    hello: Callable[[int], wire.pb.UpstreamPacket]  # the resume Hello, given the last upstream seq sent
    processed: Callable[[], int]  # the last downstream seq the session processed (downstream_ack)


class _LinkOver(Exception):
    """The link has ended for good: the writer stops."""


def _metadata_dict(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            out[key] = wire.decode_metadata_value(value)
    return out


class Link:
    """One session's ChatStream: the calls it takes (one, or more after resumes) and the pumps."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        session_id: str,
        outbox_size: int,
        on_packet: Callable[[wire.pb.DownstreamPacket], None],
        on_end: Callable[[], None],
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.session_id = session_id
        self.last_seq = 0
        self.resumes = 0
        self.end: StreamEnd | None = None
        self.initial_metadata: dict[str, str] = {}
        self.ended = anyio.Event()
        self._stub = wire.AgentInteractionStub(channel)
        self._metadata = tuple(metadata)
        self._on_packet = on_packet
        self._on_end = on_end
        self._outbox_send, self._outbox_receive = anyio.create_memory_object_stream[wire.pb.UpstreamPacket](outbox_size)
        self._call: grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket] | None = None
        self._ready_call: object = None  # the call the writer may write on (set once a resume is done)
        self._changed = anyio.Event()  # set (and replaced) when the call or its readiness changes
        self._over = False
        self._cancelled_locally = False
        self._coalescer: Coalescer | None = None
        # The packet that ended the last merge (it could not join): taken off the outbox
        # but not written yet, so it is still "queued" for the writer and for discard_queued.
        self._held: wire.pb.UpstreamPacket | None = None
        self._resume: ResumePolicy | None = None
        self._unacked: deque[wire.pb.UpstreamPacket] = deque()  # written, not acked (resumable only)
        self._acked = anyio.Event()
        self._half_closed = False  # the writer half-closed: a resumed call half-closes again

    @property
    def resumable(self) -> bool:
        return self._resume is not None

    def enable_resume(self, policy: ResumePolicy) -> None:
        """The dispatcher offers resume (its Welcome): from now on a broken call is resumed."""
        if policy.timeout_s > 0:
            self._resume = policy

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the call and pump both directions until the link has ended (resumes included).

        Shielded: cancelling the caller's scope does not cancel the pumps (a cancelled
        `call.read()` cancels the RPC before the dispatcher can be told anything); the owner
        ends the link with `abort` or `cancel`, which end the call, and then this returns."""
        call = self._open_call()
        self._make_ready(call)
        end: StreamEnd | None = None
        with anyio.CancelScope(shield=True):
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop)
                    task_status.started()
                    end = await self._read_loop(call)
                    while self._should_resume(end):
                        end = await self._resume_after(end)
                    self._over = True
                    self._notify()
                    tg.cancel_scope.cancel()  # the writer, wherever it waits
            finally:
                self.end = end or StreamEnd(grpc.StatusCode.UNKNOWN, "stream ended abnormally")
                self._outbox_receive.close()
                self.ended.set()
                self._on_end()

    async def send(self, packet: wire.pb.UpstreamPacket) -> None:
        """Queue a packet; waits while the outbox is full. Safe to cancel.

        A packet sent after the link ended (the writer is gone) is dropped: how the call
        ended is what `end` reports, and the caller learns it from `ended`.
        """
        try:
            await self._outbox_send.send(packet)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def coalesce_with(self, coalescer: Coalescer) -> None:
        """From now on, merge consecutive deltas already queued when the writer is about to write."""
        self._coalescer = coalescer

    def discard_queued(self) -> int:
        """Drop every packet queued but not yet written (after a stop: never sent, never paid for).

        Returns the number of agent packets dropped (one per say/think/tool call), whether
        or not coalescing is on: merging happens synchronously right before `call.write`,
        so there is never a merged-but-unwritten packet to drop, only the outbox and the
        one packet the writer holds back after a merge. A merged message already handed to
        `call.write` counts as sent, as a single packet being written always did.
        """
        dropped = 0
        if self._held is not None:
            self._held = None
            dropped = 1
        while True:
            try:
                self._outbox_receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return dropped
            dropped += 1

    def close_upstream(self) -> None:
        """No more packets: the writer flushes the queue, then half-closes the call."""
        self._outbox_send.close()

    async def abort(self, reason: str, *, tell: bool) -> None:
        """The owner gives up on the session (its caller cancelled it). With `tell`, the
        dispatcher is told in-band first — the queue is dropped, an ErrorSignal CANCELLED goes
        out and the call half-closes — so that it does not hold the session for a resume that
        will never come; then (or at once, or after `_GOODBYE_S`) the RPC is cancelled.
        Shielded and bounded: it runs while the caller is being cancelled."""
        with anyio.CancelScope(shield=True):
            if tell and not self.ended.is_set() and not self._half_closed:
                with anyio.move_on_after(_GOODBYE_S):
                    self.discard_queued()
                    goodbye = wire.pb.UpstreamPacket(error=wire.pb.ErrorSignal(code="CANCELLED", message=reason))
                    try:
                        self._outbox_send.send_nowait(goodbye)
                    except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                    else:
                        self.close_upstream()
                        await self.ended.wait()
            if not self.ended.is_set():
                self.cancel()
                with anyio.move_on_after(_GOODBYE_S):
                    await self.ended.wait()

    def cancel(self) -> None:
        """Cancel the RPC (RST_STREAM) and give up resuming. Last resort: the dispatcher sees
        the peer go away."""
        self._cancelled_locally = True
        if self._call is not None and not self._call.done():
            self._call.cancel()

    # -- calls ------------------------------------------------------------------------------

    def _open_call(self) -> grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket]:
        call: grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket]
        call = self._stub.ChatStream(metadata=self._metadata or None)
        self._call = call
        self._notify()
        return call

    def _make_ready(self, call: object) -> None:
        self._ready_call = call
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _should_resume(self, end: StreamEnd) -> bool:
        return (
            self._resume is not None
            and not self._cancelled_locally
            and end.code in _TRANSPORT_CODES
            and wire.MetadataKey.SESSION_STATE not in end.trailers
        )

    async def _resume_after(self, broken: StreamEnd) -> StreamEnd:
        """Redial until a call resumes the session (then serve it: its end is returned), the
        dispatcher refuses, or the resume timeout passes (the last end is returned, said so)."""
        policy = self._resume
        assert policy is not None
        log_end = broken
        deadline = time.monotonic() + policy.timeout_s
        delay = _FIRST_BACKOFF_S
        while not self._cancelled_locally:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await anyio.sleep(min(left, random.uniform(delay / 2, delay)))  # backoff, jittered
            delay = min(delay * 2, _MAX_BACKOFF_S)
            call = self._open_call()
            resumed, end = await self._handshake(call, policy)
            if resumed:
                self.resumes += 1
                return await self._read_loop(call)
            log_end = end
            if not (end.code in _TRANSPORT_CODES and wire.MetadataKey.SESSION_STATE not in end.trailers):
                return end  # refused (the session ended, is not held...): final
        details = f"resume gave up after {policy.timeout_s:g}s: {log_end.code.name}: {log_end.details}"
        return StreamEnd(log_end.code, details, log_end.trailers)

    async def _handshake(
        self, call: grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket], policy: ResumePolicy
    ) -> tuple[bool, StreamEnd]:
        """Resume on `call`: the Hello, the resumed Welcome, then what the dispatcher lacks."""
        try:
            hello = policy.hello(self.last_seq)
            hello.session_id = self.session_id
            await call.write(hello)
            first = await call.read()
            if first is grpc.aio.EOF:
                return False, await self._ended_call(call)
            packet: wire.pb.DownstreamPacket = first  # type: ignore[assignment]  # not EOF
            if not (packet.HasField("welcome") and packet.welcome.resumed):
                call.cancel()
                return False, StreamEnd(
                    grpc.StatusCode.UNKNOWN, "the dispatcher did not answer the resume with a Welcome"
                )
            self._on_packet(packet)
            self._trim(packet.welcome.last_upstream_seq)
            for resent in list(self._unacked):
                resent.downstream_ack = policy.processed()
                await call.write(resent)
            if self._half_closed:
                await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            return False, _end_of(exc)
        except (asyncio.InvalidStateError, grpc.aio.UsageError):
            return False, await self._ended_call(call)
        except asyncio.CancelledError:
            if not self._cancelled_locally:
                raise
            return False, StreamEnd(grpc.StatusCode.CANCELLED, "cancelled by the commander")
        self._make_ready(call)
        return True, StreamEnd(grpc.StatusCode.OK, "")

    async def _ended_call(
        self, call: grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket]
    ) -> StreamEnd:
        try:
            return StreamEnd(
                await call.code(), await call.details() or "", _metadata_dict(await call.trailing_metadata())
            )
        except grpc.aio.AioRpcError as exc:
            return _end_of(exc)

    def _trim(self, seq: int) -> None:
        unacked = self._unacked
        while unacked and unacked[0].seq <= seq:
            unacked.popleft()
        self._acked.set()
        self._acked = anyio.Event()

    # -- the writer (one for the link's life) ---------------------------------------------------

    async def _writable(self) -> grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket]:
        """The call to write on: the current one, once it is ready (a resumed one after its handshake)."""
        while True:
            if self._over:
                raise _LinkOver
            call = self._call
            if call is not None and call is self._ready_call:
                return call
            await self._changed.wait()

    async def _write_loop(self) -> None:
        outbox = self._outbox_receive
        seq = 0
        try:
            while True:
                packet = self._held
                if packet is None:
                    try:
                        packet = await outbox.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                else:
                    self._held = None
                coalescer = self._coalescer
                if coalescer is not None and coalescer.open(packet):
                    packet = self._merge_queued(coalescer)
                call = await self._writable()
                resume = self._resume
                if resume is not None:
                    while len(self._unacked) >= resume.buffer_packets:  # bounded: wait for acks
                        await self._acked.wait()
                    packet.downstream_ack = resume.processed()
                seq += 1
                stamp(packet, seq=seq, session_id=self.session_id)
                if packet.HasField("stop_confirm"):
                    packet.stop_confirm.last_seq = seq - 1
                if resume is not None:
                    self._unacked.append(packet)
                self.last_seq = seq
                try:
                    await call.write(packet)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    if self._resume is None:
                        return  # the call already ended; the reader reports how
                    # Kept in the retransmit buffer: the resumed call re-sends it.
            self._half_closed = True  # from now on a resumed call half-closes in its handshake
            call = await self._writable()
            try:
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass  # the call already ended; the reader reports how (a resume half-closes again)
        except _LinkOver:
            return
        except asyncio.CancelledError:
            if not (self._cancelled_locally or self._over):
                raise

    def _merge_queued(self, coalescer: Coalescer) -> wire.pb.UpstreamPacket:
        """Merge into the open run whatever is queued right now and fits; never waits.

        Synchronous on purpose: no other task (the agent, discard_queued) runs between
        taking packets off the outbox and handing the merged one to `call.write`.
        """
        outbox = self._outbox_receive
        while not coalescer.is_full:
            try:
                following = outbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break  # nothing queued: at low load this is the first try, and the packet goes alone
            if not coalescer.add(following):
                self._held = following  # another kind or step, or too big: it starts the next write
                break
        return coalescer.close()

    # -- the reader (one per call) ------------------------------------------------------------

    async def _read_loop(
        self, call: grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket]
    ) -> StreamEnd:
        try:
            while True:
                got = await call.read()
                if got is grpc.aio.EOF:
                    break
                packet = cast(wire.pb.DownstreamPacket, got)
                if self._resume is not None and packet.HasField("ack"):
                    self._trim(packet.ack.seq)
                self._on_packet(packet)
            self.initial_metadata = _metadata_dict(await call.initial_metadata())
            return StreamEnd(
                await call.code(),
                await call.details() or "",
                _metadata_dict(await call.trailing_metadata()),
            )
        except grpc.aio.AioRpcError as exc:
            self.initial_metadata = _metadata_dict(exc.initial_metadata()) or self.initial_metadata
            return _end_of(exc)
        except asyncio.CancelledError:
            if not self._cancelled_locally:
                raise
            return StreamEnd(grpc.StatusCode.CANCELLED, "cancelled by the commander")


def _end_of(exc: grpc.aio.AioRpcError) -> StreamEnd:
    return StreamEnd(exc.code(), exc.details() or "", _metadata_dict(exc.trailing_metadata()))
