"""Contract tests of the message transports: the same suite runs over memory and AMQP.

Every test uses its own ``control_exchange`` and topic, so tests never see each
other's queues on a shared broker. Waits are on events with a timeout, never sleeps;
the one deliberate sleep lets a request's TTL pass, which is what that test is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import anyio
import pytest

from aiosvc.exceptions import MessageUndeliverable, MessagingTimeout, TransportError
from aiosvc.settings import Settings
from aiosvc.transport import Consumer, IncomingMessage, Transport, get_transport
from aiosvc.transport.memory import MemoryTransport, get_broker, reset_brokers

WAIT = 15.0  # upper bound of any wait; a healthy run takes milliseconds


def _uid() -> str:
    return uuid.uuid4().hex[:10]


class Inbox:
    """A message callback recording what it gets; optionally replies and acks."""

    def __init__(
        self,
        *,
        reply: bool = True,
        ack: bool = True,
        reject: bool = False,
        changed: asyncio.Event | None = None,
    ) -> None:
        self.messages: list[IncomingMessage] = []
        self._reply = reply
        self._ack = ack
        self._reject = reject
        # Shared between inboxes to wait on several at once.
        self._changed = changed or asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, message: IncomingMessage) -> None:
        self.messages.append(message)
        self._changed.set()
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: IncomingMessage) -> None:
        if self._reject:
            await message.reject()
            return
        if self._reply and message.reply_expected:
            await message.reply(b"re:" + message.body)
        if self._ack:
            await message.ack()

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]

    async def wait_for(self, count: int) -> list[IncomingMessage]:
        """Wait until ``count`` messages have arrived; return them all."""
        with anyio.fail_after(WAIT):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    async def wait_body(self, body: bytes) -> IncomingMessage:
        with anyio.fail_after(WAIT):
            while True:
                for message in self.messages:
                    if message.body == body:
                        return message
                self._changed.clear()
                await self._changed.wait()


class Probe(Protocol):
    """Looks into the broker from outside the transport under test."""

    async def ready(self, queue: str) -> int:
        """Messages waiting in ``queue`` (not delivered)."""
        ...

    async def dead_letters(self) -> list[bytes]:
        """Bodies in the dead-letter queue of the test's exchange."""
        ...

    async def delete_queue(self, queue: str) -> None: ...


class MemoryProbe:
    def __init__(self, settings: Settings) -> None:
        self._broker = get_broker("")
        self._settings = settings

    async def ready(self, queue: str) -> int:
        return self._broker.queue_size(queue)

    async def dead_letters(self) -> list[bytes]:
        return [letter.body for letter in self._broker.dead_letters]

    async def delete_queue(self, queue: str) -> None:
        raise NotImplementedError


class AMQPProbe:
    def __init__(self, settings: Settings, connection: Any) -> None:
        self._settings = settings
        self._connection = connection

    async def ready(self, queue: str) -> int:
        async with self._connection.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count)

    async def dead_letters(self) -> list[bytes]:
        bodies = []
        async with self._connection.channel() as channel:
            queue = await channel.declare_queue(
                f"{self._settings.control_exchange}.dlx", passive=True
            )
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                bodies.append(message.body)
        return bodies

    async def delete_queue(self, queue: str) -> None:
        async with self._connection.channel() as channel:
            await channel.queue_delete(queue)


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll a broker-side condition (there is no event for it) until it holds."""
    with anyio.fail_after(WAIT):
        while not await check():  # noqa: ASYNC110 - the broker's state has no event
            await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.amqp)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(kind: str, request: pytest.FixtureRequest) -> Settings:
    url = "memory://" if kind == "memory" else str(request.getfixturevalue("amqp_url"))
    return Settings(transport_url=url, control_exchange=f"test-{_uid()}", rpc_response_timeout=10)


@pytest.fixture
def topic() -> str:
    return f"topic-{_uid()}"


@pytest.fixture
async def probe(kind: str, settings: Settings) -> AsyncIterator[Probe]:
    if kind == "memory":
        yield MemoryProbe(settings)
        return
    import aio_pika  # only tests look at the broker this way

    connection = await aio_pika.connect(settings.transport_url)
    try:
        yield AMQPProbe(settings, connection)
    finally:
        await connection.close()


Factory = Callable[[], Awaitable[Transport]]


@pytest.fixture
async def transports(settings: Settings) -> AsyncIterator[Factory]:
    """Make connected transports; every one is closed after the test."""
    made: list[Transport] = []

    async def make() -> Transport:
        transport = get_transport(settings)
        await transport.connect()
        made.append(transport)
        return transport

    yield make
    for transport in reversed(made):
        await transport.close()
    reset_brokers()


async def serve(
    transports: Factory, topic: str, host: str, inbox: Inbox, *, prefetch: int = 10
) -> tuple[Transport, Consumer]:
    transport = await transports()
    return transport, await transport.consume(topic, host, inbox, prefetch=prefetch)


# --- delivery ------------------------------------------------------------------------------------


async def test_cast_to_topic_reaches_exactly_one_consumer(transports: Factory, topic: str) -> None:
    changed = asyncio.Event()
    one, two = Inbox(changed=changed), Inbox(changed=changed)
    await serve(transports, topic, "h1", one)
    await serve(transports, topic, "h2", two)
    client = await transports()
    sent = [f"m{i}".encode() for i in range(20)]
    for i, body in enumerate(sent):
        await client.cast(topic, body, message_id=f"id{i}")

    with anyio.fail_after(WAIT):
        while len(one.messages) + len(two.messages) < len(sent):
            changed.clear()
            await changed.wait()
    # A barrier: a call answered after every cast was delivered.
    assert await client.call(topic, b"barrier", message_id="b", timeout=WAIT) == b"re:barrier"
    received = [b for b in one.bodies + two.bodies if b != b"barrier"]
    assert sorted(received) == sorted(sent)
    # Round-robin between competing consumers.
    assert one.messages
    assert two.messages
    message = one.messages[0]
    assert not message.reply_expected
    assert not message.redelivered
    assert message.message_id.startswith("id")


async def test_cast_to_server_reaches_that_host_only(transports: Factory, topic: str) -> None:
    one, two = Inbox(), Inbox()
    await serve(transports, topic, "h1", one)
    await serve(transports, topic, "h2", two)
    client = await transports()
    await client.cast(topic, b"for-h2", message_id="x", server="h2")
    await two.wait_body(b"for-h2")
    # Routing happens at publish: the marker sent after it reaches h1 alone.
    await client.cast(topic, b"marker", message_id="y", server="h1")
    await one.wait_body(b"marker")
    assert one.bodies == [b"marker"]
    assert two.bodies == [b"for-h2"]


async def test_fanout_reaches_every_consumer(transports: Factory, topic: str) -> None:
    client = await transports()
    await client.cast(topic, b"nobody", message_id="n", fanout=True)  # no listener: fine
    one, two = Inbox(), Inbox()
    await serve(transports, topic, "h1", one)
    await serve(transports, topic, "h2", two)
    await client.cast(topic, b"all", message_id="a", fanout=True)
    assert [m.body for m in await one.wait_for(1)] == [b"all"]
    assert [m.body for m in await two.wait_for(1)] == [b"all"]


async def test_call_gets_its_reply(transports: Factory, topic: str) -> None:
    inbox = Inbox()
    await serve(transports, topic, "h1", inbox)
    client = await transports()
    assert await client.call(topic, b"ping", message_id="c1", timeout=WAIT) == b"re:ping"
    assert await client.call(topic, b"p2", message_id="c2", timeout=WAIT, server="h1") == b"re:p2"
    request = inbox.messages[0]
    assert request.reply_expected
    assert request.message_id == "c1"
    assert not request.redelivered


async def test_many_concurrent_calls_each_get_their_own_reply(
    transports: Factory, topic: str
) -> None:
    await serve(transports, topic, "h1", Inbox(), prefetch=50)
    await serve(transports, topic, "h2", Inbox(), prefetch=50)
    client = await transports()
    bodies = [f"call-{i}".encode() for i in range(200)]
    with anyio.fail_after(WAIT * 2):
        replies = await asyncio.gather(
            *(client.call(topic, b, message_id=uuid.uuid4().hex, timeout=WAIT) for b in bodies)
        )
    assert replies == [b"re:" + b for b in bodies]


async def test_undeclared_target_is_undeliverable(transports: Factory, topic: str) -> None:
    client = await transports()
    with pytest.raises(MessageUndeliverable):
        await client.cast(topic, b"x", message_id="1")
    started = time.monotonic()
    with pytest.raises(MessageUndeliverable):
        await client.call(topic, b"x", message_id="2", timeout=WAIT)
    assert time.monotonic() - started < WAIT / 2  # fails fast, not at the timeout
    await serve(transports, topic, "h1", Inbox())
    with pytest.raises(MessageUndeliverable):
        await client.cast(topic, b"x", message_id="3", server="other-host")
    with pytest.raises(MessageUndeliverable):
        await client.call(topic, b"x", message_id="4", timeout=WAIT, server="other-host")


async def test_call_times_out_when_nobody_answers(transports: Factory, topic: str) -> None:
    inbox = Inbox(reply=False)
    await serve(transports, topic, "h1", inbox)
    client = await transports()
    started = time.monotonic()
    with pytest.raises(MessagingTimeout, match="m-timeout"):
        await client.call(topic, b"x", message_id="m-timeout", timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert len(inbox.messages) == 1


async def test_late_reply_to_a_gone_caller_is_dropped(transports: Factory, topic: str) -> None:
    inbox = Inbox(reply=False, ack=False)
    await serve(transports, topic, "h1", inbox)
    client = await transports()
    with pytest.raises(MessagingTimeout):
        await client.call(topic, b"late", message_id="late", timeout=0.3)
    (request,) = await inbox.wait_for(1)
    await request.reply(b"too late")  # must not raise
    await request.ack()
    await request.ack()  # a second ack is harmless
    # The transport still works and the stale reply did not reach a later call.
    inbox._reply = True
    assert await client.call(topic, b"next", message_id="next", timeout=WAIT) == b"re:next"


async def test_expired_request_is_never_delivered(
    transports: Factory, topic: str, probe: Probe
) -> None:
    inbox = Inbox()
    _, consumer = await serve(transports, topic, "h1", inbox)
    await consumer.pause_shared()
    client = await transports()
    with pytest.raises(MessagingTimeout):
        await client.call(topic, b"expired", message_id="e", timeout=0.2)

    async def expired() -> bool:
        return await probe.ready(topic) == 0

    # Past the request's TTL in the broker too (the subject here), which starts when the
    # broker takes the request: later than the caller's timeout did, by a busy machine's lag.
    await wait_until(expired)
    await client.cast(topic, b"marker", message_id="m")
    await consumer.resume_shared()
    await inbox.wait_body(b"marker")
    assert inbox.bodies == [b"marker"]


async def test_prefetch_bounds_unacknowledged_messages(
    transports: Factory, topic: str, probe: Probe
) -> None:
    inbox = Inbox(ack=False)
    await serve(transports, topic, "h1", inbox, prefetch=2)
    client = await transports()
    for i in range(5):
        await client.cast(topic, f"m{i}".encode(), message_id=str(i))
    await inbox.wait_for(2)

    async def three_waiting() -> bool:
        return await probe.ready(topic) == 3

    await wait_until(three_waiting)
    assert len(inbox.messages) == 2
    await inbox.messages[0].ack()
    await inbox.wait_for(3)
    assert await probe.ready(topic) == 2


async def test_reject_dead_letters(transports: Factory, topic: str, probe: Probe) -> None:
    inbox = Inbox(reject=True)
    await serve(transports, topic, "h1", inbox)
    client = await transports()
    await client.cast(topic, b"poison", message_id="p")
    await inbox.wait_for(1)
    letters: list[bytes] = []

    async def dead_lettered() -> bool:
        letters.extend(await probe.dead_letters())
        return b"poison" in letters

    await wait_until(dead_lettered)
    assert letters == [b"poison"]
    assert await probe.ready(topic) == 0  # not requeued


async def test_close_redelivers_unacknowledged_messages(transports: Factory, topic: str) -> None:
    first = Inbox(ack=False)
    _, consumer = await serve(transports, topic, "h1", first)
    client = await transports()
    await client.cast(topic, b"work", message_id="w")
    (taken,) = await first.wait_for(1)
    assert not taken.redelivered
    second = Inbox()
    await serve(transports, topic, "h2", second)
    await consumer.close()
    again = await second.wait_body(b"work")
    assert again.redelivered
    await taken.ack()  # after close: a no-op, never an error
    await consumer.close()  # idempotent


async def test_close_removes_the_fanout_queue(transports: Factory, topic: str) -> None:
    inbox = Inbox()
    _, consumer = await serve(transports, topic, "h1", inbox)
    await consumer.close()
    other = Inbox()
    await serve(transports, topic, "h2", other)
    client = await transports()
    await client.cast(topic, b"fan", message_id="f", fanout=True)
    await other.wait_for(1)
    await client.cast(topic, b"marker", message_id="m", server="h2")
    await other.wait_body(b"marker")
    assert inbox.messages == []


async def test_pause_and_resume_shared(transports: Factory, topic: str, probe: Probe) -> None:
    inbox = Inbox()
    _, consumer = await serve(transports, topic, "h1", inbox)
    await consumer.pause_shared()
    await consumer.pause_shared()  # idempotent
    client = await transports()
    await client.cast(topic, b"shared", message_id="s")
    await client.cast(topic, b"direct", message_id="d", server="h1")
    await client.cast(topic, b"fan", message_id="f", fanout=True)
    await inbox.wait_body(b"direct")
    await inbox.wait_body(b"fan")

    async def one_waiting() -> bool:
        return await probe.ready(topic) == 1

    await wait_until(one_waiting)
    assert b"shared" not in inbox.bodies
    await consumer.resume_shared()
    await consumer.resume_shared()  # idempotent
    await inbox.wait_body(b"shared")
    assert sorted(inbox.bodies) == [b"direct", b"fan", b"shared"]


async def test_cancel_stops_deliveries_but_keeps_acks(
    transports: Factory, topic: str, probe: Probe
) -> None:
    inbox = Inbox(ack=False)
    _, consumer = await serve(transports, topic, "h1", inbox)
    client = await transports()
    await client.cast(topic, b"before", message_id="b", server="h1")
    (before,) = await inbox.wait_for(1)
    await consumer.cancel()
    await consumer.cancel()  # idempotent
    await consumer.resume_shared()  # no effect once cancelled
    await client.cast(topic, b"after", message_id="a", server="h1")
    await client.cast(topic, b"shared", message_id="s")

    async def both_waiting() -> bool:
        return await probe.ready(f"{topic}.h1") == 1 and await probe.ready(topic) == 1

    await wait_until(both_waiting)
    await before.ack()
    assert inbox.bodies == [b"before"]


# --- memory only ---------------------------------------------------------------------------------


async def test_memory_brokers_are_separate_per_netloc() -> None:
    a = MemoryTransport(Settings(transport_url="memory://a", control_exchange="x"))
    b = MemoryTransport(Settings(transport_url="memory://b", control_exchange="x"))
    async with a, b:
        await a.consume("t", "h", Inbox(), prefetch=1)
        with pytest.raises(MessageUndeliverable):
            await b.cast("t", b"x", message_id="1")
        broker = a.broker
        assert broker is get_broker("a")
    reset_brokers()
    assert get_broker("a") is not broker


# --- AMQP only -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_amqp_connect_error_hides_the_password() -> None:
    url = f"amqp://guest:s3cr3t-pw@127.0.0.1:{_free_port()}/"
    transport = get_transport(Settings(transport_url=url))
    with pytest.raises(TransportError) as caught:
        await transport.connect()
    message = str(caught.value)
    assert message.startswith("cannot connect to AMQP broker amqp://guest:***@127.0.0.1:")
    assert "s3cr3t-pw" not in message


@pytest.mark.amqp
async def test_amqp_consumer_comes_back_after_its_queue_is_deleted(
    amqp_url: str, topic: str
) -> None:
    import aio_pika

    settings = Settings(transport_url=amqp_url, control_exchange=f"test-{_uid()}")
    inbox = Inbox()
    async with get_transport(settings) as server, get_transport(settings) as client:
        await server.consume(topic, "h1", inbox, prefetch=5)
        connection = await aio_pika.connect(amqp_url)
        async with connection, connection.channel() as channel:
            await channel.queue_delete(topic)  # the broker cancels our consumer

        async def answered() -> bool:
            with contextlib.suppress(MessageUndeliverable):
                return await client.call(topic, b"x", message_id=_uid(), timeout=2) == b"re:x"
            return False

        await wait_until(answered)


async def _run(function: Callable[[], Any]) -> None:
    await anyio.to_thread.run_sync(function)


@pytest.mark.amqp
@pytest.mark.slow
async def test_amqp_survives_a_broker_restart(
    rabbitmq: Any, amqp_url: str, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aiosvc")
    if rabbitmq is None:
        pytest.skip("needs a RabbitMQ node of the test session's own to restart")
    settings = Settings(
        transport_url=amqp_url, control_exchange=f"test-{_uid()}", rpc_response_timeout=60
    )
    silent = f"{topic}-silent"
    async with get_transport(settings) as server, get_transport(settings) as client:
        inbox = Inbox()
        consumer = await server.consume(topic, "h1", inbox, prefetch=50)
        await server.consume(silent, "h1", Inbox(reply=False), prefetch=5)
        assert await client.call(topic, b"before", message_id="b", timeout=WAIT) == b"re:before"

        # Confirmed casts wait in the durable queue while nobody takes them.
        await consumer.pause_shared()
        casts = [f"cast-{i}".encode() for i in range(50)]
        for i, body in enumerate(casts):
            await client.cast(topic, body, message_id=f"c{i}")
        pending = asyncio.ensure_future(client.call(silent, b"hang", message_id="hang", timeout=60))
        await asyncio.sleep(0)  # let the call publish before the broker goes

        await _run(rabbitmq.stop_app)
        try:
            # A call waiting when the connection drops fails now (TransportError), not at
            # its 60 s timeout (MessagingTimeout).
            with anyio.fail_after(WAIT), pytest.raises(TransportError):
                await pending
            # A call while the broker is down fails within its own timeout.
            with pytest.raises(MessagingTimeout, match="unreachable"):
                await client.call(topic, b"down", message_id="d", timeout=1)
            # A cast while the broker is down waits for it (up to rpc_response_timeout).
            waiting_cast = asyncio.ensure_future(
                client.cast(topic, b"cast-during", message_id="cd")
            )
        finally:
            await _run(rabbitmq.start_app)  # also when the test failed: later tests need it

        # Same objects, no help: calls work again and the consumer is back.
        async def answered() -> bool:
            try:
                reply = await client.call(
                    topic, b"after", message_id=_uid(), timeout=2, server="h1"
                )
            except (MessagingTimeout, TransportError):
                return False
            return reply == b"re:after"

        await wait_until(answered)

        # Each transport logged the loss once and the return once, not every attempt of
        # every connection and channel.
        def logged(text: str) -> list[str]:
            messages = (r.getMessage() for r in caplog.records if r.name.startswith("aiosvc"))
            return [m for m in messages if text in m]

        async def both_back() -> bool:
            return len(logged("reconnected to the AMQP broker")) == 2

        await wait_until(both_back)
        assert len(logged("lost the AMQP broker")) == 2
        assert logged("AMQP channel") == []
        with anyio.fail_after(WAIT):
            await waiting_cast
        await consumer.resume_shared()
        for body in [*casts, b"cast-during"]:
            await inbox.wait_body(body)
        await client.cast(topic, b"fan", message_id="f", fanout=True)
        await inbox.wait_body(b"fan")


@pytest.mark.amqp
async def test_amqp_conflicting_queue_is_used_as_it_is_with_a_warning(
    amqp_url: str, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue declared with other arguments (older settings) does not brick the start."""
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        await channel.declare_queue(topic, durable=False, auto_delete=False)
        settings = Settings(transport_url=amqp_url, control_exchange=f"test-{_uid()}")
        inbox = Inbox()
        with caplog.at_level(logging.WARNING, "aiosvc.transport.amqp"):
            async with get_transport(settings) as server, get_transport(settings) as client:
                await server.consume(topic, "h1", inbox, prefetch=1)
                assert await client.call(topic, b"x", message_id=_uid(), timeout=WAIT) == b"re:x"
        await channel.queue_delete(topic)
    [warning] = [
        r.getMessage() for r in caplog.records if "exists with other arguments" in r.getMessage()
    ]
    assert "inequivalent arg 'durable'" in warning
    assert f"queues migrate --topic {topic}" in warning
