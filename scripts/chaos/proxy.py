"""A loopback TCP fault proxy: what a bad network does to a connection, switched at run time.

`FaultProxy` listens on 127.0.0.1 (an ephemeral port by default) and forwards every accepted
connection to one target. Its mode applies to every current and every new connection:

- `pass`: bytes go through as they come.
- `reset`: every connection is closed with an RST (`SO_LINGER` 0, on both sides: each peer
  reads ECONNRESET); while the mode lasts, a new connection is reset as soon as it is accepted.
  `reset_current()` does the first half once and keeps the mode.
- `blackhole`: a dead link. The sockets stay open and nothing is forwarded either way: the
  proxy stops reading, and a chunk it had already read is held, not dropped. That is what a
  cut cable or a lost route does to TCP: nothing arrives, no FIN or RST crosses, the sender's
  buffers fill until its writes block, and nothing errors until a timer (gRPC's keepalive)
  gives up. Reading and discarding instead would model a link that acknowledges data it then
  loses, and would corrupt the byte stream for the case that matters most here: a link that
  comes back before anyone gave up. With the chunk held, `pass` again delivers the stream
  intact and late, as TCP's retransmissions would; a side that gave up meanwhile has closed
  its socket, and the proxy, reading again, passes that close on (a late RST or FIN). A
  connection accepted during a blackhole is not dialled onward until the link returns.
  One difference from a cut cable remains, and it is on purpose: the proxy's kernel still
  acknowledges what fits its receive buffer, so TCP's own retransmission timeout never fires
  and only the application's liveness check (gRPC keepalive) can find the dead link.
- `delay(ms)`: each chunk is forwarded `ms` after it was read (a latency: the chunks behind
  it are read meanwhile, so throughput is not cut).
- `throttle(bytes_per_s)`: each direction of each connection is paced to that rate.

Counters (`ProxyCounters`): connections accepted and open, bytes each way, resets, chunks held.

CLI: `python -m scripts.chaos.proxy --listen 127.0.0.1:0 --target HOST:PORT [--control 127.0.0.1:0]`
prints one JSON line `{"listen": ..., "target": ..., "control": ...}` and serves a control
port: one command per line (`pass`, `reset`, `reset-once`, `blackhole`, `delay MS`,
`throttle BYTES_PER_S`, `stats`), each answered with one JSON line (the mode and the counters).
From another shell: `python -m scripts.chaos.proxy ctl --control HOST:PORT blackhole` (or
`nc HOST PORT`). A control port rather than stdin: whoever runs the proxy (a harness, a
terminal, a service manager) and whoever switches it need not be the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FaultProxy", "Mode", "ProxyCounters", "parse_address", "parse_mode"]

CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 64  # per direction: chunks read and not yet written (the delay line's length)
CLOSE_GRACE_S = 2.0  # aclose(): how long connection tasks get to unwind once aborted


@dataclass(frozen=True, slots=True)
class Mode:
    """One of pass / reset / blackhole / delay / throttle, with its parameter."""

    kind: str = "pass"
    delay_ms: float = 0.0
    bytes_per_s: float = 0.0

    KINDS = ("pass", "reset", "blackhole", "delay", "throttle")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown mode {self.kind!r}; one of {', '.join(self.KINDS)}")
        if self.kind == "delay" and self.delay_ms <= 0:
            raise ValueError("delay needs a positive number of milliseconds")
        if self.kind == "throttle" and self.bytes_per_s <= 0:
            raise ValueError("throttle needs a positive number of bytes per second")

    @classmethod
    def passing(cls) -> Mode:
        return cls("pass")

    @classmethod
    def reset(cls) -> Mode:
        return cls("reset")

    @classmethod
    def blackhole(cls) -> Mode:
        return cls("blackhole")

    @classmethod
    def delay(cls, ms: float) -> Mode:
        return cls("delay", delay_ms=ms)

    @classmethod
    def throttle(cls, bytes_per_s: float) -> Mode:
        return cls("throttle", bytes_per_s=bytes_per_s)

    def __str__(self) -> str:
        if self.kind == "delay":
            return f"delay {self.delay_ms:g}"
        if self.kind == "throttle":
            return f"throttle {self.bytes_per_s:g}"
        return self.kind


def parse_mode(text: str) -> Mode:
    """`pass`, `reset`, `blackhole`, `delay 200` / `delay(200)`, `throttle 10000`."""
    words = text.replace("(", " ").replace(")", " ").split()
    if not words:
        raise ValueError("empty mode")
    kind, args = words[0].lower(), words[1:]
    if kind not in Mode.KINDS:
        raise ValueError(f"unknown mode {kind!r}; one of {', '.join(Mode.KINDS)}")
    if kind in ("delay", "throttle"):
        if len(args) != 1:
            raise ValueError(f"{kind} takes one number")
        try:
            value = float(args[0])
        except ValueError:
            raise ValueError(f"{kind}: {args[0]!r} is not a number") from None
        return Mode.delay(value) if kind == "delay" else Mode.throttle(value)
    if args:
        raise ValueError(f"{kind} takes no argument")
    return Mode(kind)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class ProxyCounters:
    connections: int = 0  # accepted
    open: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    resets: int = 0  # connections the proxy reset (its mode, or a peer's RST passed on)
    held: int = 0  # chunks held by a blackhole (forwarded when the link returned, or lost with the connection)
    dial_failures: int = 0  # the target refused or could not be reached

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: linger on, timeout 0, then close without flushing."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    reset_done: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def reset(self) -> bool:
        """RST both sides once; False when it had been done already."""
        if self.reset_done:
            return False
        self.reset_done = True
        _rst(self.client)
        if self.upstream is not None:
            _rst(self.upstream)
        return True


class FaultProxy:
    """`async with FaultProxy(("127.0.0.1", port)) as proxy: proxy.address ...; proxy.set_mode(Mode.reset())`."""

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target
        self._listen = listen
        self.counters = ProxyCounters()
        self._mode = Mode.passing()
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._mode_changed = asyncio.Event()  # set and replaced on every change: waiters wake once
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self._listen[0]}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Switch every current and new connection to `mode` (synchronous: it holds from now on)."""
        self._mode = mode
        if mode.kind == "blackhole":
            self._link_up.clear()
        else:
            self._link_up.set()
        if mode.kind == "reset":
            self.reset_current()
        changed, self._mode_changed = self._mode_changed, asyncio.Event()
        changed.set()

    def reset_current(self) -> int:
        """RST every open connection now, whatever the mode; new ones follow the mode. Returns how many."""
        count = 0
        for connection in list(self._connections):
            if connection.reset():
                count += 1
        self.counters.resets += count
        return count

    async def wait_mode_change(self) -> Mode:
        await self._mode_changed.wait()
        return self._mode

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._listen[0], self._listen[1])
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        """Stop listening, RST what is open, and wait (bounded) for every connection task."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.reset()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=CLOSE_GRACE_S)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one connection ---------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        connection = _Connection(client)
        self._connections.add(connection)
        self.counters.connections += 1
        self.counters.open += 1
        try:
            await self._serve(connection, client_reader)
        except asyncio.CancelledError:
            # aclose() is the only canceller of these tasks. They belong to asyncio's server,
            # whose done-callback logs a cancelled handler as an error: end quietly instead.
            if not self._closing:
                raise
        finally:
            self.counters.open -= 1
            self._connections.discard(connection)
            if not connection.reset_done:
                connection.client.close()
                if connection.upstream is not None:
                    connection.upstream.close()
            self._handlers.discard(task)

    async def _serve(self, connection: _Connection, client_reader: asyncio.StreamReader) -> None:
        if self._mode.kind == "reset":
            connection.reset()
            self.counters.resets += 1
            return
        await self._link_up.wait()  # a dead link: the onward dial waits for it to come back
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:
            self.counters.dial_failures += 1
            connection.reset()
            return
        connection.upstream = upstream
        if connection.reset_done:  # reset while dialling
            _rst(upstream)
            return
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._direction(connection, client_reader, upstream, up=True))
                group.create_task(self._direction(connection, upstream_reader, connection.client, up=False))
        except* (ConnectionError, OSError):
            pass  # a peer went away: _direction has passed it on

    async def _direction(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        """One direction: a reader and a writer joined by a bounded delay line (backpressure kept)."""
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read_side(connection, reader, line))
            group.create_task(self._write_side(connection, writer, line, up=up))

    async def _read_side(
        self, connection: _Connection, reader: asyncio.StreamReader, line: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._link_up.wait()  # blackhole: stop reading; the kernel buffers fill
            try:
                chunk = await reader.read(CHUNK_BYTES)
            except ConnectionResetError:
                self._pass_reset(connection)
                raise
            if not self._link_up.is_set():
                self.counters.held += 1  # read just before the link died: held, not dropped
                await self._link_up.wait()
            mode = self._mode
            due = loop.time() + (mode.delay_ms / 1000 if mode.kind == "delay" else 0.0)
            await line.put((due, chunk))
            if not chunk:
                return  # EOF travels down the line as an empty chunk

    async def _write_side(
        self,
        connection: _Connection,
        writer: asyncio.StreamWriter,
        line: asyncio.Queue[tuple[float, bytes]],
        *,
        up: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        next_free = 0.0  # throttle: when the paced link is free again
        while True:
            due, chunk = await line.get()
            if not chunk:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)  # the delay mode's latency: the timing is the feature
            view = memoryview(chunk)
            while view:
                await self._link_up.wait()
                mode = self._mode
                if mode.kind == "throttle":
                    # Slices of ~20 ms of the rate, each sent when the paced link is free.
                    piece = view[: max(1, int(mode.bytes_per_s / 50))]
                    now = loop.time()
                    next_free = max(next_free, now)
                    if next_free > now:
                        await asyncio.sleep(next_free - now)
                    next_free += len(piece) / mode.bytes_per_s
                else:
                    piece, next_free = view, 0.0
                writer.write(piece)
                try:
                    await writer.drain()
                except ConnectionResetError:
                    self._pass_reset(connection)
                    raise
                if up:
                    self.counters.bytes_up += len(piece)
                else:
                    self.counters.bytes_down += len(piece)
                view = view[len(piece) :]

    def _pass_reset(self, connection: _Connection) -> None:
        """A peer reset its side: reset the other, as the network would carry the RST."""
        if connection.reset():
            self.counters.resets += 1


# -- the CLI ------------------------------------------------------------------------------------


def _answer(proxy: FaultProxy, command: str) -> dict[str, Any]:
    words = command.strip()
    if words in ("stats", ""):
        return {"mode": str(proxy.mode), **proxy.counters.snapshot()}
    if words == "reset-once":
        reset = proxy.reset_current()
        return {"mode": str(proxy.mode), "reset_now": reset, **proxy.counters.snapshot()}
    try:
        proxy.set_mode(parse_mode(words))
    except ValueError as exc:
        return {"error": str(exc)}
    return {"mode": str(proxy.mode), **proxy.counters.snapshot()}


async def _control_client(proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write((json.dumps(_answer(proxy, line.decode(errors="replace"))) + "\n").encode())
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _run_cli(listen: tuple[str, int], target: tuple[str, int], control: tuple[str, int], mode: Mode) -> None:
    async with FaultProxy(target, listen) as proxy:
        proxy.set_mode(mode)
        server = await asyncio.start_server(lambda r, w: _control_client(proxy, r, w), *control)
        control_port = server.sockets[0].getsockname()[1]
        ready = {
            "listen": proxy.address,
            "target": f"{target[0]}:{target[1]}",
            "control": f"{control[0]}:{control_port}",
        }
        print(json.dumps(ready), flush=True)
        async with server:
            await asyncio.Event().wait()  # until SIGINT / SIGTERM


def _ctl(control: tuple[str, int], command: str) -> int:
    with socket.create_connection(control, timeout=5) as sock:
        sock.sendall((command + "\n").encode())
        answer = sock.makefile("r").readline()
    print(answer.strip())
    return 1 if "error" in json.loads(answer or "{}") else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        ctl = argparse.ArgumentParser(prog="python -m scripts.chaos.proxy ctl", description="switch a running proxy")
        ctl.add_argument("--control", required=True, type=parse_address, metavar="HOST:PORT")
        commands = "pass | reset | reset-once | blackhole | delay MS | throttle BPS | stats"
        ctl.add_argument("command", nargs="+", help=commands)
        args = ctl.parse_args(argv[1:])
        return _ctl(args.control, " ".join(args.command))
    parser = argparse.ArgumentParser(prog="python -m scripts.chaos.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", type=parse_address, metavar="HOST:PORT")
    parser.add_argument("--target", required=True, type=parse_address, metavar="HOST:PORT")
    parser.add_argument("--control", default="127.0.0.1:0", type=parse_address, metavar="HOST:PORT")
    parser.add_argument("--mode", default="pass", type=parse_mode, help="the mode at start [pass]")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_cli(args.listen, args.target, args.control, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
