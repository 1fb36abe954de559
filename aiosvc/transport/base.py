"""What a message transport must do; the RPC layer talks only to this.

A transport moves opaque bodies (bytes) between callers and services. It knows the
topology (DESIGN section 3) but nothing of methods, versions or JSON:

* ``consume(topic, host, ...)`` attaches a service to three queues: the shared queue
  ``topic`` (competing consumers), its own queue ``topic.host``, and a queue of its own
  bound to the fanout exchange ``topic_fanout``.
* ``cast`` publishes and returns once the broker has taken responsibility for the
  message (AMQP publisher confirms); ``call`` publishes and waits for the reply.

Delivery is at least once for the consumer: a message is acknowledged only when the
server says so (``ack``), and a message still unacknowledged when its consumer closes
goes back to its queue marked ``redelivered``. ``reject`` dead-letters a message that can
never be handled (malformed); it is never requeued.

Nova: ``oslo_messaging._drivers.impl_rabbit`` and ``amqpdriver``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import ClassVar, Protocol

from ..settings import Settings

__all__ = ["Consumer", "IncomingMessage", "MessageCallback", "Transport"]


class IncomingMessage(Protocol):
    """One delivered message, as the server sees it."""

    @property
    def body(self) -> bytes:
        """The encoded envelope."""
        ...

    @property
    def message_id(self) -> str:
        """The publisher's id for the message, or ``"-"`` when it gave none; for logs."""
        ...

    @property
    def redelivered(self) -> bool:
        """True when the broker delivered this message before (it was not acknowledged)."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's string headers (W3C trace context, :mod:`aiosvc.tracing`); empty
        when it has none."""
        ...

    @property
    def reply_expected(self) -> bool:
        """Whether the caller waits for :meth:`reply` (a call; not a cast)."""
        ...

    async def reply(self, body: bytes, to: str | None = None) -> None:
        """Send ``body`` back to the caller (a no-op for a cast). Never raises for a gone caller.

        ``to`` names the caller's reply queue when the request carries it in its body
        (oslo.messaging's wire); otherwise the transport knows where the caller waits.
        """
        ...

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message."""
        ...

    async def reject(self) -> None:
        """Dead-letter a message that can never be handled; it is not requeued."""
        ...


MessageCallback = Callable[[IncomingMessage], None]
"""Called by the transport, on the event loop, once per delivered message.

It must return at once (the RPC server hands the handling to a task of its own);
the transport bounds how many messages are delivered and not yet acknowledged by
the ``prefetch`` given to :meth:`Transport.consume`.
"""


class Consumer(abc.ABC):
    """A service's attachment to its three queues, returned by :meth:`Transport.consume`."""

    @abc.abstractmethod
    async def pause_shared(self) -> None:
        """Stop taking messages from the shared ``topic`` queue; keep ``topic.host`` and fanout.

        Used while the service is disabled (the operator's way to drain a host).
        Idempotent.
        """

    @abc.abstractmethod
    async def resume_shared(self) -> None:
        """Take messages from the shared ``topic`` queue again. Idempotent."""

    @property
    def attached(self) -> bool:
        """Whether messages can be delivered now.

        That is, every queue is consumed (the shared one left out while paused) and the
        consumer is not cancelled. Cheap, for a service's health report; a consumer that
        cannot tell says True.
        """
        return True

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new messages on every queue; messages already delivered stay
        deliverable to ``ack``/``reply``. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel, then give back every message not yet acknowledged (the broker
        redelivers them) and remove the fanout queue. Idempotent."""


class Transport(abc.ABC):
    """A connection to a message broker, chosen by the scheme of ``settings.transport_url``.

    Implementations: :mod:`aiosvc.transport.memory` (``memory://``) and
    :mod:`aiosvc.transport.amqp` (``amqp://``, ``amqps://``); the scheme table is
    :data:`aiosvc.backends.TRANSPORTS`.
    """

    in_process: ClassVar[bool] = False
    """True when the broker lives in this process, so no other process can reach it."""

    reply_queue: str | None = None
    """The queue replies to this transport's calls must go to, for a wire that names it in
    the request (oslo.messaging's); None when the transport routes replies itself."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def connected(self) -> bool:
        """Whether the broker can be reached now (connected, and able to publish).

        Cheap (no round trip), for a service's health report; it goes false while a
        connection is lost and true again once it is back. A transport that cannot tell
        says True.
        """
        return True

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect to the broker.

        Raises:
            TransportError: unreachable or refused; the message never contains a password.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every consumer and the connection. Idempotent."""

    @abc.abstractmethod
    async def consume(
        self, topic: str, host: str, callback: MessageCallback, *, prefetch: int
    ) -> Consumer:
        """Declare the topology for ``topic`` and ``host`` and start delivering to ``callback``.

        Returns once the queues are bound and consumers are attached (readiness).
        """

    @abc.abstractmethod
    async def cast(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str,
        server: str | None = None,
        fanout: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish ``body`` to ``topic`` (or ``topic.server``, or the fanout exchange).

        Returns once the broker has confirmed the message (persistent delivery).
        A fanout cast with nobody listening is not an error. ``headers`` travel with the
        message (AMQP message headers), for :attr:`IncomingMessage.headers`.

        Raises:
            MessageUndeliverable: no queue is bound for ``topic``/``topic.server``.
            TransportError: the broker is unreachable or refused the message.
        """

    @abc.abstractmethod
    async def call(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str,
        timeout: float,
        server: str | None = None,
        call_monitor_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Publish ``body`` as a request and return the reply's body.

        The request expires in the broker after ``timeout`` seconds. Many calls may be
        in flight at once on one transport. ``call_monitor_timeout``: on a wire with
        heartbeats (oslo.messaging's), fail when none came for that long. ``headers``
        travel with the request, as for :meth:`cast`.

        Raises:
            MessagingTimeout: no reply within ``timeout`` (also while the broker is down).
            MessageUndeliverable: no queue is bound for the target.
            TransportError: the broker is unreachable.
        """

    async def __aenter__(self) -> Transport:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
