"""A message RabbitMQ delivered to a service: :class:`AMQPIncomingMessage`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import aiormq
from aiormq.abc import DeliveredMessage

from .channel import AMQP_ERRORS

__all__ = ["AMQPIncomingMessage", "DeadLetter", "SendReply"]

log = logging.getLogger(__name__)

SendReply = Callable[[str, str | None, bytes], Awaitable[None]]
"""``send_reply(reply_to, correlation_id, body)``: how a reply goes back to its caller."""

DeadLetter = Callable[[DeliveredMessage, str], Awaitable[None]]
"""``dead_letter(message, queue)``: publish a copy of ``message``, delivered from ``queue``,
to the dead-letter exchange (for queues declared without one: oslo.messaging's)."""


class AMQPIncomingMessage:
    """A message delivered by RabbitMQ (implements ``IncomingMessage``).

    Acknowledgements go to the channel the message came on: after a reconnect the
    broker has already requeued it, and its delivery tag means nothing elsewhere.

    Nova: ``oslo_messaging._drivers.amqpdriver.AMQPIncomingMessage``.
    """

    __slots__ = ("_dead_letter", "_message", "_queue", "_send_reply", "_settled")

    def __init__(
        self,
        message: DeliveredMessage,
        send_reply: SendReply,
        queue: str = "",
        dead_letter: DeadLetter | None = None,
    ) -> None:
        self._message = message
        self._send_reply = send_reply
        self._queue = queue
        self._dead_letter = dead_letter
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
    def headers(self) -> Mapping[str, str]:
        """The message's AMQP headers whose values are strings (others, such as RabbitMQ's
        ``x-death`` list, are left out); empty when it has none."""
        headers = self._message.header.properties.headers
        if not headers:
            return {}
        return {name: value for name, value in headers.items() if isinstance(value, str)}

    @property
    def reply_expected(self) -> bool:
        """True for a call (the request has ``reply_to``)."""
        return self._message.header.properties.reply_to is not None

    async def reply(self, body: bytes, to: str | None = None) -> None:
        """Send ``body`` to the queue ``to``, or to the caller's reply-to address; dropped
        if it is gone."""
        properties = self._message.header.properties
        reply_to = to or properties.reply_to
        if reply_to is not None:
            await self._send_reply(
                reply_to, properties.correlation_id or properties.message_id, body
            )

    async def ack(self) -> None:
        """``basic.ack``; a no-op when settled already or the channel is gone (requeued)."""
        await self._settle(requeue=None)

    async def reject(self) -> None:
        """``basic.reject`` without requeue: the queue dead-letters it to ``<exchange>.dlx``.

        From a queue declared without a dead-letter exchange (oslo.messaging's), a copy is
        published to ``<exchange>.dlx`` first, and the message acknowledged once the broker
        has confirmed it; if that fails, the message is requeued, never dropped.
        """
        if self._dead_letter is None or self._settled:
            await self._settle(requeue=False)
            return
        try:
            await self._dead_letter(self._message, self._queue)
        except Exception as exc:
            log.warning("could not dead-letter %s (%s); requeueing it", self.message_id, exc)
            await self._settle(requeue=True)
            return
        await self._settle(requeue=None)

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
                # An ack has no answer: queue its frame, do not wait for the socket.
                await channel.basic_ack(tag, wait=False)
            else:
                await channel.basic_reject(tag, requeue=requeue)
        except AMQP_ERRORS as exc:
            log.debug("settling %s failed (%s); the broker requeues it", self.message_id, exc)
