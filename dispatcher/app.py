"""The composition root: builds the grpc.aio server around the session manager and runs it.

Shutdown (SIGTERM/SIGINT or `request_shutdown()`): health goes NOT_SERVING, new sessions are
refused with UNAVAILABLE, every open session gets a SHUTDOWN stop and `shutdown_grace_s` to
confirm it; then the server stops and what is left is cancelled, each wait bounded
(`_CLOSE_BOUND_S`). A second signal cancels the drain itself: the process is gone within
about a second, whatever a session or a tool is doing.

asyncio throughout (see docs/architecture.md, "Cancellation"): nothing in the dispatcher
shields a wait from cancellation, and every cleanup wait has a bound.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dispatcher.auth import AccessPolicy, AuthInterceptor
from dispatcher.cluster.admission import AdmittingSessions
from dispatcher.cluster.membership import Membership
from dispatcher.cluster.peers import PeerGroup
from dispatcher.cluster.redis_replicas import RedisReplicas
from dispatcher.config import DispatcherConfig
from dispatcher.control.service import SessionControlService
from dispatcher.metrics.exporter import DispatcherMetrics
from dispatcher.sessions.manager import SessionManager
from dispatcher.store.loading import open_store
from dispatcher.store.recovery import RESTARTED_REASON, end_crashed_sessions, ended_session
from dispatcher.store.redis import RedisStore
from dispatcher.stream.service import AgentInteractionService
from dispatcher.tls import CertificateReloader
from dispatcher.tools import ToolRegistry, served_tools
from dispatcher.tools.mcp import McpConnection, connect_all
from shared import settings, wire
from shared.model import StopCode, StopInfo

__all__ = ["Dispatcher", "run_until_signalled"]

log = structlog.get_logger("dispatcher")

# Each wait of the last phase of shutdown is bounded by this: the server's stop, the session
# tasks' end, the timers. With the second signal's forced exit they add up to well under 1 s.
_CLOSE_BOUND_S = 0.2


class _Started(Protocol):
    """anyio's TaskStatus, or anything else with `started(value)`."""

    def started(self, value: str) -> None: ...


class _Ignored:
    def started(self, value: str) -> None:
        return None


class Dispatcher:
    """One dispatcher process: server, health, reflection, the session manager, tools."""

    def __init__(self, config: DispatcherConfig, tools: ToolRegistry | None = None) -> None:
        self.config = config
        if tools is None:  # ToolLoadError (a ValueError) for a --tools value that names no tools
            tools = served_tools(config.tools.modules, test_tools=config.tools.test_tools)
        self.tools = tools
        # --metrics-listen: built first, the session manager counts into its stats.
        self.metrics = DispatcherMetrics(config.metrics.listen) if config.metrics.listen else None
        # --store: a URL it does not know is a ValueError here (exit 2); the file opens in serve().
        self.store = open_store(config.store.url, config)
        self.sessions = SessionManager(
            config, self.tools, self.metrics.stats if self.metrics else None, store=self.store
        )
        self.address: str | None = None
        self.health = health.aio.HealthServicer()
        self.access = AccessPolicy.load(tokens_file=config.auth.tokens_file, tokens_env=config.auth.tokens)
        # TLS on every port, reloaded on change or SIGHUP; a file that does not read is a ValueError.
        self.tls = tls_reloader(config)
        if self.tls is not None and config.tls.require_client_cert:
            self.access.group_leaf = self.tls.own_leaf
        self.peers: Membership | None = None
        # With replicas (--store redis://), the store is their Redis: journals in streams, outcomes.
        self.journals = self.store if isinstance(self.store, RedisStore) else None
        if config.store.redis_url:  # replicas on any machines, sharing a Redis
            self.peers = RedisReplicas(
                config.replicas,
                self.sessions,
                url=config.store.redis_url,
                instance=config.server.instance,
                hop=self.sessions.hop,
                dial=peer_dialer(config, self.tls),
                journals=self.journals,
            )
        elif config.server.peer_dir:  # a --workers group on this host
            self.peers = PeerGroup(config.server.peer_dir, config.server.instance, dial=peer_dialer(config, self.tls))
        self._shutdown = asyncio.Event()
        self._shutdown_reason = ""
        self.mcp: list[McpConnection] = []

    @property
    def is_draining(self) -> bool:
        return self.sessions.is_draining

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    def request_shutdown(self, reason: str = "shutdown requested") -> None:
        """Begin a graceful shutdown (idempotent; safe from any task of the loop)."""
        if not self._shutdown.is_set():
            self._shutdown_reason = reason
            self._shutdown.set()

    async def serve(self, *, task_status: _Started = _Ignored()) -> None:  # noqa: B008 - stateless
        """Serve until shutdown is requested; reports the bound HOST:PORT through `task_status`."""
        config = self.config
        if config.server.otel:
            _instrument_otel()
        server = self._build_server()
        host = config.server.listen.rsplit(":", 1)[0]
        try:
            port = _add_port(server, config.server.listen, self.tls)
        except RuntimeError as exc:  # grpc's word for "address in use / not available"
            raise OSError(f"cannot listen on {config.server.listen}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {config.server.listen}")
        self.address = f"{host}:{port}"
        # A group member also listens on a port of its own, so that the others can reach
        # *this* process (the shared port goes to whichever member the kernel picks). It
        # speaks TLS like the shared one: forwarded calls carry the callers' tokens.
        member_address = ""
        if isinstance(self.peers, RedisReplicas):  # the others dial the serving port (or what is in front of it)
            member_address = config.replicas.advertise or _reachable(self.address)
        elif self.peers is not None:
            member_address = f"127.0.0.1:{_add_port(server, '127.0.0.1:0', self.tls)}"
        if self.metrics is not None:  # OSError (address in use, ...) before anything runs
            self.metrics.start(self.sessions, asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        background = [  # the process's own tasks, cancelled and awaited last by _close
            loop.create_task(self.sessions.timers.run(), name="dispatcher:timers"),
            loop.create_task(self.sessions.loop_lag.run(), name="dispatcher:loop-lag"),
        ]
        membership: asyncio.Task[None] | None = None  # leases and directory: stopped by _close first
        try:
            # What an earlier process left (StoreOpenError, a start-up error, if it cannot open).
            await self._restore_sessions()
            # The MCP servers' tools are in the registry before the first session can ask for
            # them; one that cannot be reached is a start-up error (McpStartError).
            self.mcp = await connect_all(config.tools.mcp, self.tools)
            await server.start()
            if self.peers is not None:
                await self.peers.join(member_address)
                membership = loop.create_task(self.peers.run(), name="dispatcher:membership")
            for service in ("", wire.SERVICE_NAME, wire.CONTROL_SERVICE_NAME):
                await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
            if config.server.ready_file:
                await asyncio.to_thread(_write_text, config.server.ready_file, self.address + "\n")
            self._log_serving()
            task_status.started(self.address)
            await self._shutdown.wait()
            await self._drain()  # a second signal cancels this wait: see run_until_signalled
        finally:
            await self._close(server, background, membership)

    async def _restore_sessions(self) -> None:
        """Open the store; its ended sessions go back into the registry, and the sessions that
        were live when the last process died are held for their commanders' resume, or recorded
        as ended by that crash."""
        recovered = await self.store.open()
        limits = {
            "max_events": self.config.session.journal_max_events,
            "max_bytes": self.config.session.journal_max_bytes,
        }
        ended = [ended_session(stored, **limits) for stored in recovered.ended]
        self.sessions.registry.restore(ended)
        # A live one whose commander can resume it is held DETACHED for the resume window;
        # the others are recorded as ended by the crash.
        crashed = [record for record in recovered.live if not self.sessions.adopt(record, reason=RESTARTED_REASON)]
        restored_crashed = end_crashed_sessions(self.store, crashed, hop=self.sessions.hop, **limits)
        self.sessions.registry.restore(restored_crashed)
        if recovered.ended or recovered.live:
            log.info(
                "store.restored",
                url=self.store.url,
                ended=len(recovered.ended),
                crashed=len(crashed),
                held_for_resume=len(recovered.live) - len(crashed),
            )

    def _build_server(self) -> grpc.aio.Server:
        config = self.config
        interceptors: list[grpc.aio.ServerInterceptor] = [AuthInterceptor(self.access)]
        if self.metrics is not None:  # first: refusals by the ones after it are counted too
            interceptors.insert(0, self.metrics.interceptor)
        server = grpc.aio.server(options=config.grpc_options(), interceptors=interceptors)
        # With a membership, new sessions pass it first (refused while the replicas' store is down).
        streams = AdmittingSessions(self.sessions, self.peers) if self.peers is not None else self.sessions
        wire.add_servicer(AgentInteractionService(sessions=streams, access=self.access), server)
        control = SessionControlService(
            config=config, sessions=self.sessions, access=self.access, peers=self.peers, stats=self.sessions.stats
        )
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
        return server

    def reload_tls(self) -> None:
        """Reread the certificate files for the next connection (SIGHUP); no-op without TLS."""
        if self.tls is not None:
            self.tls.request_reload()

    def _log_serving(self) -> None:
        log.info(
            "dispatcher.serving",
            address=self.address,
            metrics=f"http://{self.metrics.address}/metrics" if self.metrics else None,
            tls="mutual" if self.config.tls.require_client_cert else "on" if self.tls is not None else "off",
            instance=self.sessions.hop,
            tools=self.tools.names(),
            store=self.store.url,
            tokens=self.access.describe(),
            replicas=self.peers.url if isinstance(self.peers, RedisReplicas) else None,
            config=settings.describe(self.config),
        )
        if not self.access.enabled:
            log.warning(
                "auth.disabled",
                detail="DEVELOPMENT MODE: no tokens configured, so every caller may open, watch, start and "
                "stop any session. Configure --tokens-file or DISPATCHER_TOKENS before exposing this port.",
            )

    async def _drain(self) -> None:
        grace_s = self.config.server.shutdown_grace_s
        stop = StopInfo(
            code=StopCode.SHUTDOWN,
            reason="dispatcher is shutting down",
            cause=self._shutdown_reason,
            path=(f"shutdown:{self._shutdown_reason.split(' ')[0] or 'request'}",),
        )
        open_count = self.sessions.begin_drain(stop)
        log.info("dispatcher.draining", reason=self._shutdown_reason, open_sessions=open_count, grace_s=grace_s)
        await self.health.enter_graceful_shutdown()
        await self.sessions.wait_all_ended(grace_s)

    async def _close(
        self, server: grpc.aio.Server, background: list[asyncio.Task[None]], membership: asyncio.Task[None] | None
    ) -> None:
        """The last phase, also after a forced exit: every wait bounded, nothing shielded."""
        if not self.sessions.is_draining:  # serve() failed or was cancelled before the drain
            self.sessions.begin_drain(StopInfo(StopCode.SHUTDOWN, "dispatcher is shutting down"))
        left = self.sessions.registry.open_count
        if membership is not None:  # before the withdrawal: nothing re-publishes after it
            membership.cancel()
            await asyncio.wait([membership], timeout=_CLOSE_BOUND_S)
        if self.peers is not None:
            await _bounded(self.peers.close())
        # Whatever is still open is cut now; grpc cancels the remaining calls.
        await _bounded(server.stop(grace=None))
        await self.sessions.aclose(_CLOSE_BOUND_S)
        # After the sessions, whose ends it records: it commits what is queued (bounded), then closes.
        await self.store.aclose()
        # After the sessions: no call is left to need them. Each close is bounded.
        await asyncio.gather(*(connection.aclose(_CLOSE_BOUND_S) for connection in self.mcp))
        for task in background:
            task.cancel()
        await asyncio.wait(background, timeout=_CLOSE_BOUND_S)
        if self.metrics is not None:
            self.metrics.close()  # within ~50 ms (its thread's poll interval)
        log.info("dispatcher.stopped", sessions_cut=left)


async def _bounded(work: object) -> None:
    """Await `work` for at most `_CLOSE_BOUND_S`; a stuck close must not keep the process."""
    try:
        await asyncio.wait_for(work, _CLOSE_BOUND_S)  # type: ignore[arg-type]
    except TimeoutError:
        log.warning("dispatcher.close_timed_out", bound_s=_CLOSE_BOUND_S)


def _add_port(server: grpc.aio.Server, address: str, tls: CertificateReloader | None) -> int:
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.credentials())  # one credentials object per port


def tls_reloader(config: DispatcherConfig) -> CertificateReloader | None:
    tls = config.tls
    if not tls.enabled:
        return None
    return CertificateReloader(
        tls.cert_file, tls.key_file, tls.client_ca_file, require_client_cert=tls.require_client_cert
    )


def peer_dialer(config: DispatcherConfig, reloader: CertificateReloader | None) -> Callable[[str], grpc.aio.Channel]:
    """How this member dials the others: in plaintext, or with TLS (and its own certificate as
    the client certificate under mutual TLS), each member's certificate checked against
    --tls-peer-ca, else --tls-client-ca, else the system roots, under the name the certificate
    itself carries."""
    if reloader is None:
        return grpc.aio.insecure_channel
    require_client_cert = config.tls.require_client_cert
    peer_roots = Path(config.tls.peer_ca_file).read_bytes() if config.tls.peer_ca_file else None  # OSError: exit 2

    def dial(address: str) -> grpc.aio.Channel:
        material = reloader.material  # the current pair, for this new channel
        roots = peer_roots or material.client_ca
        credentials = grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=material.private_key if require_client_cert else None,
            certificate_chain=material.cert_chain if require_client_cert else None,
        )
        name = reloader.peer_name()
        options = [("grpc.ssl_target_name_override", name)] if name else []
        return grpc.aio.secure_channel(address, credentials, options=options)

    return dial


def _reachable(address: str) -> str:
    """The serving address as another machine dials it: a wildcard host becomes this host's name."""
    host, port = address.rsplit(":", 1)
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = socket.getfqdn()
    return f"{host}:{port}"


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _instrument_otel() -> None:
    """Also one span per RPC (except health checks), into the tracer provider configured by the
    OTEL_* variables (shared/tracing.py); with none configured the spans go nowhere, and we say so."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer, filters
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        log.warning("otel.no_exporter", detail="--server-otel is on but no OTEL_* exporter is configured")
    # Health's aio Watch is a reader/writer handler, which the aio interceptor cannot wrap.
    health_checks = filters.negate(filters.health_check())
    GrpcAioInstrumentorServer(filter_=health_checks).instrument()  # type: ignore[no-untyped-call]


async def run_until_signalled(dispatcher: Dispatcher) -> int:
    """Serve; the first SIGTERM/SIGINT drains gracefully, a second one cancels the drain.
    Returns the process's exit status: 0 after a drain, 1 after a forced exit."""
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None
    forced = False

    def on_signal(signum: signal.Signals) -> None:
        nonlocal forced
        if dispatcher.shutdown_requested:
            log.warning("dispatcher.forced_exit", signal=signum.name)
            forced = True
            serving.cancel()
        else:
            dispatcher.request_shutdown(f"{signum.name} received")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, dispatcher.reload_tls)  # new connections get the new certificate
    try:
        await dispatcher.serve()
    except asyncio.CancelledError:
        if not forced:
            raise
        serving.uncancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 1 if forced else 0
