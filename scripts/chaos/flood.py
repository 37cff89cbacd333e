"""A ping flood: an HTTP/2 client that sends nothing but PING frames as fast as it can.

Raw frames on a TCP socket (a grpc client never pings more than once a second, whatever it
is told): the connection preface, an empty SETTINGS, then PINGs, 500 a second. The dispatcher's keepalive
policy counts each one arriving sooner than `--keepalive-min-ping-interval-ms` as a strike
and, past `--keepalive-max-ping-strikes`, ends the connection with GOAWAY ENHANCE_YOUR_CALM
("too_many_pings"). The chaos suite runs it beside real sessions: none of them may notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

__all__ = ["ping_flood"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
PING_GAP_S = 0.002  # a flood: the dispatcher allows one PING per --keepalive-min-ping-interval-ms
ERRORS = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0xB: "ENHANCE_YOUR_CALM"}


def frame(kind: int, flags: int, payload: bytes, stream: int = 0) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


async def ping_flood(target: tuple[str, int], pings: int = 2000, timeout_s: float = 10.0) -> str:
    """Flood `target` with up to `pings` PINGs; what the server did about it, in words. The
    server's frames are read while the PINGs go out: its GOAWAY comes before it closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*target), timeout_s)
    seen = {"acks": 0, "sent": 0}
    flooding = asyncio.create_task(_flood(writer, pings, seen))
    try:
        ended = await asyncio.wait_for(_read_until_goaway(reader, writer, seen), timeout_s)
    except TimeoutError:
        ended = "the connection stayed open"
    except (ConnectionError, asyncio.IncompleteReadError):
        ended = "the connection was closed without a GOAWAY"
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await flooding  # owned here: cancelled and awaited, whatever the reader saw
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return f"{seen['sent']} PINGs sent, {seen['acks']} answered, then {ended}"


async def _flood(writer: asyncio.StreamWriter, pings: int, seen: dict[str, int]) -> None:
    writer.write(PREFACE + frame(SETTINGS, 0, b""))
    for n in range(pings):
        if writer.transport.is_closing():
            return
        writer.write(frame(PING, 0, struct.pack(">Q", n)))
        seen["sent"] += 1
        await writer.drain()
        # 500 a second, each read by the server before the next: what it closes then has no
        # unread bytes, so it ends with its GOAWAY and a FIN (unread bytes would make it an
        # RST, which discards the GOAWAY before we read it).
        await asyncio.sleep(PING_GAP_S)


async def _read_until_goaway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, int]) -> str:
    while True:
        header = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
        payload = await reader.readexactly(length)
        if kind == SETTINGS and not flags & ACK:
            writer.write(frame(SETTINGS, ACK, b""))
        elif kind == PING and flags & ACK:
            seen["acks"] += 1
        elif kind == GOAWAY:
            code = int.from_bytes(payload[4:8], "big")
            debug = payload[8:].decode(errors="replace")
            return f"GOAWAY {ERRORS.get(code, hex(code))} {debug!r}"
