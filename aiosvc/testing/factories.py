"""What the plugin's ``aiosvc_service`` and ``aiosvc_client`` fixtures hand a test.

The fixtures themselves are plain (synchronous) pytest fixtures, so every async plugin
accepts them: pytest-asyncio in strict or auto mode, anyio's. The work happens in the
factories' ``async`` methods, which the test awaits, so services and connections are
made on the test's own event loop; the plugin closes them on that loop as well, when the
test function returns or raises (:class:`TestCleanup`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from ..loading import load_object
from ..manager import Manager
from ..rpc.client import RPCClient
from ..service import Service
from ..settings import Settings
from ..transport import Transport, connect

__all__ = ["ClientFactory", "ServiceFactory", "TestCleanup"]

T = TypeVar("T")


class TestCleanup:
    """What one test opened on its event loop, closed in reverse order on that same loop.

    The plugin calls :meth:`aclose` from inside the test's coroutine, after the test
    function (so on the test's loop while it still runs, whichever plugin runs it), and
    :meth:`close_left_over` at fixture teardown for anything still open then.
    """

    __test__ = False  # not a test class, for pytest

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stack = contextlib.AsyncExitStack()
        self._pending = 0

    def bind(self) -> None:
        """Check that the caller runs on asyncio, on the loop of everything opened so far.

        Raises:
            RuntimeError: not on asyncio (anyio's trio backend, say), or on another loop.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "aiosvc runs on asyncio: await its fixtures in a test run by pytest-asyncio "
                "or by anyio's plugin with the asyncio backend (an `anyio_backend` fixture "
                "returning 'asyncio')"
            ) from None
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise RuntimeError(
                "aiosvc's fixtures were used from two event loops in one test: give the test "
                "and the async fixtures that use them the same loop scope"
            )

    @property
    def pending(self) -> bool:
        """Whether anything is left to close."""
        return self._pending > 0

    def push(self, close: Callable[[], Awaitable[object]]) -> None:
        """Call ``close`` (on the test's loop) when the test ends."""
        self._pending += 1
        self._stack.push_async_callback(close)

    async def enter(self, context: AbstractAsyncContextManager[T]) -> T:
        """Enter ``context`` now and exit it when the test ends."""
        value = await self._stack.enter_async_context(context)
        self._pending += 1
        return value

    async def aclose(self) -> None:
        """Close everything, last opened first; an error is raised after all were closed.

        Does nothing when called on another event loop than the one they were opened on.
        """
        if not self.pending or not self._on_own_loop():
            return
        stack, self._stack, self._pending = self._stack, contextlib.AsyncExitStack(), 0
        await stack.aclose()

    def _on_own_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def close_left_over(self) -> None:
        """At fixture teardown: close what is still open, if its loop can still run.

        Only what was opened outside the test function remains here (in an async fixture
        whose test never ran, say). When that loop is closed already, its runner has
        cancelled the services' tasks, and a cancelled service cleans up (``cleanup_host``,
        connections) on the way out.
        """
        loop = self.loop
        if not self.pending or loop is None or loop.is_closed() or loop.is_running():
            return
        loop.run_until_complete(self.aclose())


class ServiceFactory:
    """``await aiosvc_service(VolumeManager, **kw)``: a started :class:`~aiosvc.Service`.

    Each service is stopped gracefully (:meth:`Service.stop`) when the test ends, also
    when it failed; an error that had stopped a service is raised then. ``services``
    lists them, in the order they were started.
    """

    def __init__(self, cleanup: TestCleanup, settings: Settings) -> None:
        self._cleanup = cleanup
        self.settings = settings
        self.services: list[Service] = []

    async def __call__(
        self,
        manager: str | type[Manager],
        *,
        settings: Settings | Mapping[str, Any] | None = None,
        replace: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Service:
        """Create and start a service around a new ``manager``; return it once started.

        Args:
            manager: a Manager subclass, or its import path.
            settings: the settings; by default the fixture's (``aiosvc_settings``). A
                mapping gives values that override the fixture's for this service
                (``settings={"volume_driver": "tests.fakes:FakeDriver"}``), the manager's
                own options included.
            replace: attributes of the manager to set right after its ``init_host``, before
                it takes any message: ``replace={"driver": FakeDriver()}`` swaps the driver
                ``init_host`` loaded for a fake. Each must exist by then.
            kwargs: for :meth:`Service.create`: ``topic``, ``host``, ``binary``, ``clock``,
                ``transport``, ``store``.

        Raises:
            Exception: whatever made the start fail (``Service.start``).
        """
        self._cleanup.bind()
        manager_cls = load_object(manager, Manager) if isinstance(manager, str) else manager
        if settings is None:
            settings = self.settings
        elif isinstance(settings, Mapping):
            settings = with_overrides(self.settings, manager_cls.settings_class, settings)
        service = Service.create(manager_cls, settings=settings, **kwargs)
        if replace:
            _replace_after_init_host(service.manager, replace)
        await service.start()
        self._cleanup.push(service.stop)
        self.services.append(service)
        return service


class ClientFactory:
    """``await aiosvc_client("volume", **options)``: an :class:`~aiosvc.RPCClient` for a topic.

    Clients share one transport on the fixture's settings (the services' broker by
    default), connected on first use and closed when the test ends.
    """

    def __init__(self, cleanup: TestCleanup, settings: Settings) -> None:
        self._cleanup = cleanup
        self.settings = settings
        self._transport: Transport | None = None

    async def transport(self) -> Transport:
        """The connected transport the clients use (connected now if need be)."""
        self._cleanup.bind()
        if self._transport is None:
            self._transport = await self._cleanup.enter(connect(self.settings))
            self._cleanup.push(self._forget_transport)
        return self._transport

    async def _forget_transport(self) -> None:
        self._transport = None

    async def __call__(
        self,
        topic: str,
        *,
        version: str = "1.0",
        timeout: float | None = None,
        namespace: str | None = None,
        server: str | None = None,
        fanout: bool = False,
        version_cap: str | None = None,
    ) -> RPCClient:
        """A client for ``topic``; the options are :class:`~aiosvc.RPCClient`'s."""
        return RPCClient(
            await self.transport(),
            topic,
            version,
            timeout,
            namespace,
            server=server,
            fanout=fanout,
            version_cap=version_cap,
        )


def with_overrides(
    settings: Settings, settings_class: type[Settings], overrides: Mapping[str, Any]
) -> Settings:
    """``settings`` as ``settings_class``, with ``overrides`` on top; isolated if it was."""
    explicit = settings.model_dump(include=settings.model_fields_set)
    return settings_class.load(isolated=settings.isolated, **{**explicit, **overrides})


def _replace_after_init_host(manager: Manager, replace: Mapping[str, Any]) -> None:
    init_host = manager.init_host

    async def init_host_then_replace() -> None:
        try:
            await init_host()
        finally:
            del manager.init_host  # the class's own again
        missing = [name for name in replace if not hasattr(manager, name)]
        if missing:
            raise AttributeError(
                f"{type(manager).__name__} has no attribute {', '.join(map(repr, missing))} "
                "after init_host: nothing to replace"
            )
        for name, value in replace.items():
            setattr(manager, name, value)

    manager.init_host = init_host_then_replace  # type: ignore[method-assign]
