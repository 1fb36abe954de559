"""Tracing: one trace across services, on both transports, and trace context in headers.

OpenTelemetry's global tracer provider can be set once per process. This module sets
:data:`SWITCH` once, a provider that hands every span to the provider of the test running
(the ``spans`` fixture: the SDK's ``TracerProvider`` with an ``InMemorySpanExporter`` of
its own) and to the API's no-op provider between tests, so a test sees its own spans only
and the rest of the suite records none. aiosvc looks its tracer up through the global
provider when a span starts, so the order in which things are set does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import aiosvc
from aiosvc import Context, Manager, RPCClient, Service, periodic_task
from aiosvc.api import APIService
from aiosvc.settings import Settings
from aiosvc.testing import isolated_settings, run_periodic_tasks, wait_until
from aiosvc.transport.base import IncomingMessage, Transport


class _SwitchTracer(trace.Tracer):
    def __init__(self, switch: SwitchProvider, name: str, version: str | None) -> None:
        self._switch, self._name, self._version = switch, name, version

    def _target(self) -> trace.Tracer:
        return self._switch.target.get_tracer(self._name, self._version)

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._target().start_span(*args, **kwargs)

    @contextlib.contextmanager  # type: ignore[override]
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:
        with self._target().start_as_current_span(*args, **kwargs) as span:
            yield span


class SwitchProvider(trace.TracerProvider):
    """The process's global provider: passes spans on to ``target``."""

    def __init__(self) -> None:
        self.target: trace.TracerProvider = trace.NoOpTracerProvider()

    def get_tracer(self, name: str, version: str | None = None, *args: Any, **kw: Any) -> Any:
        return _SwitchTracer(self, name, version)


SWITCH = SwitchProvider()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans this test records (an SDK provider of its own, through :data:`SWITCH`)."""
    if trace.get_tracer_provider() is not SWITCH:
        trace.set_tracer_provider(SWITCH)
        assert trace.get_tracer_provider() is SWITCH, "another tracer provider is set"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    SWITCH.target = provider
    try:
        yield exporter
    finally:
        SWITCH.target = trace.NoOpTracerProvider()
        provider.shutdown()


class Back(Manager):
    """The worker at the end of the chain."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorded: list[Any] = []

    async def double(self, ctx: Context, value: int) -> int:
        return value * 2

    async def echo(self, ctx: Context, value: Any) -> Any:  # tests.webapp's /echo calls it
        return value

    async def record(self, ctx: Context, value: Any) -> None:
        self.recorded.append(value)

    async def fail(self, ctx: Context) -> None:
        raise RuntimeError("disk full")


class Front(Manager):
    """The service in the middle (a scheduler): its handler calls the back service."""

    back_topic = ""

    async def forward(self, ctx: Context, value: int) -> int:
        result: int = await self.rpc_client(self.back_topic).call(None, "double", value=value)
        return result

    async def forward_cast(self, ctx: Context, value: Any) -> None:
        await self.rpc_client(self.back_topic).cast(None, "record", value=value)

    @periodic_task(spacing=3600)
    async def _poll(self, ctx: Context) -> None:
        await self.rpc_client(self.back_topic).call(None, "double", value=1)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=[pytest.mark.amqp, pytest.mark.slow])])
def settings(request: pytest.FixtureRequest) -> Settings:
    if request.param == "memory":
        return isolated_settings()
    return isolated_settings(transport_url=request.getfixturevalue("fresh_amqp_url"))


@pytest.fixture
async def chain(settings: Settings) -> AsyncIterator[Chain]:
    suffix = uuid.uuid4().hex[:8]
    back_topic, front_topic = f"back-{suffix}", f"front-{suffix}"
    back = Service.create(Back, topic=back_topic, host="host-b", settings=settings)
    front = Service.create(Front, topic=front_topic, host="host-f", settings=settings)
    assert isinstance(front.manager, Front)
    front.manager.back_topic = back_topic
    async with back, front, aiosvc.connect(settings) as transport:
        yield Chain(
            back, front, RPCClient(transport, front_topic), RPCClient(transport, back_topic)
        )


class Chain:
    """Two running services, A (front) calling B (back), and clients for each."""

    def __init__(self, back: Service, front: Service, to_front: RPCClient, to_back: RPCClient):
        self.back, self.front, self.to_front, self.to_back = back, front, to_front, to_back

    @property
    def recorded(self) -> list[Any]:
        assert isinstance(self.back.manager, Back)
        return self.back.manager.recorded


async def finished(spans: InMemorySpanExporter, count: int) -> Sequence[ReadableSpan]:
    """The test's spans once ``count`` have ended (a server's span ends after its reply)."""
    await wait_until(lambda: len(spans.get_finished_spans()) >= count, timeout=30)
    return spans.get_finished_spans()


def one(found: Sequence[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    matching = [s for s in found if s.name == name and s.kind == kind]
    assert len(matching) == 1, [(s.name, s.kind) for s in found]
    return matching[0]


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.context is not None
    assert parent.context is not None
    return (
        span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and span.context.trace_id == parent.context.trace_id
    )


async def test_one_trace_from_a_client_through_two_services(
    chain: Chain, spans: InMemorySpanExporter, settings: Settings
) -> None:
    ctx = Context(request_id="req-from-the-api")
    assert await chain.to_front.call(ctx, "forward", value=21) == 42
    found = await finished(spans, 4)
    front, back = chain.to_front.topic, chain.to_back.topic
    call_a = one(found, f"{front}/forward", SpanKind.CLIENT)
    handle_a = one(found, f"{front}/forward", SpanKind.SERVER)
    call_b = one(found, f"{back}/double", SpanKind.CLIENT)
    handle_b = one(found, f"{back}/double", SpanKind.SERVER)
    assert call_a.parent is None  # nothing was current in the test: a new trace
    assert child_of(handle_a, call_a)
    assert child_of(call_b, handle_a)  # the call made inside A's handler
    assert child_of(handle_b, call_b)
    system = "memory" if settings.transport_url.startswith("memory") else "rabbitmq"
    for span, topic, method in [
        (call_a, front, "forward"),
        (handle_a, front, "forward"),
        (call_b, back, "double"),
        (handle_b, back, "double"),
    ]:
        assert attrs(span)["rpc.system"] == "aiosvc"
        assert attrs(span)["rpc.service"] == topic
        assert attrs(span)["rpc.method"] == method
        assert attrs(span)["messaging.system"] == system
        assert span.status.status_code == StatusCode.UNSET
    # The request id: the caller's on A's spans, the child request's on B's, in one chain.
    assert attrs(call_a)["aiosvc.request_id"] == "req-from-the-api"
    assert attrs(handle_a)["aiosvc.request_id"] == "req-from-the-api"
    child_id = attrs(call_b)["aiosvc.request_id"]
    assert child_id != "req-from-the-api"
    assert attrs(handle_b)["aiosvc.request_id"] == child_id
    assert attrs(handle_b)["aiosvc.global_request_id"] == "req-from-the-api"
    # One message, one id, on both of its spans.
    message_id = attrs(call_b)["messaging.message.id"]
    assert attrs(handle_b)["messaging.message.id"] == message_id


async def test_a_failing_handler_marks_its_span_and_the_callers(
    chain: Chain, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(aiosvc.RemoteError, match="disk full"):
        await chain.to_back.call(None, "fail")
    found = await finished(spans, 2)
    topic = chain.to_back.topic
    handle = one(found, f"{topic}/fail", SpanKind.SERVER)
    call = one(found, f"{topic}/fail", SpanKind.CLIENT)
    assert child_of(handle, call)
    assert handle.status.status_code == StatusCode.ERROR
    assert "disk full" in (handle.status.description or "")
    events = [e for e in handle.events if e.name == "exception"]
    assert len(events) == 1
    assert (events[0].attributes or {})["exception.type"] == "RuntimeError"
    assert call.status.status_code == StatusCode.ERROR


async def test_casts_and_batch_casts_carry_the_trace(
    chain: Chain, spans: InMemorySpanExporter
) -> None:
    await chain.to_front.cast(None, "forward_cast", value="via-front")
    async with chain.to_back.batch() as batch:
        for i in range(3):
            await batch.cast(None, "record", value=i)
    await wait_until(lambda: len(chain.recorded) == 4, timeout=30)
    found = await finished(spans, 10)  # 5 sent and 5 handled (1 in front, 4 in back)
    front, back = chain.to_front.topic, chain.to_back.topic
    produced = [s for s in found if s.name == f"{back}/record" and s.kind == SpanKind.PRODUCER]
    consumed = [s for s in found if s.name == f"{back}/record" and s.kind == SpanKind.CONSUMER]
    assert len(produced) == len(consumed) == 4
    for span in consumed:  # each handling is the child of its own message's send
        parents = [p for p in produced if child_of(span, p)]
        assert len(parents) == 1
        assert attrs(parents[0])["messaging.message.id"] == attrs(span)["messaging.message.id"]
    # The cast that went through the front service is one trace of three spans.
    handle_front = one(found, f"{front}/forward_cast", SpanKind.CONSUMER)
    assert child_of(handle_front, one(found, f"{front}/forward_cast", SpanKind.PRODUCER))
    assert [p for p in produced if child_of(p, handle_front)]
    # The batch's three are traces of their own: nothing was current when it sent them.
    assert sum(1 for p in produced if p.parent is None) == 3


async def test_a_periodic_run_is_a_trace_of_its_own_and_parents_its_calls(
    chain: Chain, spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("test").start_as_current_span("the test"):
        await run_periodic_tasks(chain.front, "_poll")  # never a child of what called it
    found = await finished(spans, 4)
    run = one(found, "periodic Front._poll", SpanKind.INTERNAL)
    assert run.parent is None
    assert attrs(run)["aiosvc.periodic_task"] == "Front._poll"
    call = one(found, f"{chain.to_back.topic}/double", SpanKind.CLIENT)
    assert child_of(call, run)


async def test_a_failing_periodic_run_is_marked(spans: InMemorySpanExporter) -> None:
    class Flaky(Manager):
        topic = "flaky"

        @periodic_task(spacing=3600)
        async def _broken(self, ctx: Context) -> None:
            raise ValueError("no driver")

    service = Service.create(Flaky, settings=isolated_settings(periodic_enable=False))
    async with service:
        await run_periodic_tasks(service, raise_on_error=False)
    run = one(await finished(spans, 1), "periodic Flaky._broken", SpanKind.INTERNAL)
    assert run.status.status_code == StatusCode.ERROR


async def test_tracing_off_sends_no_headers_and_records_nothing(
    spans: InMemorySpanExporter,
) -> None:
    settings = isolated_settings(tracing=False)
    async with aiosvc.connect(settings) as transport, collecting(transport) as inbox:
        client = RPCClient(transport, inbox.topic)
        with trace.get_tracer("test").start_as_current_span("the test"):
            assert await client.call(None, "ping") == "pong"
            await client.cast(None, "ping")
        await wait_until(lambda: len(inbox.messages) == 2)
    assert [dict(m.headers) for m in inbox.messages] == [{}, {}]
    assert [s.name for s in spans.get_finished_spans()] == ["the test"]


async def test_an_api_request_and_the_calls_it_makes_are_one_trace(
    spans: InMemorySpanExporter,
) -> None:
    settings = isolated_settings(api_listen="127.0.0.1", api_port=0)
    topic = f"back-{uuid.uuid4().hex[:8]}"
    back = Service.create(Back, topic=topic, settings=settings)
    api = APIService.create(app="tests.webapp:app", settings=settings)
    traceparent = f"00-{'ab' * 16}-{'cd' * 8}-01"  # the caller's span, e.g. a gateway's

    def get() -> Any:
        request = urllib.request.Request(
            f"{api.url}/echo?topic={topic}&value=v1", headers={"traceparent": traceparent}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    async with back, api:
        assert (await anyio.to_thread.run_sync(get))["echo"] == "v1"
    found = await finished(spans, 3)
    http = one(found, "GET", SpanKind.SERVER)
    assert http.parent is not None
    assert (http.parent.trace_id, http.parent.span_id) == (int("ab" * 16, 16), int("cd" * 8, 16))
    assert attrs(http)["http.response.status_code"] == 200
    assert attrs(http)["url.path"] == "/echo"
    call = one(found, f"{topic}/echo", SpanKind.CLIENT)
    assert child_of(call, http)
    assert child_of(one(found, f"{topic}/echo", SpanKind.SERVER), call)


# -- the transports' headers (a contract both backends keep)


class Inbox:
    """The messages a consumer of ``topic`` was given; calls are answered ``"pong"``."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.messages: list[IncomingMessage] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def deliver(self, message: IncomingMessage) -> None:
        self.messages.append(message)
        task = asyncio.get_running_loop().create_task(self._settle(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _settle(self, message: IncomingMessage) -> None:
        if message.reply_expected:
            await message.reply(b'{"result": "pong"}')
        await message.ack()


@contextlib.asynccontextmanager
async def collecting(transport: Transport) -> AsyncIterator[Inbox]:
    inbox = Inbox(f"inbox-{uuid.uuid4().hex[:8]}")
    consumer = await transport.consume(inbox.topic, "host", inbox.deliver, prefetch=10)
    try:
        yield inbox
    finally:
        await consumer.close()


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.amqp)])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("amqp_url")
    async with aiosvc.connect(isolated_settings(transport_url=url)) as connected:
        yield connected


async def test_headers_travel_with_calls_and_casts(transport: Transport) -> None:
    headers = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "tracestate": "k=v"}
    async with collecting(transport) as inbox:
        reply = await transport.call(
            inbox.topic, b"{}", message_id=uuid.uuid4().hex, timeout=10, headers=headers
        )
        assert json.loads(reply) == {"result": "pong"}
        await transport.cast(inbox.topic, b"{}", message_id=uuid.uuid4().hex, headers=headers)
        await transport.cast(inbox.topic, b"{}", message_id=uuid.uuid4().hex, server="host")
        await transport.cast(inbox.topic, b"{}", message_id=uuid.uuid4().hex, fanout=True)
        await wait_until(lambda: len(inbox.messages) == 4, timeout=30)
    seen = [dict(m.headers) for m in inbox.messages]
    assert seen[:2] == [headers, headers]
    assert seen[2:] == [{}, {}]  # none given: an empty mapping


# -- in a process of its own: without opentelemetry, or with the API and no SDK


def python(code: str) -> Any:
    """Run ``code`` in a fresh interpreter; what it printed, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_without_opentelemetry_a_call_works_untraced() -> None:
    code = """
import asyncio, json, sys
sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
import aiosvc
from aiosvc import tracing
from aiosvc.testing import isolated_settings

class Echo(aiosvc.Manager):
    topic = "echo"
    async def echo(self, ctx, value: int) -> int:
        return value

async def main():
    settings = isolated_settings()
    async with aiosvc.Service.create(Echo, settings=settings), aiosvc.connect(settings) as t:
        result = await aiosvc.RPCClient(t, "echo").call(None, "echo", value=7)
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry.") and sys.modules[m])
    print(json.dumps([result, tracing.available(), settings.tracing, loaded]))

asyncio.run(main())
"""
    assert python(code) == [7, False, True, []]


def test_without_an_sdk_a_service_carries_the_trace_it_was_given() -> None:
    # opentelemetry-api alone: no span is recorded, but a service between two that trace
    # passes the caller's trace context on to the services it calls.
    code = """
import asyncio, json
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
import aiosvc
from aiosvc.testing import isolated_settings

class Back(aiosvc.Manager):
    topic = "back"
    async def trace_id(self, ctx) -> str:
        return format(trace.get_current_span().get_span_context().trace_id, "032x")

class Front(aiosvc.Manager):
    topic = "front"
    async def ask(self, ctx) -> str:
        return await self.rpc_client("back").call(None, "trace_id")

async def main():
    settings = isolated_settings()
    async with (
        aiosvc.Service.create(Back, settings=settings),
        aiosvc.Service.create(Front, settings=settings),
        aiosvc.connect(settings) as transport,
    ):
        front = aiosvc.RPCClient(transport, "front")
        untraced = await front.call(None, "ask")
        given = SpanContext(int("ab" * 16, 16), int("cd" * 8, 16), True, TraceFlags(1))
        with trace.use_span(NonRecordingSpan(given)):
            traced = await front.call(None, "ask")
    print(json.dumps([untraced, traced, type(trace.get_tracer_provider()).__name__]))

asyncio.run(main())
"""
    assert python(code) == ["0" * 32, "ab" * 16, "ProxyTracerProvider"]


def test_importing_aiosvc_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, json, aiosvc, aiosvc.cli, aiosvc.tracing;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')))"
    )
    assert python(code) == []
