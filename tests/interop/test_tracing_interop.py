"""W3C trace context on oslo.messaging's wire (``rpc_wire = "oslo"``).

aiosvc sends ``traceparent`` as an AMQP message header, outside oslo's JSON envelope: an
unmodified oslo.messaging server must still take such requests (it ignores headers it does
not know), and between two aiosvc services on oslo's wire the trace goes through.
"""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aiosvc.testing import wait_until
from tests.interop.conftest import AiosvcClient, Oslo, ServeAiosvc
from tests.test_tracing import attrs, child_of, finished, one, spans

pytestmark = pytest.mark.interop

__all__ = ["spans"]  # the fixture, shared with tests/test_tracing.py


async def test_an_oslo_server_takes_requests_that_carry_trace_context(
    oslo: Oslo, aiosvc_client: AiosvcClient, spans: InMemorySpanExporter
) -> None:
    endpoint = await oslo.serve("oslo-a")
    client = await aiosvc_client()
    with trace.get_tracer("test").start_as_current_span("the caller"):
        assert await client.call(None, "echo", value="traced") == "traced"
        await client.cast(None, "record", item="traced")
    await wait_until(lambda: endpoint.records == ["traced"], timeout=30)
    found = await finished(spans, 3)
    call = one(found, "compute/echo", SpanKind.CLIENT)
    cast = one(found, "compute/record", SpanKind.PRODUCER)
    caller = one(found, "the caller", SpanKind.INTERNAL)
    assert child_of(call, caller)
    assert child_of(cast, caller)
    assert call.status.status_code == cast.status.status_code == StatusCode.UNSET
    assert attrs(call)["rpc.system"] == "oslo"


async def test_the_trace_crosses_oslo_wire_between_aiosvc_services(
    serve_aiosvc: ServeAiosvc, aiosvc_client: AiosvcClient, spans: InMemorySpanExporter
) -> None:
    await serve_aiosvc("aiosvc-a")
    client = await aiosvc_client()
    assert await client.call(None, "echo", value=1) == 1
    await client.cast(None, "record", item=1)
    found = await finished(spans, 4)
    call = one(found, "compute/echo", SpanKind.CLIENT)
    assert child_of(one(found, "compute/echo", SpanKind.SERVER), call)
    cast = one(found, "compute/record", SpanKind.PRODUCER)
    assert child_of(one(found, "compute/record", SpanKind.CONSUMER), cast)
