"""The pytest plugin: requirement markers, outcomes per requirement, the summary, the exit code.

Loaded with `-p conformance.plugin` (`python -m conformance` does it). Each test of the suite
carries exactly one `@requirement("ID")`; the plugin
- records the id and level as JUnit properties of the test case,
- turns the failure of a requirement listed in the expected-failures file into an XFAIL,
- prints a table (id, level, outcome, sentence) and
- sets the exit status: non-zero on a MUST failure (any failure with --conformance-strict)
  and on a listed requirement that passed.
It also runs the suite's `async def` tests, all on one event loop (grpc.aio's poller is per
process: several loops in one process misbehave).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from conformance.client import DEFAULT_STOP_WORD, KitOptions
from conformance.expected import ExpectedFailuresError, load_expected_failures
from conformance.report import Outcome, TestOutcome, aggregate, counts, format_table, judge
from conformance.requirements import AREAS, BY_ID, Level

__all__ = ["KitState", "RunHooks", "requirement", "state_of"]

T = TypeVar("T")
MARKER = "requirement"


def requirement(req_id: str) -> pytest.MarkDecorator:
    """Mark a test as grading `req_id` (which must be in the registry)."""
    if req_id not in BY_ID:
        raise ValueError(f"unknown requirement id {req_id!r}: add it to conformance/requirements.py first")
    return pytest.mark.requirement(req_id)


@dataclass
class KitState:
    """Everything the plugin keeps for one run."""

    options: KitOptions
    expected: dict[str, str]
    expected_file: str
    only: frozenset[str]
    strict: bool
    outcomes: dict[str, TestOutcome] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    _runner: asyncio.Runner | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coro` on the run's one event loop, bounded by `timeout_s`."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        if timeout_s is None:
            return self._runner.run(coro)
        return self._runner.run(_bounded(coro, timeout_s))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None


async def _bounded(coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
    try:
        async with asyncio.timeout(timeout_s) as scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise AssertionError(f"the test did not finish within {timeout_s:g} s (the kit's overall bound)") from None
        raise


_STATE = pytest.StashKey[KitState]()


def state_of(config: pytest.Config) -> KitState:
    return config.stash[_STATE]


# -- options and configuration -------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "contract conformance kit")
    group.addoption("--conformance-target", default="", help="HOST:PORT of the server to grade")
    group.addoption("--conformance-stop-word", default=DEFAULT_STOP_WORD, help="content the target stops on")
    group.addoption("--conformance-expected-failures", default="", help="file of requirement ids known to fail")
    group.addoption("--conformance-tls", action="store_true", default=False, help="dial with TLS")
    group.addoption("--conformance-ca-file", default="", help="PEM roots for --conformance-tls")
    group.addoption("--conformance-cert-file", default="", help="PEM client certificate (mutual TLS)")
    group.addoption("--conformance-key-file", default="", help="PEM key of --conformance-cert-file")
    group.addoption("--conformance-token", default="", help="bearer token sent as `authorization` metadata")
    group.addoption("--conformance-only", action="append", default=[], help="areas (or ids) to run")
    group.addoption("--conformance-strict", action="store_true", default=False, help="SHOULD/MAY failures fail")
    group.addoption("--conformance-wait-s", type=float, default=10.0, help="bound of every single wait")
    group.addoption("--conformance-keepalive-budget-s", type=float, default=15.0, help="bound of the KA test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(id): the contract requirement this test grades")
    target = config.getoption("--conformance-target")
    if not target:
        raise pytest.UsageError("the conformance kit needs --conformance-target HOST:PORT")
    expected_file = config.getoption("--conformance-expected-failures")
    try:
        options = KitOptions(
            target=target,
            tls=config.getoption("--conformance-tls"),
            ca_file=config.getoption("--conformance-ca-file"),
            cert_file=config.getoption("--conformance-cert-file"),
            key_file=config.getoption("--conformance-key-file"),
            token=config.getoption("--conformance-token"),
            stop_word=config.getoption("--conformance-stop-word"),
            wait_s=config.getoption("--conformance-wait-s"),
            keepalive_budget_s=config.getoption("--conformance-keepalive-budget-s"),
        )
        expected = load_expected_failures(expected_file) if expected_file else {}
    except (ValueError, ExpectedFailuresError) as exc:
        raise pytest.UsageError(str(exc)) from None
    state = KitState(
        options=options,
        expected=expected,
        expected_file=expected_file,
        only=_parse_only(config.getoption("--conformance-only")),
        strict=config.getoption("--conformance-strict"),
    )
    config.stash[_STATE] = state
    config.pluginmanager.register(RunHooks(state), "conformance-run")


def _parse_only(values: list[str]) -> frozenset[str]:
    selected = {v.strip().upper() for value in values for v in value.split(",") if v.strip()}
    unknown = {v for v in selected if v not in AREAS and v not in BY_ID}
    if unknown:
        raise pytest.UsageError(f"--only: unknown area or id {sorted(unknown)}; areas: {', '.join(AREAS)}")
    return frozenset(selected)


class RunHooks:
    """The hooks of one run, bound to its state."""

    def __init__(self, state: KitState) -> None:
        self.state = state

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.state.close()

    # -- collection ----------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Every test grades exactly one known requirement; every requirement is graded by some test."""
        problems = []
        covered = set()
        for item in items:
            marks = list(item.iter_markers(MARKER))
            if len(marks) != 1 or len(marks[0].args) != 1 or marks[0].args[0] not in BY_ID:
                problems.append(f"{item.nodeid}: needs exactly one @requirement(ID) with a registered id")
                continue
            req = BY_ID[marks[0].args[0]]
            covered.add(req.id)
            item.user_properties.append(("requirement", req.id))
            item.user_properties.append(("level", req.level.value))
        missing = sorted(set(BY_ID) - covered)
        if missing:
            problems.append(f"requirements with no test: {', '.join(missing)}")
        if problems:
            raise pytest.UsageError("the conformance suite is inconsistent:\n  " + "\n  ".join(problems))
        only = self.state.only
        if only:
            keep = [i for i in items if _req_id(i) in only or BY_ID[_req_id(i)].area in only]
            drop = [i for i in items if i not in keep]
            if drop:
                config.hook.pytest_deselected(items=drop)
                items[:] = keep

    # -- running -------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        """Run `async def` tests on the run's one loop, each bounded overall (every wait inside is too)."""
        if not inspect.iscoroutinefunction(pyfuncitem.obj):
            return None
        kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        options = self.state.options
        self.state.run(pyfuncitem.obj(**kwargs), 8 * options.wait_s + options.keepalive_budget_s)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report = yield
        if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
            text = str(call.excinfo.value).strip() or call.excinfo.typename
            self.state.messages.setdefault(item.nodeid, text.splitlines()[0])
        req_id = _req_id(item)
        if report.failed and req_id in self.state.expected:
            report.outcome = "skipped"
            report.wasxfail = f"{req_id} is an expected failure: {self.state.expected[req_id]}"
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        req_id = dict(report.user_properties).get("requirement")
        if not isinstance(req_id, str):
            return
        previous = self.state.outcomes.get(report.nodeid)
        if previous is not None and previous.result in ("failed", "xfailed"):
            return  # a failure in an earlier phase stands
        message = self.state.messages.get(report.nodeid, "")
        if hasattr(report, "wasxfail"):
            result = "xfailed"
        elif report.failed:
            result, message = "failed", message or "failed"
        elif report.skipped:
            result, message = "skipped", _skip_reason(report)
        elif report.when == "call":
            result = "passed"
        else:
            return
        self.state.outcomes[report.nodeid] = TestOutcome(req_id, result, message)

    # -- the verdict ---------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        results = aggregate(self.state.outcomes.values(), self.state.expected)
        verdict = judge(results, strict=self.state.strict, expected_file=self.state.expected_file)
        self.state.problems = verdict.problems
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            session.exitstatus = pytest.ExitCode.OK if verdict.ok else pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        state = self.state
        results = aggregate(state.outcomes.values(), state.expected)
        if not results:
            return
        write = terminalreporter.write_line
        terminalreporter.section(f"conformance of {state.options.target}", sep="=")
        for line in format_table(results, max(terminalreporter._tw.fullwidth, 120)):
            write(line)
        write("")
        write(f"requirements: {counts(results)}")
        soft = [r.requirement.id for r in results if r.outcome is Outcome.FAIL and r.requirement.level != Level.MUST]
        if soft and not state.strict:
            write(f"SHOULD/MAY failures (not fatal without --strict): {', '.join(soft)}", yellow=True)
        for problem in state.problems:
            write(problem, red=True, bold=True)
        if not state.problems:
            write("CONFORMANT: no MUST requirement failed", green=True, bold=True)


def _req_id(item: pytest.Item) -> str:
    mark = item.get_closest_marker(MARKER)
    assert mark is not None
    return str(mark.args[0])


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return "skipped"
