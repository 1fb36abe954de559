"""Message transports, picked lazily by URL scheme (only the one in use is imported)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from ..exceptions import ConfigError
from ..settings import Settings
from .base import Consumer, IncomingMessage, MessageCallback, Transport

__all__ = [
    "Consumer",
    "IncomingMessage",
    "MessageCallback",
    "Transport",
    "connect",
    "get_transport",
]

_BACKENDS = {
    "memory": "aiosvc.transport.memory:MemoryTransport",
    "amqp": "aiosvc.transport.amqp:AMQPTransport",
    "amqps": "aiosvc.transport.amqp:AMQPTransport",
}


def get_transport(settings: Settings) -> Transport:
    """A new, not yet connected transport for ``settings.transport_url``.

    Raises:
        ConfigError: the URL's scheme names no transport.
    """
    scheme = urlsplit(settings.transport_url).scheme
    try:
        module_name, _, cls_name = _BACKENDS[scheme].partition(":")
    except KeyError:
        raise ConfigError(
            f"transport_url: no transport for scheme {scheme!r} "
            f"(choose one of {', '.join(sorted(_BACKENDS))})"
        ) from None
    cls: type[Transport] = getattr(importlib.import_module(module_name), cls_name)
    return cls(settings)


@contextlib.asynccontextmanager
async def connect(settings: Settings | None = None) -> AsyncIterator[Transport]:
    """A connected transport for ``settings.transport_url``, closed on exit.

    For programs that only call services::

        async with aiosvc.connect(settings) as transport:
            volume = aiosvc.RPCClient(transport, "volume")
            await volume.call(ctx, "create_volume", volume_id="v1", size_gb=1)

    Raises:
        ConfigError: the URL names no transport.
        TransportError: the broker cannot be reached.
    """
    transport = get_transport(settings or Settings.load())
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()
