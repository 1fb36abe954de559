"""Re-creating queues with the arguments of the current settings: :func:`migrate_queues`.

What ``python -m aiosvc queues migrate`` does. A queue keeps the arguments it was declared
with, so after a change of ``amqp_quorum_queues``, ``control_exchange`` or the dead-letter
bounds, services use the old queues as they are (:mod:`.declare` warns). For each queue
whose arguments differ, the messages are moved to a temporary durable queue
``<queue>.aiosvc-migrating`` (each acknowledged in its queue only once the broker confirmed
its copy), the queue is unbound from ``control_exchange`` and deleted once empty (a message
that arrived meanwhile is moved first), declared again with the new arguments and
bindings, and the messages are moved back. Nothing is lost if it stops half way: running
it again first finishes the move and drains a leftover temporary queue into the queue.
The old dead-letter exchange (``fanout`` before the dead-letter queue was bounded) is
replaced the same way, its bindings with it.

The services of a topic must be stopped while its queues are migrated (a running one
would declare the queue again with its own settings): a queue with consumers is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from ...exceptions import TransportError
from ...settings import Settings
from .deadletters import amqp_connection, copy_of
from .declare import DEAD_LETTER_EXCHANGE_KIND, Declarer, QueueSpec, dead_letter_bindings

__all__ = ["MIGRATING_SUFFIX", "Migrated", "migrate_queues"]

MIGRATING_SUFFIX = ".aiosvc-migrating"
_BATCH = 200  # messages moved per round of publisher confirms
_DELETE_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class Migrated:
    """What :func:`migrate_queues` did to one queue or exchange."""

    kind: str  # "queue" or "exchange"
    name: str
    # "re-created"; "finished" (a leftover temporary queue drained into it); "as the
    # settings ask"; "absent" (a service declares it when it starts)
    outcome: str
    moved: int = 0  # messages moved out and back (leftovers of an interrupted run included)


Bind = Callable[[AbstractChannel, AbstractQueue], Awaitable[None]]


async def migrate_queues(
    settings: Settings, topics: Sequence[tuple[str, Sequence[str]]]
) -> list[Migrated]:
    """Bring the dead-letter exchange and queue, and the queues ``topic`` and
    ``topic.host`` of each ``(topic, hosts)``, to the arguments ``settings`` ask.

    Raises:
        TransportError: the broker is unreachable, refused something, or a queue to
            re-create has consumers (the message names it).
    """
    declarer = Declarer(settings)
    async with amqp_connection(settings.transport_url) as connection:
        done = [await _migrate_dead_letter_exchange(connection, declarer)]
        dlq = declarer.dead_letter_queue()

        async def bind_dlq(channel: AbstractChannel, queue: AbstractQueue) -> None:
            for arguments in dead_letter_bindings():
                await queue.bind(declarer.dead_letter, arguments=arguments)

        done.append(await _migrate_queue(connection, dlq, bind_dlq, "every topic"))
        for topic, hosts in topics:
            for spec in declarer.topic_queues(topic, tuple(hosts)):

                async def bind(channel: AbstractChannel, queue: AbstractQueue) -> None:
                    await channel.declare_exchange(declarer.exchange, "topic", durable=True)
                    await queue.bind(declarer.exchange, routing_key=queue.name)

                async def unbind(channel: AbstractChannel, name: str = spec.name) -> None:
                    await channel.declare_exchange(declarer.exchange, "topic", durable=True)
                    queue = await channel.declare_queue(name, passive=True)
                    await queue.unbind(declarer.exchange, routing_key=name)

                done.append(await _migrate_queue(connection, spec, bind, repr(topic), unbind))
    return done


async def _migrate_dead_letter_exchange(
    connection: AbstractConnection, declarer: Declarer
) -> Migrated:
    name = declarer.dead_letter
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, DEAD_LETTER_EXCHANGE_KIND, durable=True)
        return Migrated("exchange", name, "as the settings ask")
    except aiormq.exceptions.ChannelPreconditionFailed:
        pass
    # Its bindings go with it; the dead-letter queue's are made again below.
    async with await connection.channel() as channel:
        await channel.exchange_delete(name)
        await channel.declare_exchange(name, DEAD_LETTER_EXCHANGE_KIND, durable=True)
    return Migrated("exchange", name, "re-created")


async def _state(connection: AbstractConnection, spec: QueueSpec) -> str:
    """``as asked``, ``differs`` or ``absent``: ``spec.name`` on the broker."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(spec.name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return "absent"
    try:
        await channel.declare_queue(spec.name, durable=spec.durable, arguments=spec.arguments)
    except aiormq.exceptions.ChannelPreconditionFailed:
        return "differs"
    await channel.close()
    return "as asked"


async def _existing(connection: AbstractConnection, name: str) -> tuple[int, int] | None:
    """``(messages, consumers)`` of the queue ``name``; None if there is none."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    result = queue.declaration_result
    await channel.close()
    return result.message_count or 0, result.consumer_count or 0


async def _migrate_queue(
    connection: AbstractConnection,
    spec: QueueSpec,
    bind: Bind,
    users: str,
    unbind: Callable[[AbstractChannel], Awaitable[None]] | None = None,
) -> Migrated:
    temporary = spec.name + MIGRATING_SUFFIX
    state = await _state(connection, spec)
    leftover = await _existing(connection, temporary)
    if state == "absent" and leftover is None:
        return Migrated("queue", spec.name, "absent")
    if state == "as asked" and leftover is None:
        return Migrated("queue", spec.name, "as the settings ask")
    if state == "differs":
        found = await _existing(connection, spec.name)
        if found is not None and found[1]:
            raise TransportError(
                f"queue {spec.name!r} has {found[1]} consumer(s): stop the services of "
                f"{users} before migrating it"
            )
        async with await connection.channel() as channel:
            await channel.declare_queue(temporary, durable=True)
            if unbind is not None:
                await unbind(channel)
        await _emptied_and_deleted(connection, spec.name, temporary)
    async with await connection.channel() as channel:
        queue = await channel.declare_queue(
            spec.name, durable=spec.durable, arguments=spec.arguments
        )
        await bind(channel, queue)
    moved = await _move(connection, temporary, spec.name)  # all of them, leftovers too
    async with await connection.channel() as channel:
        await channel.queue_delete(temporary, if_empty=True)
    return Migrated("queue", spec.name, "re-created" if state != "as asked" else "finished", moved)


async def _emptied_and_deleted(connection: AbstractConnection, name: str, into: str) -> None:
    """Move every message of ``name`` to ``into``, then delete ``name`` once it is empty.

    Quorum queues refuse ``if-empty`` on delete; the queue is unbound from the exchange
    publishers use first, so that nothing arrives between the count and the delete.
    """
    for _ in range(_DELETE_ATTEMPTS):
        await _move(connection, name, into)
        async with await connection.channel() as channel:
            queue = await channel.declare_queue(name, passive=True)
            if not queue.declaration_result.message_count:
                await channel.queue_delete(name)
                return
    raise TransportError(f"queue {name!r} keeps receiving messages: stop what publishes to it")


async def _move(connection: AbstractConnection, source: str, destination: str) -> int:
    """Move every message of ``source`` to ``destination``, keeping their properties and
    order; each is acknowledged in ``source`` once the broker confirmed its copy."""
    moved = 0
    async with await connection.channel(publisher_confirms=True, on_return_raises=True) as channel:
        queue = await channel.declare_queue(source, passive=True)
        while True:
            batch: list[AbstractIncomingMessage] = []
            while len(batch) < _BATCH:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                batch.append(message)
            if not batch:
                return moved
            try:
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            copy_of(m), routing_key=destination, mandatory=True
                        )
                        for m in batch
                    )
                )
            except aio_pika.exceptions.DeliveryError:
                raise TransportError(
                    f"cannot move messages to queue {destination!r}: it is gone"
                ) from None
            await batch[-1].ack(multiple=True)
            moved += len(batch)
