"""A small synchronous client of SessionControlService (and grpc.health.v1) for the CLI.

Every failed call comes out as a `CtlError` (one line, an exit code) built by
`errors.error_for_status`; nothing here prints. Calls run as grpc futures so that Ctrl-C
interrupts a wait and cancels the call instead of hanging in the C core.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatcherctl.errors import EXIT_UNREACHABLE, EXIT_USAGE, CtlError, error_for_status, is_transport_failure
from shared import wire
from shared.tls import channel_credentials as tls_credentials
from shared.tls import explain_connect_failure

__all__ = [
    "DEFAULT_TARGET",
    "HEALTH_SERVICE_UNKNOWN",
    "HEALTH_SERVING",
    "ClientConfig",
    "ControlClient",
    "CtlError",
    "EventStream",
    "StopAnswer",
    "channel_credentials",
    "health_status_name",
]

DEFAULT_TARGET = "127.0.0.1:50051"
HEALTH_SERVING: int = health_pb2.HealthCheckResponse.SERVING
HEALTH_SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the dispatcher is and how to talk to it; validated on construction."""

    target: str = DEFAULT_TARGET
    token: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""  # client certificate and its key, for mutual TLS
    key_file: str = ""
    timeout_s: float = 10.0  # deadline of each unary call (not of watch, ask or their streams)

    def __post_init__(self) -> None:
        if not self.target.strip():
            raise ValueError("--target must be HOST:PORT")
        if not self.timeout_s > 0:
            raise ValueError("--timeout must be more than 0 seconds")
        if self.token and not (self.token.isascii() and self.token.isprintable()):
            raise ValueError("--token must be printable ASCII")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("--cert-file and --key-file go together")

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.ca_file) or bool(self.cert_file)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


@dataclass(frozen=True, slots=True)
class StopAnswer:
    """One StopSession's answer or error, with the round trip measured here."""

    session_id: str
    response: Any  # wire.ctl.StopSessionResponse, None when `error` is set
    error: CtlError | None
    round_trip_ms: float


class EventStream:
    """A server stream of SessionEvents (WatchSession or StartSession); `cancel()` ends it."""

    def __init__(self, call: Any, translate: Callable[[grpc.RpcError], CtlError]) -> None:
        self._call = call
        self._translate = translate

    def __iter__(self) -> Iterator[Any]:
        try:
            for response in self._call:
                yield response.event
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()


class ControlClient:
    """One channel to one dispatcher; use as a context manager."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._metadata = config.metadata()
        self._channel = _open_channel(config)
        self._ready = threading.Event()  # set once the channel has been READY: told apart from unreachable
        self._channel.subscribe(self._on_connectivity, try_to_connect=False)
        self._stub = wire.SessionControlServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.unsubscribe(self._on_connectivity)
        self._channel.close()

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.READY:
            self._ready.set()

    # -- errors ---------------------------------------------------------------------------

    def error(self, exc: grpc.RpcError, session_id: str = "", *, deadline: bool = True) -> CtlError:
        """`exc` as the operator's one-line error."""
        if isinstance(exc, grpc.Call):
            code, details = exc.code(), exc.details() or ""
        else:
            code, details = grpc.StatusCode.UNKNOWN, str(exc)
        if code is grpc.StatusCode.UNAVAILABLE and is_transport_failure(details):
            cause = explain_connect_failure(details, tls=self.config.use_tls, client_cert=bool(self.config.cert_file))
            if cause is not None:
                return CtlError(f"cannot reach dispatcher at {self.config.target}: {cause}", EXIT_UNREACHABLE, code)
        return error_for_status(
            code,
            details,
            target=self.config.target,
            session_id=session_id,
            connected=self._ready.is_set(),
            timeout_s=self.config.timeout_s if deadline else None,
        )

    def _unary(self, method: Any, request: Any, session_id: str = "", *, deadline: bool = True) -> Any:
        future = method.future(request, timeout=self.config.timeout_s if deadline else None, metadata=self._metadata)
        try:
            return future.result()
        except grpc.RpcError as exc:
            raise self.error(exc, session_id, deadline=deadline) from exc
        except KeyboardInterrupt:
            future.cancel()
            raise

    # -- SessionControlService ------------------------------------------------------------

    def list_sessions(self, request: Any) -> Iterator[Any]:
        """Every SessionInfo matching `request` (a ListSessionsRequest), following the pages."""
        seen_tokens: set[str] = set()
        while True:
            page = self._unary(self._stub.ListSessions, request)
            yield from page.sessions
            token = page.next_page_token
            if not token:
                return
            if token in seen_tokens:  # a server bug must not loop us forever
                raise CtlError(f"INTERNAL: ListSessions returned page token {token!r} twice")
            seen_tokens.add(token)
            next_request = wire.ctl.ListSessionsRequest()
            next_request.CopyFrom(request)
            next_request.page_token = token
            request = next_request

    def get_session(self, session_id: str) -> Any:
        request = wire.ctl.GetSessionRequest(session_id=session_id)
        return self._unary(self._stub.GetSession, request, session_id)

    def list_tools(self) -> Any:
        return self._unary(self._stub.ListTools, wire.ctl.ListToolsRequest())

    def decide_tool_call(self, request: Any) -> Any:
        """One DecideToolCall. NOT_FOUND keeps the server's words: the session or the call."""
        return self._unary(self._stub.DecideToolCall, request)

    def stop_session(self, request: Any) -> StopAnswer:
        """One StopSession; raises CtlError when the call itself failed."""
        answer = next(self.stop_sessions([request], max_in_flight=1))
        if answer.error is not None:
            raise answer.error
        return answer

    def stop_sessions(self, requests: Iterable[Any], max_in_flight: int = 32) -> Iterator[StopAnswer]:
        """StopSession for each request, at most `max_in_flight` at once, answers as they come.

        A failed call is an answer with `error` set, so one bad session does not hide the rest.
        Leaving early (Ctrl-C, close) cancels the calls still in flight.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        done: queue.Queue[tuple[int, StopAnswer]] = queue.Queue()
        in_flight: dict[int, grpc.Future[Any]] = {}

        def launch(key: int, request: Any) -> None:
            started = time.perf_counter()
            future = self._stub.StopSession.future(request, timeout=self.config.timeout_s, metadata=self._metadata)

            def finished(f: grpc.Future[Any]) -> None:
                round_trip_ms = (time.perf_counter() - started) * 1000
                if f.cancelled():
                    return
                try:
                    answer = StopAnswer(request.session_id, f.result(), None, round_trip_ms)
                except grpc.RpcError as exc:
                    answer = StopAnswer(request.session_id, None, self.error(exc, request.session_id), round_trip_ms)
                done.put((key, answer))

            in_flight[key] = future
            future.add_done_callback(finished)

        def take() -> StopAnswer:
            key, answer = done.get()
            del in_flight[key]
            return answer

        try:
            for key, request in enumerate(requests):
                while len(in_flight) >= max_in_flight:
                    yield take()
                launch(key, request)
            while in_flight:
                yield take()
        finally:
            for future in in_flight.values():
                future.cancel()

    def watch(self, request: Any) -> EventStream:
        """WatchSession: no deadline, it lives as long as the session."""
        call = self._stub.WatchSession(request, metadata=self._metadata)
        return EventStream(call, lambda exc: self.error(exc, request.session_id, deadline=False))

    def start_session(self, request: Any) -> EventStream:
        """StartSession: no gRPC deadline (that would become the session's), see timeout_ms."""
        call = self._stub.StartSession(request, metadata=self._metadata)
        return EventStream(call, lambda exc: self.error(exc, deadline=False))

    def ask(self, request: Any) -> Any:
        """Ask: the whole answer at the end; no gRPC deadline (see AskRequest.timeout_ms)."""
        return self._unary(self._stub.Ask, request, deadline=False)

    # -- grpc.health.v1 --------------------------------------------------------------------

    def health(self, service: str) -> int:
        """The serving status of `service` ("" = the server); SERVICE_UNKNOWN when not registered."""
        future = self._health.Check.future(
            health_pb2.HealthCheckRequest(service=service), timeout=self.config.timeout_s, metadata=self._metadata
        )
        try:
            return int(future.result().status)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.NOT_FOUND:
                return HEALTH_SERVICE_UNKNOWN
            raise self.error(exc) from exc
        except KeyboardInterrupt:
            future.cancel()
            raise


def health_status_name(status: int) -> str:
    """`SERVING`, `NOT_SERVING`, `SERVICE_UNKNOWN`..."""
    try:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    except ValueError:
        return f"STATUS_{status}"


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """The TLS credentials `config` asks for (None: plaintext); also the HTTP gateway's."""
    if not config.use_tls:
        return None
    try:
        return tls_credentials(config.ca_file, config.cert_file, config.key_file)
    except ValueError as exc:
        raise CtlError(str(exc), EXIT_USAGE) from exc


def _open_channel(config: ClientConfig) -> grpc.Channel:
    credentials = channel_credentials(config)
    if credentials is None:
        return grpc.insecure_channel(config.target)
    return grpc.secure_channel(config.target, credentials)
