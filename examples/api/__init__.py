"""The volume API: an ASGI application that takes requests and hands them to the services.

``POST /volumes`` asks the scheduler to place a volume, ``GET /volumes/{id}`` finds it on
its host, ``GET /services`` lists the services table. Served by aiosvc's API service::

    python -m aiosvc run --api examples.api:app --manager examples.volume:VolumeManager \\
        --manager examples.scheduler:VolumeScheduler
"""

from .app import app

__all__ = ["app"]
