"""The composition root: builds the grpc.aio server and runs it until shutdown.

Shutdown (SIGTERM/SIGINT or `request_shutdown()`): health goes NOT_SERVING, new
sessions are refused with UNAVAILABLE, every open session gets a SHUTDOWN stop, the
sessions get `shutdown_grace_s` to confirm, then the server stops and whatever is
left is cancelled.
"""

from __future__ import annotations

import signal

import anyio
import grpc
import structlog
from anyio.abc import TaskStatus
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dispatcher.auth import AccessPolicy, AuthInterceptor
from dispatcher.cluster.peers import PeerGroup
from dispatcher.config import DispatcherConfig
from dispatcher.control.service import SessionControlService
from dispatcher.sessions.latch import Latch
from dispatcher.sessions.pool import CommanderPool
from dispatcher.sessions.registry import SessionRegistry
from dispatcher.sessions.runner import SessionRunner
from dispatcher.sessions.tasks import SessionTasks
from dispatcher.sessions.timers import Timers
from dispatcher.stream.service import AgentInteractionService
from dispatcher.tools import ToolExecutor, ToolRegistry, default_registry
from shared import settings, wire
from shared.model import StopCode, StopInfo

__all__ = ["Dispatcher"]

log = structlog.get_logger("dispatcher")


class Dispatcher:
    """One dispatcher process: server, health, reflection, sessions, tools."""

    def __init__(self, config: DispatcherConfig, tools: ToolRegistry | None = None) -> None:
        self.config = config
        self.tools = tools if tools is not None else default_registry()
        self.registry = SessionRegistry(
            max_open=config.server.max_sessions,
            ended_kept=config.session.ended_sessions_kept,
            journals_kept=config.session.ended_journals_kept,
        )
        self.address: str | None = None
        self._shutdown = anyio.Event()
        self._shutdown_reason = ""
        self._draining = False
        self.health = health.aio.HealthServicer()
        self.access = AccessPolicy.load(tokens_file=config.auth.tokens_file, tokens_env=config.auth.tokens)
        self.pool = CommanderPool(max_waiting=config.pool.max_waiting_callers)
        self.timers = Timers()
        self._sessions = SessionTasks()
        self.peers = PeerGroup(config.server.peer_dir, config.server.instance) if config.server.peer_dir else None

    @property
    def is_draining(self) -> bool:
        return self._draining

    def request_shutdown(self, reason: str = "shutdown requested") -> None:
        """Begin a graceful shutdown (idempotent; safe from any task of the loop)."""
        if not self._shutdown.is_set():
            self._shutdown_reason = reason
            self._shutdown.set()

    async def serve(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until shutdown is requested; reports the bound HOST:PORT through `task_status`."""
        config = self.config
        if config.server.otel:
            _instrument_otel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.timers.run)
            service = AgentInteractionService(
                config=config,
                registry=self.registry,
                executor=ToolExecutor(self.tools, max_result_bytes=_max_result_bytes(config)),
                spawn=self._spawn,
                is_draining=lambda: self._draining,
                access=self.access,
                pool=self.pool,
                timers=self.timers,
            )
            control = SessionControlService(
                config=config,
                registry=self.registry,
                sessions=service,
                access=self.access,
                is_draining=lambda: self._draining,
                peers=self.peers,
            )
            server = grpc.aio.server(options=config.grpc_options(), interceptors=[AuthInterceptor(self.access)])
            wire.add_servicer(service, server)
            wire.add_control_servicer(control, server)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            if config.server.reflection:
                reflection.enable_server_reflection(
                    (
                        wire.SERVICE_NAME,
                        wire.CONTROL_SERVICE_NAME,
                        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                        reflection.SERVICE_NAME,
                    ),
                    server,
                )
            host = config.server.listen.rsplit(":", 1)[0]
            try:
                port = server.add_insecure_port(config.server.listen)
            except RuntimeError as exc:  # grpc's word for "address in use / not available"
                raise OSError(f"cannot listen on {config.server.listen}: {exc}") from exc
            if port == 0:
                raise OSError(f"cannot listen on {config.server.listen}")
            self.address = f"{host}:{port}"
            # A group member also listens on a port of its own, so that the others can reach
            # *this* process (the shared port goes to whichever member the kernel picks).
            member_address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}" if self.peers else ""
            await server.start()
            if self.peers is not None:
                self.peers.advertise(member_address)
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
            await self.health.set(wire.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            await self.health.set(wire.CONTROL_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            if config.server.ready_file:
                await anyio.Path(config.server.ready_file).write_text(self.address + "\n")
            log.info(
                "dispatcher.serving",
                address=self.address,
                instance=service.hop,
                tools=self.tools.names(),
                tokens=self.access.describe(),
                config=settings.describe(config),
            )
            if not self.access.enabled:
                log.warning(
                    "auth.disabled",
                    detail="DEVELOPMENT MODE: no tokens configured, so every caller may open, watch, start and "
                    "stop any session. Configure --tokens-file or DISPATCHER_TOKENS before exposing this port.",
                )
            task_status.started(self.address)
            try:
                await self._shutdown.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._drain(server, service.hop)
                    await self._sessions.aclose()
                    tg.cancel_scope.cancel()

    async def _drain(self, server: grpc.aio.Server, hop: str) -> None:
        grace_s = self.config.server.shutdown_grace_s
        self._draining = True
        open_count = self.registry.open_count
        log.info("dispatcher.draining", reason=self._shutdown_reason, open_sessions=open_count, grace_s=grace_s)
        await self.health.enter_graceful_shutdown()
        self.pool.close("dispatcher is shutting down; reconnect to another instance")
        stop = StopInfo(
            code=StopCode.SHUTDOWN,
            reason="dispatcher is shutting down",
            cause=self._shutdown_reason,
            path=(f"shutdown:{self._shutdown_reason.split(' ')[0] or 'request'}",),
        )
        for handle in self.registry.open_sessions():
            handle.request_stop(stop)
        with anyio.move_on_after(grace_s):
            while self.registry.open_count:
                await _sessions_changed(self.registry)
        left = self.registry.open_count
        if self.peers is not None:
            await self.peers.close()
        # Whatever is still open is cut now; grpc cancels the remaining calls.
        await server.stop(grace=0.2 if left else None)
        log.info("dispatcher.stopped", sessions_cut=left)

    def _spawn(self, runner: SessionRunner, first: wire.pb.UpstreamPacket) -> None:
        self._sessions.start(runner.run(first), name=f"session:{runner.session_id}")


async def _sessions_changed(registry: SessionRegistry) -> None:
    """Wait until some open session ends (each runner sets `done` when it ends)."""
    handles = list(registry.open_sessions())
    if not handles:
        return
    async with anyio.create_task_group() as tg:

        async def wait_one(done: Latch) -> None:
            await done.wait()
            tg.cancel_scope.cancel()

        for handle in handles:
            tg.start_soon(wait_one, handle.done)


def _max_result_bytes(config: DispatcherConfig) -> int:
    # Leave room for the envelope (tool name, call id, error) inside one downstream message.
    return max(1024, config.server.max_send_message_bytes - 4096)


def _instrument_otel() -> None:
    """Trace every RPC except health checks; spans go to stderr unless OTEL_* says otherwise."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer, filters
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
    # Health's aio Watch is a reader/writer handler, which the aio interceptor cannot wrap.
    health_checks = filters.negate(filters.health_check())
    GrpcAioInstrumentorServer(filter_=health_checks).instrument()  # type: ignore[no-untyped-call]


async def run_until_signalled(dispatcher: Dispatcher) -> None:
    """Serve; the first SIGTERM/SIGINT drains gracefully, a second one exits at once."""
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if dispatcher.is_draining or dispatcher._shutdown.is_set():
                        log.warning("dispatcher.forced_exit", signal=name)
                        tg.cancel_scope.cancel()
                        return
                    dispatcher.request_shutdown(f"{name} received")

        tg.start_soon(watch_signals)
        await dispatcher.serve()
        tg.cancel_scope.cancel()
