"""Downstream numbering, and the packets a resumable session keeps for re-sending.

Every downstream packet but an Ack gets the session's next `DownstreamPacket.seq` when it is
decided (before it is queued: a packet decided while the stream is gone is numbered and kept
all the same). A resumable session keeps its tool results, error signals and stop here until
its commander says it has processed them (`UpstreamPacket.downstream_ack`); a resume re-sends
those after the seq the commander names. The Welcome and the Assignment are numbered but not
kept: a resumed stream gets a Welcome of its own.

Bounded by count and bytes: once a packet the commander has not acknowledged is evicted, a
resume that needs it is refused (`after` returns None) instead of silently skipping it.
"""

from __future__ import annotations

from collections import deque

from shared import wire

__all__ = ["Replay"]

Packet = wire.pb.DownstreamPacket
_KEPT_KINDS = frozenset({"tool_result", "error", "stop"})


class Replay:
    __slots__ = (
        "_bytes", "_kept", "_max_bytes", "_max_packets", "_written", "keeps", "lost_through", "next_seq", "released",
    )  # fmt: skip

    def __init__(self, *, keeps: bool, max_packets: int, max_bytes: int) -> None:
        self.keeps = keeps  # False until the session turns out resumable (its Hello)
        self.next_seq = 1
        self.released = 0  # the commander processed every packet up to this seq
        self.lost_through = 0  # packets up to this seq were evicted unacknowledged
        self._kept: deque[tuple[int, Packet, int]] = deque()
        self._bytes = 0
        self._written: set[int] = set()  # kept packets already written once (on any stream)
        self._max_packets = max_packets
        self._max_bytes = max_bytes

    def number(self, packet: Packet) -> None:
        """Give `packet` the next seq and keep it if it is of a kept kind."""
        seq = packet.seq = self.next_seq
        self.next_seq = seq + 1
        if self.keeps and packet.WhichOneof("signal") in _KEPT_KINDS:
            size = packet.ByteSize()
            self._kept.append((seq, packet, size))
            self._bytes += size
            kept = self._kept
            while kept and (len(kept) > self._max_packets or self._bytes > self._max_bytes):
                lost, _, lost_size = kept.popleft()
                self._bytes -= lost_size
                self._written.discard(lost)
                self.lost_through = lost

    def restore(self, packets: list[Packet], *, written: set[int]) -> None:
        """Packets an earlier process of this session numbered (its store's tool results), oldest
        first; `written`: the seqs its journal shows were written. Numbering goes on after them."""
        for packet in packets:
            size = packet.ByteSize()
            self._kept.append((packet.seq, packet, size))
            self._bytes += size
            if packet.seq in written:
                self._written.add(packet.seq)
            self.next_seq = max(self.next_seq, packet.seq + 1)

    def skip_to(self, seq: int) -> None:
        """Number from above `seq` on (a commander that saw packets this process never numbered)."""
        self.next_seq = max(self.next_seq, seq + 1)

    def release_through(self, seq: int) -> None:
        """The commander has processed every downstream packet up to `seq`."""
        if seq <= self.released:
            return
        self.released = seq
        kept = self._kept
        while kept and kept[0][0] <= seq:
            released, _, size = kept.popleft()
            self._bytes -= size
            self._written.discard(released)

    def after(self, seq: int) -> list[Packet] | None:
        """The kept packets after `seq`, oldest first; None when one of them was evicted."""
        if self.lost_through > seq:
            return None
        self.release_through(seq)
        return [packet for _, packet, _ in self._kept]

    def first_write(self, seq: int) -> bool:
        """The packet numbered `seq` was written: True unless it was written before (a kept
        packet re-sent after a resume is journaled once)."""
        if not self.keeps or seq in self._written:
            return not self.keeps
        if self._kept and self._kept[0][0] <= seq:
            self._written.add(seq)
        return True

    def never_written(self) -> list[Packet]:
        """Kept packets no stream has written: at the session's end, they were dropped."""
        return [packet for seq, packet, _ in self._kept if seq not in self._written]
