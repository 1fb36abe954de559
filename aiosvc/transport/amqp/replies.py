"""Matching direct reply-to replies to the calls waiting for them: :class:`PendingCalls`.

Requests go out with ``reply_to`` set to RabbitMQ's direct reply-to pseudo-queue, which the
calling channel consumes ``no_ack``. A reply carries the request's ``correlation_id``; it is
matched to its waiting call in a dict of futures, with no lock. Direct reply-to is bound to
the channel: when that channel is lost no reply can arrive any more, so the waiting calls
fail at once instead of at their timeout.
"""

from __future__ import annotations

import asyncio
import logging

from aiormq.abc import DeliveredMessage

from ...exceptions import TransportError
from .channel import Channel

__all__ = ["REPLY_TO", "PendingCalls"]

log = logging.getLogger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"


class PendingCalls:
    """The calls of one transport that wait for a reply, by correlation id."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[bytes]] = {}

    async def consume(self, channel: Channel) -> None:
        """Receive replies on ``channel`` (the calling channel; rerun on every reopened one)."""
        await channel.basic_consume(REPLY_TO, self._on_reply, no_ack=True)

    def expect(self, correlation_id: str) -> asyncio.Future[bytes]:
        """A future that the reply to ``correlation_id`` completes; :meth:`discard` it after."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        return future

    def discard(self, correlation_id: str) -> None:
        """Stop waiting for ``correlation_id`` (a late reply is then dropped)."""
        future = self._waiting.pop(correlation_id, None)
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # failed by fail_all after its call had given up: seen here

    async def _on_reply(self, message: DeliveredMessage) -> None:
        correlation_id = message.header.properties.correlation_id
        future = self._waiting.get(correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)
        else:
            log.debug("dropping reply to %s: the caller is gone", correlation_id)

    def fail_all(self, exc: Exception | None = None) -> None:
        """Fail every waiting call with ``exc`` (default: the connection was lost)."""
        for correlation_id, future in list(self._waiting.items()):
            if not future.done():
                future.set_exception(
                    exc
                    or TransportError(
                        f"connection to AMQP broker lost while waiting for the reply to "
                        f"message ID {correlation_id}; the call may or may not have run"
                    )
                )
