"""Fixtures of the suite: the target and what its server reflection says."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from conformance import __version__
from conformance.plugin import state_of
from conformance.probes import Reflection, read_reflection
from conformance.target import Target


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    return Target(state_of(request.config))


@pytest.fixture(scope="session")
def reflection(target: Target) -> Iterator[Reflection]:
    """What the target's server reflection says, read once per run."""
    result = target.state.run(read_reflection(target.options))
    try:
        yield result
    finally:
        result.close()


@pytest.fixture(scope="session", autouse=True)
def _junit_run_properties(target: Target, record_testsuite_property: Callable[[str, object], None]) -> None:
    """The graded target and the kit's version, as JUnit testsuite properties."""
    record_testsuite_property("conformance_target", target.options.target)
    record_testsuite_property("conformance_kit_version", __version__)
