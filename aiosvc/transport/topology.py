"""The names of the queues and exchanges of a topic: written once, used by every transport.

For a topic on ``control_exchange`` (DESIGN section 3; Nova's rabbit driver does the same):

* the topic exchange ``control_exchange`` routes ``topic`` to the shared queue ``topic``
  (competing consumers) and ``topic.host`` to one host's own queue;
* the fanout exchange ``topic_fanout`` copies a message to one queue per running
  consumer, ``topic_fanout_<uuid4 hex>``, which goes away with it;
* what a consumer rejects goes to the dead-letter exchange ``<control_exchange>.dlx``,
  and from it to the queue of the same name (bounded; RabbitMQ's declarations, and why a
  call request that expired in its queue is not kept, are in ``aiosvc.transport.amqp.declare``).

Nova: ``oslo_messaging._drivers.impl_rabbit.Connection.declare_topic_consumer`` and
``declare_fanout_consumer``.
"""

from __future__ import annotations

import uuid
from typing import Literal, NamedTuple

__all__ = [
    "ExchangeKind",
    "Route",
    "check_name",
    "dead_letter_exchange",
    "fanout_exchange",
    "fanout_queue",
    "route",
    "server_queue",
    "shared_queue",
]

ExchangeKind = Literal["topic", "fanout"]

_NOT_IN_NAMES = frozenset("*#") | frozenset(" \t\r\n\v\f")


def check_name(kind: str, name: str) -> str:
    """``name`` if it can be a topic or host: the queue names are bound by them.

    Raises:
        ValueError: it is empty, or holds whitespace or a routing pattern (``*``, ``#``):
            a shared queue bound by ``#`` would take every message of the exchange.
    """
    if not name or _NOT_IN_NAMES & set(name) or not name.isprintable():
        raise ValueError(
            f"bad {kind} {name!r}: it names queues, so it must be non-empty, printable, "
            "without whitespace, '*' or '#'"
        )
    return name


def shared_queue(topic: str) -> str:
    """The queue every service of ``topic`` consumes from (competing consumers)."""
    return topic


def server_queue(topic: str, host: str) -> str:
    """The queue only the service of ``topic`` on ``host`` consumes from."""
    return f"{topic}.{host}"


def fanout_exchange(topic: str) -> str:
    """The exchange a fanout cast to ``topic`` goes to."""
    return f"{topic}_fanout"


def fanout_queue(topic: str) -> str:
    """A new name for one consumer's own queue on the fanout exchange of ``topic``."""
    return f"{topic}_fanout_{uuid.uuid4().hex}"


def dead_letter_exchange(control_exchange: str) -> str:
    """The dead-letter exchange (and queue) of every queue on ``control_exchange``."""
    return f"{control_exchange}.dlx"


class Route(NamedTuple):
    """Where a message to a target is published."""

    exchange: str
    kind: ExchangeKind
    routing_key: str


def route(control_exchange: str, topic: str, server: str | None, fanout: bool) -> Route:
    """The exchange and routing key of a message to ``topic``, ``topic.server`` or its fanout."""
    if fanout:
        return Route(fanout_exchange(topic), "fanout", "")
    key = server_queue(topic, server) if server else shared_queue(topic)
    return Route(control_exchange, "topic", key)
