"""The ``Manager`` base: the logic of one aspect of the system.

"Smart managers, dumb data": a manager holds the methods other services call over RPC,
its periodic tasks, and hooks the wrapping :class:`~aiosvc.service.Service` calls in
order. Implementation-specific work goes to a driver the manager loads with
:func:`~aiosvc.loading.load_object`.

RPC endpoints are the public methods (``async def``, or ``def`` run in a worker
thread) that the manager's own classes define. Hooks, periodic tasks, anything defined
on :class:`Manager` itself, and names starting with ``_`` are never callable.

Nova: ``nova.manager.Manager`` (and cinder's ``SchedulerDependentManager`` for
capabilities).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from .clock import Clock, MonotonicClock
from .context import Context
from .periodic import PeriodicRunner, collect_periodic_specs
from .settings import Settings

__all__ = ["Manager", "default_binary"]

log = logging.getLogger(__name__)


def default_binary(topic: str | None) -> str:
    """The service's binary name when none is given: ``aiosvc-<topic>`` (Nova: ``nova-<topic>``)."""
    return f"aiosvc-{topic or 'undefined'}"


class Manager:
    """Base class of managers.

    Subclasses set ``topic`` (the RPC topic their service consumes), may set
    ``RPC_API_VERSION`` and ``settings_class`` (a :class:`Settings` subclass with the
    manager's own options), and override the hooks they need.

    Args:
        host: this host's name; defaults to ``settings.host``.
        settings: defaults to ``settings_class.load()``; other settings are upgraded to
            ``settings_class`` so the manager's own options are read.
        service_name: the service's binary, e.g. ``aiosvc-volume``; set by the Service.
        clock: where the periodic tasks (and the service's state reports) read the time;
            the event loop's clock by default, a :class:`~aiosvc.testing.FakeClock` in tests.
    """

    topic: ClassVar[str | None] = None
    RPC_API_VERSION: ClassVar[str] = "1.0"
    RPC_NAMESPACE: ClassVar[str | None] = None
    SERVICE_VERSION: ClassVar[int] = 1
    settings_class: ClassVar[type[Settings]] = Settings

    def __init__(
        self,
        *,
        host: str | None = None,
        settings: Settings | None = None,
        service_name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if settings is None:
            settings = self.settings_class.load()
        self.settings: Settings = settings.reload_as(self.settings_class)
        self.host: str = host or self.settings.host
        self.service_name: str = service_name or default_binary(self.topic)
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.last_capabilities: dict[str, Any] | None = None
        self.service_record: Any = None
        self._periodic: PeriodicRunner | None = None

    # -- hooks (Nova order: init_host, record, pre_start_hook, consumers, post_start_hook)

    async def init_host(self) -> None:
        """Prepare this host before any service record is written (load drivers here)."""

    async def pre_start_hook(self) -> None:
        """Run after the service record exists, before RPC consumers start."""

    async def post_start_hook(self) -> None:
        """Run right after the RPC consumers have started."""

    async def cleanup_host(self) -> None:
        """Release what ``init_host`` acquired; runs when the service stops."""

    async def reset(self) -> None:
        """Re-read dynamic configuration; called on SIGHUP."""

    # -- periodic tasks

    @property
    def periodic(self) -> PeriodicRunner:
        """The runner of this manager's periodic tasks (created on first use)."""
        if self._periodic is None:
            self._periodic = PeriodicRunner(self, self.settings, self.clock)
        return self._periodic

    async def periodic_tasks(
        self, ctx: Context | None = None, raise_on_error: bool = False
    ) -> float:
        """Run every periodic task that is due once; return seconds until the next is due.

        For tests and embedders that drive tasks themselves. Nova:
        ``Manager.periodic_tasks`` (``run_periodic_tasks`` returning ``idle_for``).
        ``ctx`` is accepted for Nova compatibility; each run gets its own admin context.
        """
        return await self.periodic.run_due(raise_on_error=raise_on_error)

    # -- capabilities

    def update_service_capabilities(self, capabilities: Mapping[str, Any]) -> None:
        """Remember this service's capabilities, for the scheduler to be told of them.

        Nova: ``SchedulerDependentManager.update_service_capabilities``.
        """
        self.last_capabilities = dict(capabilities)

    # -- RPC endpoints

    @classmethod
    def rpc_methods(cls) -> dict[str, Callable[..., Any]]:
        """The methods callable over RPC, by name (plain functions, unbound)."""
        hidden = set(dir(Manager)) | set(collect_periodic_specs(cls))
        methods: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            if klass is object or issubclass(Manager, klass):
                continue
            for name, value in vars(klass).items():
                if name.startswith("_") or name in hidden:
                    continue
                if inspect.isfunction(value):
                    methods[name] = value
                elif name in methods:
                    # A subclass replaced an endpoint with a non-method: not callable now.
                    del methods[name]
        return methods

    def __repr__(self) -> str:
        return f"<{type(self).__name__} topic={self.topic!r} host={self.host!r}>"
