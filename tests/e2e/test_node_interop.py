"""Interop with a second gRPC stack: the Node.js client `interop/node/interop.js` (@grpc/grpc-js,
the contract loaded from proto/ at run time) against `dispatcher serve` as a real subprocess.

Needs node and `make node-deps` (npm ci in interop/node). Without them the test skips, except
in CI (CI=true), where it fails: CI must run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.certs import Pki
from tests.e2e.conftest import ENV, ROOT, DispatcherFactory

INTEROP_DIR = ROOT / "interop" / "node"
BLOCKED = "launch codes"
NODE_TIMEOUT_S = 45.0  # the client bounds each wait at 10 s and its whole run at 60 s


def _node_or_skip() -> str:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not on PATH (install Node.js 20+)"
    elif not (INTEROP_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing = f"{INTEROP_DIR / 'node_modules'} is missing"
    if missing is None:
        assert node is not None
        return node
    message = f"{missing}: run `make node-deps` (npm ci in interop/node)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Node interop test, but {message}")
    pytest.skip(message)


def test_node_client_full_session_and_policy_stop(start_dispatcher: DispatcherFactory) -> None:
    node = _node_or_skip()
    dispatcher = start_dispatcher("--block-pattern", f"(?i){BLOCKED}", instance_id="node-interop")

    result = subprocess.run(
        [node, str(INTEROP_DIR / "interop.js"), dispatcher.address, BLOCKED],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        encoding="utf-8",
        errors="replace",
        timeout=NODE_TIMEOUT_S,
        env=ENV,
        cwd=ROOT,
        check=False,
    )

    out = result.stdout
    report = (
        f"node exited {result.returncode}\n--- its stdout ---\n{out}\n--- its stderr ---\n{result.stderr}\n"
        f"{dispatcher.describe()}"
    )
    assert result.returncode == 0, report
    assert "dispatcher_id=dispatcher:node-interop" in out, report
    assert 'full: tool echo [node-echo-1] -> {"text":"hi"}' in out, report
    assert 'full: tool calculator [node-calc-1] -> {"expression":"2+3*4","value":14}' in out, report
    assert "full: status OK, x-session-state FINISHED" in out, report
    assert "stop: StopSignal STOP_CODE_POLICY_VIOLATION" in out, report
    assert "stop: status PERMISSION_DENIED, x-stop-code POLICY_VIOLATION, x-stop-confirmed true" in out, report
    assert out.rstrip().endswith("interop: PASS (full, stop)"), report

    # The dispatcher's own record of the two sessions.
    dispatcher.wait_for_event("session.ended", state="FINISHED")
    stopped = dispatcher.wait_for_event("session.ended", state="STOPPED")
    assert stopped["stop_code"] == "POLICY_VIOLATION", stopped
    assert stopped["stop_confirmed"] is True, stopped
    assert stopped["stop_path"] == ["policy:content_blocklist", "dispatcher:node-interop"], stopped


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_node_client_over_tls(start_dispatcher: DispatcherFactory, tmp_path: Path, mutual: bool) -> None:
    """The same two sessions from grpc-js over TLS; with mutual TLS its certificate is its credential."""
    node = _node_or_skip()
    pki = Pki(tmp_path / "pki")
    server = pki.server()
    flags = ["--tls-cert", str(server.cert), "--tls-key", str(server.key), "--block-pattern", f"(?i){BLOCKED}"]
    client_flags = ["--ca-file", str(pki.ca_file)]
    if mutual:
        client = pki.issue_uri("node", "spiffe://example.org/node-agent")
        tokens = tmp_path / "tokens"
        tokens.write_text("commander node-agent x509:spiffe://example.org/node-agent\n")
        flags += ["--tls-client-ca", str(pki.ca_file), "--tls-require-client-cert", "--tokens-file", str(tokens)]
        client_flags += ["--cert-file", str(client.cert), "--key-file", str(client.key)]
    dispatcher = start_dispatcher(*flags, instance_id="node-interop")

    result = subprocess.run(
        [node, str(INTEROP_DIR / "interop.js"), *client_flags, dispatcher.address, BLOCKED],
        capture_output=True, stdin=subprocess.DEVNULL, encoding="utf-8", errors="replace",
        timeout=NODE_TIMEOUT_S, env=ENV, cwd=ROOT, check=False,
    )  # fmt: skip
    report = f"node exited {result.returncode}\n{result.stdout}\n{result.stderr}\n{dispatcher.describe()}"
    assert result.returncode == 0, report
    assert f"({'mutual TLS' if mutual else 'TLS'})" in result.stdout.splitlines()[0], report
    assert result.stdout.rstrip().endswith("interop: PASS (full, stop)"), report
    stopped = dispatcher.wait_for_event("session.ended", state="STOPPED")
    assert stopped["stop_confirmed"] is True, stopped
