"""Declaring the topology of DESIGN section 3 on RabbitMQ: :class:`Declarer`.

The names come from :mod:`aiosvc.transport.topology`; this module adds what RabbitMQ needs
to know about them: the durable topic exchange ``control_exchange``; the queues ``topic``
and ``topic.host`` bound by their own names (durable per ``amqp_durable_queues``, or quorum
queues with ``amqp_quorum_queues``); the durable fanout exchange ``topic_fanout`` with one
auto-delete queue per consumer; and the dead-letter exchange and queue
``<control_exchange>.dlx`` that every one of those queues dead-letters into.
"""

from __future__ import annotations

from typing import Any

from ...settings import Settings
from .. import topology
from .channel import Channel

__all__ = ["Declarer"]


class Declarer:
    """Declares exchanges and queues, remembering which exchanges exist already.

    Publishers declare the exchange they publish to once (RabbitMQ closes the channel on a
    publish to a missing exchange); :meth:`forget` makes them declare again after a
    reconnect, when the broker may be a new one.
    """

    def __init__(self, settings: Settings) -> None:
        self.exchange = settings.control_exchange
        self.dead_letter = topology.dead_letter_exchange(self.exchange)
        self._quorum = settings.amqp_quorum_queues
        self._durable = settings.amqp_durable_queues or self._quorum
        self._declared: set[str] = set()

    def _queue_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-dead-letter-exchange": self.dead_letter}
        if self._quorum:
            arguments["x-queue-type"] = "quorum"
        return arguments

    async def exchange_for(self, channel: Channel, route: topology.Route) -> None:
        """Declare the exchange of ``route`` unless this declarer did already."""
        if route.exchange not in self._declared:
            await self._exchange(channel, route.exchange, route.kind)

    async def _exchange(self, channel: Channel, name: str, kind: topology.ExchangeKind) -> None:
        await channel.exchange_declare(name, exchange_type=kind, durable=True)
        self._declared.add(name)

    def forget(self, _: object = None) -> None:
        """Declare exchanges again on next use (the channel was lost)."""
        self._declared.clear()

    async def consumer_queues(
        self, channel: Channel, topic: str, host: str, fanout_queue: str
    ) -> None:
        """Declare and bind the dead-letter queue and the three queues of one consumer.

        Everything is declared every time (on each reopened channel too): after a
        reconnect the broker may have lost what is not durable, or be a new one.
        """
        dlx = self.dead_letter
        await channel.exchange_declare(dlx, exchange_type="fanout", durable=True)
        await channel.queue_declare(
            dlx, durable=True, arguments={"x-queue-type": "quorum"} if self._quorum else None
        )
        await channel.queue_bind(dlx, dlx, routing_key="")
        await self._exchange(channel, self.exchange, "topic")
        arguments = self._queue_arguments()
        for queue in (topology.shared_queue(topic), topology.server_queue(topic, host)):
            await channel.queue_declare(queue, durable=self._durable, arguments=arguments)
            await channel.queue_bind(queue, self.exchange, routing_key=queue)
        fanout = topology.fanout_exchange(topic)
        await self._exchange(channel, fanout, "fanout")
        await channel.queue_declare(
            fanout_queue, auto_delete=True, arguments={"x-dead-letter-exchange": dlx}
        )
        await channel.queue_bind(fanout_queue, fanout, routing_key="")
