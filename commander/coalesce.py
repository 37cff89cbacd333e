"""Adaptive coalescing of upstream deltas: fewer, fuller messages when the stream falls behind.

Each gRPC message costs the same fixed work on both ends (framing, a write, a read, the
dispatcher's per-packet bookkeeping) however little text it carries, so at saturation
the per-message cost, not the text, limits tokens/s. The writer therefore merges what
is *already queued* when it is about to write: a run of consecutive packets of the same
kind becomes one packet carrying the concatenated text.

- content + content: `text` concatenated. A chunk with `is_finish` may end a run (the
  merged packet keeps `is_finish`); nothing joins after it, and it never starts one.
- thought + thought with the same `step_name`: `delta` concatenated.
- Everything else (tool calls, hello, errors, stop_confirm) and any change of kind or
  step ends the run and is sent exactly as produced. Order is never changed.

A merged packet is bounded by `max_bytes` of UTF-8 text (one packet already larger is
sent alone, never split) and by `max_packets` agent packets.

Why no latency budget (timer): only packets that are queued *now* are merged, and each
of them would otherwise wait behind the current write anyway, so merging only makes
them leave sooner. When the queue is empty, which is the case at low load, a packet goes
out alone at once: no timer, no added latency, and the batch size follows the backlog.

This module is synchronous and does no I/O: the writer feeds it packets it received
without waiting (`receive_nowait`), so no other task runs between `open` and `close`.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared import wire

__all__ = ["Coalescer", "coalesce"]


def _utf8_len(text: str) -> int:
    # str.isascii() is O(1) in CPython (a flag of the string object): the common, ASCII
    # case costs no encoding and no allocation.
    return len(text) if text.isascii() else len(text.encode())


class Coalescer:
    """Builds one merged packet at a time: `open` a run, `add` while it fits, then `close`.

    The first packet of a run is reused as the merged packet: its text is replaced once,
    by a single `"".join` over the parts, in `close`.
    """

    __slots__ = (
        "_bytes",
        "_count",
        "_first",
        "_is_content",
        "_is_finish",
        "_parts",
        "_step",
        "max_bytes",
        "max_packets",
    )

    def __init__(self, *, max_bytes: int, max_packets: int) -> None:
        if max_bytes < 1 or max_packets < 1:
            raise ValueError("max_bytes and max_packets must be >= 1")
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self._first: wire.pb.UpstreamPacket | None = None
        self._parts: list[str] = []
        self._is_content = False
        self._is_finish = False
        self._step = ""
        self._bytes = 0
        self._count = 0

    def open(self, packet: wire.pb.UpstreamPacket) -> bool:
        """Start a run with `packet`. False: it cannot be merged, send it as it is (no run open)."""
        kind = packet.WhichOneof("payload")
        if kind == "content":
            chunk = packet.content
            if chunk.is_finish:
                return False
            text = chunk.text
            self._is_content = True
        elif kind == "thought":
            thought = packet.thought
            text = thought.delta
            self._step = thought.step_name
            self._is_content = False
        else:
            return False
        self._first = packet
        self._parts.append(text)
        self._bytes = _utf8_len(text)
        self._count = 1
        self._is_finish = False
        return True

    @property
    def is_full(self) -> bool:
        """No further packet can join the open run."""
        return self._is_finish or self._count >= self.max_packets or self._bytes >= self.max_bytes

    def add(self, packet: wire.pb.UpstreamPacket) -> bool:
        """Merge `packet` into the open run. False, with the run unchanged, when it does not
        belong (another kind or step) or does not fit (size, count, after is_finish)."""
        if self.is_full:
            return False
        if self._is_content:
            if packet.WhichOneof("payload") != "content":
                return False
            chunk = packet.content
            text = chunk.text
            size = _utf8_len(text)
            if self._bytes + size > self.max_bytes:
                return False
            self._is_finish = chunk.is_finish
        else:
            if packet.WhichOneof("payload") != "thought":
                return False
            thought = packet.thought
            if thought.step_name != self._step:
                return False
            text = thought.delta
            size = _utf8_len(text)
            if self._bytes + size > self.max_bytes:
                return False
        self._parts.append(text)
        self._bytes += size
        self._count += 1
        return True

    def close(self) -> wire.pb.UpstreamPacket:
        """End the open run: the packet to send (the first packet, carrying the whole run)."""
        packet = self._first
        assert packet is not None, "close() without open()"
        if self._count > 1:
            joined = "".join(self._parts)
            if self._is_content:
                packet.content.text = joined
                if self._is_finish:
                    packet.content.is_finish = True
            else:
                packet.thought.delta = joined
        self._parts.clear()
        self._first = None
        self._count = 0
        return packet


def coalesce(
    packets: Iterable[wire.pb.UpstreamPacket], *, max_bytes: int, max_packets: int
) -> list[wire.pb.UpstreamPacket]:
    """Merge a whole sequence at once, as the writer would if all of it were queued.

    The reference for the writer's behaviour (and what the unit tests exercise); the
    writer itself drives a `Coalescer` over its outbox. The packets are taken over: the
    first of each run is modified in place to become the merged packet.
    """
    coalescer = Coalescer(max_bytes=max_bytes, max_packets=max_packets)
    out: list[wire.pb.UpstreamPacket] = []
    held: wire.pb.UpstreamPacket | None = None
    iterator = iter(packets)
    while True:
        packet = held if held is not None else next(iterator, None)
        held = None
        if packet is None:
            return out
        if coalescer.open(packet):
            while not coalescer.is_full:
                following = next(iterator, None)
                if following is None:
                    break
                if not coalescer.add(following):
                    held = following
                    break
            packet = coalescer.close()
        out.append(packet)
