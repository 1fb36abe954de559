"""The RabbitMQ transport (``amqp://``, ``amqps://``) on aio-pika.

The only package of aiosvc that imports ``aio_pika``/``aiormq``. One module per idea:

* :mod:`.transport`: :class:`AMQPTransport`: connections, casts, calls, replies;
* :mod:`.consumer`: :class:`AMQPConsumer`, a service's consumers on its three queues;
* :mod:`.message`: :class:`AMQPIncomingMessage`, one delivered message;
* :mod:`.declare`: the exchanges and queues, as RabbitMQ declares them (the names come
  from :mod:`aiosvc.transport.topology`, shared with the memory transport);
* :mod:`.replies`: direct reply-to replies matched to the calls waiting for them;
* :mod:`.channel`: :class:`ChannelKeeper`, which keeps a channel usable across reconnects;
* :mod:`.connection`: several brokers in one URL and the failover between them, and what
  is logged when the broker goes and comes back;
* :mod:`.deadletters`: listing, replaying and purging ``<control_exchange>.dlx``;
* :mod:`.migrate`: re-creating queues whose arguments the settings changed.

URL: ``amqp[s]://user:password@host:port/vhost?query``, or several brokers,
``amqp[s]://user:password@host1:port,host2:port/vhost?query``. Query parameters understood
(by aio-pika/aiormq underneath):

* TLS (``amqps://``): ``cafile``, ``capath``, ``cadata`` (base64 DER), ``certfile`` and
  ``keyfile`` (client certificate), ``no_verify_ssl=1`` (do not verify the broker's
  certificate; for tests only).
* ``heartbeat`` (seconds, default 60), ``name`` (connection name shown in the RabbitMQ UI;
  default ``<prog>:<pid>:client`` for the publishing connection and
  ``<prog>:<pid>:<topic>`` for the consuming one), ``reconnect_interval`` (seconds
  between reconnection attempts, default 1), ``auth`` (``plain`` or ``external``).

A call request that expired in its queue is dropped, as by the memory transport: the
dead-letter exchange routes only the other reasons to its queue (:mod:`.declare`).

Reconnect: connections are aio-pika robust connections, which reconnect and reopen their
channels; everything on the channels (topology, consumers, the direct reply-to consumer,
QoS) is re-established by a :class:`ChannelKeeper` per channel. Calls waiting when the
call channel is lost fail at once with :class:`~aiosvc.exceptions.TransportError`, since
direct reply-to replies cannot survive the channel.

Nova: ``oslo_messaging._drivers.impl_rabbit`` and ``amqpdriver``.
"""

from __future__ import annotations

from .channel import ChannelKeeper
from .consumer import AMQPConsumer
from .message import AMQPIncomingMessage
from .transport import AMQPTransport

__all__ = ["AMQPConsumer", "AMQPIncomingMessage", "AMQPTransport", "ChannelKeeper"]
