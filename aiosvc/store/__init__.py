"""Service stores, picked lazily by URL scheme (only the one in use is imported).

The scheme table is :data:`aiosvc.backends.STORES`.
"""

from __future__ import annotations

from ..backends import STORES, backend_class
from ..settings import Settings
from .base import HEALTH_CHECKS, OK, ServiceRecord, ServiceStore, failed_checks

__all__ = [
    "HEALTH_CHECKS",
    "OK",
    "ServiceRecord",
    "ServiceStore",
    "failed_checks",
    "get_store",
    "store_class",
]


def store_class(url: str) -> type[ServiceStore]:
    """The :class:`ServiceStore` class that serves ``url``'s scheme (imported now).

    Raises:
        ConfigError: the scheme names no store.
    """
    return backend_class(STORES, "database_url", url, ServiceStore)


def get_store(settings: Settings, *, migrate: bool = True) -> ServiceStore:
    """A new, not yet connected store for ``settings.database_url``.

    ``migrate=False``: connecting never changes the schema (see ``ServiceStore.connect``).

    Raises:
        ConfigError: the URL's scheme names no store.
    """
    return store_class(settings.database_url)(settings, migrate=migrate)
