"""A real HTTP/1.1 server speaking the OpenAI Chat Completions streaming wire format, for tests.

Plain asyncio on a loopback port (no framework, nothing mocked): the commander's HTTP client
talks to it exactly as to vLLM or OpenAI. Each request gets the next scripted `Reply` (or the
last one again): an SSE stream of chunks (`data: {...}`, `data: [DONE]`, chunked transfer
encoding, keep-alive), optionally slow, or an error status with a JSON body, or raw garbage.

It records what a test asserts on: every request's JSON body and headers, every chunk it
wrote and when (time.monotonic, the tests' clock), when the client went away, and how many
chunks it wrote after `mark_stop()` (the moment the test issued a stop).

`python -m tests.fake_openai` serves a short scripted answer on a port (for trying the CLI).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FakeOpenAI",
    "Reply",
    "content_chunks",
    "fake_openai_in_thread",
    "running_fake_openai",
    "tool_call_chunks",
    "usage_chunk",
]

_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


def chunk(delta: dict[str, Any], *, finish_reason: str | None = None, model: str = "fake-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def content_chunks(*texts: str, reasoning: tuple[str, ...] = (), finish: bool = True) -> list[Any]:
    """Reasoning deltas, then content deltas, then (with `finish`) a finish_reason chunk."""
    out: list[Any] = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"reasoning_content": text}) for text in reasoning]
    out += [chunk({"content": text}) for text in texts]
    if finish:
        out.append(chunk({}, finish_reason="stop"))
    return out


def tool_call_chunks(*calls: tuple[str, str, dict[str, Any]]) -> list[Any]:
    """Each (id, function name, arguments) as streamed deltas: the name first, the arguments
    JSON split across two fragments, the calls interleaved by index as servers send them."""
    out: list[Any] = [chunk({"role": "assistant", "content": None})]
    for index, (call_id, name, _) in enumerate(calls):
        fragment = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        out.append(chunk({"tool_calls": [fragment]}))
    for half in (0, 1):
        for index, (_, _, args) in enumerate(calls):
            text = json.dumps(args)
            piece = text[: len(text) // 2] if half == 0 else text[len(text) // 2 :]
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    out.append(chunk({}, finish_reason="tool_calls"))
    return out


def usage_chunk(prompt: int, completion: int, reasoning: int = 0, model: str = "fake-model") -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}  # fmt: skip
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}


@dataclass
class Reply:
    """One scripted answer. `chunks`: JSON objects (sent as `data: <json>`) or raw strings
    (sent as they are, for garbage); `[DONE]` follows unless `done` is False."""

    status: int = 200
    chunks: list[Any] = field(default_factory=list)
    delay_s: float = 0.0  # before each chunk: a slow stream
    done: bool = True
    error_message: str = ""  # for a non-200 status: {"error": {"message": ...}}
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Written:
    at: float
    data: str  # the SSE event as written, without the framing


class FakeOpenAI:
    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies) or [Reply(chunks=content_chunks("Hello", "!"))]
        self.requests: list[dict[str, Any]] = []  # each request's JSON body
        self.headers: list[dict[str, str]] = []  # each request's headers, names lower-cased
        self.written: list[Written] = []
        self.stop_marked_at: float | None = None
        self.disconnected_at: float | None = None  # the client closed while a stream was open
        self.disconnected = asyncio.Event()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def written_after_stop(self) -> list[Written]:
        at = self.stop_marked_at
        return [w for w in self.written if at is not None and w.at > at]

    def mark_stop(self) -> None:
        """The test is about to issue a stop: chunks written from now on are 'after the stop'."""
        self.stop_marked_at = time.monotonic()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- one connection: requests one after another (keep-alive) -------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.headers.append(headers)
        self.requests.append(json.loads(body) if body else {})
        reply = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        if reply.status != 200:
            payload = json.dumps({"error": {"message": reply.error_message or "error", "type": "fake"}}).encode()
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            writer.write(
                f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\n{extra}\r\n".encode()
                + payload
            )
            await writer.drain()
            return True
        writer.write(
            f"HTTP/1.1 200 OK\r\ncontent-type: {reply.content_type}\r\ntransfer-encoding: chunked\r\n"
            "cache-control: no-cache\r\n\r\n".encode()
        )
        await writer.drain()
        # The client sends nothing while it reads a response: a read that ends is it going away.
        gone = asyncio.create_task(reader.read(1))
        try:
            events = [c if isinstance(c, str) else f"data: {json.dumps(c)}" for c in reply.chunks]
            if reply.done:
                events.append("data: [DONE]")
            for event in events:
                if reply.delay_s:
                    await asyncio.wait({gone}, timeout=reply.delay_s)  # a slow model; wakes on a disconnect
                if gone.done():  # EOF, or a reset (the read's exception)
                    self._gone()
                    return False
                data = (event + "\n\n").encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.written.append(Written(time.monotonic(), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self._gone()
            return False
        finally:
            if not gone.done():
                gone.cancel()
            elif not gone.cancelled():
                gone.exception()  # a reset connection: retrieved, so asyncio does not report it
        return True

    def _gone(self) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        self.disconnected.set()


@asynccontextmanager
async def running_fake_openai(*replies: Reply) -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(*replies)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextmanager
def fake_openai_in_thread(*replies: Reply) -> Iterator[FakeOpenAI]:
    """The server on an event loop of its own thread, for tests that drive subprocesses
    synchronously. Read its records from the test's thread (plain attributes); poll
    `disconnected_at` rather than awaiting `disconnected`."""
    loop = asyncio.new_event_loop()
    server = FakeOpenAI(*replies)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise AssertionError("the fake OpenAI server did not start within 10 s")
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _main() -> None:  # pragma: no cover - a manual aid
    import sys

    server = FakeOpenAI(Reply(chunks=[*content_chunks("Hello", " from", " a", " fake", " model."), usage_chunk(9, 5)]))
    await server.start()
    print(server.base_url, file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_main())
