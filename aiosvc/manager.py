"""The ``Manager`` base: the logic of one aspect of the system.

"Smart managers, dumb data": a manager holds the methods other services call over RPC,
its periodic tasks, and hooks the wrapping :class:`~aiosvc.service.Service` calls in
order. Implementation-specific work goes to a driver the manager loads with
:func:`~aiosvc.loading.load_object`.

RPC endpoints are the public methods (``async def``, or ``def`` run in a worker
thread) that the manager's own classes define. Hooks, periodic tasks, names starting with
``_`` and anything aiosvc's own bases define are never callable, except the endpoints
those bases serve on purpose (``publish_service_capabilities``; a
:class:`~aiosvc.scheduler.SchedulerManager`'s ``update_service_capabilities``). A method
of the user's that would take a name aiosvc uses for something else is refused when the
service is built (:class:`~aiosvc.exceptions.ServiceError`), never silently at call time.

A running service hands its manager what it needs from the service's own connections:
:meth:`Manager.rpc_client` (RPC clients on the service's transport) and
:attr:`Manager.servicegroup` (who is up, from the service's store). No manager opens a
connection of its own.

Capabilities (cinder's ``SchedulerDependentManager``): a manager calls
:meth:`Manager.update_service_capabilities`, and its service publishes them to the
scheduler by fanout cast: soon after start, at once when they change, and every
``periodic_interval`` even if unchanged.

Nova: ``nova.manager.Manager`` (and cinder's ``SchedulerDependentManager``).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .clock import Clock, MonotonicClock
from .context import Context
from .exceptions import ServiceError
from .periodic import PeriodicRunner, collect_periodic_specs
from .settings import Settings

if TYPE_CHECKING:  # types only: the wiring layer hands these over at run time
    from .connections import Connections
    from .rpc.client import RPCClient
    from .servicegroup import ServiceGroup

__all__ = ["HOOKS", "Manager", "default_binary"]

log = logging.getLogger(__name__)


HOOKS = frozenset(
    {"init_host", "pre_start_hook", "post_start_hook", "cleanup_host", "reset", "is_working"}
)
"""The methods a subclass overrides to be called by its service (never callable over RPC)."""


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
    # The RPC endpoints an aiosvc base class serves on purpose: wire name -> method name.
    _framework_endpoints: ClassVar[Mapping[str, str]] = {
        "publish_service_capabilities": "publish_service_capabilities"
    }

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
        self._connections: Connections | None = None
        # Set by the running service to "publish the capabilities now".
        self._capabilities_wanted: Callable[[], None] = _nothing

    # -- what the service shares

    def attach(self, connections: Connections | None) -> None:
        """Called by the service: its connections, from before ``init_host`` until closed."""
        self._connections = connections

    def watch_capabilities(self, callback: Callable[[], None] | None) -> None:
        """Called by the service: ``callback()`` whenever the capabilities should go out now
        (they changed, or a scheduler asked); ``None`` stops it."""
        self._capabilities_wanted = callback or _nothing

    @property
    def connections(self) -> Connections:
        """The running service's transport, store and service group.

        Raises:
            ServiceError: the manager is not running in a service (yet, or any more).
        """
        if self._connections is None:
            raise ServiceError(
                f"{type(self).__name__} is not running in a service: its connections are "
                "there from init_host until the service stops"
            )
        return self._connections

    def rpc_client(self, topic: str, **options: Any) -> RPCClient:
        """An :class:`~aiosvc.RPCClient` for ``topic`` on the service's own transport.

        ``options`` are the client's (``version``, ``timeout``, ``server``, ``fanout``...).
        Cheap: make one per use or keep it; no connection is opened.
        """
        return self.connections.rpc_client(topic, **options)

    @property
    def servicegroup(self) -> ServiceGroup:
        """Who is up and enabled, from the service's own store (``servicegroup.list()``)."""
        return self.connections.servicegroup

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

    async def is_working(self) -> bool | str:
        """Whether this manager can do its work now (its driver is ready, say).

        Asked at every state report; the answer is the ``driver`` check of the service's
        health (``services list`` shows it). ``True`` (or ``""``) means yes; ``False``, or
        a string saying why (``"disk full"``), means no. An exception, or no answer
        within a few seconds, counts as no, with what happened. The service stays up
        whatever the answer (Nova's ``is_up``); unlike Cinder's, its reports go on.

        Cinder: ``Manager.is_working`` (the volume manager's ``driver.initialized``).
        """
        return True

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
        """Set this service's capabilities; its service tells the scheduler at once.

        They are published again every ``periodic_interval`` even when unchanged, so a
        scheduler that restarts learns every host within one interval.

        Nova: ``SchedulerDependentManager.update_service_capabilities``.

        Raises:
            TypeError: the capabilities are not a JSON object (they travel as JSON).
        """
        if not isinstance(capabilities, Mapping):
            raise TypeError(f"capabilities must be a mapping, got {type(capabilities).__name__}")
        try:
            fresh = json.loads(json.dumps(dict(capabilities), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"capabilities must be JSON: {exc}") from None
        changed = fresh != self.last_capabilities
        self.last_capabilities = fresh
        if changed:
            self._capabilities_wanted()

    async def publish_service_capabilities(self, ctx: Context) -> None:
        """RPC: publish the capabilities now (what a scheduler asks every host on start).

        Nothing happens while there are none. Cinder: ``publish_service_capabilities``.
        """
        self._capabilities_wanted()

    # -- RPC endpoints

    @classmethod
    def rpc_methods(cls) -> dict[str, Callable[..., Any]]:
        """The methods callable over RPC, by wire name (plain functions, unbound).

        Raises:
            ServiceError: a method of the subclass takes a name an aiosvc base uses for
                something else (a clash would make it silently not callable).
        """
        bases = [k for k in cls.__mro__ if _is_framework(k)]
        wire: dict[str, str] = {}  # method name -> wire name, of the bases' endpoints
        for base in reversed(bases):
            for wire_name, method in vars(base).get("_framework_endpoints", {}).items():
                wire[method] = wire_name
        taken = {name: base for base in reversed(bases) for name in vars(base)}
        periodic = set(collect_periodic_specs(cls))
        methods: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            if _is_framework(klass):
                continue
            for name, value in vars(klass).items():
                if name.startswith("_") or name in periodic or name in HOOKS or name in wire:
                    continue  # an override of a base's endpoint is served under its wire name
                if name in taken and name not in wire and inspect.isfunction(value):
                    raise ServiceError(_clash(klass, name, taken[name]))
                if _written_as_method(klass, name, value):
                    methods[name] = value
                elif name in methods:
                    # A subclass replaced an endpoint with a non-method: not callable now.
                    del methods[name]
        for method, wire_name in wire.items():
            methods.setdefault(wire_name, getattr(cls, method))
        return dict(sorted(methods.items()))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} topic={self.topic!r} host={self.host!r}>"


def _nothing() -> None:
    pass


def _written_as_method(klass: type, name: str, value: object) -> bool:
    """Whether ``value`` is a function written for ``klass`` as ``def name``.

    That is one written in the class body, or (a class made by ``type(...)``) one of the
    module that made the class, under its own name. Never a function merely assigned to a
    class attribute (``dumps = json.dumps``, a lambda, an alias of another method): RPC
    must not reach code the class did not write as a method.
    """
    if not inspect.isfunction(value):
        return False
    if value.__qualname__ == f"{klass.__qualname__}.{name}":
        return True
    return value.__name__ == name and value.__module__ in (klass.__module__, None)


def _is_framework(klass: type) -> bool:
    """One of aiosvc's own base classes (or ``object``)."""
    return klass is object or klass.__module__.split(".")[0] == "aiosvc"


def _clash(klass: type, name: str, base: type) -> str:
    hint = ""
    if name == "update_service_capabilities":
        hint = (
            "; to receive other hosts' capabilities, subclass aiosvc.SchedulerManager and "
            "override receive_service_capabilities"
        )
    return (
        f"{klass.__qualname__}.{name}() cannot be an RPC method: {name} is "
        f"aiosvc.{base.__qualname__}'s, and calls to it would never reach yours; "
        f"rename it{hint}"
    )
