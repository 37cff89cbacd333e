"""The README's mutual-TLS example, taken from the README and run as written: the same command
lines, in a directory holding certificates of those names made for the test (trustme), the port
swapped for a free one."""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
from pathlib import Path

from tests.certs import Pki
from tests.e2e.conftest import BIN, ENV, EXIT_TIMEOUT_S, READY_TIMEOUT_S, ROOT, parse_json_lines, wait_for

README = ROOT / "README.md"
FIRST_LINE = "# tokens: a client certificate's identity"
README_PORT = "50443"


def readme_commands() -> list[str]:
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        if block.startswith(FIRST_LINE):
            return [line for line in block.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    raise AssertionError(f"no bash block starting {FIRST_LINE!r} in the README")


def make_certificates(directory: Path) -> None:
    pki = Pki(directory / "made")
    (directory / "made" / "ca.pem").rename(directory / "ca.pem")
    pki.ca_file = directory / "ca.pem"
    for name, files in {
        "server": pki.server(),
        "agent-7": pki.issue_uri("agent-7", "spiffe://example.org/agent-7"),
        "ops": pki.issue_uri("ops", "spiffe://example.org/ops"),
    }.items():
        files.cert.rename(directory / f"{name}.pem")
        files.key.rename(directory / f"{name}.key")


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_the_readme_mutual_tls_example_runs_as_written(tmp_path: Path) -> None:
    make_certificates(tmp_path)
    port = free_port()  # a race with another process is possible but harmless: the start-up would fail loudly
    commands = [line.replace(README_PORT, port) for line in readme_commands()]
    printf, serve, *clients = commands
    assert printf.startswith("printf ") and serve.startswith("dispatcher serve ")
    subprocess.run(["bash", "-c", printf], cwd=tmp_path, check=True, env=ENV)
    ready, log = tmp_path / "ready", tmp_path / "dispatcher.log"
    argv = shlex.split(serve)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:], "--ready-file", str(ready), "--log-format", "json"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV,
        )  # fmt: skip
    try:
        wait_for(lambda: ready.exists() and ready.read_text().endswith("\n"), "the ready file", READY_TIMEOUT_S,
                 details=log.read_text)  # fmt: skip
        outputs = []
        for command in clients:
            argv = shlex.split(command)
            done = subprocess.run(
                [str(BIN / argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True, encoding="utf-8",
                stdin=subprocess.DEVNULL, env=ENV, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}\n{log.read_text()}"
            outputs.append(done.stdout)
        assert any(line.startswith("FINISHED") for line in outputs[0].splitlines()), outputs[0]
        assert "agent-7" in outputs[1], outputs[1]  # the session listed, its commander named by its certificate
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=EXIT_TIMEOUT_S) == 0
    serving = [line for line in parse_json_lines(log.read_text()) if line.get("event") == "dispatcher.serving"]
    assert serving[0]["tls"] == "mutual" and serving[0]["tokens"] == {"operator": 1, "commander": 1}
