"""Service stores, picked lazily by URL scheme (only the one in use is imported)."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..exceptions import ConfigError
from ..settings import Settings
from .base import ServiceRecord, ServiceStore

__all__ = ["ServiceRecord", "ServiceStore", "get_store"]

_BACKENDS = {
    "memory": "aiosvc.store.memory:MemoryStore",
    "postgresql": "aiosvc.store.postgres:PostgresStore",
    "postgres": "aiosvc.store.postgres:PostgresStore",
}


def get_store(settings: Settings, *, migrate: bool = True) -> ServiceStore:
    """A new, not yet connected store for ``settings.database_url``.

    ``migrate=False``: connecting never changes the schema (see ``ServiceStore.connect``).

    Raises:
        ConfigError: the URL's scheme names no store.
    """
    scheme = urlsplit(settings.database_url).scheme
    try:
        module_name, _, cls_name = _BACKENDS[scheme].partition(":")
    except KeyError:
        raise ConfigError(
            f"database_url: no store for scheme {scheme!r} "
            f"(choose one of {', '.join(sorted(_BACKENDS))})"
        ) from None
    cls: type[ServiceStore] = getattr(importlib.import_module(module_name), cls_name)
    return cls(settings, migrate=migrate)
