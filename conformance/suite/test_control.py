"""CTRL: the SessionControlService API (control.proto), graded only when the target serves it.

Adding a control requirement: register `CTRL-00N` in conformance/requirements.py, then write
a test here that takes the `control` fixture (the service's descriptor; the test is skipped,
and reported as such, when the target does not serve SessionControlService).
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor

from conformance.plugin import requirement
from conformance.probes import Reflection
from conformance.target import Target
from shared import wire

CONTROL_SERVICE = wire.CONTROL_SERVICE_NAME  # southwest.ai.agent.v1.SessionControlService


def _require_control(reflection: Reflection) -> None:
    if not reflection.ok:
        pytest.skip(
            f"cannot tell whether the target serves SessionControlService: reflection failed ({reflection.error})"
        )
    if CONTROL_SERVICE not in reflection.services:
        pytest.skip("target does not serve SessionControlService")


@pytest.fixture(scope="session")
def control(target: Target, reflection: Reflection) -> descriptor.ServiceDescriptor:
    """SessionControlService's descriptor, read through reflection; skips when it is not served."""
    _require_control(reflection)
    service = target.state.run(reflection.find_service(CONTROL_SERVICE, target.options.wait_s))
    if service is None:
        pytest.skip("reflection lists SessionControlService but cannot resolve it (graded by CTRL-001)")
    return service


@requirement("CTRL-001")
async def test_session_control_is_served_and_described(target: Target, reflection: Reflection) -> None:
    _require_control(reflection)
    service = await reflection.find_service(CONTROL_SERVICE, target.options.wait_s)
    assert service is not None, f"reflection lists {CONTROL_SERVICE} but cannot resolve its descriptor"
    assert list(service.methods_by_name), f"{CONTROL_SERVICE} has no methods"
