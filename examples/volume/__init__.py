"""A volume service: a manager, a driver ABC and two drivers chosen by an option.

Run it with the embedded defaults (in-process broker and store)::

    python -m aiosvc run --manager examples.volume:VolumeManager

Choose the driver with ``AIOSVC_VOLUME_DRIVER`` (or ``--set volume_driver=...``).
"""

from .drivers import FileVolumeDriver, MemoryVolumeDriver, VolumeDriver, VolumeNotFound
from .manager import VolumeManager
from .settings import VolumeSettings

__all__ = [
    "FileVolumeDriver",
    "MemoryVolumeDriver",
    "VolumeDriver",
    "VolumeManager",
    "VolumeNotFound",
    "VolumeSettings",
]
