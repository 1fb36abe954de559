"""Which module serves each URL scheme: one table per kind of backend.

``transport_url`` picks a :class:`~aiosvc.transport.Transport` and ``database_url`` a
:class:`~aiosvc.store.ServiceStore` by scheme. Settings validate a URL's scheme against these
tables, and :func:`aiosvc.transport.get_transport` / :func:`aiosvc.store.get_store` import
the class a line names only when it is used (so ``memory://`` never imports aio-pika or
asyncpg). A new backend is one module behind the protocol plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from .exceptions import ConfigError
from .loading import load_object

__all__ = ["STORES", "TRANSPORTS", "backend_class"]

T = TypeVar("T")

TRANSPORTS: dict[str, str] = {
    "memory": "aiosvc.transport.memory:MemoryTransport",
    "amqp": "aiosvc.transport.amqp:AMQPTransport",
    "amqps": "aiosvc.transport.amqp:AMQPTransport",
    "rabbit": "aiosvc.transport.amqp:AMQPTransport",  # oslo.messaging's name for amqp://
}
"""URL scheme of ``transport_url`` -> the import path of its Transport class."""

STORES: dict[str, str] = {
    "memory": "aiosvc.store.memory:MemoryStore",
    "postgresql": "aiosvc.store.postgres:PostgresStore",
    "postgres": "aiosvc.store.postgres:PostgresStore",
}
"""URL scheme of ``database_url`` -> the import path of its ServiceStore class."""


def backend_class(
    table: Mapping[str, str], setting: str, url: str, base: Callable[..., T]
) -> type[T]:
    """The class ``table`` names for ``url``'s scheme, imported now; it must subclass ``base``.

    Raises:
        ConfigError: the scheme is not in the table (the message names ``setting``).
        LoadError: the table's line names a class that does not load.
    """
    scheme = urlsplit(url).scheme
    if scheme not in table:
        raise ConfigError(
            f"{setting}: no backend for scheme {scheme!r} (choose one of {', '.join(table)})"
        )
    return load_object(table[scheme], base)
