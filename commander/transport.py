"""The grpc side of the commander: channel, one ChatStream call, its writer and reader.

grpc.aio awaits live only in the two pump tasks here, never in the agent's task:
cancelling a `call.write()` cancels the whole RPC, and an anyio cancel scope around
`call.read()` can let a bare CancelledError escape. So the agent talks to a bounded
memory stream (its `await send()` is the backpressure), one writer task drains it into
the call, one reader task dispatches downstream packets, and the call is ended with
`done_writing()` or, as a last resort, `call.cancel()`.

With a `Coalescer` the writer merges consecutive deltas that are already queued when it
is about to write (see `commander.coalesce`): at saturation fewer, fuller messages; at low
load the queue is empty and every packet still goes out alone, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import anyio
import grpc
from anyio.abc import TaskStatus

from commander.coalesce import Coalescer
from commander.config import ConnectionConfig
from commander.context import stamp
from shared import wire
from shared.keepalive import KeepaliveConfig
from shared.tls import channel_credentials

__all__ = ["Link", "StreamEnd", "open_channel"]


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


def _metadata_dict(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            out[key] = wire.decode_metadata_value(value)
    return out


class Link:
    """One ChatStream call with its writer and reader pumps."""

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
        self.end: StreamEnd | None = None
        self.initial_metadata: dict[str, str] = {}
        self.ended = anyio.Event()
        self._stub = wire.AgentInteractionStub(channel)
        self._metadata = tuple(metadata)
        self._on_packet = on_packet
        self._on_end = on_end
        self._outbox_send, self._outbox_receive = anyio.create_memory_object_stream[wire.pb.UpstreamPacket](outbox_size)
        self._call: grpc.aio.StreamStreamCall[wire.pb.UpstreamPacket, wire.pb.DownstreamPacket] | None = None
        self._cancelled_locally = False
        self._coalescer: Coalescer | None = None
        # The packet that ended the last merge (it could not join): taken off the outbox
        # but not written yet, so it is still "queued" for the writer and for discard_queued.
        self._held: wire.pb.UpstreamPacket | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the call and pump both directions until the call has ended."""
        self._call = self._stub.ChatStream(metadata=self._metadata or None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write_loop)
            tg.start_soon(self._read_loop)
            task_status.started()

    async def send(self, packet: wire.pb.UpstreamPacket) -> None:
        """Queue a packet; waits while the outbox is full. Safe to cancel.

        A packet sent after the call ended (the writer is gone) is dropped: how the call
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

    def cancel(self) -> None:
        """Cancel the RPC (RST_STREAM). Last resort: the dispatcher sees the peer go away."""
        if self._call is not None and not self._call.done():
            self._cancelled_locally = True
            self._call.cancel()

    async def _write_loop(self) -> None:
        call = self._call
        assert call is not None
        outbox = self._outbox_receive
        seq = 0
        try:
            async with outbox:
                while True:
                    packet = self._held
                    if packet is None:
                        try:
                            packet = await outbox.receive()
                        except anyio.EndOfStream:
                            break
                    else:
                        self._held = None
                    coalescer = self._coalescer
                    if coalescer is not None and coalescer.open(packet):
                        packet = self._merge_queued(coalescer)
                    seq += 1
                    stamp(packet, seq=seq, session_id=self.session_id)
                    if packet.HasField("stop_confirm"):
                        packet.stop_confirm.last_seq = seq - 1
                    await call.write(packet)
                    self.last_seq = seq
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass  # the call already ended; the reader reports how
        except asyncio.CancelledError:
            if not self._cancelled_locally:
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

    async def _read_loop(self) -> None:
        call = self._call
        assert call is not None
        try:
            while True:
                packet = await call.read()
                if packet is grpc.aio.EOF:
                    break
                self._on_packet(packet)  # type: ignore[arg-type]  # not EOF: a DownstreamPacket
            self.initial_metadata = _metadata_dict(await call.initial_metadata())
            self.end = StreamEnd(
                await call.code(),
                await call.details() or "",
                _metadata_dict(await call.trailing_metadata()),
            )
        except grpc.aio.AioRpcError as exc:
            self.initial_metadata = _metadata_dict(exc.initial_metadata())
            trailers = _metadata_dict(exc.trailing_metadata())
            self.end = StreamEnd(exc.code(), exc.details() or "", trailers)
        except asyncio.CancelledError:
            if not self._cancelled_locally:
                raise
            self.end = StreamEnd(grpc.StatusCode.CANCELLED, "cancelled by the commander")
        finally:
            if self.end is None:
                self.end = StreamEnd(grpc.StatusCode.UNKNOWN, "stream ended abnormally")
            self.ended.set()
            self._on_end()
