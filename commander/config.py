"""The commander's settings: flags, COMMANDER_* environment variables, a TOML file."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.keepalive import KeepaliveConfig
from shared.metrics import MetricsConfig
from shared.settings import setting

__all__ = ["AgentConfig", "CommanderConfig", "ConnectionConfig", "ModelConfig"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    target: str = setting("127.0.0.1:50051", "dispatcher address HOST:PORT", flag="target")
    tls: bool = setting(False, "use TLS (server certificate checked against --ca-file or the system roots)", flag="tls")
    ca_file: str = setting(
        "", "PEM file of the CA that signs the dispatcher's certificate (implies --tls)", flag="ca-file"
    )
    cert_file: str = setting(
        "", "PEM client certificate, for mutual TLS (with --key-file; implies --tls)", flag="cert-file"
    )
    key_file: str = setting("", "PEM private key of --cert-file", flag="key-file")
    token: str = setting(
        "", "bearer token for a dispatcher with tokens configured (role commander)", flag="token", secret=True
    )
    max_receive_message_bytes: int = setting(4 * MiB, "largest downstream message accepted")
    max_send_message_bytes: int = setting(4 * MiB, "largest upstream message sent")
    handshake_timeout_s: float = setting(
        5.0, "wait this long for the dispatcher's Welcome; none means an original-contract dispatcher"
    )
    end_timeout_s: float = setting(10.0, "after the last packet, wait this long for the dispatcher to end the stream")
    outbox_size: int = setting(32, "upstream packets buffered before the agent's say()/think() waits (backpressure)")
    coalesce: bool = setting(
        True,
        "when packets queue up faster than the stream drains, merge consecutive content (or same-step thought) "
        "deltas already queued into one message; at low load every packet still goes out alone at once",
    )
    coalesce_max_bytes: int = setting(16 * KiB, "largest text (UTF-8 bytes) of one merged message")
    coalesce_max_packets: int = setting(64, "most agent packets merged into one message")
    resume_timeout_s: float = setting(
        30.0,
        "when the stream breaks without the dispatcher ending it (reset, keepalive timeout, GOAWAY, a restart), "
        "keep the agent running and redial with jittered backoff for at most this long, resuming the same "
        'session (only with a dispatcher whose Welcome offers "resume"); 0 = never: the session ends',
        flag="resume-timeout-s",
    )
    resume_buffer_packets: int = setting(
        4096,
        "upstream packets kept until the dispatcher acknowledges them, to re-send after a resume; when full, "
        "the agent's writes wait for acks",
        flag="resume-buffer-packets",
    )

    def __post_init__(self) -> None:
        if self.outbox_size < 1:
            raise ValueError("outbox_size must be >= 1")
        if self.resume_timeout_s < 0 or self.resume_buffer_packets < 1:
            raise ValueError("resume_timeout_s must be >= 0 and resume_buffer_packets >= 1")
        if self.handshake_timeout_s < 0 or self.end_timeout_s <= 0:
            raise ValueError("handshake_timeout_s must be >= 0 and end_timeout_s > 0")
        if self.coalesce_max_packets < 1 or self.coalesce_max_bytes < 1:
            raise ValueError("coalesce_max_bytes and coalesce_max_packets must be >= 1")
        if self.coalesce_max_bytes > self.max_send_message_bytes // 2:
            # Leaves room for the packet's other fields: merging must never build a message
            # grpc would refuse to send.
            raise ValueError("coalesce_max_bytes must be at most half of max_send_message_bytes")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("--cert-file and --key-file go together")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.ca_file) or bool(self.cert_file)

    def channel_options(self, keepalive: KeepaliveConfig) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            # A resume redials within its own jittered backoff: grpc's reconnect backoff (1 s
            # growing to 120 s by default) would keep the channel down long after the link is back.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            *keepalive.client_options(),
        ]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    name: str = setting("scripted-agent", "agent name sent in the handshake", flag="agent-name")
    version: str = setting("0.1.0", "agent version sent in the handshake", flag="agent-version")
    tokens_per_s: float = setting(
        40.0, "scripted agent: answer tokens per second (0 = as fast as possible)", flag="tokens-per-s"
    )
    first_token_delay_s: float = setting(
        0.0, "scripted agent: silence before the first token, like an LLM's prefill", flag="first-token-delay-s"
    )

    answer_words: int = setting(60, "scripted agent: length of the answer in words", flag="answer-words")
    agent: str = setting(
        "",
        "run your own agent instead of the scripted one: PACKAGE.MODULE:CALLABLE, an async (ctx, input) callable "
        "(a class is instantiated without arguments); the current directory is importable",
        flag="agent",
    )
    tools: tuple[str, ...] = setting(
        (),
        "limit the session to these dispatcher tools (Hello.tools; default: every tool the dispatcher serves)",
        flag="tool",
    )

    def __post_init__(self) -> None:
        if self.agent and ":" not in self.agent:
            raise ValueError(f"--agent {self.agent!r}: expected PACKAGE.MODULE:CALLABLE")
        if self.answer_words < 1:
            raise ValueError("answer_words must be >= 1")
        if self.tokens_per_s < 0 or self.first_token_delay_s < 0:
            raise ValueError("tokens_per_s and first_token_delay_s must be >= 0")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The OpenAI-compatible model backend (`--model openai:NAME`): commander/models/openai_chat.py."""

    model: str = setting(
        "",
        "drive a real model: openai:MODEL_NAME speaks the Chat Completions streaming API (OpenAI, vLLM, Ollama, "
        "llama.cpp, LM Studio, gateways); empty = the built-in scripted agent",
        flag="model",
    )
    base_url: str = setting("https://api.openai.com/v1", "the server's API root (…/v1)", flag="base-url")
    api_key_env: str = setting(
        "OPENAI_API_KEY",
        "environment variable holding the API key (unset or empty: no Authorization header, as local servers want)",
        flag="api-key-env",
    )
    temperature: float = setting(-1.0, "sampling temperature (-1 = the server's default)", flag="temperature")
    max_tokens: int = setting(0, "most tokens one model request may generate (0 = the server's default)",
                              flag="max-tokens")  # fmt: skip
    system_prompt: str = setting("", "system message sent first", flag="system-prompt")
    system_prompt_file: str = setting("", "file whose text is the system message", flag="system-prompt-file")
    request_timeout_s: float = setting(
        60.0, "connect timeout, and the longest silence between two streamed chunks", flag="request-timeout-s"
    )
    headers: tuple[str, ...] = setting((), "extra HTTP header 'Name: value' on every model request", flag="header")
    max_steps: int = setting(8, "most model requests per session (each tool round is one more)", flag="max-steps")
    retries: int = setting(
        2, "retries of a request answered 429 or 5xx before its first token (then the session fails)", flag="retries"
    )
    retry_backoff_s: float = setting(0.5, "first retry delay; doubles each retry (Retry-After wins, up to 30 s)",
                                     flag="retry-backoff-s")  # fmt: skip

    def __post_init__(self) -> None:
        if self.model and not self.model.startswith("openai:"):
            raise ValueError(f"--model {self.model!r}: expected openai:MODEL_NAME")
        if self.model == "openai:":
            raise ValueError("--model openai: needs a model name, e.g. openai:gpt-4o-mini")
        if self.system_prompt and self.system_prompt_file:
            raise ValueError("--system-prompt and --system-prompt-file exclude each other")
        if self.request_timeout_s <= 0 or self.max_steps < 1 or self.retries < 0 or self.retry_backoff_s < 0:
            raise ValueError("request_timeout_s > 0, max_steps >= 1, retries >= 0 and retry_backoff_s >= 0 required")
        if self.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        for header in self.headers:
            name, sep, _ = header.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"--header {header!r}: expected 'Name: value'")


@dataclass(frozen=True, slots=True)
class CommanderConfig:
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
