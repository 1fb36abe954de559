"""The RabbitMQ transport (``amqp://``, ``amqps://``) on aio-pika.

The only module of aiosvc that imports ``aio_pika``/``aiormq``.

URL: ``amqp[s]://user:password@host:port/vhost?query``. Query parameters understood
(by aio-pika/aiormq underneath):

* TLS (``amqps://``): ``cafile``, ``capath``, ``cadata`` (base64 DER), ``certfile`` and
  ``keyfile`` (client certificate), ``no_verify_ssl=1`` (do not verify the broker's
  certificate; for tests only).
* ``heartbeat`` (seconds, default 60), ``name`` (connection name shown in the RabbitMQ UI;
  default ``<prog>:<pid>:client`` for the publishing connection and
  ``<prog>:<pid>:<topic>`` for the consuming one), ``reconnect_interval`` (seconds
  between reconnection attempts, default 1), ``auth`` (``plain`` or ``external``).

Topology (DESIGN section 3): the durable topic exchange ``control_exchange`` with
queues ``topic`` and ``topic.host`` bound by their own names (durable per
``amqp_durable_queues``, or quorum queues with ``amqp_quorum_queues``); the durable
fanout exchange ``topic_fanout`` with one auto-delete queue ``topic_fanout_<uuid4hex>``
per consumer; and the dead-letter exchange and queue ``<control_exchange>.dlx`` that
every queue above dead-letters into (``reject``). RabbitMQ dead-letters a call request
that expired in its queue there too (``x-first-death-reason: expired``); the memory
transport just drops it.

``prefetch`` is RabbitMQ's per-consumer ``basic.qos``: it bounds each of the three
queues, so one service holds at most three times ``prefetch`` unacknowledged messages.
A call's ``message_id`` is its ``correlation_id``: it must be unique among the calls a
transport has in flight (the RPC layer uses uuid4).

Channels, one per concern, so none waits on another:

* publishing (publisher confirms): casts, confirmed one by one but pipelined;
* calls (publisher confirms): requests go out ``mandatory`` with ``reply_to`` set to
  RabbitMQ direct reply-to, consumed ``no_ack`` on this same channel; replies are
  matched to waiting calls by ``correlation_id`` in a dict of futures, no lock;
* replies (no confirms): what servers send back, without ``mandatory`` (RabbitMQ 3.10
  returns direct reply-to replies spuriously although it delivers them);
* one consuming channel per :meth:`AMQPTransport.consume`, with ``basic.qos`` prefetch.

Consumers use a connection of their own: RabbitMQ blocks a connection that publishes
during a resource alarm, and acks must still flow then.

Reconnect: connections are aio-pika robust connections, which reconnect and reopen
their channels. Everything on the channels (topology, consumers, the direct
reply-to consumer, QoS) is re-established by this module's own keeper of each
channel, not by aio-pika's object registry: it waits for the reopened channel,
redoes the setup, and retries until it succeeds; it also re-consumes when the broker
cancels a consumer (its queue was deleted). Calls waiting when the call channel is
lost fail at once with :class:`~aiosvc.exceptions.TransportError`, since direct
reply-to replies cannot survive the channel. Casts and calls made while the broker is
unreachable wait for it, up to the call's timeout (``rpc_response_timeout`` for a cast).

Nova: ``oslo_messaging._drivers.impl_rabbit`` and ``amqpdriver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url
from aiormq.abc import DeliveredMessage

from ..exceptions import MessageUndeliverable, MessagingTimeout, TransportError
from ..settings import Settings, redact_url
from .base import Consumer, MessageCallback, Transport

__all__ = ["AMQPConsumer", "AMQPIncomingMessage", "AMQPTransport"]

log = logging.getLogger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
_CONNECT_TIMEOUT = 30.0
_RECONNECT_INTERVAL = "1"
_RESTORE_DELAY = 1.0
_REOPEN_GRACE = 5.0

# What a lost or refused connection or channel raises from aiormq.
_AMQP_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError)

Properties = aiormq.spec.Basic.Properties
Channel = aiormq.abc.AbstractChannel


class _Keeper:
    """Keeps one concern's channel usable across reconnects.

    aio-pika's robust connection reopens the channel; the keeper then redoes
    ``setup`` on the new underlying channel (declare, consume), retrying until it
    succeeds, and calls ``on_lost`` when a channel closes. ``kick()`` reruns
    ``setup`` on the current channel (after the broker cancelled a consumer).
    """

    def __init__(
        self,
        name: str,
        connection: AbstractRobustConnection,
        *,
        setup: Callable[[Channel], Awaitable[None]] | None = None,
        on_lost: Callable[[Channel], None] | None = None,
        confirms: bool = False,
    ) -> None:
        self.name = name
        self.robust = connection.channel(publisher_confirms=confirms)
        self._connection = connection
        self.current: Channel | None = None
        self._setup = setup
        self._on_lost = on_lost
        self._ready = asyncio.Event()
        self._kick = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the channel, set it up (errors propagate) and start watching it."""
        await self.robust
        channel = await self.robust.get_underlay_channel()
        if self._setup is not None:
            await self._setup(channel)
        self._attach(channel)
        self._task = asyncio.create_task(self._watch(), name=f"aiosvc-amqp-{self.name}")

    def _attach(self, channel: Channel) -> None:
        self.current = channel
        self._ready.set()
        channel.closing.add_done_callback(partial(self._on_close, channel))
        channel.on_consumer_cancel_callbacks.add(self._on_cancel)

    def _on_close(self, channel: Channel, _: asyncio.Future[Any]) -> None:
        # Runs as soon as the channel closes, so no caller picks it up afterwards.
        if self.current is channel:
            self.current = None
            self._ready.clear()
            if not self._closed:
                log.warning("AMQP channel for %s lost; restoring it", self.name)
            self._kick.set()
        if self._on_lost is not None:
            self._on_lost(channel)

    def _on_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        log.warning(
            "broker cancelled consumer %s (%s); re-consuming", frame.consumer_tag, self.name
        )
        self._kick.set()

    def kick(self) -> None:
        """Rerun the setup on the current channel (or after it is restored)."""
        self._kick.set()

    async def _watch(self) -> None:
        while not self._closed:
            await self._kick.wait()
            self._kick.clear()
            if self._closed:
                return
            await self._restore()

    async def _reopened(self) -> Channel:
        """The reopened underlying channel, once aio-pika has reopened it."""
        while True:
            try:
                async with asyncio.timeout(_REOPEN_GRACE):
                    await self.robust.ready()
            except TimeoutError:
                if self._connection.connected.is_set():
                    # The connection is up, yet the channel is not back: aio-pika does
                    # not retry a failed reopen after a channel-level close. Ask again
                    # (its own lock and state checks make this safe).
                    async with asyncio.timeout(_REOPEN_GRACE):
                        await self.robust.restore()
                continue
            channel = await self.robust.get_underlay_channel()
            if not channel.is_closed:
                return channel
            await asyncio.sleep(0.05)  # closed just now; aio-pika has not noticed yet

    async def _restore(self) -> None:
        failures = 0
        while not self._closed:
            try:
                channel = await self._reopened()
                if self._setup is not None:
                    await self._setup(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                # Once at warning level, then quietly: aio-pika logs the reconnection.
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "restoring AMQP channel for %s failed (%s: %s); retrying",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(_RESTORE_DELAY)
                continue
            if channel is not self.current:
                self._attach(channel)
                log.info("AMQP channel for %s restored", self.name)
            return

    async def get(self) -> Channel:
        """The usable channel, waiting for it while the broker is away (no timeout here)."""
        while True:
            channel = self.current
            if channel is not None and not channel.is_closed:
                return channel
            if self._closed:
                raise TransportError(f"AMQP channel for {self.name} is closed")
            if self._ready.is_set():
                await asyncio.sleep(0)  # the close callback has not run yet
            else:
                await self._ready.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kick.set()
        self._ready.set()  # wakes get() waiters, which then see _closed
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*_AMQP_ERRORS, RuntimeError):
            await self.robust.close()


class AMQPIncomingMessage:
    """A message delivered by RabbitMQ (implements ``IncomingMessage``).

    Nova: ``oslo_messaging._drivers.amqpdriver.AMQPIncomingMessage``.

    Acknowledgements go to the channel the message came on: after a reconnect the
    broker has already requeued it, and its delivery tag means nothing elsewhere.
    """

    __slots__ = ("_message", "_settled", "_transport")

    def __init__(self, transport: AMQPTransport, message: DeliveredMessage) -> None:
        self._transport = transport
        self._message = message
        self._settled = False

    @property
    def body(self) -> bytes:
        """The encoded envelope."""
        return self._message.body

    @property
    def message_id(self) -> str:
        """The publisher's ``message_id``, or ``"-"``."""
        return self._message.header.properties.message_id or "-"

    @property
    def redelivered(self) -> bool:
        """The broker's ``redelivered`` flag."""
        delivery = self._message.delivery
        return bool(isinstance(delivery, aiormq.spec.Basic.Deliver) and delivery.redelivered)

    @property
    def reply_expected(self) -> bool:
        """True for a call (the request has ``reply_to``)."""
        return self._message.header.properties.reply_to is not None

    async def reply(self, body: bytes) -> None:
        """Send ``body`` to the caller's direct reply-to address; dropped if it is gone."""
        properties = self._message.header.properties
        if properties.reply_to is not None:
            await self._transport._send_reply(
                properties.reply_to, properties.correlation_id or properties.message_id, body
            )

    async def ack(self) -> None:
        """``basic.ack``; a no-op when settled already or the channel is gone (requeued)."""
        await self._settle(requeue=None)

    async def reject(self) -> None:
        """``basic.reject`` without requeue: the queue dead-letters it to ``<exchange>.dlx``."""
        await self._settle(requeue=False)

    async def _settle(self, *, requeue: bool | None) -> None:
        if self._settled:
            return  # a second ack would close the channel (unknown delivery tag)
        self._settled = True
        tag = self._message.delivery_tag
        channel = self._message.channel
        if tag is None or channel.is_closed:
            log.debug("not settling %s: its channel is closed (it is requeued)", self.message_id)
            return
        try:
            if requeue is None:
                await channel.basic_ack(tag)
            else:
                await channel.basic_reject(tag, requeue=requeue)
        except _AMQP_ERRORS as exc:
            log.debug("settling %s failed (%s); the broker requeues it", self.message_id, exc)


class _Subscription:
    """One ``basic.consume`` on one queue, with a stable consumer tag."""

    __slots__ = ("active", "consuming_on", "queue", "tag")

    def __init__(self, queue: str) -> None:
        self.queue = queue
        # Readable in the RabbitMQ UI; AMQP caps a consumer tag at 255 bytes.
        self.tag = f"{queue[:200]}:{uuid.uuid4().hex[:12]}"
        self.active = True
        # The channel this consumer is attached to now; None when it must (re)consume.
        self.consuming_on: Channel | None = None


class AMQPConsumer(Consumer):
    """A service's consumers on ``topic``, ``topic.host`` and its fanout queue.

    Nova: the three consumers ``impl_rabbit.Connection.declare_topic_consumer`` and
    ``declare_fanout_consumer`` set up for an RPC server's ``listen()``.
    """

    def __init__(
        self,
        transport: AMQPTransport,
        connection: AbstractRobustConnection,
        *,
        topic: str,
        host: str,
        callback: MessageCallback,
        prefetch: int,
    ) -> None:
        self._transport = transport
        self._topic = topic
        self._host = host
        self._callback = callback
        self._prefetch = prefetch
        self._fanout_queue = f"{topic}_fanout_{uuid.uuid4().hex}"
        self._shared = _Subscription(topic)
        self._subs = (
            self._shared,
            _Subscription(f"{topic}.{host}"),
            _Subscription(self._fanout_queue),
        )
        self._by_tag = {sub.tag: sub for sub in self._subs}
        self._lock = asyncio.Lock()
        self._cancelled = False
        self._closed = False
        self._keeper = _Keeper(f"consumer {topic}.{host}", connection, setup=self._setup)

    async def start(self) -> None:
        await self._keeper.start()

    async def _setup(self, channel: Channel) -> None:
        # Run for the first channel and again on every reopened one: the queues may
        # be gone (auto-delete fanout queue, non-durable queues after a restart).
        async with self._lock:
            await channel.basic_qos(prefetch_count=self._prefetch)
            await self._transport._declare_consumer_topology(
                channel, self._topic, self._host, self._fanout_queue
            )
            for sub in self._subs:
                if sub.active and sub.consuming_on is not channel:
                    await self._consume(channel, sub)
            channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)

    async def _consume(self, channel: Channel, sub: _Subscription) -> None:
        await channel.basic_consume(sub.queue, partial(self._on_message, sub), consumer_tag=sub.tag)
        sub.consuming_on = channel

    def _on_broker_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        sub = self._by_tag.get(frame.consumer_tag or "")
        if sub is not None:
            sub.consuming_on = None  # the keeper's kick re-consumes it

    async def _on_message(self, sub: _Subscription, message: DeliveredMessage) -> None:
        if not sub.active:
            # Sent by the broker before our basic.cancel reached it: give it back now
            # rather than hold it until the channel closes.
            tag = message.delivery_tag
            if tag is not None and not message.channel.is_closed:
                with contextlib.suppress(*_AMQP_ERRORS):
                    await message.channel.basic_reject(tag, requeue=True)
            return
        incoming = AMQPIncomingMessage(self._transport, message)
        try:
            self._callback(incoming)
        except Exception:
            # A callback must not raise; a message it cannot take would pin a
            # prefetch slot forever, so it is dead-lettered and logged.
            log.exception("message callback failed for %s; dead-lettering it", incoming.message_id)
            await incoming.reject()

    async def _stop(self, sub: _Subscription) -> None:
        sub.active = False
        channel, sub.consuming_on = sub.consuming_on, None
        if channel is not None and not channel.is_closed:
            try:
                await channel.basic_cancel(sub.tag)
            except _AMQP_ERRORS as exc:
                log.debug("basic.cancel of %s failed: %s", sub.tag, exc)

    async def pause_shared(self) -> None:
        """``basic.cancel`` on the shared ``topic`` queue only. Idempotent."""
        async with self._lock:
            if self._shared.active:
                await self._stop(self._shared)

    async def resume_shared(self) -> None:
        """Consume the shared ``topic`` queue again. Idempotent."""
        async with self._lock:
            if self._cancelled or self._shared.active:
                return
            self._shared.active = True
            channel = self._keeper.current
            if channel is None or channel.is_closed:
                return  # the keeper consumes it when the channel is back
            try:
                await self._consume(channel, self._shared)
            except _AMQP_ERRORS as exc:
                log.warning("consuming %s failed (%s); retrying", self._topic, exc)
                self._keeper.kick()

    async def cancel(self) -> None:
        """``basic.cancel`` every consumer; delivered messages stay ackable. Idempotent."""
        async with self._lock:
            self._cancelled = True
            for sub in self._subs:
                if sub.active:
                    await self._stop(sub)

    async def close(self) -> None:
        """Cancel, delete the fanout queue, close the channel (the broker requeues
        unacknowledged messages). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.cancel()
        channel = self._keeper.current
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*_AMQP_ERRORS):
                await channel.queue_delete(self._fanout_queue)
        await self._keeper.close()
        self._transport._consumers.discard(self)


class AMQPTransport(Transport):
    """Talks to RabbitMQ with the topology of DESIGN section 3.

    Nova: ``oslo_messaging._drivers.impl_rabbit.RabbitDriver``.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._url = settings.transport_url
        self._exchange = settings.control_exchange
        self._connection: AbstractRobustConnection | None = None
        self._consumer_connection: AbstractRobustConnection | None = None
        self._publisher: _Keeper | None = None
        self._caller: _Keeper | None = None
        self._replier: _Keeper | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._consumers: set[AMQPConsumer] = set()
        self._declared: set[str] = set()
        self._connect_lock = asyncio.Lock()

    # -- connections --------------------------------------------------------

    async def _open_connection(self, purpose: str) -> AbstractRobustConnection:
        url = make_url(self._url)
        if "reconnect_interval" not in url.query:
            url = url.update_query(reconnect_interval=_RECONNECT_INTERVAL)
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        properties = (
            {} if "name" in url.query else {"connection_name": f"{prog}:{os.getpid()}:{purpose}"}
        )
        connection = aio_pika.RobustConnection(url, client_properties=properties)
        try:
            await connection.connect(timeout=_CONNECT_TIMEOUT)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await connection.close()
            if isinstance(exc, Exception):
                raise TransportError(
                    f"cannot connect to AMQP broker {redact_url(self._url)}: {self._reason(exc)}"
                ) from None
            raise
        return connection

    def _reason(self, exc: BaseException) -> str:
        reason = str(exc) or type(exc).__name__
        password = make_url(self._url).password
        return reason.replace(password, "***") if password else reason

    async def connect(self) -> None:
        """Open the publishing connection with its publish, call and reply channels.

        Raises:
            TransportError: the broker is unreachable or refused the login; the
                message shows the URL without its password.
        """
        if self._connection is not None:
            return
        connection = await self._open_connection("client")
        try:
            publisher = _Keeper("casts", connection, confirms=True, on_lost=self._forget_exchanges)
            caller = _Keeper(
                "calls",
                connection,
                confirms=True,
                setup=self._setup_reply_consumer,
                on_lost=self._on_call_channel_lost,
            )
            replier = _Keeper("replies", connection)
            for keeper in (publisher, caller, replier):
                await keeper.start()
        except _AMQP_ERRORS as exc:
            await connection.close()
            raise TransportError(
                f"cannot open channels on AMQP broker {redact_url(self._url)}: {self._reason(exc)}"
            ) from None
        self._connection = connection
        self._publisher, self._caller, self._replier = publisher, caller, replier
        log.info("connected to AMQP broker %s", redact_url(self._url))

    async def close(self) -> None:
        """Close every consumer, fail waiting calls, close the connections. Idempotent."""
        for consumer in list(self._consumers):
            await consumer.close()
        self._fail_pending(None, TransportError("AMQP transport closed"))
        for keeper in (self._publisher, self._caller, self._replier):
            if keeper is not None:
                await keeper.close()
        self._publisher = self._caller = self._replier = None
        for connection in (self._connection, self._consumer_connection):
            if connection is not None:
                with contextlib.suppress(*_AMQP_ERRORS, RuntimeError):
                    await connection.close()
        self._connection = self._consumer_connection = None
        self._declared.clear()

    # -- topology -----------------------------------------------------------

    def _queue_options(self) -> tuple[bool, dict[str, Any]]:
        arguments: dict[str, Any] = {"x-dead-letter-exchange": f"{self._exchange}.dlx"}
        if self.settings.amqp_quorum_queues:
            arguments["x-queue-type"] = "quorum"
            return True, arguments
        return self.settings.amqp_durable_queues, arguments

    async def _declare_exchange(self, channel: Channel, name: str, kind: str) -> None:
        await channel.exchange_declare(name, exchange_type=kind, durable=True)
        self._declared.add(name)

    async def _declare_consumer_topology(
        self, channel: Channel, topic: str, host: str, fanout_queue: str
    ) -> None:
        dlx = f"{self._exchange}.dlx"
        durable, arguments = self._queue_options()
        await channel.exchange_declare(dlx, exchange_type="fanout", durable=True)
        dlx_args: dict[str, Any] | None = (
            {"x-queue-type": "quorum"} if self.settings.amqp_quorum_queues else None
        )
        await channel.queue_declare(dlx, durable=True, arguments=dlx_args)
        await channel.queue_bind(dlx, dlx, routing_key="")
        await self._declare_exchange(channel, self._exchange, "topic")
        for name in (topic, f"{topic}.{host}"):
            await channel.queue_declare(name, durable=durable, arguments=arguments)
            await channel.queue_bind(name, self._exchange, routing_key=name)
        fanout = f"{topic}_fanout"
        await self._declare_exchange(channel, fanout, "fanout")
        await channel.queue_declare(
            fanout_queue,
            auto_delete=True,
            arguments={"x-dead-letter-exchange": dlx},
        )
        await channel.queue_bind(fanout_queue, fanout, routing_key="")

    # -- consuming ----------------------------------------------------------

    async def consume(
        self, topic: str, host: str, callback: MessageCallback, *, prefetch: int
    ) -> Consumer:
        """Declare the topology for ``topic``/``host`` and start consuming.

        Returns once the queues are bound and the three consumers attached. The
        consumers use a connection of their own, named after the first topic.

        Args:
            topic: the shared queue and the prefix of the others.
            host: this server's name; its own queue is ``topic.host``.
            callback: called on the loop once per delivered message.
            prefetch: ``basic.qos`` per consumer: most messages delivered and not yet
                acked on each queue (0: no bound).

        Raises:
            TransportError: not connected, the broker is unreachable, or it refused the
                declarations (e.g. a queue exists with other arguments).
        """
        if self._connection is None:
            raise TransportError("AMQP transport is not connected")
        async with self._connect_lock:
            if self._consumer_connection is None:
                self._consumer_connection = await self._open_connection(topic)
        connection = self._consumer_connection
        consumer = AMQPConsumer(
            self, connection, topic=topic, host=host, callback=callback, prefetch=prefetch
        )
        try:
            await consumer.start()
        except BaseException as exc:
            await consumer.close()
            if not isinstance(exc, _AMQP_ERRORS):
                raise
            raise TransportError(
                f"cannot consume {topic!r} on AMQP broker {redact_url(self._url)}: "
                f"{self._reason(exc)}"
            ) from None
        self._consumers.add(consumer)
        return consumer

    # -- publishing ---------------------------------------------------------

    def _target(self, topic: str, server: str | None, fanout: bool) -> tuple[str, str, str]:
        if fanout:
            return f"{topic}_fanout", "fanout", ""
        return self._exchange, "topic", f"{topic}.{server}" if server else topic

    async def cast(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str,
        server: str | None = None,
        fanout: bool = False,
    ) -> None:
        """Publish persistently and wait for the broker's confirm.

        While the broker is unreachable the cast waits for it, up to
        ``rpc_response_timeout``.

        Raises:
            MessageUndeliverable: no queue is bound for ``topic``/``topic.server``.
            TransportError: the broker is unreachable, refused the message, or the
                connection dropped before the confirm (it may or may not have it).
        """
        keeper = self._publisher
        if keeper is None:
            raise TransportError("AMQP transport is not connected")
        exchange, kind, key = self._target(topic, server, fanout)
        try:
            channel = keeper.current
            if channel is None or channel.is_closed:
                async with asyncio.timeout(self.settings.rpc_response_timeout):
                    channel = await keeper.get()
            if exchange not in self._declared:
                await self._declare_exchange(channel, exchange, kind)
            result: object = await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=key,
                properties=Properties(delivery_mode=2, message_id=message_id),
                mandatory=not fanout,
            )
        except TimeoutError:
            raise TransportError(
                f"cast {message_id} not sent: AMQP broker {redact_url(self._url)} unreachable"
            ) from None
        except TransportError:
            raise
        except aiormq.exceptions.DeliveryError as exc:
            raise TransportError(f"AMQP broker refused cast {message_id}: {exc}") from None
        except _AMQP_ERRORS as exc:
            raise TransportError(
                f"cast {message_id} not confirmed by AMQP broker {redact_url(self._url)}: "
                f"{self._reason(exc)}"
            ) from None
        if isinstance(result, DeliveredMessage):
            raise MessageUndeliverable(f"no queue is bound for {key!r} on {exchange!r}")

    async def call(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str,
        timeout: float,
        server: str | None = None,
    ) -> bytes:
        """Publish a request with direct reply-to and wait for the reply.

        The request is ``mandatory`` and expires in the broker after ``timeout``;
        one deadline covers waiting for the broker, publishing and the reply.

        Raises:
            MessagingTimeout: no reply within ``timeout`` (also while the broker is down).
            MessageUndeliverable: no queue is bound for the target.
            TransportError: the connection was lost while waiting for the reply.
        """
        keeper = self._caller
        if keeper is None:
            raise TransportError("AMQP transport is not connected")
        exchange, kind, key = self._target(topic, server, False)
        pending = self._pending
        channel: Channel | None = None
        try:
            async with asyncio.timeout(timeout):
                channel = keeper.current
                if channel is None or channel.is_closed:
                    channel = await keeper.get()
                if exchange not in self._declared:
                    await self._declare_exchange(channel, exchange, kind)
                future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                pending[message_id] = future
                result: object = await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=key,
                    properties=Properties(
                        message_id=message_id,
                        correlation_id=message_id,
                        reply_to=REPLY_TO,
                        expiration=str(max(1, math.ceil(timeout * 1000))),
                    ),
                    mandatory=True,
                )
                if isinstance(result, DeliveredMessage):
                    raise MessageUndeliverable(f"no queue is bound for {key!r} on {exchange!r}")
                return await future
        except TimeoutError:
            why = "" if channel is not None else " (the AMQP broker is unreachable)"
            raise MessagingTimeout(
                f"Timed out waiting for a reply to message ID {message_id}{why}"
            ) from None
        except TransportError:  # the connection was lost (set by _fail_pending)
            raise
        except aiormq.exceptions.DeliveryError as exc:
            raise TransportError(f"AMQP broker refused call {message_id}: {exc}") from None
        except _AMQP_ERRORS as exc:
            raise TransportError(
                f"call {message_id} failed on AMQP broker {redact_url(self._url)}: "
                f"{self._reason(exc)}"
            ) from None
        finally:
            pending.pop(message_id, None)

    async def _setup_reply_consumer(self, channel: Channel) -> None:
        await channel.basic_consume(REPLY_TO, self._on_reply, no_ack=True)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        correlation_id = message.header.properties.correlation_id
        future = self._pending.get(correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)
        else:
            log.debug("dropping reply to %s: the caller is gone", correlation_id)

    def _forget_exchanges(self, _: Channel) -> None:
        # After a reconnect the broker may be a new one (or someone deleted an
        # exchange, which is what closed the channel): declare them again on next use.
        self._declared.clear()

    def _on_call_channel_lost(self, channel: Channel) -> None:
        self._forget_exchanges(channel)
        self._fail_pending(channel)

    def _fail_pending(self, _: Channel | None, exc: Exception | None = None) -> None:
        # Direct reply-to replies are bound to the channel: once it is gone they can
        # never arrive, so the waiting calls fail now instead of at their timeout.
        for message_id, future in list(self._pending.items()):
            if not future.done():
                future.set_exception(
                    exc
                    or TransportError(
                        f"connection to AMQP broker lost while waiting for the reply to "
                        f"message ID {message_id}; the call may or may not have run"
                    )
                )

    async def _send_reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        keeper = self._replier
        channel = keeper.current if keeper is not None else None
        if channel is None or channel.is_closed:
            # The caller's reply-to died with the connection too; nothing to wait for.
            log.warning("dropping reply to %s: not connected to the AMQP broker", correlation_id)
            return
        try:
            await channel.basic_publish(
                body,
                routing_key=reply_to,
                properties=Properties(correlation_id=correlation_id, message_id=correlation_id),
            )
        except _AMQP_ERRORS as exc:
            log.warning("dropping reply to %s: %s", correlation_id, exc)
