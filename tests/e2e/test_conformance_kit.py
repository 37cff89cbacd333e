"""The conformance kit as its users run it: `python -m conformance` as a subprocess.

Against `dispatcher serve`: every requirement passes with no expected failures. Against a
deliberately broken server (tests/conformance_fixtures/broken_server.py): the run fails with
exactly the requirement ids it breaks. And the expected-failures file and --strict do what
docs/contract.md says.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.requirements import BY_ID
from tests.certs import Pki
from tests.e2e.conftest import ENV, ROOT, DispatcherFactory, wait_for

STOP_WORD = "CONFORMANCE-STOP"
KIT_TIMEOUT_S = 50.0  # the whole kit takes ~8 s against a local dispatcher
FAST = ["--wait-s", "2"]  # the broken server never answers some waits: keep those short


def run_kit(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conformance", "--target", target, *args],
        cwd=ROOT,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        encoding="utf-8",
        errors="replace",
        timeout=KIT_TIMEOUT_S,
        env=ENV,
        check=False,
    )


def outcomes(junit: Path) -> dict[str, str]:
    """Requirement id -> failed / passed / skipped, from the JUnit XML (failed if any test case failed)."""
    by_req: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        req = props.get("requirement")
        assert req in BY_ID, f"test case {case.get('name')} has no registered requirement property: {props}"
        assert props.get("level") == BY_ID[req].level.value, props
        if case.find("failure") is not None or case.find("error") is not None:
            result = "failed"
        elif case.find("skipped") is not None:
            result = "skipped"
        else:
            result = "passed"
        previous = by_req.get(req)
        if previous is None or result == "failed" or (previous == "skipped" and result == "passed"):
            by_req[req] = result
    return by_req


def row(req_id: str, level: str, result: str) -> re.Pattern[str]:
    """The summary table's line for a requirement."""
    return re.compile(rf"^{req_id}\s+{level}\s+{result}\s", re.MULTILINE)


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broken server as a subprocess; yields its HOST:PORT."""
    port_file = tmp_path_factory.mktemp("broken") / "port"
    with port_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.conformance_fixtures.broken_server"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=ENV,
        )
    try:

        def port() -> str:
            assert proc.poll() is None, f"the broken server exited {proc.returncode}: {port_file.read_text()}"
            text = port_file.read_text()
            return text.strip() if text.endswith("\n") else ""

        yield f"127.0.0.1:{wait_for(port, 'the broken server to print its port')}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_the_dispatcher_passes_every_requirement(start_dispatcher: DispatcherFactory, tmp_path: Path) -> None:
    dispatcher = start_dispatcher("--block-pattern", STOP_WORD)
    junit = tmp_path / "conformance.xml"
    done = run_kit(dispatcher.address, "--junit-xml", str(junit))

    assert done.returncode == 0, output(done)
    assert "CONFORMANT" in done.stdout, output(done)
    results = outcomes(junit)
    assert set(results) == set(BY_ID), f"JUnit lacks requirements {sorted(set(BY_ID) - set(results))}"
    failed = sorted(r for r, o in results.items() if o == "failed")
    assert failed == [], output(done)
    # Only the control API may be skipped (it is optional); this dispatcher serves it, so nothing is.
    assert [r for r, o in results.items() if o == "skipped"] == [], output(done)
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("errors") == "0"
    # The kit's bad input never crashed a session inside the dispatcher.
    assert not dispatcher.events("session.crashed"), dispatcher.describe()


def test_a_broken_server_fails_with_the_right_requirement_ids(broken_server: str, tmp_path: Path) -> None:
    junit = tmp_path / "broken.xml"
    only = "HS-001,HS-003,TOOL-001,TOOL-003,STOP-001,HEALTH-001"
    done = run_kit(broken_server, *FAST, "--only", only, "--junit-xml", str(junit))

    assert done.returncode == 1, output(done)
    assert outcomes(junit) == {
        "HS-001": "passed",  # its Welcome is right
        "HS-003": "failed",  # no initial metadata (SHOULD)
        "TOOL-001": "failed",  # ignores call_id
        "TOOL-003": "failed",  # ignores call_id, says FAILED not UNKNOWN_TOOL
        "STOP-001": "failed",  # never stops
        "HEALTH-001": "failed",  # serves no health
    }, output(done)
    for pattern in (row("TOOL-001", "MUST", "FAIL"), row("STOP-001", "MUST", "FAIL"), row("HS-001", "MUST", "PASS")):
        assert pattern.search(done.stdout), output(done)
    assert "expected a StopSignal" in done.stdout and "call_id 'kit-call-7'" in done.stdout, output(done)
    assert "SHOULD/MAY failures (not fatal without --strict): HS-003" in done.stdout, output(done)


def test_should_failures_fail_the_run_only_with_strict(broken_server: str) -> None:
    lenient = run_kit(broken_server, *FAST, "--only", "HS-003")
    assert lenient.returncode == 0 and row("HS-003", "SHOULD", "FAIL").search(lenient.stdout), output(lenient)
    strict = run_kit(broken_server, *FAST, "--only", "HS-003", "--strict")
    assert strict.returncode == 1 and "HS-003 (SHOULD) failed" in strict.stdout, output(strict)


def test_expected_failures_file(broken_server: str, tmp_path: Path) -> None:
    listed = tmp_path / "xfail.txt"
    listed.write_text("# known problems of the broken server\nTOOL-001   ignores call_id\n")
    failing = run_kit(broken_server, *FAST, "--only", "TOOL-001,HS-001", "--expected-failures", str(listed))
    assert failing.returncode == 0, output(failing)
    assert row("TOOL-001", "MUST", "XFAIL").search(failing.stdout), output(failing)
    assert "ignores call_id" in failing.stdout, output(failing)

    listed.write_text("TOOL-001   ignores call_id\nHS-001     sends no Welcome (not true)\n")
    passing = run_kit(broken_server, *FAST, "--only", "TOOL-001,HS-001", "--expected-failures", str(listed))
    assert passing.returncode == 1, output(passing)
    message = f"HS-001 is listed as an expected failure but passed: remove it from {listed}"
    assert message in passing.stdout, output(passing)
    assert row("HS-001", "MUST", "XPASS").search(passing.stdout), output(passing)


def test_an_unknown_id_in_the_expected_failures_file_is_a_usage_error(tmp_path: Path) -> None:
    listed = tmp_path / "xfail.txt"
    listed.write_text("STOP-999 no such requirement\n")
    done = run_kit("127.0.0.1:1", "--expected-failures", str(listed))
    assert done.returncode == 4, output(done)
    assert "unknown requirement id 'STOP-999'" in done.stderr, output(done)


def test_the_kit_grades_a_dispatcher_over_mutual_tls(start_dispatcher: DispatcherFactory, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    server, client = pki.server(), pki.issue("kit", "conformance-kit.example.org")
    dispatcher = start_dispatcher(
        "--block-pattern", STOP_WORD, "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tls-client-ca", str(pki.ca_file), "--tls-require-client-cert",
    )  # fmt: skip
    junit = tmp_path / "conformance.xml"
    tls = ["--tls", "--ca-file", str(pki.ca_file), "--cert-file", str(client.cert), "--key-file", str(client.key)]
    done = run_kit(dispatcher.address, *tls, "--junit-xml", str(junit))
    assert done.returncode == 0, output(done)
    assert "CONFORMANT" in done.stdout, output(done)
    assert sorted(r for r, o in outcomes(junit).items() if o != "passed") == [], output(done)
