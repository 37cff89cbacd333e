"""End to end: the control plane with every party a real process on loopback.

A `dispatcher serve` subprocess; `commander run` and `commander serve` subprocesses; operators
as `dispatcherctl` subprocesses. The test process speaks gRPC itself only where no CLI can:
a watcher that stops reading, and a backend that cancels its StartSession call.

Covered: an operator stop reaching a commander mid-answer (the stop's path recorded by both
ends, with and without tokens); watchers joining late and resuming after a kill with no gap
or duplicate; a stalled watcher cut off while the commander runs at full speed; a pool of two
`commander serve` processes answering two concurrent `ask`s, and a backend's cancellation
reaching a pool commander; every role's denials.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest

from dispatcher.auth import hash_token
from shared import wire
from tests.e2e.conftest import (
    BIN,
    COMMANDER,
    COMMANDER_TIMEOUT_S,
    ENV,
    EXIT_TIMEOUT_S,
    DispatcherFactory,
    DispatcherProcess,
    run_cli,
    wait_for,
)

DISPATCHERCTL = BIN / "dispatcherctl"
# No token reaches a child unless a test passes one.
CLEAN_ENV = {k: v for k, v in ENV.items() if k not in {"DISPATCHER_TOKEN", "COMMANDER_TOKEN", "DISPATCHER_TOKENS"}}
RPC_TIMEOUT_S = 20.0  # the deadline of every gRPC call the test process makes

TOKENS = {  # name: (role, token)
    "alice": ("operator", "op-secret"),
    "web": ("backend", "web-secret"),
    "audit": ("backend", "audit-secret"),
    "bot": ("commander", "bot-secret"),
}
TOKENS_ENV = ";".join(f"{role} {name} {hash_token(token)}" for name, (role, token) in TOKENS.items())
OPERATOR = TOKENS["alice"][1]
COMMANDER_TOKEN = TOKENS["bot"][1]

pytestmark = pytest.mark.timeout(60)


def token(name: str) -> str:
    return TOKENS[name][1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def dispatcher_hop(dispatcher: DispatcherProcess) -> str:
    """The dispatcher's hop in stop paths: "dispatcher:<its --instance-id>"."""
    return "dispatcher:" + dispatcher.args[dispatcher.args.index("--instance-id") + 1]


# -- processes -------------------------------------------------------------------------------


@dataclass
class Spawned:
    """A child process whose stdout and stderr go to files (no pipe can fill up and block it)."""

    name: str
    args: list[str]
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """The complete JSON lines on stdout so far (a line still being written is left out)."""
        complete = self.stdout().rpartition("\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def results(self) -> list[dict[str, Any]]:
        """The SessionResult lines of a `commander run --json` / `commander serve`."""
        return [line for line in self.json_lines() if line.get("event") == "SessionResult"]

    def wait(self, timeout: float = COMMANDER_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {timeout} s later\n{self.describe()}") from None

    def describe(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        return (
            f"{self.name} (pid {self.proc.pid}, {state}): {' '.join(self.args)}\n"
            f"--- stdout (last 3000 chars) ---\n{self.stdout()[-3000:]}\n--- stderr ---\n{self.stderr()[-3000:]}"
        )


@dataclass
class Spawner:
    workdir: Path

    def __post_init__(self) -> None:
        self.children: list[Spawned] = []

    def __call__(self, name: str, *args: str | Path) -> Spawned:
        argv = [str(a) for a in args]
        n = len(self.children)
        out_path, err_path = self.workdir / f"{n}-{name}.out", self.workdir / f"{n}-{name}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:  # the child keeps its own descriptors
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=CLEAN_ENV)
        child = Spawned(name, argv, proc, out_path, err_path)
        self.children.append(child)
        return child

    def kill_all(self) -> None:
        """Teardown: whatever a test left running (it failed half-way) is killed, never leaked."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(timeout=EXIT_TIMEOUT_S)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.kill_all()


def ctl(
    dispatcher: DispatcherProcess, *args: str, token: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """`dispatcherctl --target ADDRESS [--token T] ARGS...` to completion."""
    auth = ("--token", token) if token else ()
    return run_cli(str(DISPATCHERCTL), "--target", dispatcher.address, *auth, *args, env=CLEAN_ENV, timeout=timeout)


def ctl_argv(dispatcher: DispatcherProcess, *args: str, token: str | None = None) -> list[str]:
    auth = ["--token", token] if token else []
    return [str(DISPATCHERCTL), "--target", dispatcher.address, *auth, *args]


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def show(dispatcher: DispatcherProcess, session_id: str, token: str | None = None) -> dict[str, Any] | None:
    """`dispatcherctl show ID --json`'s SessionInfo; None while the session does not exist (exit 4)."""
    result = ctl(dispatcher, "show", session_id, "--json", token=token)
    if result.returncode == 4:
        return None
    assert result.returncode == 0, shown(result)
    session: dict[str, Any] = json.loads(result.stdout)["session"]
    return session


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The single stderr line of a failed command, asserting its exit code, no stdout, no traceback."""
    assert result.returncode == exit_code, shown(result)
    assert "Traceback" not in result.stderr and result.stdout == "", shown(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown(result)
    return lines[0]


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(name)}"),)


# -- dispatchers shared by the module ----------------------------------------------------------


@pytest.fixture(scope="module")
def _dispatchers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DispatcherFactory]:
    factory = DispatcherFactory(tmp_path_factory.mktemp("control-plane"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def dev_dispatcher(_dispatchers: DispatcherFactory) -> DispatcherProcess:
    """No tokens configured (development mode): every caller is operator:anonymous. No pool."""
    return _dispatchers(instance_id="cp-dev")


@pytest.fixture(scope="module")
def auth_dispatcher(_dispatchers: DispatcherFactory) -> DispatcherProcess:
    """Tokens from DISPATCHER_TOKENS: operator alice, backends web and audit, commander bot."""
    # The factory starts its child with the conftest's ENV: add the tokens for this one start.
    with mock.patch.dict(ENV, DISPATCHER_TOKENS=TOKENS_ENV):
        return _dispatchers(instance_id="cp-auth")


# -- 1. operator stop --------------------------------------------------------------------------

STOPPED_LINE = (
    r"stopped {sid}: confirmed by the commander in [0-9.]+ ms "
    r"\(stop_to_confirm; round trip [0-9.]+ ms\) path {path}"
)


@pytest.mark.parametrize("mode", ["dev", "tokens"])
def test_operator_stop_reaches_a_commander_mid_answer_with_its_path_on_both_ends(
    mode: str, request: pytest.FixtureRequest, spawn: Spawner
) -> None:
    with_tokens = mode == "tokens"
    dispatcher: DispatcherProcess = request.getfixturevalue("auth_dispatcher" if with_tokens else "dev_dispatcher")
    operator_token = OPERATOR if with_tokens else None
    path = ["operator:alice" if with_tokens else "operator:anonymous", dispatcher_hop(dispatcher)]
    session_id = unique("op-stop")
    commander = spawn(
        "commander-run",
        COMMANDER, "run", "--target", dispatcher.address, "--prompt", "Tell me a long story.",
        "--session-id", session_id, "--tokens-per-s", "20", "--answer-words", "2000", "--json",
        *(["--token", COMMANDER_TOKEN] if with_tokens else []),
    )  # fmt: skip

    def answering() -> bool:
        info = show(dispatcher, session_id, operator_token)
        return info is not None and info.get("packets_in", {}).get("content", 0) >= 3

    wait_for(answering, f"session {session_id} streaming its answer", details=commander.describe)

    stop = ctl(dispatcher, "stop", session_id, "--reason", "incident 42", "--cause", "ticket=INC-42",
               token=operator_token)  # fmt: skip
    assert stop.returncode == 0, shown(stop)
    expected = STOPPED_LINE.format(sid=re.escape(session_id), path=re.escape(" -> ".join(path)))
    assert re.fullmatch(expected + "\n", stop.stdout), shown(stop)

    assert commander.wait() == 2, commander.describe()  # 2: stopped by the dispatcher
    events = commander.json_lines()
    [result] = commander.results()
    assert result["state"] == "STOPPED" and result["status_code"] == "ABORTED", result
    assert result["stop"]["code"] == "OPERATOR" and result["stop"]["path"] == path, result
    assert (result["stop"]["reason"], result["stop"]["cause"]) == ("incident 42", "ticket=INC-42")
    kinds = [e["event"] for e in events]
    assert "ContentEmitted" in kinds[: kinds.index("StopReceived")], "the stop did not come mid-answer"

    info = show(dispatcher, session_id, operator_token)
    assert info is not None
    outcome = info["outcome"]
    assert outcome["state"] == "SESSION_STATE_STOPPED" and outcome["stop_confirmed"] is True, outcome
    assert outcome["stop"]["path"] == path and outcome["stop"]["code"] == "STOP_CODE_OPERATOR", outcome
    assert outcome["stop"]["stop_id"] == result["stop"]["stop_id"], "the two ends recorded different stops"
    assert outcome["ended_by"] == path[0]
    if with_tokens:
        assert info["commander"] == "bot", info  # the commander's token name, not its Hello


# -- 2. watch: late and resumed ----------------------------------------------------------------


def event_seqs(lines: list[dict[str, Any]]) -> list[int]:
    return [line["seq"] for line in lines if "seq" in line]


def test_watchers_joining_late_and_resuming_after_a_kill_see_every_event_once(
    dev_dispatcher: DispatcherProcess, spawn: Spawner
) -> None:
    d = dev_dispatcher
    session_id = unique("watched")
    commander = spawn(
        "commander-run",
        COMMANDER, "run", "--target", d.address, "--prompt", "Tell me about rivers.", "--session-id", session_id,
        "--tokens-per-s", "40", "--answer-words", "80", "--quiet", "--json",
    )  # fmt: skip

    def events_so_far() -> int:
        info = show(d, session_id)
        return int(info["last_event_seq"]) if info is not None else 0

    wait_for(lambda: events_so_far() >= 8, f"session {session_id} has journaled 8 events", details=commander.describe)

    late = spawn("watch-late", *ctl_argv(d, "watch", session_id, "--json"))
    dropped = spawn("watch-killed", *ctl_argv(d, "watch", session_id, "--json"))
    wait_for(lambda: len(dropped.json_lines()) >= 5, "the second watcher's first 5 events", details=dropped.describe)
    dropped.proc.kill()  # a watcher whose connection goes away mid-session
    dropped.wait(EXIT_TIMEOUT_S)
    seen = event_seqs(dropped.json_lines())
    assert seen == list(range(1, len(seen) + 1)), f"the killed watcher's events are not 1..N: {seen}"

    resumed = ctl(d, "watch", session_id, "--from", str(seen[-1] + 1), "--json")  # follows to the end
    assert resumed.returncode == 0, shown(resumed)
    rest = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert commander.wait() == 0, commander.describe()
    assert late.wait() == 0, late.describe()

    info = show(d, session_id)
    assert info is not None and info["state"] == "SESSION_STATE_FINISHED", info
    last = int(info["last_event_seq"])
    everything = list(range(1, last + 1))
    assert any("content" in event for event in rest), "no content after the kill: pace the commander slower"
    assert event_seqs(late.json_lines()) == everything, "the late watcher missed or repeated events"
    assert late.json_lines()[0]["state_change"]["state"] == "SESSION_STATE_OPEN"
    assert late.json_lines()[-1] == {"last_seq": last}
    assert event_seqs(rest)[0] == seen[-1] + 1
    assert seen + event_seqs(rest) == everything, "gaps or duplicates across the reconnect"
    assert rest[-2]["state_change"]["state"] == "SESSION_STATE_FINISHED", rest[-2]
    assert rest[-1] == {"last_seq": last}


# -- 3. a stalled watcher ----------------------------------------------------------------------


def test_a_stalled_watcher_is_cut_off_and_never_slows_the_commander(
    start_dispatcher: DispatcherFactory, spawn: Spawner
) -> None:
    d = start_dispatcher("--session-journal-max-events", "64", instance_id="cp-journal")
    session_id = unique("fast")
    commander = spawn(
        "commander-run",
        COMMANDER, "run", "--target", d.address, "--prompt", "Say a lot.", "--session-id", session_id,
        "--tokens-per-s", "0", "--answer-words", "20000", "--quiet", "--json",
    )  # fmt: skip
    # The watcher's own connection, with a small receive window and no BDP growth, so that not
    # reading soon stops grpc from taking more off the server.
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
    with grpc.insecure_channel(d.address) as channel, grpc.insecure_channel(d.address, options=small_window) as slow:
        stub = wire.SessionControlServiceStub(channel)

        def is_open() -> bool:
            try:
                stub.GetSession(wire.ctl.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND, exc
                return False
            return True

        wait_for(is_open, f"session {session_id} open", details=commander.describe)
        watcher = wire.SessionControlServiceStub(slow).WatchSession(
            wire.ctl.WatchSessionRequest(session_id=session_id), timeout=COMMANDER_TIMEOUT_S
        )
        first = next(watcher)  # then it stops reading
        assert first.event.session_id == session_id

        assert commander.wait() == 0, commander.describe()  # full speed, unhindered by the watcher
        [result] = commander.results()
        assert result["state"] == "FINISHED", result
        info = stub.GetSession(wire.ctl.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S).session
        assert info.outcome.state == wire.ctl.SESSION_STATE_FINISHED

        # Reading again: first what the HTTP/2 windows held, then the status. (The server notices
        # only now: its handler stays parked in a flow-controlled write while nobody reads.)
        read = 1
        try:
            for _ in watcher:
                read += 1
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            code, details = exc.code(), exc.details() or ""
        else:
            raise AssertionError(f"the watch ended OK after {read} events: did it attach after the session ended?")
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert "fell behind" in details and "resume with from_seq=" in details, details
    assert read < info.last_event_seq, f"the watcher read all {read} events: nothing was buffered long enough"


# -- 4. the commander pool ---------------------------------------------------------------------


def test_a_pool_of_two_commanders_serves_concurrent_asks_and_a_backends_cancel(
    dev_dispatcher: DispatcherProcess, auth_dispatcher: DispatcherProcess, spawn: Spawner
) -> None:
    # No pool commander at all: UNAVAILABLE once the wait is over.
    no_pool = ctl(dev_dispatcher, "ask", "anyone there?", "--wait-ms", "50")
    line = one_line_error(no_pool, 1)
    assert line.startswith("UNAVAILABLE: ") and "no free commander within 50 ms" in line, line

    d = auth_dispatcher
    already_free = len(d.events("pool.commander_free"))
    serve: list[str | Path] = [
        COMMANDER, "serve", "--target", d.address, "-n", "1", "--token", COMMANDER_TOKEN,
        "--tokens-per-s", "50", "--log-level", "warning",
    ]  # fmt: skip
    pool = [spawn(f"commander-serve-{name}", *serve, "--agent-name", f"pool-{name}") for name in ("a", "b")]

    def both_free() -> bool:
        joined = d.events("pool.commander_free")[already_free:]
        return bool(joined) and joined[-1].get("free") == 2

    wait_for(both_free, "both pool commanders registered", details=lambda: "\n".join(p.describe() for p in pool))

    asks = [
        spawn(f"ask-{n}", *ctl_argv(d, "ask", question, "--wait-ms", "10000", token=OPERATOR))
        for n, question in enumerate(("What is 6 * 7?", "What is 2 + 2?"))
    ]
    asked: set[str] = set()
    for ask in asks:
        assert ask.wait() == 0, ask.describe()
        lines = ask.stdout().splitlines()
        session_id = lines[0].removeprefix("session ")
        assert lines[-1].startswith(f"FINISHED session {session_id}: "), ask.describe()
        asked.add(session_id)
    assert len(asked) == 2

    for commander in pool:
        wait_for(commander.results, f"{commander.name}'s first result", details=commander.describe)
    served = [[r["session_id"] for r in commander.results()] for commander in pool]
    assert sorted(len(s) for s in served) == [1, 1] and set(served[0] + served[1]) == asked, served
    for commander in pool:
        [result] = commander.results()
        assert result["state"] == "FINISHED" and result["assigned"]["started_by"] == "operator:alice", result

    # A backend starts a session itself and cancels its call after the first content delta.
    session_id = unique("web-cancel")
    with grpc.insecure_channel(d.address) as channel:
        call = wire.SessionControlServiceStub(channel).StartSession(
            wire.ctl.StartSessionRequest(
                input_text="Tell me a long story.", session_id=session_id, wait_for_commander_ms=10_000
            ),
            metadata=bearer("web"),
            timeout=RPC_TIMEOUT_S,
        )
        for response in call:
            if response.event.HasField("content"):
                break
        else:
            raise AssertionError("the started session ended before any content")
        call.cancel()

    def cancelled_result() -> list[dict[str, Any]]:
        return [r for c in pool for r in c.results() if r["session_id"] == session_id]

    [result] = wait_for(cancelled_result, f"a pool commander's result for {session_id}",
                        details=lambda: "\n".join(p.describe() for p in pool))  # fmt: skip
    assert result["state"] == "STOPPED" and result["stop"]["code"] == "USER_CANCEL", result
    assert result["stop"]["path"] == ["backend:web", dispatcher_hop(d)], result
    assert result["assigned"]["started_by"] == "backend:web"

    for who in (OPERATOR, token("web")):  # the operator, and the backend that started it
        info = show(d, session_id, who)
        assert info is not None and info["started_by"] == "backend:web", info
        outcome = info["outcome"]
        assert outcome["state"] == "SESSION_STATE_STOPPED" and outcome["error_code"] == "USER_CANCEL", outcome
        assert outcome["stop"]["path"] == result["stop"]["path"] and outcome["stop_confirmed"] is True, outcome

    for commander in pool:  # idle now: SIGTERM takes them out of the pool and they exit 0
        commander.proc.send_signal(signal.SIGTERM)
    for commander in pool:
        assert commander.wait(EXIT_TIMEOUT_S) == 0, commander.describe()
        assert "Traceback" not in commander.stderr(), commander.describe()


# -- 5. auth -----------------------------------------------------------------------------------


def test_each_role_is_refused_what_it_may_not_do(auth_dispatcher: DispatcherProcess) -> None:
    d = auth_dispatcher
    line = one_line_error(ctl(d, "sessions"), 5)
    assert line.startswith("authentication failed: ") and "bearer token" in line, line
    line = one_line_error(ctl(d, "sessions", token="not-a-token"), 5)
    assert line.startswith("authentication failed: "), line
    line = one_line_error(ctl(d, "sessions", token=COMMANDER_TOKEN), 5)
    assert line == "permission denied: commander:bot may not call ListSessions (allowed roles: backend, operator)"

    health = ctl(d, "health")  # no token needed
    assert health.returncode == 0, shown(health)
    assert [row.split()[0] for row in health.stdout.splitlines()] == ["SERVING"] * 3, shown(health)

    refused: list[str] = []
    for who, expected, detail in (
        (None, "UNAUTHENTICATED", "missing or unknown bearer token"),
        ("web", "PERMISSION_DENIED", "backend:web may not call ChatStream"),
    ):
        session_id = unique("refused")
        refused.append(session_id)
        cli_token = ("--token", token(who)) if who else ()
        run = run_cli(
            str(COMMANDER), "run", "--target", d.address, "--prompt", "hi", "--session-id", session_id,
            "--tokens-per-s", "0", "--json", *cli_token, env=CLEAN_ENV,
        )  # fmt: skip
        assert run.returncode == 1, shown(run)
        [result] = [line for line in map(json.loads, run.stdout.splitlines()) if line["event"] == "SessionResult"]
        assert (result["state"], result["status_code"]) == ("FAILED", expected), result
        assert detail in result["status_details"], result

    allowed_id = unique("allowed")
    run = run_cli(
        str(COMMANDER), "run", "--target", d.address, "--prompt", "What is 2+3?", "--session-id", allowed_id,
        "--tokens-per-s", "0", "--quiet", "--token", COMMANDER_TOKEN, env=CLEAN_ENV,
    )  # fmt: skip
    assert run.returncode == 0, shown(run)

    listed = ctl(d, "sessions", "--json", token=OPERATOR)
    assert listed.returncode == 0, shown(listed)
    everything = {s["session_id"]: s for s in map(json.loads, listed.stdout.splitlines())}
    assert allowed_id in everything and everything[allowed_id]["commander"] == "bot"
    assert not set(refused) & set(everything), "a refused commander got a session"

    nothing = ctl(d, "sessions", "--json", token=token("audit"))
    assert (nothing.returncode, nothing.stdout) == (0, ""), shown(nothing)
    own = ctl(d, "sessions", "--json", token=token("web"))
    assert own.returncode == 0, shown(own)
    assert all(s["started_by"] == "backend:web" for s in map(json.loads, own.stdout.splitlines())), own.stdout
    line = one_line_error(ctl(d, "show", allowed_id, token=token("web")), 5)
    assert line.startswith("permission denied: ") and "backend:web" in line, line
