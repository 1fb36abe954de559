"""The volume service's own options: ``AIOSVC_VOLUME_DRIVER`` and friends.

A module of their own, so the manager and the drivers both import them without importing
each other.
"""

from __future__ import annotations

import tempfile

import aiosvc


class VolumeSettings(aiosvc.Settings):
    """The volume service's own options, read like every other (``AIOSVC_VOLUME_DRIVER``)."""

    volume_driver: str = "examples.volume.drivers:MemoryVolumeDriver"
    volume_dir: str = f"{tempfile.gettempdir()}/aiosvc-volumes"
    volume_capacity_gb: int = 100
