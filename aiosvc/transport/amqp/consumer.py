"""A service's consumers on its three queues: :class:`AMQPConsumer`.

``prefetch`` is RabbitMQ's per-consumer ``basic.qos``: it bounds each of the three
queues, so one service holds at most three times ``prefetch`` unacknowledged messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from functools import partial

import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from .. import topology
from ..base import Consumer, MessageCallback
from .channel import AMQP_ERRORS, Channel, ChannelKeeper
from .declare import Declarer
from .message import AMQPIncomingMessage, DeadLetter, SendReply

__all__ = ["AMQPConsumer"]

log = logging.getLogger(__name__)


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

    Args:
        connection: the connection to consume on (its own channel, re-established by a
            :class:`~aiosvc.transport.amqp.channel.ChannelKeeper` after reconnects).
        declarer: declares the queues (on every reopened channel too).
        send_reply: how a delivered call's reply goes back.
        dead_letter: how a rejected message reaches the dead-letter exchange when its queue
            has none (oslo.messaging's declarations); None: the queue dead-letters it.
        on_closed: called once :meth:`close` is done (the transport forgets it).

    Nova: the consumers ``impl_rabbit.Connection.declare_topic_consumer`` and
    ``declare_fanout_consumer`` set up for an RPC server's ``listen()``.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        declarer: Declarer,
        send_reply: SendReply,
        *,
        dead_letter: DeadLetter | None = None,
        topic: str,
        host: str,
        callback: MessageCallback,
        prefetch: int,
        on_closed: Callable[[AMQPConsumer], None],
    ) -> None:
        self._declarer = declarer
        self._send_reply = send_reply
        self._dead_letter = dead_letter
        self._topic = topic
        self._host = host
        self._callback = callback
        self._prefetch = prefetch
        self._on_closed = on_closed
        self._fanout_queue = topology.fanout_queue(topic)
        self._shared = _Subscription(topology.shared_queue(topic))
        self._subs = (
            self._shared,
            _Subscription(topology.server_queue(topic, host)),
            _Subscription(self._fanout_queue),
        )
        self._by_tag = {sub.tag: sub for sub in self._subs}
        self._lock = asyncio.Lock()
        self._cancelled = False
        self._closed = False
        self._keeper = ChannelKeeper(
            f"consumer {topology.server_queue(topic, host)}", connection, setup=self._setup
        )

    async def start(self) -> None:
        """Declare the queues and consume; returns once all three consumers are attached."""
        await self._keeper.start()

    @property
    def attached(self) -> bool:
        """Whether the channel is open and every active subscription consumes on it (a
        lost connection, or a consumer the broker cancelled, makes it false until the
        keeper has consumed again)."""
        channel = self._keeper.usable()
        return (
            not self._cancelled
            and channel is not None
            and all(sub.consuming_on is channel for sub in self._subs if sub.active)
        )

    async def _setup(self, channel: Channel) -> None:
        # Run for the first channel and again on every reopened one: the queues may
        # be gone (auto-delete fanout queue, non-durable queues after a restart).
        async with self._lock:
            await channel.basic_qos(prefetch_count=self._prefetch)
            await self._declarer.consumer_queues(
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
                with contextlib.suppress(*AMQP_ERRORS):
                    await message.channel.basic_reject(tag, requeue=True)
            return
        incoming = AMQPIncomingMessage(message, self._send_reply, sub.queue, self._dead_letter)
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
            except AMQP_ERRORS as exc:
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
            channel = self._keeper.usable()
            if channel is None:
                return  # the keeper consumes it when the channel is back
            try:
                await self._consume(channel, self._shared)
            except AMQP_ERRORS as exc:
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
        channel = self._keeper.usable()
        if channel is not None:
            with contextlib.suppress(*AMQP_ERRORS):
                await channel.queue_delete(self._fanout_queue)
        await self._keeper.close()
        self._on_closed(self)
