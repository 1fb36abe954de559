"""The volume scheduler: filter the hosts, weigh them, cast the work to the chosen one.

Cinder's filter scheduler in a few lines, on :class:`aiosvc.SchedulerManager`, which keeps
what every volume host published (``update_service_capabilities``) and knows which hosts
are up and enabled in the services table:

* **filter**: hosts that are down, disabled, or without room for the volume are out;
* **weigh**: the host with the most free capacity wins (cinder's ``CapacityWeigher``);
* **cast** ``create_volume`` to ``volume.<host>``: that host's own queue.
"""

from __future__ import annotations

import logging
from typing import Any

import aiosvc
from aiosvc import Context, HostCapabilities

log = logging.getLogger(__name__)

VOLUME_SERVICE = "aiosvc-volume"


class NoValidHost(Exception):
    """Raised when no volume host that is up and enabled has room for the volume."""


class VolumeScheduler(aiosvc.SchedulerManager):
    """Places volumes on volume hosts (topic ``scheduler``)."""

    RPC_API_VERSION = "1.0"

    async def create_volume(self, ctx: Context, volume_id: str, size_gb: int) -> dict[str, Any]:
        """Choose a host for the volume and ask it to create it; return the host chosen."""
        host = self.choose(await self.hosts_up(VOLUME_SERVICE), size_gb)
        await self.rpc_client("volume", server=host.host).cast(
            ctx, "create_volume", volume_id=volume_id, size_gb=size_gb
        )
        log.info("Volume %s (%d GiB) goes to %s", volume_id, size_gb, host.host)
        return {"volume_id": volume_id, "host": host.host}

    async def hosts(self, ctx: Context) -> list[dict[str, Any]]:
        """What this scheduler knows of every volume host, and how long after it asked."""
        asked = self.capabilities_requested_at
        return [
            {
                "host": entry.host,
                "capabilities": entry.capabilities,
                "seconds_after_asking": None if asked is None else entry.received_at - asked,
            }
            for entry in self.host_capabilities(VOLUME_SERVICE)
        ]

    @staticmethod
    def choose(hosts: list[HostCapabilities], size_gb: int) -> HostCapabilities:
        """Filter out the hosts without room; of the rest, the one with most free space.

        Raises:
            NoValidHost: none is left.
        """
        fits = [h for h in hosts if h.capabilities.get("free_capacity_gb", 0) >= size_gb]
        if not fits:
            raise NoValidHost(
                f"no volume host that is up and enabled has {size_gb} GiB free "
                f"(hosts considered: {', '.join(h.host for h in hosts) or 'none'})"
            )
        return max(fits, key=lambda h: (h.capabilities["free_capacity_gb"], h.host))
