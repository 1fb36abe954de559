"""The aiosvc pytest plugin (entry point ``pytest11``, loaded when aiosvc is installed).

Fixtures (all function-scoped):

* ``aiosvc_settings``: :func:`aiosvc.testing.isolated_settings`: a private in-memory
  broker and store per test, test-friendly timings, nothing read from ``AIOSVC_*``
  variables or ``.env``. With ``AIOSVC_TEST_AMQP_URL`` and/or ``AIOSVC_TEST_DATABASE_URL``
  set, that RabbitMQ and that PostgreSQL instead, with a ``host`` of the test's own
  (:func:`aiosvc.testing.server_overrides`).
* ``aiosvc_clock``: a :class:`aiosvc.testing.FakeClock`; pass it as ``clock=``.
* ``aiosvc_service``: ``await aiosvc_service(VolumeManager, **kw)`` returns a started
  :class:`aiosvc.Service` on ``aiosvc_settings``. ``settings={...}`` overrides some
  settings (the manager's own options too); ``replace={"driver": FakeDriver()}`` sets
  manager attributes right after ``init_host``, before it takes any message; the rest goes
  to :meth:`aiosvc.Service.create` (``clock=``, ``host=``, ...). See
  :class:`aiosvc.testing.ServiceFactory`.
* ``aiosvc_client``: ``await aiosvc_client("volume", **options)`` returns an
  :class:`aiosvc.RPCClient` for the topic on ``aiosvc_settings``' broker (options as
  ``RPCClient``'s: ``server=``, ``fanout=``, ``version=``, ``timeout=``, ...).

With :func:`aiosvc.testing.handled` (wait until a cast was handled) and
:func:`aiosvc.testing.run_periodic_tasks` (run a manager's periodic tasks now).

Every service and client a test made is stopped and closed when the test function returns
or raises, on the test's own event loop. The fixtures are synchronous and the factories
``async``, so they work under pytest-asyncio (strict mode: mark the test
``@pytest.mark.asyncio``; auto mode) and anyio's plugin (``@pytest.mark.anyio`` with the
asyncio backend) alike.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any

import pytest

from ..settings import Settings
from .clock import FakeClock
from .factories import ClientFactory, ServiceFactory, TestCleanup
from .isolation import isolated_settings, server_overrides

__all__ = [
    "aiosvc_client",
    "aiosvc_clock",
    "aiosvc_service",
    "aiosvc_settings",
    "pytest_runtest_call",
]

_CLEANUP = pytest.StashKey[TestCleanup]()


@pytest.fixture
def aiosvc_settings() -> Settings:
    """Settings of this test's own: a private in-memory broker and store, or real servers."""
    return isolated_settings(**server_overrides())


@pytest.fixture
def aiosvc_clock() -> FakeClock:
    """A clock that moves only with ``await aiosvc_clock.advance(seconds)``."""
    return FakeClock()


@pytest.fixture
def _aiosvc_cleanup(request: pytest.FixtureRequest) -> Iterator[TestCleanup]:
    cleanup = TestCleanup()
    request.node.stash[_CLEANUP] = cleanup
    yield cleanup
    cleanup.close_left_over()


@pytest.fixture
def aiosvc_service(_aiosvc_cleanup: TestCleanup, aiosvc_settings: Settings) -> ServiceFactory:
    """``await aiosvc_service(Manager, **kw)``: a started service, stopped when the test ends."""
    return ServiceFactory(_aiosvc_cleanup, aiosvc_settings)


@pytest.fixture
def aiosvc_client(_aiosvc_cleanup: TestCleanup, aiosvc_settings: Settings) -> ClientFactory:
    """``await aiosvc_client(topic, **options)``: an RPC client on this test's broker."""
    return ClientFactory(_aiosvc_cleanup, aiosvc_settings)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Run a test that uses the fixtures so that it closes what they opened, on its loop.

    The test's coroutine function is wrapped for the duration of the call, before any
    async plugin turns it into a call on its runner: pytest-asyncio and anyio both run
    ``item.obj``. Closing inside the test's own coroutine is what works for both: by the
    time fixtures are torn down, pytest-asyncio has closed a function-scoped loop and
    anyio may have closed its runner.
    """
    cleanup = item.stash.get(_CLEANUP, None)
    if (
        cleanup is None
        or not isinstance(item, pytest.Function)
        or not inspect.iscoroutinefunction(item.obj)
        or hasattr(item.obj, "hypothesis")
    ):
        return (yield)
    original = item.obj
    item.obj = _closing_after(original, cleanup)
    try:
        return (yield)
    finally:
        item.obj = original


def _closing_after(
    test: Callable[..., Coroutine[Any, Any, object]], cleanup: TestCleanup
) -> Callable[..., Coroutine[Any, Any, None]]:
    @functools.wraps(test)
    async def test_then_close(*args: Any, **kwargs: Any) -> None:
        try:
            await test(*args, **kwargs)
        except BaseException as exc:
            try:
                await cleanup.aclose()
            except Exception as error:
                exc.add_note(f"aiosvc: stopping the test's services failed too: {error!r}")
            raise
        await cleanup.aclose()

    return test_then_close
