"""Message transports, picked lazily by URL scheme (only the one in use is imported).

The scheme table is :data:`aiosvc.backends.TRANSPORTS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..backends import TRANSPORTS, backend_class
from ..settings import Settings
from .base import Consumer, IncomingMessage, MessageCallback, Transport

__all__ = [
    "Consumer",
    "IncomingMessage",
    "MessageCallback",
    "Transport",
    "connect",
    "get_transport",
    "transport_class",
]


def transport_class(url: str) -> type[Transport]:
    """The :class:`Transport` class that serves ``url``'s scheme (imported now).

    Raises:
        ConfigError: the scheme names no transport.
    """
    return backend_class(TRANSPORTS, "transport_url", url, Transport)


def get_transport(settings: Settings) -> Transport:
    """A new, not yet connected transport for ``settings.transport_url``.

    Raises:
        ConfigError: the URL's scheme names no transport.
    """
    return transport_class(settings.transport_url)(settings)


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
