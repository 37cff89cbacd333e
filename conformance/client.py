"""Wire-only helpers: the kit talks to the target through the generated stubs and nothing else.

No import of `dispatcher` or `commander` here or anywhere in the kit: it grades any server,
given only its address. Every wait is bounded by `KitOptions.wait_s` and fails with what was
expected and what was seen.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from shared import wire
from shared.tls import channel_credentials

__all__ = [
    "CHAT_STREAM_METHOD",
    "DEFAULT_MAX_RECEIVE_BYTES",
    "DEFAULT_STOP_WORD",
    "Ending",
    "KitOptions",
    "RawSession",
    "StreamEnded",
    "describe",
    "open_channel",
    "session_id",
]

DEFAULT_STOP_WORD = "CONFORMANCE-STOP"
# grpc's own default receive limit: what the kit assumes when the target sends no Welcome.
DEFAULT_MAX_RECEIVE_BYTES = 4 * 1024 * 1024
CHAT_STREAM_METHOD = f"/{wire.SERVICE_NAME}/ChatStream"
_RUN_ID = uuid.uuid4().hex[:8]


@dataclass(frozen=True, slots=True)
class KitOptions:
    """How to reach the target and how long to wait for it."""

    target: str
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""  # client certificate and key, for a target that requires mutual TLS
    key_file: str = ""
    token: str = ""
    stop_word: str = DEFAULT_STOP_WORD
    wait_s: float = 10.0
    keepalive_budget_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.target or ":" not in self.target:
            raise ValueError(f"target must be HOST:PORT, got {self.target!r}")
        if self.wait_s <= 0 or self.keepalive_budget_s <= 0:
            raise ValueError("wait_s and keepalive_budget_s must be positive")
        if (self.ca_file or self.cert_file) and not self.tls:
            raise ValueError("--ca-file and --cert-file need --tls")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("--cert-file and --key-file go together")

    def metadata(self, extra: Iterable[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token (if any) plus `extra`."""
        base = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return (*base, *extra)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return channel_credentials(self.ca_file, self.cert_file, self.key_file)


def open_channel(options: KitOptions, channel_options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An aio channel to the target (TLS when asked); close it with `await channel.close()`."""
    credentials = options.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(options.target, options=channel_options)
    return grpc.aio.secure_channel(options.target, credentials, options=channel_options)


def session_id(name: str) -> str:
    """A session id unique to this run of the kit, so runs sharing a target never collide."""
    return f"conformance-{_RUN_ID}-{name}"


def describe(packet: Any) -> str:
    """One short line per downstream packet, for failure messages."""
    if packet is None:
        return "<end of stream>"
    kind = packet.WhichOneof("signal")
    if kind == "ack":
        return f"ack(seq={packet.ack.seq})"
    if kind == "tool_result":
        r = packet.tool_result
        error = f", error={wire.ToolErrorCode.Name(r.error.code)}" if r.HasField("error") else ""
        return f"tool_result(call_id={r.call_id!r}, tool={r.tool_name!r}{error})"
    if kind == "error":
        return f"error(code={packet.error.code!r}, seq={packet.error.seq}, call_id={packet.error.call_id!r})"
    if kind == "stop":
        return f"stop(code={wire.pb.StopCode.Name(packet.stop.code)}, reason={packet.stop.reason!r})"
    if kind == "welcome":
        return f"welcome(session_id={packet.welcome.session_id!r})"
    return f"<empty DownstreamPacket: {packet}>"


@dataclass(frozen=True, slots=True)
class Ending:
    """How a stream ended: status, details, trailers, and the packets read on the way."""

    code: grpc.StatusCode
    details: str
    trailers: dict[str, str]
    packets: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        return f"status {self.code.name} {self.details!r}, trailers {self.trailers}"


class StreamEnded(AssertionError):
    """The target ended the stream where the kit expected it to go on."""


class RawSession:
    """A packet-level ChatStream: the test decides every field and reads every packet.

    `seen` keeps every downstream packet read, so a failure can say what arrived instead.
    """

    def __init__(self, channel: grpc.aio.Channel, options: KitOptions, metadata: Iterable[tuple[str, str]] = ()):
        self.options = options
        self.wait_s = options.wait_s
        self.call = wire.AgentInteractionStub(channel).ChatStream(metadata=options.metadata(metadata) or None)
        self.seen: list[Any] = []
        self._ended = False

    # -- upstream ---------------------------------------------------------------------

    async def send(self, packet: wire.pb.UpstreamPacket) -> None:
        try:
            await asyncio.wait_for(self.call.write(packet), self.wait_s)
        except TimeoutError:
            raise AssertionError(f"the target did not accept a packet within {self.wait_s} s (flow control)") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            ending = await self.finish()
            raise StreamEnded(
                f"the stream ended before the kit could send {packet.WhichOneof('payload') or 'a packet'}: "
                f"{ending.describe()}; {self.seen_text()}"
            ) from exc

    async def hello(self, session: str = "", seq: int = 1) -> wire.pb.Welcome:
        """Send Hello; the first downstream packet must be its Welcome."""
        await self.send(wire.pb.UpstreamPacket(seq=seq, hello=wire.pb.Hello(session_id=session, agent_name="kit")))
        packet = await self.recv()
        if packet is None:
            ending = await self.finish()
            raise StreamEnded(f"expected a Welcome as the first downstream packet after Hello; {ending.describe()}")
        if packet.WhichOneof("signal") != "welcome":
            raise AssertionError(
                f"expected a Welcome as the first downstream packet after Hello, got {describe(packet)}"
            )
        welcome: wire.pb.Welcome = packet.welcome
        return welcome

    async def thought(self, seq: int, delta: str, *, session: str = "") -> None:
        thought = wire.pb.ThoughtChain(step_name="plan", delta=delta)
        await self.send(wire.pb.UpstreamPacket(seq=seq, session_id=session, thought=thought))

    async def content(self, seq: int, text: str, *, is_finish: bool = False, session: str = "") -> None:
        chunk = wire.pb.ContentChunk(text=text, is_finish=is_finish)
        await self.send(wire.pb.UpstreamPacket(seq=seq, session_id=session, content=chunk))

    async def tool_call(
        self, seq: int, tool: str, args: dict[str, Any] | str, *, call_id: str = "", timeout_ms: int = 0
    ) -> None:
        arguments_json = args if isinstance(args, str) else json.dumps(args, separators=(",", ":"))
        request = wire.pb.ToolCallRequest(
            tool_name=tool, arguments_json=arguments_json, call_id=call_id, timeout_ms=timeout_ms
        )
        await self.send(wire.pb.UpstreamPacket(seq=seq, tool_call=request))

    async def stop_confirm(self, seq: int, stop: wire.pb.StopSignal, pending: Sequence[tuple[str, str]] = ()) -> None:
        confirm = wire.pb.StopConfirm(
            stop_id=stop.stop_id,
            last_seq=seq - 1,
            pending_tool_calls=[
                wire.pb.PendingToolCall(call_id=c, tool_name=t, fate=wire.pb.TOOL_CALL_FATE_ABANDONED)
                for c, t in pending
            ],
        )
        await self.send(wire.pb.UpstreamPacket(seq=seq, stop_confirm=confirm))

    async def half_close(self) -> None:
        try:
            await asyncio.wait_for(self.call.done_writing(), self.wait_s)
        except TimeoutError:
            raise AssertionError(f"the half-close was not accepted within {self.wait_s} s") from None

    # -- downstream -------------------------------------------------------------------

    async def recv(self, wait_s: float | None = None) -> Any:
        """The next downstream packet, or None once the stream has ended (any status)."""
        if self._ended:
            return None
        wait = self.wait_s if wait_s is None else wait_s
        try:
            packet = await asyncio.wait_for(self.call.read(), wait)
        except grpc.aio.AioRpcError:
            self._ended = True
            return None
        except TimeoutError:
            raise AssertionError(f"no downstream packet within {wait} s; {self.seen_text()}") from None
        if packet is grpc.aio.EOF:
            self._ended = True
            return None
        self.seen.append(packet)
        return packet

    async def expect(self, kind: str, what: str, *, skip: Sequence[str] = ("ack",), wait_s: float | None = None) -> Any:
        """Read until a packet of `kind` arrives, skipping `skip` kinds; anything else fails."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected {what}; nothing matching within the wait; {self.seen_text()}")
            try:
                packet = await self.recv(left)
            except AssertionError:
                raise AssertionError(f"expected {what}; nothing more within {left:.3g} s; {self.seen_text()}") from None
            if packet is None:
                ending = await self.finish()
                raise StreamEnded(f"expected {what}; the stream ended: {ending.describe()}; {self.seen_text()}")
            if packet.WhichOneof("signal") == kind:
                return packet
            if packet.WhichOneof("signal") not in skip:
                raise AssertionError(f"expected {what}; got {describe(packet)}; {self.seen_text()}")

    async def expect_result(self, call_id: str, what: str) -> wire.pb.ToolCallResult:
        packet = await self.expect("tool_result", what)
        result: wire.pb.ToolCallResult = packet.tool_result
        if result.call_id != call_id:
            raise AssertionError(f"expected {what} (call_id {call_id!r}); got {describe(packet)}")
        return result

    async def initial_metadata(self) -> dict[str, str]:
        try:
            metadata = await asyncio.wait_for(self.call.initial_metadata(), self.wait_s)
        except TimeoutError:
            raise AssertionError(f"no initial metadata within {self.wait_s} s; {self.seen_text()}") from None
        return _as_dict(metadata)

    async def finish(self, wait_s: float | None = None, expecting: str = "the end of the stream") -> Ending:
        """Read what is left, then the status and trailers (grpc delivers the status last)."""
        wait = self.wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait
        first = len(self.seen)
        while not self._ended:
            left = deadline - time.monotonic()
            if left <= 0 or await self._recv_or_timeout(left) is _TIMED_OUT:
                raise AssertionError(
                    f"expected {expecting}; the stream did not end within {wait:g} s; {self.seen_text()}"
                )
        code = await asyncio.wait_for(self.call.code(), self.wait_s)
        details = await self.call.details() or ""
        trailers = _as_dict(await self.call.trailing_metadata())
        return Ending(code, details, trailers, self.seen[first:])

    async def expect_status(self, code: grpc.StatusCode, what: str, wait_s: float | None = None) -> Ending:
        """The stream must end with `code` (reading what is left first)."""
        ending = await self.finish(wait_s, expecting=f"{what} to end the stream {code.name}")
        if ending.code is not code:
            raise AssertionError(f"{what}: expected status {code.name}, got {ending.describe()}")
        return ending

    async def _recv_or_timeout(self, left: float) -> Any:
        try:
            return await self.recv(left)
        except AssertionError:
            return _TIMED_OUT

    def seen_text(self) -> str:
        """The downstream packets read so far, for failure messages."""
        if not self.seen:
            return "downstream so far: nothing"
        shown = [describe(p) for p in self.seen[-12:]]
        more = f"... {len(self.seen) - 12} earlier, " if len(self.seen) > 12 else ""
        return "downstream so far: [" + more + ", ".join(shown) + "]"


_TIMED_OUT = object()


def _as_dict(metadata: Any) -> dict[str, str]:
    return {k: wire.decode_metadata_value(v) for k, v in (metadata or ()) if isinstance(v, str)}
