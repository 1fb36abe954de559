"""The RabbitMQ transport: :class:`AMQPTransport`.

Channels, one per concern, so none waits on another:

* publishing (publisher confirms): casts, confirmed one by one but pipelined;
* calls (publisher confirms): requests go out ``mandatory`` with direct reply-to, whose
  replies are consumed on this same channel (:mod:`.replies`);
* replies (no confirms): what servers send back, without ``mandatory`` (RabbitMQ 3.10
  returns direct reply-to replies spuriously although it delivers them);
* one consuming channel per :meth:`AMQPTransport.consume` (:mod:`.consumer`).

Consumers use a connection of their own: RabbitMQ blocks a connection that publishes
during a resource alarm, and acks must still flow then.

With ``rpc_wire = "oslo"`` (oslo.messaging's wire), calls go out with the name of this
transport's reply queue in their body instead of direct reply-to (:class:`.ReplyQueue`), every
message is JSON-typed as kombu expects, the declarations are oslo's (:mod:`.declare`), and a
message a service rejects is copied to the dead-letter exchange by the transport, since
oslo's queues have none.

Casts and calls made while the broker is unreachable wait for it, up to the call's timeout
(``rpc_response_timeout`` for a cast). The URL may list several brokers (a cluster): see
:mod:`.connection` for the failover, and for how the broker's loss and return are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import sys
from collections.abc import Mapping

import aiormq
from aiormq.abc import DeliveredMessage

from ...exceptions import MessageUndeliverable, MessagingTimeout, TransportError
from ...log import one_line
from ...settings import Settings, redact_url
from .. import topology
from ..base import Consumer, MessageCallback, Transport
from .channel import AMQP_ERRORS, ChannelKeeper, Properties
from .connection import BrokerWatch, FailoverConnection, broker_urls, relay_library_logs, shown
from .consumer import AMQPConsumer
from .declare import Declarer
from .replies import REPLY_TO, PendingCalls, ReplyQueue

__all__ = ["AMQPTransport"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 30.0
_RECONNECT_INTERVAL = "1"


class AMQPTransport(Transport):
    """Talks to RabbitMQ with the topology of DESIGN section 3.

    A call's ``message_id`` is its ``correlation_id``: it must be unique among the calls
    a transport has in flight (the RPC layer uses uuid4).

    Nova: ``oslo_messaging._drivers.impl_rabbit.RabbitDriver``.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._url = settings.transport_url
        self._brokers = broker_urls(self._url)
        self._passwords = {url.password for url in self._brokers if url.password}
        self._watch = BrokerWatch(redact_url(self._url))
        relay_library_logs(self._passwords)
        self._declarer = Declarer(settings)
        self._pending = PendingCalls()
        # oslo.messaging's wire: replies come to a queue of this transport's, named in requests.
        self._replies = ReplyQueue() if settings.rpc_wire == "oslo" else None
        self.reply_queue = self._replies.name if self._replies is not None else None
        # What kombu (oslo.messaging's AMQP library) needs to decode a body as JSON.
        self._content_type = "application/json" if self._replies is not None else None
        self._content_encoding = "utf-8" if self._replies is not None else None
        self._connection: FailoverConnection | None = None
        self._consumer_connection: FailoverConnection | None = None
        self._publisher: ChannelKeeper | None = None
        self._caller: ChannelKeeper | None = None
        self._replier: ChannelKeeper | None = None
        self._consumers: set[AMQPConsumer] = set()
        self._connect_lock = asyncio.Lock()

    # -- connections --------------------------------------------------------

    def _failure(self, what: str, exc: BaseException) -> TransportError:
        """One line naming the broker (without its password) and the cause."""
        cause = one_line(exc)
        for password in self._passwords:
            cause = cause.replace(password, "***")
        return TransportError(f"{what} AMQP broker {redact_url(self._url)}: {cause}")

    async def _open_connection(self, purpose: str) -> FailoverConnection:
        """A robust connection to the first broker of the list that answers.

        Each broker is tried in turn once; afterwards the connection reconnects by itself,
        moving along the list.
        """
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        urls = [
            url
            if "reconnect_interval" in url.query
            else url.update_query(reconnect_interval=_RECONNECT_INTERVAL)
            for url in self._brokers
        ]
        properties = (
            {}
            if "name" in urls[0].query
            else {"connection_name": f"{prog}:{os.getpid()}:{purpose}"}
        )
        error: BaseException | None = None
        for start in range(len(urls)):
            connection = FailoverConnection(
                urls[start:] + urls[:start], client_properties=properties
            )
            try:
                await connection.connect(timeout=_CONNECT_TIMEOUT)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await connection.close()
                if not isinstance(exc, Exception):
                    raise
                error = exc
                continue
            self._watch.watch(purpose, connection)
            return connection
        assert error is not None
        raise self._failure("cannot connect to", error) from None

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
            publisher = ChannelKeeper(
                "casts", connection, confirms=True, on_lost=self._declarer.forget
            )
            caller = ChannelKeeper(
                "calls",
                connection,
                confirms=True,
                setup=self._replies.consume if self._replies else self._pending.consume,
                on_lost=self._on_call_channel_lost,
            )
            replier = ChannelKeeper("replies", connection)
            for keeper in (publisher, caller, replier):
                await keeper.start()
        except AMQP_ERRORS as exc:
            await connection.close()
            raise self._failure("cannot open channels on", exc) from None
        self._connection = connection
        self._publisher, self._caller, self._replier = publisher, caller, replier
        log.info("connected to AMQP broker %s", shown(connection.url))

    @property
    def connected(self) -> bool:
        """Whether the connections are open now and the publishing channel usable.

        False from the moment a connection is lost until it is back (aio-pika reconnects
        it), and before :meth:`connect` or after :meth:`close`.
        """
        if self._publisher is None or self._publisher.usable() is None:
            return False
        return all(
            connection.connected.is_set() and not connection.is_closed
            for connection in (self._connection, self._consumer_connection)
            if connection is not None
        )

    async def close(self) -> None:
        """Close every consumer, fail waiting calls, close the connections. Idempotent."""
        for consumer in list(self._consumers):
            await consumer.close()
        self._pending.fail_all(TransportError("AMQP transport closed"))
        if self._replies is not None:
            self._replies.fail_all(TransportError("AMQP transport closed"))
            channel = self._caller.usable() if self._caller is not None else None
            if channel is not None:
                await self._replies.delete(channel)
        for keeper in (self._publisher, self._caller, self._replier):
            if keeper is not None:
                await keeper.close()
        self._publisher = self._caller = self._replier = None
        for connection in (self._connection, self._consumer_connection):
            if connection is not None:
                with contextlib.suppress(*AMQP_ERRORS, RuntimeError):
                    await connection.close()
        self._connection = self._consumer_connection = None
        self._declarer.forget()
        self._watch.close()

    def _on_call_channel_lost(self, channel: object) -> None:
        # After a reconnect the broker may be a new one (or someone deleted an exchange,
        # which is what closed the channel): declare exchanges again on next use.
        self._declarer.forget()
        self._pending.fail_all()  # a reply queue (oslo's wire) outlives its channel: not those

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
        consumer = AMQPConsumer(
            self._consumer_connection,
            self._declarer,
            self._send_reply,
            dead_letter=self._dead_letter if self._replies is not None else None,
            topic=topic,
            host=host,
            callback=callback,
            prefetch=prefetch,
            on_closed=self._consumers.discard,
        )
        try:
            await consumer.start()
        except BaseException as exc:
            await consumer.close()
            if not isinstance(exc, AMQP_ERRORS):
                raise
            raise self._failure(f"cannot consume {topic!r} on", exc) from None
        self._consumers.add(consumer)
        return consumer

    # -- publishing ---------------------------------------------------------

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
        """Publish persistently (``headers`` as AMQP message headers) and wait for the
        broker's confirm.

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
        route = topology.route(self._declarer.exchange, topic, server, fanout)
        try:
            channel = keeper.usable()
            if channel is None:
                async with asyncio.timeout(self.settings.rpc_response_timeout):
                    channel = await keeper.get()
            await self._declarer.exchange_for(channel, route)
            result: object = await channel.basic_publish(
                body,
                exchange=route.exchange,
                routing_key=route.routing_key,
                properties=Properties(
                    delivery_mode=2,
                    message_id=message_id,
                    content_type=self._content_type,
                    content_encoding=self._content_encoding,
                    headers=dict(headers) if headers else None,
                ),
                mandatory=not fanout,
                # Queue the frames and wait for the confirm only: waiting for the socket to
                # drain would hold the channel's lock and serialise concurrent casts.
                # (aiormq's Channel takes `wait` since 6.8; its abstract class omits it.)
                wait=False,  # type: ignore[call-arg]
            )
        except TimeoutError:
            raise TransportError(
                f"cast {message_id} not sent: AMQP broker {redact_url(self._url)} unreachable"
            ) from None
        except TransportError:
            raise
        except aiormq.exceptions.DeliveryError as exc:
            keeper.renew(channel)
            raise TransportError(f"AMQP broker refused cast {message_id}: {exc}") from None
        except AMQP_ERRORS as exc:
            raise self._failure(f"cast {message_id} not confirmed by", exc) from None
        if isinstance(result, DeliveredMessage):
            raise MessageUndeliverable(
                f"no queue is bound for {route.routing_key!r} on {route.exchange!r}"
            )

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
        """Publish a request (``headers`` as AMQP message headers) with direct reply-to
        (or, on oslo's wire, to be answered on this transport's reply queue) and wait for
        the reply.

        The request is ``mandatory`` and expires in the broker after ``timeout``;
        one deadline covers waiting for the broker, publishing and the reply. On oslo's
        wire, ``call_monitor_timeout`` also bounds the wait between heartbeats.

        Raises:
            MessagingTimeout: no reply within ``timeout`` (also while the broker is down),
                or no heartbeat within ``call_monitor_timeout``.
            MessageUndeliverable: no queue is bound for the target.
            TransportError: the connection was lost while waiting for the reply.
        """
        keeper = self._caller
        if keeper is None:
            raise TransportError("AMQP transport is not connected")
        route = topology.route(self._declarer.exchange, topic, server, False)
        channel = None
        replies = self._replies
        expiration = str(max(1, math.ceil(timeout * 1000)))
        try:
            async with asyncio.timeout(timeout) as deadline:
                channel = keeper.usable() or await keeper.get()
                await self._declarer.exchange_for(channel, route)
                if replies is None:
                    reply = self._pending.expect(message_id)
                    properties = Properties(
                        message_id=message_id,
                        correlation_id=message_id,
                        reply_to=REPLY_TO,
                        expiration=expiration,
                        headers=dict(headers) if headers else None,
                    )
                else:
                    replies.expect(message_id, call_monitor_timeout)
                    properties = Properties(
                        message_id=message_id,
                        expiration=expiration,
                        content_type=self._content_type,
                        content_encoding=self._content_encoding,
                        headers=dict(headers) if headers else None,
                    )
                result: object = await channel.basic_publish(
                    body,
                    exchange=route.exchange,
                    routing_key=route.routing_key,
                    properties=properties,
                    mandatory=True,
                    wait=False,  # type: ignore[call-arg]  # as in cast: the confirm is awaited
                )
                if isinstance(result, DeliveredMessage):
                    raise MessageUndeliverable(
                        f"no queue is bound for {route.routing_key!r} on {route.exchange!r}"
                    )
                if replies is None:
                    return await reply
                return await replies.wait(message_id)
        except TimeoutError:
            if channel is None:
                why = " (the AMQP broker is unreachable)"
            elif not deadline.expired():
                why = f" (no call-monitor heartbeat for {call_monitor_timeout}s)"
            else:
                why = ""
            raise MessagingTimeout(
                f"Timed out waiting for a reply to message ID {message_id}{why}"
            ) from None
        except TransportError:  # the connection was lost (PendingCalls.fail_all)
            raise
        except aiormq.exceptions.DeliveryError as exc:
            keeper.renew(channel)
            raise TransportError(f"AMQP broker refused call {message_id}: {exc}") from None
        except AMQP_ERRORS as exc:
            raise self._failure(f"call {message_id} failed on", exc) from None
        finally:
            if replies is None:
                self._pending.discard(message_id)
            else:
                replies.discard(message_id)

    async def _send_reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        channel = self._replier.usable() if self._replier is not None else None
        if channel is None:
            # The caller's reply-to died with the connection too; nothing to wait for.
            log.warning("dropping reply to %s: not connected to the AMQP broker", correlation_id)
            return
        try:
            # No confirms on this channel, so nothing to wait for once the frames are
            # queued: a connection lost before they are written loses the reply, as one
            # lost just after would (the caller's timeout says so either way).
            await channel.basic_publish(
                body,
                routing_key=reply_to,
                properties=Properties(
                    correlation_id=correlation_id,
                    message_id=correlation_id,
                    content_type=self._content_type,
                    content_encoding=self._content_encoding,
                ),
                wait=False,  # type: ignore[call-arg]
            )
        except AMQP_ERRORS as exc:
            log.warning("dropping reply to %s: %s", correlation_id, exc)

    async def _dead_letter(self, message: DeliveredMessage, queue: str) -> None:
        """Publish a copy of ``message`` to ``<control_exchange>.dlx`` as RabbitMQ would
        dead-letter it (the same ``x-first-death-*`` and ``x-death`` headers), confirmed.

        For oslo's queues, which have no dead-letter exchange of their own.

        Raises:
            TransportError: not connected, or the broker did not confirm the copy.
        """
        channel = self._publisher.usable() if self._publisher is not None else None
        if channel is None:
            raise TransportError("not connected to the AMQP broker")
        properties = message.header.properties
        delivery = message.delivery
        exchange = getattr(delivery, "exchange", "") or ""
        routing_key = getattr(delivery, "routing_key", "") or ""
        death = {
            "count": 1,
            "reason": "rejected",
            "queue": queue,
            "time": datetime.datetime.now(datetime.UTC).replace(microsecond=0),
            "exchange": exchange,
            "routing-keys": [routing_key],
        }
        headers = dict(properties.headers or {})
        headers.update(
            {
                "x-first-death-reason": "rejected",
                "x-first-death-queue": queue,
                "x-first-death-exchange": exchange,
                "x-death": [death],
            }
        )
        copy = Properties(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=headers,
            delivery_mode=2,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
        )
        try:
            result = await channel.basic_publish(
                message.body,
                exchange=self._declarer.dead_letter,
                routing_key=queue,
                properties=copy,
            )
        except AMQP_ERRORS as exc:
            raise self._failure("dead letter not confirmed by", exc) from None
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise TransportError(f"AMQP broker refused the dead letter: {result!r}")
