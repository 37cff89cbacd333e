"""The dispatcher's settings: one frozen object, loaded from flags, DISPATCHER_* and TOML."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, replace

from dispatcher.cluster.store_url import parse_redis_url
from shared.keepalive import KeepaliveConfig
from shared.metrics import MetricsConfig
from shared.settings import setting

__all__ = [
    "AuthConfig",
    "DispatcherConfig",
    "LogConfig",
    "MetricsConfig",
    "PolicyConfig",
    "PoolConfig",
    "ReplicasConfig",
    "ServerConfig",
    "SessionConfig",
    "StoreConfig",
    "TlsConfig",
    "ToolsConfig",
]

MiB = 1024 * 1024


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = setting(
        "127.0.0.1:50051",
        "address to listen on, HOST:PORT (port 0 = any free port)",
        flag="listen",
    )
    instance_id: str = setting(
        "",
        "this dispatcher's name in stop paths and logs (default: HOST-PID)",
        flag="instance-id",
    )
    max_concurrent_streams: int = setting(
        1024,
        "HTTP/2 streams (sessions) one connection may open at once (grpc.max_concurrent_streams)",
    )
    max_sessions: int = setting(
        10_000,
        "sessions the process serves at once; more are refused with RESOURCE_EXHAUSTED (0 = unlimited)",
    )
    # A process past its capacity slows every session on it down together; refusing the next one
    # keeps the running ones inside their latency. One second of sustained lag is far past any
    # latency target, so the default only acts on a real overload (GC pauses are ~50 ms).
    shed_loop_lag_ms: int = setting(
        1000,
        "refuse new sessions with RESOURCE_EXHAUSTED while the event loop runs this far behind (0 = never)",
    )
    max_receive_message_bytes: int = setting(
        4 * MiB,
        "largest upstream message accepted; bigger ends that stream with RESOURCE_EXHAUSTED",
    )
    max_send_message_bytes: int = setting(
        4 * MiB,
        "largest downstream message; a bigger tool result becomes a RESULT_TOO_LARGE tool error",
    )
    max_connection_idle_ms: int = setting(
        300_000,
        "close connections with no open stream after this long (grpc.max_connection_idle_ms; 0 = never)",
    )
    max_connection_age_ms: int = setting(
        0,
        "GOAWAY connections older than this, for load-balancer rebalancing (0 = never)",
    )
    max_connection_age_grace_ms: int = setting(
        900_000,
        "after max age, how long open streams may still run (grpc.max_connection_age_grace_ms)",
    )
    lookahead_bytes: int = setting(
        262_144,
        "per-stream HTTP/2 read-ahead window: bounds what an unread stream buffers (grpc.http2.lookahead_bytes)",
    )
    bdp_probe: bool = setting(False, "let grpc grow stream windows by BDP probing (more memory per stream)")
    shutdown_grace_s: float = setting(
        10.0,
        "on SIGTERM/SIGINT: time sessions get to confirm the shutdown stop before the server closes",
        flag="shutdown-grace-s",
    )
    ready_file: str = setting(
        "",
        "write the bound HOST:PORT to this file once serving (for scripts)",
        flag="ready-file",
    )
    workers: int = setting(
        1,
        "serving processes sharing --listen via SO_REUSEPORT, one event loop each; the control API "
        "finds a session on any of them",
        flag="workers",
    )
    peer_dir: str = setting(
        "",
        "directory where dispatchers of one group advertise their private control address; a control "
        "call for a session this process does not hold is forwarded to them (set by --workers)",
        flag="peer-dir",
    )
    # Off by default. Measured (both servers on the same loop, 200k packets): at 100 sessions
    # uvloop raised the dispatcher's throughput ~16 % (CPU per packet 36.7 -> 29.3 µs), at one
    # session it lowered it ~10-20 %; bare grpc.aio gains more from it than we do (README,
    # Performance). Worth switching on for many concurrent sessions.
    uvloop: bool = setting(
        False,
        "run the event loop on uvloop (off by default; see README, Performance)",
        flag="uvloop",
    )
    reflection: bool = setting(True, "serve gRPC server reflection")
    otel: bool = setting(
        False,
        "also one OpenTelemetry span per RPC (gRPC instrumentation), exported where OTEL_* says",
    )

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\[?[\w.:-]*\]?:\d+", self.listen):
            raise ValueError(f"listen must be HOST:PORT, got {self.listen!r}")
        for name in (
            "max_receive_message_bytes",
            "max_send_message_bytes",
            "max_concurrent_streams",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must be >= 0")
        if self.shed_loop_lag_ms < 0:
            raise ValueError("shed_loop_lag_ms must be >= 0 (0 = never shed)")
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be between 1 and 64")

    @property
    def instance(self) -> str:
        return self.instance_id or _default_instance()


@dataclass(frozen=True, slots=True)
class SessionConfig:
    stop_grace_ms: int = setting(
        2_000,
        "after a stop, how long the commander has to confirm before the stream is ended anyway",
    )
    finish_linger_ms: int = setting(
        2_000,
        "after is_finish or an error packet, how long to wait for the commander's half-close",
    )
    outbox_size: int = setting(
        64,
        "downstream packets buffered per session; a full outbox pushes back on the commander",
    )
    # Every Ack is a downstream message, ~30 µs of the dispatcher's CPU: at 32 they cost ~1 µs
    # per upstream packet at full speed (measured), at 128 a quarter of that. At an LLM's
    # pace the interval below sends them long before this count.
    ack_every_packets: int = setting(128, "send a cumulative Ack at least every this many upstream packets")
    # 5 s: Acks carry progress, not flow control (HTTP/2 does that), and at an LLM's pace
    # (a few coalesced packets a second) a short interval makes a large share of all
    # messages Acks, each costing both ends CPU. Measured at 1 000 paced sessions (~11
    # packets/s each): 200 ms meant ~5 Acks/s per session; at 1 s the dispatcher used
    # 75 % of a core and the loaders 117 %, at 5-10 s 71 % and 114-117 %. Each session's
    # own interval is spread over [T/2, T] (session.ack_interval_s).
    ack_interval_ms: int = setting(5_000, "...or at most this long after the first unacknowledged packet")
    max_concurrent_tool_calls: int = setting(
        8,
        "tool calls of one session running at once; more wait (the commander's writes are pushed back)",
    )
    tool_cancel_grace_ms: int = setting(
        1_000,
        "when a session ends, how long a cancelled tool call has to finish; one that ignores the "
        "cancellation is then abandoned (recorded, its session freed)",
    )
    resume_window_s: float = setting(
        30.0,
        "hold a session whose stream broke without a half-close (DETACHED) this long for its commander to "
        "resume it (Hello.resume); timers, budgets and tool calls go on meanwhile. 0 = never: it ends CANCELLED",
    )
    replay_max_packets: int = setting(
        1_024,
        "downstream packets (tool results, errors, the stop) each resumable session keeps until its commander "
        "has processed them (UpstreamPacket.downstream_ack), for re-sending after a resume",
    )
    replay_max_bytes: int = setting(
        16 * 1024 * 1024,
        "...and at most this many bytes of them; a resume that needs a packet no longer kept is refused",
    )
    ended_sessions_kept: int = setting(1_000, "ended sessions whose outcome stays visible")
    ended_journals_kept: int = setting(
        100,
        "ended sessions (newest first) whose event journal stays readable by WatchSession",
    )
    journal_max_events: int = setting(
        4_096,
        "events each session's journal keeps for watchers; a watcher further behind is cut off",
    )
    journal_max_bytes: int = setting(
        1024 * 1024,
        "payload bytes each session's journal keeps (the oldest events go first)",
    )

    def __post_init__(self) -> None:
        for name in (
            "outbox_size",
            "ack_every_packets",
            "max_concurrent_tool_calls",
            "journal_max_events",
            "journal_max_bytes",
            "replay_max_packets",
            "replay_max_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"session {name} must be >= 1")
        for name in (
            "stop_grace_ms",
            "finish_linger_ms",
            "tool_cancel_grace_ms",
            "ack_interval_ms",
            "ended_sessions_kept",
            "ended_journals_kept",
            "resume_window_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"session {name} must be >= 0")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    block_patterns: tuple[str, ...] = setting(
        (),
        "regular expressions that stop a session when its content matches (POLICY_VIOLATION); "
        "a match split across deltas is caught when it spans at most 128 characters "
        "(DISPATCHER_BLOCK_PATTERN: one pattern, commas included, or a JSON list of patterns)",
        flag="block-pattern",
        split=False,
    )
    scan_thoughts: bool = setting(False, "also apply the block-list to thought deltas", flag="scan-thoughts")
    max_content_chars: int = setting(
        0,
        "content characters per session before BUDGET_EXCEEDED (0 = no limit)",
        flag="max-content-chars",
    )
    max_thought_chars: int = setting(
        0,
        "thought characters per session before BUDGET_EXCEEDED (0 = no limit)",
        flag="max-thought-chars",
    )
    max_tool_calls: int = setting(
        0,
        "tool calls per session before BUDGET_EXCEEDED (0 = no limit)",
        flag="max-tool-calls",
    )
    max_completion_tokens: int = setting(
        0,
        "completion tokens per session (the commander's Usage reports, summed) before BUDGET_EXCEEDED (0 = no limit)",
    )
    max_total_tokens: int = setting(
        0,
        "prompt + completion tokens per session (Usage reports, summed) before BUDGET_EXCEEDED (0 = no limit)",
    )
    max_session_s: float = setting(
        3_600.0,
        "wall-clock seconds per session before a TIMEOUT stop (0 = no limit)",
        flag="max-session-s",
    )
    idle_timeout_s: float = setting(
        300.0,
        "seconds the commander may stay silent (no tool running) before an IDLE_TIMEOUT stop (0 = never)",
        flag="idle-timeout-s",
    )

    def __post_init__(self) -> None:
        for pattern in self.block_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"block pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        for name in (
            "max_content_chars",
            "max_thought_chars",
            "max_tool_calls",
            "max_completion_tokens",
            "max_total_tokens",
            "max_session_s",
            "idle_timeout_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"policy {name} must be >= 0")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    wait_for_commander_ms: int = setting(
        2_000,
        "StartSession/Ask: how long to wait for a free pool commander by default (UNAVAILABLE after)",
    )
    max_wait_for_commander_ms: int = setting(30_000, "the longest wait a caller may ask for")
    max_waiting_callers: int = setting(
        64,
        "callers waiting for a free commander at once; more are refused at once with UNAVAILABLE",
    )

    def __post_init__(self) -> None:
        if min(self.wait_for_commander_ms, self.max_wait_for_commander_ms, self.max_waiting_callers) < 0:
            raise ValueError("pool settings must be >= 0")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    tokens_file: str = setting(
        "",
        "file of '<role> <name> sha256:<hex>' lines (roles: commander, backend, operator); "
        "no tokens at all = development mode, every caller may do everything",
        flag="tokens-file",
    )
    tokens: str = setting(
        "",
        "the same lines inline, separated by ';' (usually from DISPATCHER_TOKENS)",
        flag="tokens",
        secret=True,
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS on every port of the dispatcher (dispatcher/tls.py); the files are reread when they change."""

    cert_file: str = setting(
        "",
        "PEM certificate chain to serve TLS with (with --tls-key); reloaded for new connections when the "
        "file changes or on SIGHUP",
        flag="tls-cert",
    )
    key_file: str = setting("", "PEM private key of --tls-cert", flag="tls-key")
    client_ca_file: str = setting(
        "",
        "PEM roots that verify client certificates, for mutual TLS (with --tls-require-client-cert)",
        flag="tls-client-ca",
    )
    require_client_cert: bool = setting(
        False,
        "mutual TLS: refuse connections without a client certificate that --tls-client-ca verifies; the "
        "certificate's identity (SAN) can be a principal in the tokens file",
        flag="tls-require-client-cert",
    )
    peer_ca_file: str = setting(
        "",
        "PEM roots the members of a --workers group verify each other's certificate with (default: "
        "--tls-client-ca, else the system roots)",
        flag="tls-peer-ca",
    )
    allow_insecure: bool = setting(
        False,
        "serve a non-loopback address in plaintext with no tokens anyway (refused otherwise)",
        flag="allow-insecure",
    )

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.client_ca_file and not self.require_client_cert:
            raise ValueError(
                "--tls-client-ca needs --tls-require-client-cert (grpc Python cannot ask for an optional "
                "client certificate)"
            )
        if self.require_client_cert and not (self.client_ca_file and self.cert_file):
            raise ValueError("--tls-require-client-cert needs --tls-client-ca and --tls-cert/--tls-key")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True, slots=True)
class ToolsConfig:
    modules: tuple[str, ...] = setting(
        (),
        "serve the tools of PACKAGE.MODULE:NAME, where NAME is a ToolRegistry, a ToolSpec or a tool "
        "function (repeatable; DISPATCHER_TOOLS: comma-separated); the built-ins are served too",
        flag="tools",
    )
    test_tools: bool = setting(
        False,
        "also serve `sleep`, the built-in tool for timeout and cancellation tests (the conformance kit uses it)",
        flag="test-tools",
    )
    approve: tuple[str, ...] = setting(
        (),
        "calls of the tools whose name matches PATTERN (fnmatch, e.g. 'shell_*') wait for a human decision "
        "(dispatcherctl approve / deny) before they run (repeatable; DISPATCHER_APPROVE: comma-separated)",
        flag="approve",
    )
    approval_timeout_s: float = setting(
        300.0,
        "how long a call waits for approval; then it fails with a TIMEOUT tool error",
        flag="approval-timeout-s",
    )

    # MCP tool servers (dispatcher/tools/mcp.py).
    mcp: tuple[str, ...] = setting(
        (),
        "serve an MCP server's tools as PREFIX.NAME: [PREFIX=]stdio:COMMAND ARGS or [PREFIX=]http:URL "
        "(repeatable; default PREFIX: the command's or script's name, or the URL's host)",
        flag="mcp",
    )

    def __post_init__(self) -> None:
        if isinstance(self.approval_timeout_s, bool) or not self.approval_timeout_s > 0:  # also NaN
            raise ValueError(f"approval timeout must be > 0 s, got {self.approval_timeout_s!r}")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where sessions outlive the process (dispatcher/store): outcomes, journals, the directory."""

    url: str = setting(
        "memory://",
        "where ended sessions' outcomes and journals (and the live sessions' directory) are kept: "
        "memory:// (nothing survives the process), sqlite:///PATH (an SQLite file in WAL mode; "
        "sqlite:///relative.db, sqlite:////absolute.db) or redis://HOST:PORT/DB (replicas on any machines share "
        "a session directory, membership, free capacity, journals and outcomes in this Redis)",
        flag="store",
        secret=True,  # a redis:// URL may carry a password; the serving line shows it without
    )
    # 5 ms: at most that much is added to an ack's delay, and at an LLM's pace it batches every
    # session's events of a few ms into one transaction (README, Durability).
    commit_interval_ms: float = setting(
        5.0,
        "group commit: after the first write, how long the store gathers more before one transaction",
        flag="store-commit-interval-ms",
    )
    sync: str = setting(
        "normal",
        "SQLite synchronous mode: normal (a commit survives kill -9 of the process, not a power loss) "
        "or full (an fsync per commit: survives an OS crash too)",
        flag="store-sync",
    )

    def __post_init__(self) -> None:
        if not self.commit_interval_ms >= 0:  # also NaN
            raise ValueError(f"--store-commit-interval-ms must be >= 0, got {self.commit_interval_ms!r}")
        if self.sync not in {"normal", "full"}:
            raise ValueError(f"--store-sync must be normal or full, got {self.sync!r}")
        if self.redis_url:
            parse_redis_url(self.redis_url)  # ValueError with the reason

    @property
    def redis_url(self) -> str:
        """The URL when the store is a Redis (replicas), else empty."""
        return self.url if self.url.startswith(("redis://", "rediss://")) else ""


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = setting("info", "log level: debug, info, warning, error", flag="log-level")
    format: str = setting(
        "auto",
        "log format: auto (console on a TTY, else JSON), json, console",
        flag="log-format",
    )

    def __post_init__(self) -> None:
        if self.level.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError(f"log level must be debug, info, warning or error, got {self.level!r}")
        if self.format not in {"auto", "json", "console"}:
            raise ValueError(f"log format must be auto, json or console, got {self.format!r}")


@dataclass(frozen=True, slots=True)
class ReplicasConfig:
    """Replicas on several machines sharing a Redis (docs/architecture.md, "Replicas")."""

    advertise: str = setting(
        "",
        "HOST:PORT other replicas dial for control calls about sessions this one holds (default: --listen)",
        flag="replica-advertise",
    )
    lease_ms: int = setting(
        3000,
        "replica and session leases in Redis; a replica silent this long is lost and its sessions end "
        'CANCELLED "replica lost"',
        flag="replica-lease-ms",
    )
    ended_ttl_s: float = setting(
        3600.0,
        "how long Redis keeps ended sessions' outcomes and journals (and lost replicas' sessions)",
        flag="store-ended-ttl-s",
    )

    def __post_init__(self) -> None:
        if self.advertise and not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", self.advertise):
            raise ValueError(f"replica-advertise must be HOST:PORT, got {self.advertise!r}")
        if not 300 <= self.lease_ms <= 600_000:
            raise ValueError("replica-lease-ms must be between 300 and 600000")
        if not self.ended_ttl_s >= 1:  # also NaN
            raise ValueError("store-ended-ttl-s must be >= 1")


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    replicas: ReplicasConfig = field(default_factory=ReplicasConfig)

    @classmethod
    def for_tests(cls, **sections: object) -> DispatcherConfig:
        """Fast defaults for tests: any free port, short graces and timers."""
        base = cls(
            server=ServerConfig(
                listen="127.0.0.1:0",
                instance_id="test",
                shutdown_grace_s=2.0,
                reflection=True,
            ),
            tools=ToolsConfig(test_tools=True, approval_timeout_s=10.0),
            session=SessionConfig(
                stop_grace_ms=1_000, finish_linger_ms=500, ack_interval_ms=50, tool_cancel_grace_ms=200
            ),
            policy=PolicyConfig(max_session_s=60.0, idle_timeout_s=30.0),
        )
        return replace(base, **sections)  # type: ignore[arg-type]

    def grpc_options(self) -> list[tuple[str, int]]:
        """Every channel arg the server is built with; keepalive comes from its own object."""
        s = self.server
        options = [
            ("grpc.max_concurrent_streams", s.max_concurrent_streams),
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.http2.lookahead_bytes", s.lookahead_bytes),
            ("grpc.http2.bdp_probe", int(s.bdp_probe)),
            # Only a worker group shares its port; otherwise a second dispatcher on the same
            # port must fail to start rather than silently take half the connections.
            ("grpc.so_reuseport", 1 if s.peer_dir else 0),
        ]
        if s.max_connection_idle_ms:
            options.append(("grpc.max_connection_idle_ms", s.max_connection_idle_ms))
        if s.max_connection_age_ms:
            options.append(("grpc.max_connection_age_ms", s.max_connection_age_ms))
            options.append(("grpc.max_connection_age_grace_ms", s.max_connection_age_grace_ms))
        return options + self.keepalive.server_options()
