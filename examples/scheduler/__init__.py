"""A volume scheduler: picks a volume host from the capabilities the hosts publish.

Run it beside the volume service (in-process broker and store, one process)::

    python -m aiosvc run --manager examples.volume:VolumeManager \\
        --manager examples.scheduler:VolumeScheduler
"""

from .manager import NoValidHost, VolumeScheduler

__all__ = ["NoValidHost", "VolumeScheduler"]
