"""The aiosvc pytest plugin (entry point ``pytest11``, loaded when aiosvc is installed).

Fixtures (all function-scoped, all torn down after the test):

* ``aiosvc_settings``: :func:`aiosvc.testing.isolated_settings` — a private in-memory
  broker and store per test.
* ``aiosvc_clock``: a :class:`aiosvc.testing.FakeClock`.
* ``aiosvc_service``: an async factory, ``await aiosvc_service(VolumeManager, **kw)``,
  returning a started :class:`aiosvc.Service` (on ``aiosvc_settings`` unless you pass
  ``settings=``); every service it made is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ..service import Service
from ..settings import Settings
from . import FakeClock, isolated_settings

ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
def aiosvc_settings() -> Settings:
    """Settings on an in-memory broker and store of this test's own."""
    return isolated_settings()


@pytest.fixture
def aiosvc_clock() -> FakeClock:
    """A clock that moves only with ``await aiosvc_clock.advance(seconds)``."""
    return FakeClock()


@pytest.fixture
async def aiosvc_service(aiosvc_settings: Settings) -> AsyncIterator[ServiceFactory]:
    """Start services for a test; each is stopped when the test ends."""
    made: list[Service] = []

    async def factory(manager: Any, **kwargs: Any) -> Service:
        kwargs.setdefault("settings", aiosvc_settings)
        service = Service.create(manager, **kwargs)
        await service.start()
        made.append(service)
        return service

    yield factory
    for service in reversed(made):
        await service.stop()
