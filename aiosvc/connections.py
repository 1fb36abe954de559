"""What a running service shares with its manager (or an API service with its app).

A service owns one transport (its broker connections) and one store (its database pool);
:class:`Connections` hands them on, so nothing in the process opens another: a manager's
``self.rpc_client(...)`` and ``self.servicegroup`` and an ASGI app's RPC clients all run on
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .rpc.client import RPCClient
from .servicegroup import ServiceGroup
from .settings import Settings
from .store.base import ServiceStore
from .transport.base import Transport

__all__ = ["Connections"]


@dataclass(frozen=True, slots=True)
class Connections:
    """A running service's transport, store and service group, valid until it stops."""

    transport: Transport
    store: ServiceStore
    servicegroup: ServiceGroup
    settings: Settings

    def rpc_client(self, topic: str, **options: Any) -> RPCClient:
        """An :class:`~aiosvc.RPCClient` for ``topic`` on this transport.

        ``options`` are the client's (``version``, ``timeout``, ``namespace``, ``server``,
        ``fanout``, ``version_cap``); the default timeout is ``rpc_response_timeout``.
        """
        return RPCClient(self.transport, topic, **options)
