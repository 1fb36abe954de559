"""``SchedulerManager``: the receiving side of capabilities, for a scheduler to build on.

Every service publishes its manager's capabilities (:meth:`Manager.update_service_capabilities`)
by fanout cast to ``scheduler_topic``; a scheduler's manager subclasses
:class:`SchedulerManager`, which keeps the latest capabilities of each (host, service)
with their age, forgets those older than ``service_down_time``, and answers which hosts are
up and enabled in the services table (:meth:`SchedulerManager.hosts_up`). Choosing a host
(filters, weights) stays the user's code.

A scheduler that starts asks every running service to publish at once (cinder's fanout
``publish_service_capabilities``), and :meth:`~SchedulerManager.hosts_up` waits, for at most
``capabilities_wait`` seconds after that, until every live host has answered: so requests
queued while no scheduler ran are placed once the hosts are known, not refused for want of
them.

Nova/cinder: ``cinder.scheduler.manager.SchedulerManager`` (``update_service_capabilities``),
``cinder.scheduler.host_manager.HostManager`` (``service_states``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio

from .context import Context
from .manager import Manager

__all__ = ["HostCapabilities", "SchedulerManager"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HostCapabilities:
    """What one service on one host published last, and when it arrived (manager's clock)."""

    host: str
    service_name: str
    capabilities: dict[str, Any]
    received_at: float


class SchedulerManager(Manager):
    """Base of a scheduler's manager: receives and keeps every host's capabilities.

    Its RPC endpoint ``update_service_capabilities(service_name, host, capabilities)`` (the
    name on the wire is Nova's) runs :meth:`receive_service_capabilities`; override that to
    do more on receipt, and call ``super()``.
    """

    topic: ClassVar[str | None] = "scheduler"
    _framework_endpoints: ClassVar[Mapping[str, str]] = {
        "update_service_capabilities": "receive_service_capabilities"
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._capabilities: dict[tuple[str, str], HostCapabilities] = {}
        self._received = asyncio.Condition()
        self._asked = asyncio.Event()
        self._asked_at: float | None = None  # event loop time of request_capabilities()
        self.capabilities_requested_at: float | None = None
        """When :meth:`request_capabilities` asked the hosts, on the manager's clock."""

    async def receive_service_capabilities(
        self, ctx: Context, service_name: str, host: str, capabilities: dict[str, Any]
    ) -> None:
        """RPC ``update_service_capabilities``: keep what ``host``'s ``service_name`` published."""
        self._capabilities[host, service_name] = HostCapabilities(
            host, service_name, capabilities, self.clock.now()
        )
        async with self._received:
            self._received.notify_all()

    def host_capabilities(self, service_name: str | None = None) -> list[HostCapabilities]:
        """The latest capabilities of every host (of ``service_name``), none older than
        ``service_down_time``; older ones are forgotten. Sorted by host."""
        oldest = self.clock.now() - self.settings.service_down_time
        for key, entry in list(self._capabilities.items()):
            if entry.received_at < oldest:
                del self._capabilities[key]
        return sorted(
            (
                entry
                for entry in self._capabilities.values()
                if service_name is None or entry.service_name == service_name
            ),
            key=lambda entry: entry.host,
        )

    async def hosts_up(self, service_name: str) -> list[HostCapabilities]:
        """The fresh capabilities of the hosts whose ``service_name`` is up and enabled.

        Right after this scheduler started, waits (``capabilities_wait`` seconds at most)
        until every such host has published. A request that arrives before the hosts were
        even asked (one queued while no scheduler ran is delivered as soon as consuming
        starts) first waits for the asking, within the same bound.
        """
        if not self._asked.is_set():
            with anyio.move_on_after(self.settings.capabilities_wait):
                await self._asked.wait()
        while True:
            records = await self.servicegroup.list(binary=service_name)
            usable = {r.host for r in records if r.is_up and not r.disabled}
            known = [c for c in self.host_capabilities(service_name) if c.host in usable]
            left = self._wait_left()
            if left <= 0 or {c.host for c in known} >= usable:
                return known
            with anyio.move_on_after(left):
                async with self._received:
                    await self._received.wait()

    def _wait_left(self) -> float:
        if self._asked_at is None:
            return 0.0
        return self._asked_at + self.settings.capabilities_wait - anyio.current_time()

    async def request_capabilities(self) -> None:
        """Ask every running service to publish its capabilities now (fanout casts).

        The service of a scheduler calls it once its consumers are bound, before
        ``post_start_hook``. Cinder: ``SchedulerManager._startup_delay`` /
        ``volume_rpcapi.publish_service_capabilities``.
        """
        self._asked_at = anyio.current_time()
        self.capabilities_requested_at = self.clock.now()
        self._asked.set()
        ctx = Context.admin()
        topics = sorted(
            {r.topic for r in await self.servicegroup.list() if r.is_up and r.topic != self.topic}
        )
        for topic in topics:
            try:
                await self.rpc_client(topic, fanout=True).cast(ctx, "publish_service_capabilities")
            except Exception as exc:
                log.warning("Could not ask the %s services for their capabilities: %s", topic, exc)
        log.info("Asked the services of %s for their capabilities", ", ".join(topics) or "no topic")
