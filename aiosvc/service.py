"""``Service``: wraps a manager, consumes its topic, runs its periodic tasks, reports state.

Start order (Nova's): connect the transport and the store -> ``init_host`` -> create or
revive the service record -> ``pre_start_hook`` -> start consumers -> ``post_start_hook``
-> periodic tasks and state reporting. ``start()`` returns when all of that is done: the
queues are bound and the record is written.

Stop order: stop consuming -> mark the service record stopped (so it shows down at once,
as stopped, not crashed; bounded, and never failing the stop), while in-flight handlers
finish within ``graceful_shutdown_timeout`` (what does not finish goes back to the
queue) -> stop the periodic tasks (runs in progress finish within what is left of the
timeout) -> ``cleanup_host`` -> close connections. Only a graceful stop marks the record:
a service stopped by an error, cancelled, or forced to stop before its graceful stop began
leaves it to turn down after ``service_down_time``, as a crashed process would.

What serves the work is a :class:`Server`: an RPC server on the topic here; an
:class:`~aiosvc.api.APIService` is the same lifecycle with an HTTP server instead.

Everything a service starts lives in its anyio task group. A background task that
crashes is logged and stops the service; :meth:`Service.wait` then raises its error.

Health: at each state report the service tells, beside being alive, whether it can work
(:meth:`Service.health`): its consumers are attached (an API service: its HTTP server
serves), its broker is connected, no periodic task is overdue, and its manager's
:meth:`~aiosvc.Manager.is_working` says yes. The store keeps it with the report.

Nova: ``nova.service.Service``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from typing import Any, ClassVar, Protocol, Self

import anyio
from anyio.abc import TaskStatus

from . import loopwatch
from .capabilities import CapabilityPublisher
from .clock import Clock
from .connections import Connections
from .exceptions import ConfigError, ServiceError, ServiceNotFound
from .loading import load_object
from .log import current_service, one_line
from .manager import Manager, default_binary
from .metrics import ServiceMetrics, require_prometheus, serve_metrics
from .rpc.dispatcher import Dispatcher
from .rpc.server import RPCServer
from .scheduler import SchedulerManager
from .servicegroup import ServiceGroup
from .settings import Settings
from .store import ServiceStore, get_store
from .store.base import OK, ServiceRecord
from .tasks import unwrap_group
from .transport import Transport, get_transport, topology

__all__ = ["Server", "Service"]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0
"""Seconds a stopping service waits for its transport and store to close."""

_REASON_LENGTH = 200  # the most of a health check's reason that is kept


class Server(Protocol):
    """How work reaches a service: its RPC server, or an API service's HTTP server.

    The service runs it in its task group once the record is written, and stops it first:
    ``stop_accepting()`` (no new work), then ``stop(timeout)`` (work in flight finishes
    within ``timeout`` seconds, the rest is cut, then it closes and ``run`` returns).
    """

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`; ``task_status.started()`` once work can arrive."""

    async def stop_accepting(self) -> None:
        """Take no new work; work in flight goes on. Idempotent."""

    async def stop(self, timeout: float | None = None) -> object:
        """Stop accepting, let work in flight finish within ``timeout``, then close."""

    @property
    def serving(self) -> bool:
        """Whether work reaches it now (for the service's health; cheap, no I/O)."""
        ...


class Service:
    """A running manager: its RPC consumers, periodic tasks and liveness reports.

    Most code builds one with :meth:`create`. The constructor takes a manager instance
    and, optionally, a transport and a store that the caller owns (they are neither
    connected nor closed by the service); otherwise the service makes its own from
    ``settings.transport_url`` and ``settings.database_url``.
    """

    serving_check: ClassVar[tuple[str, str]] = ("consumers", "not attached to its queues")
    """The name of the health check of the service's server (its RPC consumers, or an API
    service's HTTP server), and what that check says when it fails."""

    def __init__(
        self,
        manager: Manager,
        *,
        topic: str,
        host: str,
        binary: str,
        settings: Settings | None = None,
        transport: Transport | None = None,
        store: ServiceStore | None = None,
    ) -> None:
        for kind, name in (("topic", topic), ("host", host)):
            try:
                topology.check_name(kind, name)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.manager = manager
        self.topic = topic
        self.host = host
        self.binary = binary
        self.settings = settings or manager.settings
        # What the caller passed in stays the caller's to close; what is made here is ours.
        self._owns_transport = transport is None
        self._owns_store = store is None
        self.transport: Transport | None = transport
        self.store: ServiceStore | None = store
        self.servicegroup: ServiceGroup | None = None
        self.connections: Connections | None = None
        self.rpc_server: RPCServer | None = None
        self.server: Server | None = None  # the rpc_server, or an APIService's HTTP server
        # Built now, so a manager whose methods cannot be served fails here, before any
        # connection is opened (ServiceError naming the method, TypeError for a signature).
        self._dispatcher = Dispatcher(manager)
        if self.settings.metrics_port is not None:
            require_prometheus()  # the missing extra fails here, before anything starts
        self.metrics: ServiceMetrics | None = None
        """What it counts, while it runs with ``metrics_port`` set (:mod:`aiosvc.metrics`)."""
        self.record: ServiceRecord | None = None
        self.started = False
        self._stop_requested = anyio.Event()
        self._kill = False
        self._runner: asyncio.Task[None] | None = None
        self._forced = False
        self._cleanup_scope: anyio.CancelScope | None = None

    @classmethod
    def create(
        cls,
        manager: str | type[Manager],
        topic: str | None = None,
        host: str | None = None,
        binary: str | None = None,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        store: ServiceStore | None = None,
        clock: Clock | None = None,
    ) -> Self:
        """Build a service around a new instance of ``manager``.

        Args:
            manager: a Manager subclass, or its import path (``"pkg.mod:VolumeManager"``).
            topic: defaults to the manager's ``topic``.
            host: defaults to ``settings.host`` (the machine's name).
            binary: defaults to ``aiosvc-<topic>``.
            settings: defaults to the manager's ``settings_class.load()``.
            transport, store: connections the caller owns (neither opened nor closed
                here); by default the service opens its own from the settings.
            clock: given to the manager; its periodic tasks and the state reports read
                the time from it (a :class:`~aiosvc.testing.FakeClock` in tests).

        Raises:
            LoadError: the import path does not name a Manager subclass.
            ConfigError: no topic, or a bad setting of the manager's own.
        """
        manager_cls: type[Manager] = (
            load_object(manager, Manager) if isinstance(manager, str) else manager
        )
        if not (isinstance(manager_cls, type) and issubclass(manager_cls, Manager)):
            raise ConfigError(f"{manager!r} is not a subclass of aiosvc.Manager")
        settings = (settings or manager_cls.settings_class.load()).reload_as(
            manager_cls.settings_class
        )
        topic = topic or manager_cls.topic
        if not topic:
            raise ConfigError(
                f"{manager_cls.__qualname__} declares no topic: set its `topic` or pass topic="
            )
        host = host or settings.host
        binary = binary or default_binary(topic)
        instance = manager_cls(host=host, settings=settings, service_name=binary, clock=clock)
        return cls(
            instance,
            topic=topic,
            host=host,
            binary=binary,
            settings=settings,
            transport=transport,
            store=store,
        )

    # -- lifecycle

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the whole lifecycle in the calling task, until :meth:`stop` is requested.

        For use in your own task group: ``await tg.start(service.serve)`` returns once
        the service is started. Most code uses ``async with service`` or :meth:`start`.
        """
        if self.started or self._stop_requested.is_set():
            raise ServiceError(f"{self!r} was already started; create a new Service")
        label = current_service.set(f"{self.topic}@{self.host}")
        hooks_ran = False
        threshold = self.settings.loop_block_warning
        watch = loopwatch.acquire(threshold) if threshold > 0 else None
        try:
            log.info("Starting %s node %s on host %s", self.topic, self.binary, self.host)
            self.metrics = serve_metrics(self.settings, self.topic, self._dispatcher.endpoints)
            await self._connect()
            assert self.store is not None and self.transport is not None
            try:
                self.manager.service_record = await self.store.get(self.host, self.binary)
            except ServiceNotFound:
                self.manager.service_record = None
            hooks_ran = True
            await self.manager.init_host()
            self.record = await self.store.register(
                self.host, self.binary, self.topic, self.manager.SERVICE_VERSION
            )
            self.manager.service_record = self.record
            await self.manager.pre_start_hook()
            self.server = self._make_server()
            self._count_in(self.metrics)
            await self._run(task_status)
        except BaseException as exc:
            raise unwrap_group(exc) from None
        finally:
            # Shielded, so a cancelled service still cleans up; force_stop()
            # cancels this scope itself, so a cleanup_host that hangs cannot hold it.
            with anyio.CancelScope(shield=True) as scope:
                self._cleanup_scope = scope
                if self._forced:
                    scope.cancel()
                if hooks_ran:
                    await self._cleanup_host()
            self._cleanup_scope = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                await self._close()
            if self.metrics is not None:
                with anyio.CancelScope(shield=True):
                    await self.metrics.close()  # the endpoint stops with the last service
            if watch is not None:
                loopwatch.release(watch)
            self.started = False
            log.info("Stopped %s node %s", self.topic, self.binary)
            current_service.reset(label)

    async def _run(self, task_status: TaskStatus[None]) -> None:
        assert self.server is not None and self.servicegroup is not None
        assert self.record is not None and self.connections is not None
        periodic_done = anyio.Event()

        async def run_periodic() -> None:
            try:
                await self.manager.periodic.run()
            finally:
                periodic_done.set()

        async with anyio.create_task_group() as tg:
            await tg.start(self.server.run)
            if self.record.disabled and self.rpc_server is not None:
                await self.rpc_server.pause_shared()
            publisher = CapabilityPublisher(
                self.manager,
                self.connections.rpc_client(self.settings.scheduler_topic),
                self.binary,
                self.settings.periodic_interval,
            )
            tg.start_soon(publisher.run, name=f"capabilities of {self.binary}")
            if isinstance(self.manager, SchedulerManager):
                await self.manager.request_capabilities()
            await self.manager.post_start_hook()
            if self.settings.periodic_enable:
                tg.start_soon(run_periodic, name=f"periodic tasks of {self.binary}")
            else:
                periodic_done.set()
            tg.start_soon(
                self.servicegroup.join,
                self.record,
                self._on_report,
                self.health,
                name=f"report_state {self.binary}",
            )
            self.started = True
            log.info(
                "Started %s: %s; %d periodic task(s)",
                self.binary,
                self._serving(),
                len(self.manager.periodic.tasks) if self.settings.periodic_enable else 0,
            )
            task_status.started()
            await self._stop_requested.wait()
            log.info("Stopping %s", self.binary)
            timeout = self.settings.graceful_shutdown_timeout or math.inf
            deadline = anyio.current_time() + timeout
            await self.server.stop_accepting()
            async with anyio.create_task_group() as stopping:
                # No new work arrives: say so at once, while the work in flight drains.
                stopping.start_soon(self._leave, name=f"mark {self.binary} stopped")
                await self.server.stop(timeout)
                self.manager.periodic.stop()
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                    await periodic_done.wait()
            tg.cancel_scope.cancel()

    async def _leave(self) -> None:
        # Bounded and never raising: a store that cannot be reached is logged in one line.
        assert self.servicegroup is not None and self.record is not None
        stopped = await self.servicegroup.leave(self.record)
        if stopped is not None:
            self.record = self.manager.service_record = stopped
            log.info("Marked %s stopped in the service store", self.binary)

    def _make_server(self) -> Server:
        """What serves this service's work: an RPC server on its topic (an APIService
        serves HTTP instead)."""
        assert self.transport is not None
        self.rpc_server = RPCServer(
            self.transport, self._dispatcher, self.topic, self.host, self.settings
        )
        return self.rpc_server

    def _count_in(self, metrics: ServiceMetrics | None) -> None:
        """Have the RPC server, the periodic tasks and the state reports count in ``metrics``."""
        if metrics is None:
            return
        assert self.servicegroup is not None
        self.servicegroup.metrics = metrics
        for task in self.manager.periodic.tasks:
            task.metrics = metrics.task(task.name)
        server = self.rpc_server
        if server is not None:
            server.metrics = metrics
            metrics.watch_in_flight(lambda: server.in_flight)

    def _serving(self) -> str:
        """What the service serves, for the log line that says it started."""
        return f"consuming {self.topic}, {self.topic}.{self.host}, {self.topic}_fanout"

    async def health(self) -> dict[str, str]:
        """Whether this service can work now: each check's result, ``"ok"`` or what is wrong.

        Asked at every state report and stored with it (``services list`` shows it):

        * ``consumers`` (``http`` for an API service): work reaches it, its consumers
          attached to their queues (the shared one left out while disabled);
        * ``broker``: its transport is connected;
        * ``periodic``: no periodic task is overdue by more than twice its spacing (and at
          least ``report_interval``), e.g. one stuck in a run that never ends;
        * ``driver``: the manager's :meth:`~aiosvc.Manager.is_working`.

        Cheap and bounded: only ``is_working`` may wait, at most ``max(1, min(5,
        report_interval / 2))`` seconds.
        """
        check, failed = self.serving_check
        server, transport = self.server, self.transport
        return {
            check: OK if server is not None and server.serving else failed,
            "broker": OK if transport is not None and transport.connected else "not connected",
            "periodic": self._periodic_health(),
            "driver": await self._driver_health(),
        }

    def _periodic_health(self) -> str:
        if not self.settings.periodic_enable:
            return OK  # nothing runs them here (an embedder may call periodic_tasks())
        runner = self.manager.periodic
        now = runner.clock.now()
        late = []
        for task in runner.tasks:
            if task.next_run is None:
                continue
            overdue = now - task.next_run
            if overdue > max(2 * task.spacing, self.settings.report_interval):
                late.append(f"{task.name} overdue by {overdue:.1f}s (spacing {task.spacing:g}s)")
        return _reason("; ".join(late)) if late else OK

    async def _driver_health(self) -> str:
        timeout = max(1.0, min(5.0, self.settings.report_interval / 2))
        answer: object = None
        with anyio.move_on_after(timeout) as scope:
            try:
                answer = self.manager.is_working()
                if inspect.isawaitable(answer):
                    answer = await answer
            except Exception as exc:
                return _reason(f"is_working() raised {type(exc).__name__}: {one_line(exc)}")
        if scope.cancelled_caught:
            return f"is_working() gave no answer within {timeout:g}s"
        if answer is True or answer == "":
            return OK
        if answer is False or answer is None:
            return "not working"
        return _reason(str(answer))

    async def _on_report(self, record: ServiceRecord) -> None:
        previous, self.record = self.record, record
        self.manager.service_record = record
        if self.rpc_server is None:
            return  # disabling steers RPC work only (an API service's is a balancer's job)
        if previous is not None and previous.disabled != record.disabled:
            if record.disabled:
                log.info(
                    "%s was disabled (%s): no longer taking work from the shared queue %s",
                    self.binary,
                    record.disabled_reason or "no reason given",
                    self.topic,
                )
                await self.rpc_server.pause_shared()
            else:
                log.info("%s was enabled: taking work from %s again", self.binary, self.topic)
                await self.rpc_server.resume_shared()

    async def _connect(self) -> None:
        if self.transport is None:
            self.transport = get_transport(self.settings)
            await self.transport.connect()
        if self.store is None:
            self.store = get_store(self.settings)
            await self.store.connect()
        self.servicegroup = ServiceGroup(self.store, self.settings, self.manager.clock)
        self.connections = Connections(self.transport, self.store, self.servicegroup, self.settings)
        self.manager.attach(self.connections)

    async def _cleanup_host(self) -> None:
        try:
            await self.manager.cleanup_host()
        except Exception:
            log.exception("Error during cleanup_host of %s", self.binary)

    async def _close(self) -> None:
        if self._kill and self.store is not None:
            try:
                await self.store.delete(self.host, self.binary)
            except ServiceNotFound:
                log.warning("Service killed that has no database entry")
            except Exception as exc:
                log.error("Could not delete the record of %s: %s", self.binary, exc)
        if self.store is not None and self._owns_store:
            await _close_quietly(self.store, "service store")
            self.store = None
        self.manager.attach(None)
        self.connections = None
        if self.transport is not None and self._owns_transport:
            await _close_quietly(self.transport, "transport")
            self.transport = None

    async def start(self) -> None:
        """Start in a background task; return once the service is started.

        Raises:
            ServiceError: already started.
            Exception: whatever made the start fail (e.g. ``TransportError``), after
                everything already opened was closed again.
        """
        if self._runner is not None:
            raise ServiceError(f"{self!r} was already started; create a new Service")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        async def runner() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(self.serve)
                    ready.set_result(None)
            except BaseException as exc:
                exc = unwrap_group(exc)
                if not ready.done():
                    ready.set_exception(exc)
                    return
                if not isinstance(exc, asyncio.CancelledError):
                    log.error("%s stopped by an error: %s", self.binary, exc, exc_info=exc)
                raise exc from None

        self._runner = loop.create_task(runner(), name=f"aiosvc {self.binary}")
        try:
            await asyncio.shield(ready)
        except asyncio.CancelledError:
            self._runner.cancel()
            raise

    async def stop(self) -> None:
        """Stop gracefully (see the module docstring) and wait until stopped.

        The service record is marked stopped as soon as consumers are stopped, so the
        service shows down at once (``record.stopped``), not after ``service_down_time``.

        Raises:
            Exception: the error that had already stopped the service, if any.
        """
        self._stop_requested.set()
        await self.wait()

    async def wait(self) -> None:
        """Wait until the service has stopped.

        Raises:
            Exception: the error that stopped it, if it did not stop cleanly.
        """
        if self._runner is None:
            return
        await asyncio.shield(self._runner)

    def force_stop(self) -> None:
        """Stop at once, without waiting for work in flight (what a second Ctrl-C does).

        Handlers in flight are cancelled and their messages go back to the queue;
        ``cleanup_host`` is cancelled too (at once if it has not begun); connections are
        still closed, within ``CLOSE_TIMEOUT`` seconds. The record is not marked stopped
        (it turns down after ``service_down_time``, as after a crash), unless a graceful
        stop had already marked it.
        """
        self._forced = True
        if self._runner is not None:
            self._runner.cancel()
        if self._cleanup_scope is not None:
            self._cleanup_scope.cancel()

    async def reset(self) -> None:
        """Ask the manager to re-read its configuration (what SIGHUP does)."""
        token = current_service.set(f"{self.topic}@{self.host}")
        try:
            log.info("Resetting %s", self.binary)
            await self.manager.reset()
        finally:
            current_service.reset(token)

    async def kill(self) -> None:
        """Stop gracefully, then soft-delete this service's record (Nova's ``kill``).

        Unlike :meth:`force_stop`, which stops at once, this waits like :meth:`stop`; the
        record is gone afterwards, so ``services list`` no longer shows the service.
        """
        self._kill = True
        if self._runner is None and not self.started:
            self._stop_requested.set()
            return
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return (
            f"<Service {self.binary} topic={self.topic!r} host={self.host!r} "
            f"manager={type(self.manager).__name__}>"
        )


def _reason(text: str) -> str:
    """A health check's reason: one line, bounded."""
    text = " ".join(text.split()) or "not working"
    return text if len(text) <= _REASON_LENGTH else text[: _REASON_LENGTH - 3] + "..."


async def _close_quietly(resource: Any, what: str) -> None:
    try:
        await resource.close()
    except Exception:
        log.exception("Error while closing the %s", what)
