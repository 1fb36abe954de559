"""The volume manager: creates and deletes volumes on this host through a driver.

Shows the three parts of a Nova-style service:

* options of its own, in a :class:`aiosvc.Settings` subclass (``settings.py``);
* methods callable over RPC (``create_volume``, ``delete_volume``, ``list_volumes``),
  whose type hints are checked before they run;
* periodic tasks: one that runs at start and then every 30 s, one every 5 minutes;
* capabilities for the scheduler (``update_service_capabilities``): its service publishes
  them at once when they change (a volume created or deleted) and every
  ``periodic_interval``.
"""

from __future__ import annotations

import logging
from typing import Any

import aiosvc
from aiosvc import Context, Manager, periodic_task

from .drivers import VolumeDriver
from .settings import VolumeSettings

log = logging.getLogger(__name__)


class VolumeManager(Manager):
    """Creates and deletes volumes on this host through a driver."""

    topic = "volume"
    RPC_API_VERSION = "1.1"
    settings_class = VolumeSettings
    settings: VolumeSettings

    driver: VolumeDriver

    async def init_host(self) -> None:
        driver_cls = aiosvc.load_object(self.settings.volume_driver, VolumeDriver)
        self.driver = driver_cls(self.settings)
        log.info("Volume driver %s ready", driver_cls.__name__)

    async def create_volume(self, ctx: Context, volume_id: str, size_gb: int) -> dict[str, Any]:
        """Create a volume of ``size_gb`` GiB (API 1.0)."""
        if size_gb <= 0:
            raise ValueError(f"size_gb must be positive, got {size_gb}")
        volume = await self.driver.create(volume_id, size_gb)
        log.info("Created volume %s (%d GiB)", volume_id, size_gb)
        self.update_service_capabilities(await self.driver.stats())  # the scheduler, at once
        return volume

    async def delete_volume(self, ctx: Context, volume_id: str) -> None:
        """Delete a volume (API 1.0)."""
        await self.driver.delete(volume_id)
        log.info("Deleted volume %s", volume_id)
        self.update_service_capabilities(await self.driver.stats())

    async def list_volumes(self, ctx: Context) -> list[dict[str, Any]]:
        """Every volume on this host (API 1.1)."""
        return await self.driver.list()

    @periodic_task(spacing=30, run_immediately=True)
    async def _publish_stats(self, ctx: Context) -> None:
        stats = await self.driver.stats()
        self.update_service_capabilities(stats)
        log.info(
            "Published capabilities: %d volume(s), %d GiB free",
            stats["volumes"],
            stats["free_capacity_gb"],
        )

    @periodic_task(spacing=300)
    async def _audit_volumes(self, ctx: Context) -> None:
        volumes = await self.driver.list()
        log.info("Audit: %d volume(s) on %s", len(volumes), self.host)
