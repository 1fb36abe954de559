"""Declaring the topology of DESIGN section 3 on RabbitMQ: :class:`Declarer`.

The names come from :mod:`aiosvc.transport.topology`; this module adds what RabbitMQ needs
to know about them: the durable topic exchange ``control_exchange``; the queues ``topic``
and ``topic.host`` bound by their own names (durable per ``amqp_durable_queues``, or quorum
queues with ``amqp_quorum_queues``); the durable fanout exchange ``topic_fanout`` with one
auto-delete queue per consumer; and the dead-letter exchange and queue
``<control_exchange>.dlx`` that every one of those queues dead-letters into.

The dead-letter exchange is a *headers* exchange: the dead-letter queue is bound to it once
per reason RabbitMQ records in ``x-first-death-reason`` that is worth keeping (``rejected``,
``maxlen``, ``delivery_limit``), so a call request that expired in its queue (its caller
gave up, and will read no answer) matches no binding and is dropped. The queue is bounded
by ``dead_letter_max_length`` (the oldest go first) and ``dead_letter_ttl``.

With ``rpc_wire = "oslo"`` the names are the same but the declarations are
oslo.messaging's, so that its services and aiosvc's can declare them in any order: the
control exchange and topic queues are durable per ``amqp_durable_queues`` (or quorum), the
topic queues carry no dead-letter exchange, and the fanout exchange is non-durable and
auto-delete (so it is declared again before each fanout cast). A message such a service
cannot handle is dead-lettered by the transport itself (see ``AMQPTransport``).

A queue or exchange keeps the arguments it was first declared with, and RabbitMQ refuses
(``PRECONDITION_FAILED``, which closes the channel) a declaration with others: after a
change of ``amqp_quorum_queues``, ``control_exchange`` or the dead-letter bounds, or an
upgrade from a version that declared the dead-letter exchange ``fanout``. A service must
still start then: such a declaration falls back to using what exists as it is, with one
warning naming what differs and ``python -m aiosvc queues migrate``, which re-creates it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import aiormq

from ...settings import Settings
from .. import topology
from .channel import Channel

__all__ = ["DEAD_LETTER_REASONS", "MIGRATE_COMMAND", "Declarer", "QueueSpec"]

log = logging.getLogger(__name__)

#: The ``x-first-death-reason`` values routed to the dead-letter queue; ``expired`` is not.
DEAD_LETTER_REASONS = ("rejected", "maxlen", "delivery_limit")
DEAD_LETTER_EXCHANGE_KIND = "headers"
#: What an operator runs to re-create queues with the arguments of the current settings.
MIGRATE_COMMAND = "python -m aiosvc queues migrate"


class QueueSpec(NamedTuple):
    """A queue as the current settings declare it."""

    name: str
    durable: bool
    arguments: dict[str, Any]


class _ExchangeSpec(NamedTuple):
    name: str
    kind: str
    durable: bool
    auto_delete: bool


def dead_letter_bindings() -> list[dict[str, Any]]:
    """The binding arguments of the dead-letter queue on its headers exchange, one per reason.

    ``any-with-x`` (RabbitMQ 3.10+): a headers exchange ignores ``x-`` headers otherwise.
    """
    return [{"x-match": "any-with-x", "x-first-death-reason": r} for r in DEAD_LETTER_REASONS]


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
        self.oslo = settings.rpc_wire == "oslo"
        self._dead_letter_max_length = settings.dead_letter_max_length
        self._dead_letter_ttl_ms = max(1, round(settings.dead_letter_ttl * 1000))
        self._declared: set[str] = set()
        self._warned: set[str] = set()

    # -- what the settings ask ----------------------------------------------

    def topic_queues(self, topic: str, hosts: tuple[str, ...] = ()) -> list[QueueSpec]:
        """The shared queue of ``topic`` and the queues of ``hosts``, as declared now."""
        arguments: dict[str, Any] = (
            {} if self.oslo else {"x-dead-letter-exchange": self.dead_letter}
        )
        if self._quorum:
            arguments["x-queue-type"] = "quorum"
        names = [topology.shared_queue(topic), *(topology.server_queue(topic, h) for h in hosts)]
        return [QueueSpec(name, self._durable, dict(arguments)) for name in names]

    def dead_letter_queue(self) -> QueueSpec:
        """The dead-letter queue ``<control_exchange>.dlx``, bounded, as declared now."""
        arguments: dict[str, Any] = {
            "x-max-length": self._dead_letter_max_length,
            "x-overflow": "drop-head",
            "x-message-ttl": self._dead_letter_ttl_ms,
        }
        if self._quorum:
            arguments["x-queue-type"] = "quorum"
        return QueueSpec(self.dead_letter, True, arguments)

    # -- publishers ---------------------------------------------------------

    async def exchange_for(self, channel: Channel, route: topology.Route) -> None:
        """Declare the exchange of ``route`` unless this declarer did already (oslo's
        auto-delete fanout exchanges: every time, as they go with their last queue)."""
        if route.exchange not in self._declared:
            await self._exchange(channel, route.exchange, route.kind)

    async def _exchange(self, channel: Channel, name: str, kind: topology.ExchangeKind) -> None:
        spec = _ExchangeSpec(name, kind, *self._exchange_options(kind))
        await _declare_exchange(spec, channel, False)
        if not spec.auto_delete:  # an auto-delete exchange goes with its last queue
            self._declared.add(name)

    def _exchange_options(self, kind: topology.ExchangeKind) -> tuple[bool, bool]:
        """``(durable, auto_delete)`` of the control or a fanout exchange, as declared now."""
        if not self.oslo:
            return True, False
        if kind == "fanout":  # oslo's: transient, gone with its last queue
            return False, True
        return self._durable, False

    def forget(self, _: object = None) -> None:
        """Declare exchanges again on next use (the channel was lost)."""
        self._declared.clear()

    # -- consumers ----------------------------------------------------------

    async def consumer_queues(
        self, channel: Channel, topic: str, host: str, fanout_queue: str
    ) -> None:
        """Declare and bind the dead-letter queue and the three queues of one consumer.

        Everything is declared every time (on each reopened channel too): after a
        reconnect the broker may have lost what is not durable, or be a new one. What
        RabbitMQ may refuse is declared on a channel of its own (a refusal closes it), and
        used as it is when refused (``_tolerant``).
        """
        dlq = self.dead_letter_queue()
        async with _Probe(channel) as probe:
            wanted = f"a {DEAD_LETTER_EXCHANGE_KIND} exchange, so that expired calls are dropped"
            await self._tolerant(
                probe,
                f"exchange {self.dead_letter!r}",
                wanted,
                topic,
                partial(
                    _declare_exchange,
                    _ExchangeSpec(self.dead_letter, DEAD_LETTER_EXCHANGE_KIND, True, False),
                ),
            )
            for spec in (dlq, *self.topic_queues(topic, (host,))):
                await self._tolerant(
                    probe,
                    f"queue {spec.name!r}",
                    _shown(spec.arguments),
                    topic,
                    partial(_declare_queue, spec),
                )
            fanout = topology.fanout_exchange(topic)
            exchanges: tuple[tuple[str, topology.ExchangeKind], ...] = (
                (self.exchange, "topic"),
                (fanout, "fanout"),
            )
            for name, kind in exchanges:
                exchange = _ExchangeSpec(name, kind, *self._exchange_options(kind))
                await self._tolerant(
                    probe,
                    f"exchange {name!r}",
                    f"durable={exchange.durable}, auto_delete={exchange.auto_delete}",
                    topic,
                    partial(_declare_exchange, exchange),
                    migrate=False,
                )
        for arguments in dead_letter_bindings():
            await channel.queue_bind(dlq.name, self.dead_letter, arguments=arguments)
        for queue in (topology.shared_queue(topic), topology.server_queue(topic, host)):
            await channel.queue_bind(queue, self.exchange, routing_key=queue)
        await channel.queue_declare(
            fanout_queue, auto_delete=True, arguments={"x-dead-letter-exchange": self.dead_letter}
        )
        await channel.queue_bind(fanout_queue, fanout, routing_key="")

    async def _tolerant(
        self,
        probe: _Probe,
        what: str,
        wanted: str,
        topic: str,
        declare: Callable[[Channel, bool], Awaitable[object]],
        *,
        migrate: bool = True,
    ) -> None:
        """``declare(channel, passive=False)``; when RabbitMQ refuses it (``what`` exists
        with other arguments), use it as it is, with one warning per ``what`` (naming
        ``queues migrate`` when ``migrate``, which re-creates it)."""
        try:
            await declare(await probe.channel(), False)
            return
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            refusal = str(exc).removeprefix("PRECONDITION_FAILED - ")
        await declare(await probe.channel(), True)  # it exists, or this raises
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        remedy = (
            f"To re-create it without losing a message, stop the services of topic {topic!r} "
            f"and run `{MIGRATE_COMMAND} --topic {topic}`"
            if migrate
            else "Make the settings match the services that declared it (see docs/interop.md)"
        )
        log.log(
            level,
            "%s exists with other arguments than the settings ask (RabbitMQ: %s); using it "
            "as it is. The settings ask for %s. %s",
            what[:1].upper() + what[1:],
            refusal,
            wanted,
            remedy,
        )


async def _declare_exchange(spec: _ExchangeSpec, channel: Channel, passive: bool) -> object:
    return await channel.exchange_declare(
        spec.name,
        exchange_type=spec.kind,
        durable=spec.durable,
        auto_delete=spec.auto_delete,
        passive=passive,
    )


async def _declare_queue(spec: QueueSpec, channel: Channel, passive: bool) -> object:
    return await channel.queue_declare(
        spec.name, durable=spec.durable, arguments=spec.arguments, passive=passive
    )


def _shown(arguments: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in arguments.items()) or "no arguments"


class _Probe:
    """A channel of its own on the connection of ``channel``, reopened after a refusal."""

    def __init__(self, channel: Channel) -> None:
        self._connection = channel.connection
        self._channel: Channel | None = None

    async def channel(self) -> Channel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel()
        return self._channel

    async def __aenter__(self) -> _Probe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
