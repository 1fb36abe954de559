"""RPC through running services, over both transports: one contract, two backends."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pydantic
import pytest

import aiosvc
from aiosvc import Context, Manager, RPCClient, Service, periodic_task
from aiosvc.settings import Settings
from aiosvc.testing import isolated_settings, wait_until
from aiosvc.transport.memory import MemoryTransport


class AppError(Exception):
    """An application error a caller may be allowed to see as itself."""


class Volume(pydantic.BaseModel):
    id: str
    size_gb: int
    created: datetime


class Worker(Manager):
    topic = "worker"
    RPC_API_VERSION = "1.3"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.casts: list[Any] = []
        self.cast_seen = anyio.Event()
        self.ran: list[str] = []
        self.concurrent = 0
        self.peak = 0
        self.gate = anyio.Event()

    async def echo(self, ctx: Context, value: Any) -> Any:
        return value

    async def whoami(self, ctx: Context) -> str:
        return self.host

    async def record(self, ctx: Context, item: Any) -> None:
        self.casts.append(item)
        self.cast_seen.set()

    async def create(self, ctx: Context, volume_id: str, size_gb: int) -> Volume:
        self.ran.append(volume_id)
        return Volume(id=volume_id, size_gb=size_gb, created=datetime(2026, 1, 2, tzinfo=UTC))

    async def fail(self, ctx: Context, kind: str) -> None:
        if kind == "app":
            raise AppError("quota exceeded")
        raise KeyError(kind)

    def blocking(self, ctx: Context, n: int) -> int:
        return n * 2

    async def hold(self, ctx: Context) -> int:
        self.concurrent += 1
        self.peak = max(self.peak, self.concurrent)
        try:
            await self.gate.wait()
        finally:
            self.concurrent -= 1
        return self.peak

    async def sleep(self, ctx: Context, seconds: float) -> str:
        await anyio.sleep(seconds)
        return "slept"

    @periodic_task(spacing=-1)
    async def _never(self, ctx: Context) -> None:
        pass


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.amqp)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, request: pytest.FixtureRequest) -> Settings:
    if backend == "memory":
        return isolated_settings(rpc_response_timeout=5)
    amqp_url = request.getfixturevalue("amqp_url")
    return isolated_settings(transport_url=amqp_url, rpc_response_timeout=5)


@pytest.fixture
def topic() -> str:
    return f"worker-{uuid.uuid4().hex[:10]}"


Start = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start(settings: Settings, topic: str) -> AsyncIterator[Start]:
    made: list[Service] = []

    async def factory(host: str = "host-a", **overrides: Any) -> Service:
        service = Service.create(
            Worker,
            topic=topic,
            host=host,
            settings=settings.model_copy(update=overrides) if overrides else settings,
        )
        await service.start()
        made.append(service)
        return service

    yield factory
    for service in reversed(made):
        await service.stop()


@pytest.fixture
async def client(settings: Settings, topic: str) -> AsyncIterator[RPCClient]:
    async with aiosvc.connect(settings) as transport:
        yield RPCClient(transport, topic, version="1.0")


def worker(service: Service) -> Worker:
    assert isinstance(service.manager, Worker)
    return service.manager


async def test_call_returns_json_values(start: Start, client: RPCClient) -> None:
    await start()
    value = {"a": [1, 2.5, None, True], "b": "ü"}
    assert await client.call(None, "echo", value=value) == value


async def test_call_returns_models_datetimes_and_bytes(start: Start, client: RPCClient) -> None:
    await start()
    volume = await client.call(None, "create", volume_id="v1", size_gb=2)
    assert volume == {"id": "v1", "size_gb": 2, "created": "2026-01-02T00:00:00Z"}
    assert await client.call(None, "echo", value=b"\x00\xff") == "AP8="


async def test_sync_method_runs(start: Start, client: RPCClient) -> None:
    await start()
    assert await client.call(None, "blocking", n=21) == 42


async def test_cast_is_handled(start: Start, client: RPCClient) -> None:
    service = await start()
    await client.cast(None, "record", item={"k": 1})
    with anyio.fail_after(5):
        await worker(service).cast_seen.wait()
    assert worker(service).casts == [{"k": 1}]


async def test_competing_consumers_share_the_topic_queue(start: Start, client: RPCClient) -> None:
    await start("host-a")
    await start("host-b")
    hosts = [await client.call(None, "whoami") for _ in range(30)]
    assert set(hosts) == {"host-a", "host-b"}


async def test_server_reaches_one_host(start: Start, client: RPCClient) -> None:
    await start("host-a")
    await start("host-b")
    b = client.prepare(server="host-b")
    assert {await b.call(None, "whoami") for _ in range(10)} == {"host-b"}


async def test_fanout_cast_reaches_every_service(start: Start, client: RPCClient) -> None:
    a, b = await start("host-a"), await start("host-b")
    await client.prepare(fanout=True).cast(None, "record", item="all")
    with anyio.fail_after(5):
        await worker(a).cast_seen.wait()
        await worker(b).cast_seen.wait()
    assert worker(a).casts == worker(b).casts == ["all"]


async def test_batch_casts_are_each_handled_once(start: Start, client: RPCClient) -> None:
    service = await start()
    async with client.batch(max_in_flight=64) as batch:
        ids = [await batch.cast(None, "record", item=i) for i in range(300)]
    assert (batch.sent, batch.confirmed, batch.failures) == (300, 300, [])
    assert len(set(ids)) == 300
    await wait_until(lambda: len(worker(service).casts) >= 300)
    assert sorted(worker(service).casts) == list(range(300))


async def test_batch_fanout_reaches_every_service(start: Start, client: RPCClient) -> None:
    a, b = await start("host-a"), await start("host-b")
    async with client.prepare(fanout=True).batch() as batch:
        for i in range(20):
            await batch.cast(None, "record", item=i)
    await wait_until(lambda: len(worker(a).casts) >= 20 and len(worker(b).casts) >= 20)
    assert sorted(worker(a).casts) == sorted(worker(b).casts) == list(range(20))


async def test_batch_names_each_cast_the_broker_did_not_take(
    start: Start, client: RPCClient
) -> None:
    await start("host-a")

    async def send() -> None:
        async with client.prepare(server="nohost").batch() as batch:
            for i in range(3):
                await batch.cast(None, "record", item=i)

    with pytest.raises(aiosvc.CastsFailed) as failed:
        await send()
    assert [f.position for f in failed.value.failures] == [0, 1, 2]
    assert all(isinstance(f.error, aiosvc.MessageUndeliverable) for f in failed.value.failures)
    assert str(failed.value).startswith("3 of 3 cast(s) not confirmed: #0 record (message ")
    assert "no queue is bound" in str(failed.value)


async def test_batch_refuses_an_argument_without_json_form_and_keeps_the_rest(
    start: Start, client: RPCClient
) -> None:
    service = await start()
    async with client.batch() as batch:
        await batch.cast(None, "record", item="before")
        with pytest.raises(TypeError):
            await batch.cast(None, "record", item=object())
        await batch.cast(None, "record", item="after")
    assert (batch.sent, batch.confirmed) == (2, 2)
    await wait_until(lambda: len(worker(service).casts) >= 2)
    assert sorted(worker(service).casts) == ["after", "before"]


async def test_batch_sends_only_inside_its_block(client: RPCClient) -> None:
    batch = client.batch()
    with pytest.raises(RuntimeError, match="inside its block"):
        await batch.cast(None, "record", item=1)
    with pytest.raises(ValueError, match="max_in_flight"):
        client.batch(max_in_flight=0)


class GatedTransport(MemoryTransport):
    """The in-process transport, whose broker confirms casts only when the gate opens."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.gate = anyio.Event()

    async def cast(self, topic: str, body: bytes, **kwargs: Any) -> None:
        await self.gate.wait()
        await super().cast(topic, body, **kwargs)


@pytest.mark.parametrize("backend", ["memory"])  # the gate holds the in-process broker's confirms
async def test_batch_waits_for_a_slot_when_max_in_flight_casts_are_unconfirmed(
    start: Start, settings: Settings, topic: str
) -> None:
    service = await start()
    async with GatedTransport(settings) as transport:
        batch = RPCClient(transport, topic).batch(max_in_flight=4)

        async def send() -> None:
            async with batch:
                for i in range(10):
                    await batch.cast(None, "record", item=i)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await wait_until(lambda: batch.sent == 4)
            await anyio.sleep(0.1)  # an observation window: a fifth would be sent in it
            assert (batch.sent, batch.in_flight) == (4, 4)
            transport.gate.set()
    assert (batch.sent, batch.confirmed) == (10, 10)
    await wait_until(lambda: len(worker(service).casts) >= 10)


async def test_call_with_fanout_is_refused(client: RPCClient) -> None:
    with pytest.raises(aiosvc.InvalidTarget):
        await client.prepare(fanout=True).call(None, "echo", value=1)


async def test_many_calls_from_one_client_run_concurrently(start: Start, client: RPCClient) -> None:
    service = await start()
    n = 20
    results: list[int] = []
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(lambda: _append(results, client.call(None, "hold")))
        await wait_until(lambda: worker(service).concurrent == n)
        worker(service).gate.set()
    assert worker(service).peak == n
    assert len(results) == n


async def _append(results: list[Any], value: Awaitable[Any]) -> None:
    results.append(await value)


async def test_rpc_max_concurrency_bounds_handlers(start: Start, client: RPCClient) -> None:
    service = await start(rpc_max_concurrency=3)
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(client.call, None, "hold")
        await wait_until(lambda: worker(service).concurrent == 3)
        # An observation window, not a race fix: five more calls are queued, and a
        # fourth handler would start within it if prefetch did not hold them back.
        await anyio.sleep(0.2)
        assert worker(service).concurrent == 3
        worker(service).gate.set()
    assert worker(service).peak == 3


async def test_version_negotiation(start: Start, client: RPCClient) -> None:
    await start()
    assert await client.prepare(version="1.3").call(None, "echo", value=1) == 1
    with pytest.raises(aiosvc.UnsupportedVersion, match=r"1\.4"):
        await client.prepare(version="1.4").call(None, "echo", value=1)
    with pytest.raises(aiosvc.UnsupportedVersion):
        await client.prepare(version="2.0").call(None, "echo", value=1)
    capped = client.prepare(version="1.3", version_cap="1.2")
    assert not capped.can_send_version("1.3")
    with pytest.raises(aiosvc.UnsupportedVersion, match="version cap"):
        await capped.call(None, "echo", value=1)


async def test_no_such_method(start: Start, client: RPCClient) -> None:
    await start()
    for method in ("nope", "_never", "init_host", "periodic_tasks", "__init__"):
        with pytest.raises(aiosvc.NoSuchMethod):
            await client.call(None, method)


async def test_invalid_arguments_name_the_field_and_do_not_run(
    start: Start, client: RPCClient
) -> None:
    service = await start()
    with pytest.raises(aiosvc.InvalidArguments, match="size_gb") as info:
        await client.call(None, "create", volume_id="v1", size_gb="oops")
    assert isinstance(info.value, TypeError)
    with pytest.raises(aiosvc.InvalidArguments, match="volume_id: missing"):
        await client.call(None, "create", size_gb=1)
    with pytest.raises(aiosvc.InvalidArguments, match="colour: unexpected"):
        await client.call(None, "create", volume_id="v1", size_gb=1, colour="red")
    assert worker(service).ran == []
    assert (await client.call(None, "create", volume_id="v2", size_gb=1))["id"] == "v2"


async def test_remote_errors(start: Start, client: RPCClient) -> None:
    await start()
    with pytest.raises(aiosvc.RemoteError) as info:
        await client.call(None, "fail", kind="app")
    assert info.value.exc_type == "tests.test_rpc.AppError"
    assert info.value.value == "quota exceeded"
    assert any("quota exceeded" in line for line in info.value.traceback)


async def test_allowed_remote_exceptions_are_reraised_as_themselves(
    settings: Settings, topic: str, start: Start
) -> None:
    await start()
    allowed = settings.model_copy(
        update={"allowed_remote_exceptions": ["tests.test_rpc", "builtins.KeyError"]}
    )
    async with aiosvc.connect(allowed) as transport:
        client = RPCClient(transport, topic)
        with pytest.raises(AppError, match="quota exceeded") as info:
            await client.call(None, "fail", kind="app")
        assert info.value.remote_traceback  # type: ignore[attr-defined]
        with pytest.raises(KeyError):
            await client.call(None, "fail", kind="key")


async def test_undeliverable_when_nobody_ever_consumed(client: RPCClient) -> None:
    with pytest.raises(aiosvc.MessageUndeliverable):
        await client.call(None, "echo", value=1)
    with pytest.raises(aiosvc.MessageUndeliverable):
        await client.cast(None, "record", item=1)
    with pytest.raises(aiosvc.MessageUndeliverable):
        await client.prepare(server="nohost").cast(None, "record", item=1)


async def test_timeout(start: Start, client: RPCClient, settings: Settings) -> None:
    await start()
    started = anyio.current_time()  # the event loop's clock, which the timeout runs on
    with pytest.raises(aiosvc.MessagingTimeout) as info:
        await client.prepare(timeout=0.3).call(None, "sleep", seconds=2)
    assert isinstance(info.value, TimeoutError)
    # The call's own timeout, not the default one (5 s); an upper bound a loaded machine
    # keeps: a timeout fires late there, never early.
    assert 0.25 < anyio.current_time() - started < settings.rpc_response_timeout


@contextlib.asynccontextmanager
async def amqp_dead_letters(settings: Settings) -> AsyncIterator[set[str]]:
    """The IDs of the messages the AMQP broker of ``settings`` dead-letters meanwhile.

    A private queue bound to ``<control_exchange>.dlx`` (a headers exchange) gets a copy of
    each, on the session's node and on an external broker (AIOSVC_TEST_AMQP_URL) alike,
    and only of what happens while it is bound.
    """
    import aio_pika  # only tests look at the broker this way

    seen: set[str] = set()

    async def note(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.add(message.message_id or "")

    from aiosvc.transport.amqp.declare import dead_letter_bindings

    async with await aio_pika.connect(settings.transport_url) as connection:
        channel = await connection.channel()
        # Declared and bound as the transport does it (it may not have been yet).
        dlx = await channel.declare_exchange(
            f"{settings.control_exchange}.dlx", aio_pika.ExchangeType.HEADERS, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        for arguments in dead_letter_bindings():
            await queue.bind(dlx, arguments=arguments)
        await queue.consume(note, no_ack=True)
        yield seen


async def test_malformed_message_is_dead_lettered_and_consumer_keeps_running(
    start: Start, client: RPCClient, topic: str, backend: str, settings: Settings
) -> None:
    service = await start()
    bad = {
        f"bad-{uuid.uuid4().hex[:6]}": body
        for body in (b"not json", b"[1, 2]", b'{"aiosvc": 1, "method": 5}')
    }
    async with contextlib.AsyncExitStack() as stack:
        if backend == "memory":
            broker = client.transport.broker  # type: ignore[attr-defined]

            def dead() -> set[str]:
                return {letter.message_id for letter in broker.dead_letters}
        else:
            seen = await stack.enter_async_context(amqp_dead_letters(settings))

            def dead() -> set[str]:
                return seen

        for message_id, body in bad.items():
            await client.transport.cast(topic, body, message_id=message_id)
        assert await client.call(None, "echo", value="still here") == "still here"
        assert service.rpc_server is not None
        await wait_until(lambda: dead() >= bad.keys(), timeout=30)


async def test_graceful_stop_finishes_in_flight_calls(start: Start, client: RPCClient) -> None:
    service = await start()
    async with anyio.create_task_group() as tg:
        result: list[str] = []

        async def call() -> None:
            result.append(await client.call(None, "sleep", seconds=0.5))

        tg.start_soon(call)
        await wait_until(
            lambda: service.rpc_server is not None and service.rpc_server.in_flight > 0
        )
        await service.stop()
    assert result == ["slept"]
