"""Volume drivers: what every back end must do, and two back ends.

Nova/Cinder: ``cinder.volume.driver.BaseVD`` and its drivers.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any

import anyio

from .settings import VolumeSettings


class VolumeNotFound(LookupError):
    """Raised when a volume does not exist."""


class VolumeDriver(abc.ABC):
    """The back end of the volume manager; chosen by the ``volume_driver`` option."""

    def __init__(self, settings: VolumeSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def create(self, volume_id: str, size_gb: int) -> dict[str, Any]:
        """Create a volume and describe it."""

    @abc.abstractmethod
    async def delete(self, volume_id: str) -> None:
        """Delete a volume. Raises VolumeNotFound."""

    @abc.abstractmethod
    async def list(self) -> list[dict[str, Any]]:
        """Every volume."""

    async def stats(self) -> dict[str, Any]:
        """Capacity figures, as the scheduler wants them."""
        volumes = await self.list()
        used = sum(v["size_gb"] for v in volumes)
        return {
            "driver": type(self).__name__,
            "total_capacity_gb": self.settings.volume_capacity_gb,
            "free_capacity_gb": self.settings.volume_capacity_gb - used,
            "volumes": len(volumes),
        }


class MemoryVolumeDriver(VolumeDriver):
    """Keeps volumes in a dict: for tests and demos."""

    def __init__(self, settings: VolumeSettings) -> None:
        super().__init__(settings)
        self.volumes: dict[str, dict[str, Any]] = {}

    async def create(self, volume_id: str, size_gb: int) -> dict[str, Any]:
        volume = {"id": volume_id, "size_gb": size_gb, "driver": "memory"}
        self.volumes[volume_id] = volume
        return volume

    async def delete(self, volume_id: str) -> None:
        if self.volumes.pop(volume_id, None) is None:
            raise VolumeNotFound(volume_id)

    async def list(self) -> list[dict[str, Any]]:
        return list(self.volumes.values())


class FileVolumeDriver(VolumeDriver):
    """One sparse file per volume in ``volume_dir``."""

    def _path(self, volume_id: str) -> Path:
        if not volume_id or "/" in volume_id or volume_id.startswith("."):
            raise ValueError(f"invalid volume id {volume_id!r}")
        return Path(self.settings.volume_dir) / f"{volume_id}.img"

    async def create(self, volume_id: str, size_gb: int) -> dict[str, Any]:
        path = self._path(volume_id)

        def make() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                f.truncate(size_gb * 2**30)  # sparse: takes no space until written

        await anyio.to_thread.run_sync(make)
        return {"id": volume_id, "size_gb": size_gb, "driver": "file", "path": str(path)}

    async def delete(self, volume_id: str) -> None:
        try:
            await anyio.to_thread.run_sync(os.remove, self._path(volume_id))
        except FileNotFoundError:
            raise VolumeNotFound(volume_id) from None

    async def list(self) -> list[dict[str, Any]]:
        def scan() -> list[dict[str, Any]]:
            directory = Path(self.settings.volume_dir)
            if not directory.is_dir():
                return []
            return [
                {
                    "id": p.stem,
                    "size_gb": p.stat().st_size // 2**30,
                    "driver": "file",
                    "path": str(p),
                }
                for p in sorted(directory.glob("*.img"))
            ]

        return await anyio.to_thread.run_sync(scan)
