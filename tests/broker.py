"""Looking at a real RabbitMQ from the tests, over AMQP (no management plugin needed)."""

from __future__ import annotations

import aio_pika


async def queue_length(url: str, name: str) -> int:
    """How many messages are ready in queue ``name`` (a passive declare: nothing changes)."""
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0
