"""The target's standard services: health and server reflection, read over the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conformance.client import KitOptions, open_channel

__all__ = ["Reflection", "health_status", "read_reflection"]


async def health_status(options: KitOptions, service: str) -> str:
    """`grpc.health.v1.Health/Check` for `service`: the status name (SERVING, ...) or `error: ...`."""
    channel = open_channel(options)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=options.wait_s, metadata=options.metadata()
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    except grpc.aio.AioRpcError as exc:
        return f"error: {exc.code().name} {exc.details()!r}"
    finally:
        await channel.close()


@dataclass(frozen=True, slots=True)
class Reflection:
    """What server reflection says: the services listed, a pool resolving their descriptors, or the error."""

    services: tuple[str, ...] = ()
    error: str = ""
    _pool: descriptor_pool.DescriptorPool | None = None
    _channel: grpc.Channel | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    async def find_service(self, name: str, wait_s: float) -> descriptor.ServiceDescriptor | None:
        """The service's descriptor, fetched through reflection (None when it cannot be resolved)."""
        pool = self._pool
        if pool is None:
            return None
        try:
            found: descriptor.ServiceDescriptor = await asyncio.wait_for(
                asyncio.to_thread(pool.FindServiceByName, name), wait_s
            )
        except Exception:  # any failure to fetch or build the descriptor means "cannot resolve"
            return None
        return found

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


async def read_reflection(options: KitOptions) -> Reflection:
    """List the services and prepare a descriptor pool (the reflection client is synchronous:
    it runs in a worker thread, bounded by the kit's wait)."""
    channel = _sync_channel(options)
    database = ProtoReflectionDescriptorDatabase(channel)
    try:
        services = await asyncio.wait_for(asyncio.to_thread(lambda: tuple(database.get_services())), options.wait_s)
    except TimeoutError:
        channel.close()
        return Reflection(error=f"no reflection answer within {options.wait_s} s")
    except grpc.RpcError as exc:
        channel.close()
        return Reflection(error=f"{_rpc_code(exc)} {_rpc_details(exc)!r}")
    # The channel stays open for the pool's lazy look-ups until `close()`.
    return Reflection(services=services, _pool=descriptor_pool.DescriptorPool(database), _channel=channel)


def _sync_channel(options: KitOptions) -> grpc.Channel:
    credentials = options.credentials()
    channel = (
        grpc.insecure_channel(options.target)
        if credentials is None
        else grpc.secure_channel(options.target, credentials)
    )
    metadata = options.metadata()
    if metadata:
        return grpc.intercept_channel(channel, _AddMetadata(metadata))
    return channel


def _rpc_code(exc: grpc.RpcError) -> str:
    code = getattr(exc, "code", None)
    return code().name if callable(code) else "UNKNOWN"


def _rpc_details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    return str(details()) if callable(details) else str(exc)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _AddMetadata(grpc.StreamStreamClientInterceptor):
    """Adds the kit's metadata (the bearer token) to the reflection client's calls."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_stream_stream(
        self, continuation: Callable[[Any, Iterator[Any]], Any], details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        new_details = _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(new_details, request_iterator)
