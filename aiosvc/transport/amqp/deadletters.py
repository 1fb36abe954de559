"""Looking at the dead-letter queue ``<control_exchange>.dlx``, replaying and purging it.

What ``python -m aiosvc dead-letters list|replay|purge`` does on the broker:

* :func:`list_dead_letters` reads messages with ``basic.get`` and never acknowledges them:
  closing the channel gives them back to the queue, in their order.
* :func:`replay` republishes each to the queue it first died in (through the default
  exchange, ``mandatory``, with publisher confirms), without the ``x-death`` headers
  RabbitMQ added, and acknowledges it in the dead-letter queue only once the broker has
  confirmed the copy: a replay that stops half way loses nothing (it may leave a message
  both replayed and still dead, never neither). One whose queue is gone stays.
* :func:`purge` empties the queue.

Each function opens a connection of its own, for one command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from ...exceptions import TransportError
from ...log import one_line
from ...settings import Settings, redact_url
from .. import topology
from .connection import broker_urls

__all__ = [
    "DeadLetter",
    "Replayed",
    "amqp_connection",
    "copy_of",
    "list_dead_letters",
    "purge",
    "replay",
]

_CONNECT_TIMEOUT = 30.0
# The headers RabbitMQ adds when it dead-letters a message; a replayed copy goes without.
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, with what RabbitMQ recorded of its death."""

    message_id: str
    reason: str  # x-first-death-reason: rejected, maxlen, delivery_limit (or expired)
    queue: str  # the queue it first died in
    exchange: str  # where it had been published to
    routing_key: str
    died_at: datetime.datetime | None
    deaths: int  # how many times it died in that queue for that reason
    body: bytes

    @property
    def size(self) -> int:
        """The body's length in bytes."""
        return len(self.body)

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        """What ``message``, taken from the dead-letter queue, says about itself."""
        headers = message.headers or {}
        queue = _text(headers.get("x-first-death-queue"))
        reason = _text(headers.get("x-first-death-reason"))
        first = _first_death(headers.get("x-death"), queue, reason)
        keys = first.get("routing-keys") or [message.routing_key or ""]
        died_at = first.get("time")
        return cls(
            message_id=message.message_id or "-",
            reason=reason or "-",
            queue=queue or "-",
            exchange=_text(headers.get("x-first-death-exchange", first.get("exchange"))),
            routing_key=_text(keys[0]) if isinstance(keys, list) and keys else "",
            died_at=died_at if isinstance(died_at, datetime.datetime) else None,
            deaths=int(first.get("count") or 1),
            body=message.body,
        )


@dataclasses.dataclass(frozen=True)
class Replayed:
    """What :func:`replay` did: the messages replayed, and those kept (queue gone)."""

    replayed: list[DeadLetter]
    kept: list[DeadLetter]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _first_death(deaths: Any, queue: str, reason: str) -> Mapping[str, Any]:
    """The ``x-death`` entry of the first death (the list is newest first)."""
    if not isinstance(deaths, list) or not deaths:
        return {}
    for entry in deaths:
        if (
            isinstance(entry, Mapping)
            and _text(entry.get("queue")) == queue
            and _text(entry.get("reason")) == reason
        ):
            return entry
    last = deaths[-1]
    return last if isinstance(last, Mapping) else {}


@contextlib.asynccontextmanager
async def amqp_connection(url: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A plain connection to ``url`` for one command; a failure is one TransportError line."""
    connection, error = None, ""
    for broker in broker_urls(url):  # the first that answers, as the transport does
        try:
            connection = await aio_pika.connect(broker, timeout=_CONNECT_TIMEOUT)
            break
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            error = one_line(exc, secret=broker.password)
    if connection is None:
        raise TransportError(f"cannot connect to AMQP broker {redact_url(url)}: {error}")
    async with connection:
        yield connection


async def _dead_letter_queue(
    connection: aio_pika.abc.AbstractConnection, name: str, **channel_options: Any
) -> tuple[AbstractChannel, AbstractQueue] | None:
    """A channel and the existing queue ``name``; None if there is no such queue."""
    channel = await connection.channel(**channel_options)
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None  # no service of this control_exchange has started yet
    return channel, queue


async def list_dead_letters(settings: Settings, limit: int) -> tuple[int, list[DeadLetter]]:
    """How many dead letters there are, and the first ``limit`` of them; none is removed."""
    name = topology.dead_letter_exchange(settings.control_exchange)
    async with amqp_connection(settings.transport_url) as connection:
        found = await _dead_letter_queue(connection, name)
        if found is None:
            return 0, []
        channel, queue = found
        total = queue.declaration_result.message_count or 0
        letters: list[DeadLetter] = []
        while len(letters) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letters.append(DeadLetter.of(message))
        await channel.close()  # the broker requeues them all, in their order
        return total, letters


async def replay(settings: Settings, limit: int, message_id: str | None = None) -> Replayed:
    """Republish up to ``limit`` dead letters (only ``message_id``'s, if given) to the
    queue each died in; each leaves the dead-letter queue once its copy is confirmed."""
    name = topology.dead_letter_exchange(settings.control_exchange)
    done = Replayed([], [])
    async with amqp_connection(settings.transport_url) as connection:
        found = await _dead_letter_queue(
            connection, name, publisher_confirms=True, on_return_raises=True
        )
        if found is None:
            return done
        channel, queue = found
        total = queue.declaration_result.message_count or 0
        # Held without ack until the channel closes: what is skipped or kept goes back then.
        for _ in range(total):
            if len(done.replayed) + len(done.kept) >= limit:
                break
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letter = DeadLetter.of(message)
            if message_id is not None and letter.message_id != message_id:
                continue
            if await _republish(channel, message, letter.queue):
                await message.ack()
                done.replayed.append(letter)
            else:
                done.kept.append(letter)
        await channel.close()
    return done


async def _republish(
    channel: AbstractChannel, message: AbstractIncomingMessage, queue: str
) -> bool:
    """Publish a copy of ``message`` to ``queue``; False if no such queue exists."""
    try:
        await channel.default_exchange.publish(
            copy_of(message, without_deaths=True), routing_key=queue, mandatory=True
        )
    except aio_pika.exceptions.DeliveryError:
        return False  # returned: the queue is gone (a fanout queue goes with its consumer)
    return True


def copy_of(message: AbstractIncomingMessage, *, without_deaths: bool = False) -> aio_pika.Message:
    """A message to publish with the body and properties of ``message`` (but ``user_id``,
    which the broker checks against the login); ``without_deaths``: without the headers
    RabbitMQ added when it dead-lettered it."""
    headers = dict(message.headers or {})
    if without_deaths:
        headers = {k: v for k, v in headers.items() if not k.startswith(_DEATH_HEADERS)}
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


async def purge(settings: Settings) -> int:
    """Empty the dead-letter queue; how many messages it held."""
    name = topology.dead_letter_exchange(settings.control_exchange)
    async with amqp_connection(settings.transport_url) as connection:
        found = await _dead_letter_queue(connection, name)
        if found is None:
            return 0
        channel, queue = found
        result = await queue.purge()
        await channel.close()
        return int(result.message_count or 0)
