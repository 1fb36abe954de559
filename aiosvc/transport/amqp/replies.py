"""Matching replies to the calls waiting for them.

:class:`PendingCalls` on aiosvc's wire, :class:`ReplyQueue` on oslo.messaging's (below).

Requests go out with ``reply_to`` set to RabbitMQ's direct reply-to pseudo-queue, which the
calling channel consumes ``no_ack``. A reply carries the request's ``correlation_id``; it is
matched to its waiting call in a dict of futures, with no lock. Direct reply-to is bound to
the channel: when that channel is lost no reply can arrive any more, so the waiting calls
fail at once instead of at their timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from aiormq.abc import DeliveredMessage

from ...exceptions import MalformedMessage, TransportError
from ...rpc.oslo import decode_reply
from .channel import AMQP_ERRORS, Channel

__all__ = ["REPLY_TO", "PendingCalls", "ReplyQueue"]

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


class _Waiter:
    """One call waiting on the reply queue: its final reply, and its call monitor."""

    __slots__ = ("final", "monitor", "monitor_timeout")

    def __init__(self, final: asyncio.Future[bytes], monitor_timeout: float | None) -> None:
        self.final = final
        self.monitor_timeout = monitor_timeout
        self.monitor: asyncio.Timeout | None = None


class ReplyQueue:
    """oslo.messaging's reply path: the calls of one transport that wait on its reply queue.

    Requests name the queue ``reply_<uuid4 hex>`` in their body; servers send each reply
    (and, for a call that set a call-monitor timeout, heartbeats meanwhile) to it through
    the default exchange, with the call's ``_msg_id`` in the body. The queue is declared as
    oslo declares it (not durable, not exclusive, expiring 30 minutes after its last
    consumer), so it outlives a reconnect: replies sent meanwhile wait in it.

    Nova: ``oslo_messaging._drivers.amqpdriver.ReplyWaiter``.
    """

    EXPIRES_MS = 1_800_000  # oslo's rabbit_transient_queues_ttl: 1800 s

    def __init__(self) -> None:
        self.name = f"reply_{uuid.uuid4().hex}"
        self._waiting: dict[str, _Waiter] = {}

    async def consume(self, channel: Channel) -> None:
        """Declare the queue and receive replies on ``channel`` (rerun on every reopened one)."""
        await channel.queue_declare(self.name, arguments={"x-expires": self.EXPIRES_MS})
        await channel.basic_consume(self.name, self._on_reply, no_ack=True, consumer_tag=self.name)

    async def delete(self, channel: Channel) -> None:
        """Stop consuming the queue on ``channel`` and delete it (the transport closes)."""
        with contextlib.suppress(*AMQP_ERRORS):
            await channel.basic_cancel(self.name)
            await channel.queue_delete(self.name)

    async def wait(self, msg_id: str) -> bytes:
        """The final reply to call ``msg_id``; each heartbeat restarts its call monitor.

        Raises:
            TimeoutError: no heartbeat nor reply within the monitor timeout :meth:`expect`
                was given.
        """
        waiter = self._waiting[msg_id]
        if waiter.monitor_timeout is None:
            return await waiter.final
        async with asyncio.timeout(waiter.monitor_timeout) as waiter.monitor:
            return await waiter.final

    def expect(self, msg_id: str, monitor_timeout: float | None = None) -> None:
        """Start collecting the replies to ``msg_id``; :meth:`discard` it after."""
        final: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = _Waiter(final, monitor_timeout)

    def discard(self, msg_id: str) -> None:
        """Stop waiting for ``msg_id`` (a late reply is then dropped)."""
        waiter = self._waiting.pop(msg_id, None)
        if waiter is not None and waiter.final.done() and not waiter.final.cancelled():
            waiter.final.exception()

    async def _on_reply(self, message: DeliveredMessage) -> None:
        try:
            reply = decode_reply(message.body)
        except MalformedMessage as exc:
            log.warning("dropping a malformed reply on %s: %s", self.name, exc)
            return
        waiter = self._waiting.get(reply.msg_id or "")
        if waiter is None or waiter.final.done():
            log.debug("dropping reply to %s: the caller is gone", reply.msg_id)
        elif not reply.heartbeat:
            waiter.final.set_result(message.body)
        elif waiter.monitor is not None and waiter.monitor_timeout is not None:
            loop = asyncio.get_running_loop()
            waiter.monitor.reschedule(loop.time() + waiter.monitor_timeout)

    def fail_all(self, exc: Exception) -> None:
        """Fail every waiting call with ``exc`` (the transport closed)."""
        for waiter in self._waiting.values():
            if not waiter.final.done():
                waiter.final.set_exception(exc)
