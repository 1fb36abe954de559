"""An in-process message broker with the semantics of the AMQP transport (``memory://``).

It is the embedded default and what fast unit tests run on, so it behaves like
RabbitMQ with the topology of DESIGN section 3, not like a simple queue:

* Queues ``topic`` (shared: round-robin among its consumers) and ``topic.host`` are
  durable: they outlive their consumers, and a cast to them waits there for the next
  consumer. A fanout queue exists per consumer and goes with it.
* ``cast``/``call`` to a topic or server queue that was never declared raises
  :class:`~aiosvc.exceptions.MessageUndeliverable` (a mandatory publish with no
  binding); a fanout cast with nobody listening is not an error.
* ``prefetch`` bounds the messages delivered and not acknowledged, per queue, as
  RabbitMQ's per-consumer ``basic.qos`` does (0 means unbounded).
* ``reject`` dead-letters into :attr:`Broker.dead_letters`; ``Consumer.close`` puts
  every unacknowledged message back at the front of its queue marked ``redelivered``.
* A call's request expires after its timeout: an expired message is dropped when it
  reaches the head of its queue, never delivered. A reply to a caller that gave up is
  dropped.

Brokers live at module level, one per URL netloc: ``memory://`` is the default broker
and ``memory://other`` another, so a service and a client in one process with the
same URL talk to each other. :func:`reset_brokers` forgets them all (tests).

Deliveries are scheduled on the event loop (``call_soon``), never made from inside
the publisher's call, so a callback never runs re-entrantly inside ``cast``; and in a
``contextvars`` context of their own, as a broker's deliveries are: what the publisher had
current (its request context, its trace span) reaches the consumer only in the message.

Nova: ``oslo_messaging._drivers.impl_fake.FakeDriver``, with RabbitMQ's semantics.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from ..exceptions import MessageUndeliverable, MessagingTimeout, TransportError
from ..settings import Settings
from . import topology
from .base import Consumer, MessageCallback, Transport

__all__ = ["Broker", "DeadLetter", "MemoryTransport", "get_broker", "reset_brokers"]

log = logging.getLogger(__name__)

_brokers: dict[str, Broker] = {}
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def get_broker(name: str = "") -> Broker:
    """The broker named ``name`` (a ``memory://`` URL's netloc), created on first use."""
    broker = _brokers.get(name)
    if broker is None:
        broker = _brokers[name] = Broker(name)
    return broker


def reset_brokers() -> None:
    """Forget every broker, its queues and dead letters (between tests)."""
    _brokers.clear()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message rejected by its consumer, as RabbitMQ's dead-letter queue would hold it."""

    queue: str
    body: bytes
    message_id: str


ReplyFn = Callable[[str, bytes], None]


@dataclass(slots=True)
class _Message:
    body: bytes
    message_id: str
    # Where the reply goes (the caller's transport) and when the request expires, in
    # loop time; both None for a cast.
    reply_to: ReplyFn | None = None
    expires_at: float | None = None
    redelivered: bool = False
    headers: Mapping[str, str] | None = None


class _Queue:
    """A queue with its round-robin consumers; delivery runs in a loop callback."""

    def __init__(self, broker: Broker, name: str, *, auto_delete: bool = False) -> None:
        self.broker = broker
        self.name = name
        self.auto_delete = auto_delete
        self.messages: deque[_Message] = deque()
        self.subs: list[_Subscription] = []
        self._next = 0
        self._scheduled = False

    def put(self, message: _Message) -> None:
        self.messages.append(message)
        self.kick()

    def kick(self) -> None:
        """Schedule a delivery round; cheap to call often."""
        if not self._scheduled and self.messages:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver, context=contextvars.Context())

    def _ready(self) -> _Subscription | None:
        # Round-robin: start after the consumer served last, as RabbitMQ does.
        count = len(self.subs)
        for i in range(count):
            sub = self.subs[(self._next + i) % count]
            if sub.can_take():
                self._next = (self._next + i + 1) % count
                return sub
        return None

    def _deliver(self) -> None:
        self._scheduled = False
        if self.broker.queues.get(self.name) is not self:
            return  # deleted meanwhile
        now = asyncio.get_running_loop().time()
        while self.messages:
            sub = self._ready()
            if sub is None:
                return
            message = self.messages.popleft()
            if message.expires_at is not None and now >= message.expires_at:
                log.debug("dropping expired message %s in %s", message.message_id, self.name)
                continue
            sub.deliver(message)


@dataclass(slots=True)
class _Binding:
    kind: str  # "topic" or "fanout"
    routes: dict[str, set[str]] = field(default_factory=dict)  # routing key -> queue names


class Broker:
    """One in-memory broker: exchanges, queues and the dead letters.

    Attributes:
        name: the netloc of the ``memory://`` URL that names it.
        queues: queue name -> queue, as declared.
        dead_letters: every rejected message, oldest first; tests inspect it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.queues: dict[str, _Queue] = {}
        self.exchanges: dict[str, _Binding] = {}
        self.dead_letters: list[DeadLetter] = []

    def queue_size(self, name: str) -> int:
        """Messages waiting (not delivered, not expired) in queue ``name``; 0 if none."""
        queue = self.queues.get(name)
        if queue is None:
            return 0
        now = asyncio.get_running_loop().time()
        return sum(1 for m in queue.messages if m.expires_at is None or m.expires_at > now)

    def declare_queue(self, name: str, *, auto_delete: bool = False) -> _Queue:
        """The queue ``name``, created if missing (``queue.declare``)."""
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue(self, name, auto_delete=auto_delete)
        return queue

    def bind(self, exchange: str, kind: str, routing_key: str, queue: str) -> None:
        """Bind ``queue`` to ``exchange`` (of ``kind`` topic or fanout), declaring it."""
        binding = self.exchanges.setdefault(exchange, _Binding(kind))
        binding.routes.setdefault(routing_key, set()).add(queue)

    def delete_queue(self, name: str) -> None:
        """Remove queue ``name``, its messages and its bindings."""
        self.queues.pop(name, None)
        for binding in self.exchanges.values():
            for queues in binding.routes.values():
                queues.discard(name)

    def publish(self, exchange: str, routing_key: str, message: _Message) -> int:
        """Route ``message`` to every bound queue; returns how many took it."""
        binding = self.exchanges.get(exchange)
        if binding is None:
            return 0
        names = (
            set().union(*binding.routes.values())
            if binding.kind == "fanout"
            else binding.routes.get(routing_key, set())
        )
        routed = 0
        for name in sorted(names):
            queue = self.queues.get(name)
            if queue is not None:
                # Each queue gets its own copy, as each AMQP queue does.
                queue.put(
                    _Message(
                        message.body,
                        message.message_id,
                        message.reply_to,
                        message.expires_at,
                        headers=message.headers,
                    )
                )
                routed += 1
        return routed


class _Subscription:
    """One consumer on one queue, with its own prefetch window (a ``basic.consume``)."""

    def __init__(self, queue: _Queue, callback: MessageCallback, prefetch: int) -> None:
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.active = False
        self.unacked: dict[int, _Message] = {}
        self._tags = itertools.count(1)

    def can_take(self) -> bool:
        return self.active and (self.prefetch <= 0 or len(self.unacked) < self.prefetch)

    def start(self) -> None:
        if not self.active:
            self.active = True
            self.queue.subs.append(self)
            self.queue.kick()

    def stop(self) -> None:
        if self.active:
            self.active = False
            self.queue.subs.remove(self)
            if self.queue.auto_delete and not self.queue.subs:
                # As RabbitMQ deletes an auto-delete queue when its last consumer goes.
                self.queue.broker.delete_queue(self.queue.name)

    def deliver(self, message: _Message) -> None:
        tag = next(self._tags)
        self.unacked[tag] = message
        incoming = MemoryIncomingMessage(self, tag, message)
        try:
            self.callback(incoming)
        except Exception:
            # A callback must not raise; if it does, the message could never be handled
            # and would pin a prefetch slot, so it is dead-lettered and logged.
            log.exception("message callback failed for %s; dead-lettering it", message.message_id)
            self.settle(tag, dead_letter=True)

    def settle(self, tag: int, *, dead_letter: bool) -> None:
        message = self.unacked.pop(tag, None)
        if message is None:
            return  # already settled, or given back by close()
        if dead_letter:
            self.queue.broker.dead_letters.append(
                DeadLetter(self.queue.name, message.body, message.message_id)
            )
        self.queue.kick()

    def give_back(self) -> None:
        """Requeue every unacknowledged message at the front, in order, as redelivered."""
        for tag in sorted(self.unacked, reverse=True):
            message = self.unacked.pop(tag)
            message.redelivered = True
            self.queue.messages.appendleft(message)
        self.queue.kick()


class MemoryIncomingMessage:
    """A message delivered by the memory broker (implements ``IncomingMessage``).

    Nova: ``oslo_messaging._drivers.impl_fake.FakeIncomingMessage``.
    """

    __slots__ = ("_message", "_sub", "_tag")

    def __init__(self, sub: _Subscription, tag: int, message: _Message) -> None:
        self._sub = sub
        self._tag = tag
        self._message = message

    @property
    def body(self) -> bytes:
        """The encoded envelope."""
        return self._message.body

    @property
    def message_id(self) -> str:
        """The publisher's id for the message, or ``"-"``."""
        return self._message.message_id or "-"

    @property
    def redelivered(self) -> bool:
        """True when this message was delivered before and given back unacknowledged."""
        return self._message.redelivered

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers the message was sent with (empty when none)."""
        return self._message.headers or _NO_HEADERS

    @property
    def reply_expected(self) -> bool:
        """True for a call."""
        return self._message.reply_to is not None

    async def reply(self, body: bytes, to: str | None = None) -> None:
        """Send ``body`` to the caller; dropped if the caller gave up or this is a cast.

        ``to`` is for wires that name a reply queue, which this transport does not carry.
        """
        reply_to = self._message.reply_to
        if reply_to is not None:
            reply_to(self._message.message_id, bytes(body))

    async def ack(self) -> None:
        """Acknowledge; a second ack, or one after ``close()`` gave it back, is a no-op."""
        self._sub.settle(self._tag, dead_letter=False)

    async def reject(self) -> None:
        """Dead-letter the message into ``Broker.dead_letters``; never requeued."""
        self._sub.settle(self._tag, dead_letter=True)


class MemoryConsumer(Consumer):
    """A service's three subscriptions: ``topic``, ``topic.host`` and its fanout queue.

    Nova: ``oslo_messaging._drivers.impl_fake.FakeListener``.
    """

    def __init__(
        self,
        shared: _Subscription,
        server: _Subscription,
        fanout: _Subscription,
        on_closed: Callable[[MemoryConsumer], None],
    ) -> None:
        self._on_closed = on_closed
        self._shared = shared
        self._server = server
        self._fanout = fanout
        self._cancelled = False
        self._closed = False

    @property
    def _subs(self) -> tuple[_Subscription, ...]:
        return (self._shared, self._server, self._fanout)

    def start(self) -> None:
        for sub in self._subs:
            sub.start()

    @property
    def attached(self) -> bool:
        """True until cancelled (an in-process queue never drops its consumer)."""
        return not self._cancelled

    async def pause_shared(self) -> None:
        """Stop taking messages from the shared ``topic`` queue. Idempotent."""
        self._shared.stop()

    async def resume_shared(self) -> None:
        """Take messages from the shared ``topic`` queue again. Idempotent."""
        if not self._cancelled:
            self._shared.start()

    async def cancel(self) -> None:
        """Stop new deliveries on all three queues; delivered messages stay ackable."""
        self._cancelled = True
        for sub in self._subs:
            sub.stop()

    async def close(self) -> None:
        """Cancel, requeue every unacknowledged message, delete the fanout queue."""
        if self._closed:
            return
        await self.cancel()
        self._closed = True
        for sub in self._subs:
            sub.give_back()
        self._fanout.queue.broker.delete_queue(self._fanout.queue.name)
        self._on_closed(self)


class MemoryTransport(Transport):
    """The in-process transport for ``memory://[name]``.

    Nova: ``oslo_messaging._drivers.impl_fake.FakeDriver`` (``fake://``).
    """

    in_process = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._broker: Broker | None = None
        self._consumers: set[MemoryConsumer] = set()
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    @property
    def broker(self) -> Broker:
        """The broker this transport is connected to.

        Raises:
            TransportError: not connected.
        """
        if self._broker is None:
            raise TransportError("memory transport is not connected")
        return self._broker

    @property
    def connected(self) -> bool:
        """True from :meth:`connect` until :meth:`close` (the broker is in this process)."""
        return self._broker is not None

    async def connect(self) -> None:
        """Attach to the broker named by the URL's netloc (created on first use)."""
        self._broker = get_broker(urlsplit(self.settings.transport_url).netloc)

    async def close(self) -> None:
        """Close every consumer and fail the calls still waiting. Idempotent."""
        for consumer in list(self._consumers):
            await consumer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportError("memory transport closed"))
        self._pending.clear()
        self._broker = None

    async def consume(
        self, topic: str, host: str, callback: MessageCallback, *, prefetch: int
    ) -> Consumer:
        """Declare ``topic``, ``topic.host`` and a fanout queue, and start delivering.

        Args:
            topic: the shared queue and the prefix of the others.
            host: this server's name; its own queue is ``topic.host``.
            callback: called on the loop once per delivered message.
            prefetch: per queue, the most messages delivered and not yet acked (0: no bound).
        """
        broker = self.broker
        exchange = self.settings.control_exchange
        shared = topology.shared_queue(topic)
        server = topology.server_queue(topic, host)
        subs = []
        for name, (exch, kind, key), auto_delete in (
            (shared, topology.route(exchange, topic, None, False), False),
            (server, topology.route(exchange, topic, host, False), False),
            (topology.fanout_queue(topic), topology.route(exchange, topic, None, True), True),
        ):
            queue = broker.declare_queue(name, auto_delete=auto_delete)
            broker.bind(exch, kind, key, name)
            subs.append(_Subscription(queue, callback, prefetch))
        consumer = MemoryConsumer(subs[0], subs[1], subs[2], on_closed=self._consumers.discard)
        consumer.start()
        self._consumers.add(consumer)
        return consumer

    async def cast(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str,
        server: str | None = None,
        fanout: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Put ``body`` (and ``headers``) in the queue(s) for the target.

        Raises:
            MessageUndeliverable: no queue is bound for ``topic``/``topic.server``.
            TransportError: not connected.
        """
        exchange, _, key = topology.route(self.settings.control_exchange, topic, server, fanout)
        message = _Message(bytes(body), message_id, headers=dict(headers) if headers else None)
        routed = self.broker.publish(exchange, key, message)
        if not routed and not fanout:
            raise MessageUndeliverable(f"no queue is bound for {key!r} on {exchange!r}")

    async def call(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str,
        timeout: float,
        server: str | None = None,
        call_monitor_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Publish a request that expires after ``timeout`` and wait for its reply.

        ``call_monitor_timeout`` is for wires with heartbeats, which this one has not.

        Raises:
            MessagingTimeout: no reply within ``timeout``.
            MessageUndeliverable: no queue is bound for the target.
            TransportError: not connected, or closed while waiting.
        """
        broker = self.broker
        loop = asyncio.get_running_loop()
        exchange, _, key = topology.route(self.settings.control_exchange, topic, server, False)
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[message_id] = future
        try:
            message = _Message(
                bytes(body),
                message_id,
                self._on_reply,
                loop.time() + timeout,
                headers=dict(headers) if headers else None,
            )
            if not broker.publish(exchange, key, message):
                raise MessageUndeliverable(f"no queue is bound for {key!r} on {exchange!r}")
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise MessagingTimeout(
                    f"Timed out waiting for a reply to message ID {message_id}"
                ) from None
        finally:
            if self._pending.get(message_id) is future:
                del self._pending[message_id]

    def _on_reply(self, message_id: str, body: bytes) -> None:
        future = self._pending.get(message_id)
        if future is None or future.done():
            log.debug("dropping reply to %s: the caller is gone", message_id)
            return
        future.set_result(body)
