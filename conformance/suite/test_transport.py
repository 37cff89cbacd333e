"""KA, HEALTH, REFL: the keepalive policy, the standard health service, server reflection."""

from __future__ import annotations

import asyncio
import time

import grpc

from conformance.client import session_id
from conformance.plugin import requirement
from conformance.probes import Reflection, health_status
from conformance.target import Target
from shared import wire

HEALTH_SERVICE = "grpc.health.v1.Health"

# As often as a grpc client will ping (grpc-core sends at most one PING a second whatever
# keepalive_time_ms says), with no data flowing and no limit on pings without data.
ABUSIVE_PINGER = [
    ("grpc.keepalive_time_ms", 100),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@requirement("KA-001")
async def test_a_client_pinging_too_often_is_refused(target: Target) -> None:
    budget_s = target.options.keepalive_budget_s
    async with target.channel(ABUSIVE_PINGER) as channel:
        session = target.session(channel)
        await session.hello(session_id("ka-001"))
        # Silent from here on both ways: every PING is judged by the server's policy.
        started = time.monotonic()
        try:
            code = await asyncio.wait_for(session.call.code(), budget_s)
        except TimeoutError:
            raise AssertionError(
                f"a client pinging about once a second on a silent session was not refused within {budget_s:g} s "
                "(expected GOAWAY ENHANCE_YOUR_CALM too_many_pings; raise --keepalive-budget-s for a lenient policy)"
            ) from None
        details = await session.call.details() or ""
        elapsed = time.monotonic() - started
        assert code is grpc.StatusCode.UNAVAILABLE and "too many pings" in details.lower(), (
            f"expected the call to end UNAVAILABLE 'Too many pings' (GOAWAY too_many_pings); after {elapsed:.1f} s "
            f"it ended {code.name} {details!r}"
        )


@requirement("HEALTH-001")
async def test_health_reports_serving(target: Target) -> None:
    statuses = {name: await health_status(target.options, name) for name in ("", wire.SERVICE_NAME)}
    wrong = {name or '""': status for name, status in statuses.items() if status != "SERVING"}
    assert not wrong, f"grpc.health.v1.Health/Check should answer SERVING; got {wrong}"


@requirement("REFL-001")
async def test_reflection_describes_the_services(target: Target, reflection: Reflection) -> None:
    assert reflection.ok, f"server reflection is not served: {reflection.error}"
    missing = [s for s in (wire.SERVICE_NAME, HEALTH_SERVICE) if s not in reflection.services]
    assert not missing, f"reflection does not list {missing}; it lists {list(reflection.services)}"
    service = await reflection.find_service(wire.SERVICE_NAME, target.options.wait_s)
    assert service is not None, f"reflection lists {wire.SERVICE_NAME} but cannot resolve its descriptor"
    method = service.methods_by_name.get("ChatStream")
    assert method is not None, f"{wire.SERVICE_NAME} has no ChatStream: {list(service.methods_by_name)}"
    shape = (
        method.client_streaming,
        method.server_streaming,
        method.input_type.full_name,
        method.output_type.full_name,
    )
    wanted = (True, True, "southwest.ai.agent.v1.UpstreamPacket", "southwest.ai.agent.v1.DownstreamPacket")
    assert shape == wanted, f"ChatStream should be (client stream, server stream, in, out) = {wanted}, got {shape}"
