"""Prometheus metrics of a process's services, and the HTTP endpoint that serves them.

Off unless ``metrics_port`` is set. Then each service counts its work (RPC requests by
method and outcome, their latency, messages in flight and dead-lettered, periodic task
runs and lateness, state reports) in prometheus-client's default registry, every metric
labelled by the service's ``topic``, and the process serves them, with the broker
reconnects and the event loop's lag, on ``http://metrics_listen:metrics_port/metrics``:
one endpoint per process, as Prometheus expects, however many services it runs (those
given the same address share it; port 0 picks a free port, and the log says which). An
API service's application answers ``GET /metrics`` too. Metrics of your own, registered
in the default registry, are served alongside.

The endpoint is served by a thread, so it answers while the event loop is blocked: the
moment its lag is worth reading. Counting costs a dictionary lookup and a few
lock-protected additions per message; with metrics off, nothing.

prometheus-client is an optional extra (``pip install 'aiosvc[metrics]'``): this module
imports it only when metrics are switched on, and :func:`require_prometheus` says, in
one line, which extra is missing. ``docs/observability.md`` lists every metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .exceptions import ConfigError, ServiceError
from .settings import Settings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Histogram
    from prometheus_client.metrics_core import Metric

__all__ = [
    "LOOP_LAG_INTERVAL",
    "UNKNOWN_METHOD",
    "ServiceMetrics",
    "TaskMetrics",
    "asgi_app",
    "require_prometheus",
    "serve_metrics",
    "transport_reconnected",
]

log = logging.getLogger(__name__)

UNKNOWN_METHOD = "<unknown>"
"""The ``method`` label of requests for a method the service does not have: a caller's
names never become labels, so their number stays that of the manager's methods."""

LOOP_LAG_INTERVAL = 0.25
"""Seconds between two measures of the event loop's lag (how late a sleep wakes up)."""

_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TASK_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def require_prometheus() -> None:
    """Check that prometheus-client can be imported.

    Raises:
        ConfigError: it cannot; the message names the extra that installs it.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "metrics_port needs prometheus-client: pip install 'aiosvc[metrics]'"
        ) from None


class _Families:
    """The metric families, registered once per process in the default registry."""

    def __init__(self) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        self.requests = Counter(
            "aiosvc_rpc_requests",
            "RPC requests (calls and casts) by outcome: ok (the method returned), error "
            "(it raised), refused (no such method, invalid arguments, unsupported version)",
            ["topic", "method", "outcome"],
        )
        self.duration = Histogram(
            "aiosvc_rpc_request_duration_seconds",
            "Time an RPC method took, from dispatch to its encoded reply (ok and error)",
            ["topic", "method"],
            buckets=_RPC_BUCKETS,
        )
        self.dead_lettered = Counter(
            "aiosvc_rpc_messages_dead_lettered",
            "Messages the RPC server dead-lettered: malformed, they cannot be handled",
            ["topic"],
        )
        self.reconnects = Counter(
            "aiosvc_transport_reconnects",
            "Times the connection to the broker was lost and made again",
        )
        self.task_runs = Counter(
            "aiosvc_periodic_task_runs",
            "Periodic task runs by outcome: ok, or error (it raised)",
            ["topic", "task", "outcome"],
        )
        self.task_duration = Histogram(
            "aiosvc_periodic_task_duration_seconds",
            "Time a periodic task's run took",
            ["topic", "task"],
            buckets=_TASK_BUCKETS,
        )
        self.task_lag = Histogram(
            "aiosvc_periodic_task_lag_seconds",
            "How late a periodic task's scheduled run started, after its slot",
            ["topic", "task"],
            buckets=_LAG_BUCKETS,
        )
        self.state_reports = Counter(
            "aiosvc_state_reports",
            "State reports to the service store by outcome: ok, or error (not written)",
            ["topic", "outcome"],
        )
        self.loop_lag = Histogram(
            "aiosvc_event_loop_lag_seconds",
            f"How late the event loop ran a sleep that was due, measured every "
            f"{LOOP_LAG_INTERVAL}s",
            buckets=_LAG_BUCKETS,
        )
        self.in_flight = _InFlight()
        REGISTRY.register(self.in_flight)


class _InFlight:
    """A collector of ``aiosvc_rpc_requests_in_flight``, read from the servers when
    scraped: nothing is counted per message."""

    def __init__(self) -> None:
        self.sources: dict[object, tuple[str, Callable[[], int]]] = {}

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "aiosvc_rpc_requests_in_flight",
            "RPC messages being handled: delivered, not yet acknowledged",
            labels=["topic"],
        )
        totals: dict[str, int] = {}
        for topic, count in list(self.sources.values()):
            totals[topic] = totals.get(topic, 0) + count()
        for topic, total in sorted(totals.items()):
            family.add_metric([topic], total)
        yield family


class _Method:
    """The metrics of one RPC method, bound to their labels once."""

    __slots__ = ("duration", "error", "ok", "refused")

    def __init__(self, families: _Families, topic: str, method: str) -> None:
        self.ok = families.requests.labels(topic, method, "ok")
        self.error = families.requests.labels(topic, method, "error")
        self.refused = families.requests.labels(topic, method, "refused")
        self.duration = families.duration.labels(topic, method)


class TaskMetrics:
    """The metrics of one periodic task (:attr:`aiosvc.periodic.PeriodicTask.metrics`)."""

    __slots__ = ("_duration", "_error", "_lag", "_ok")

    def __init__(self, families: _Families, topic: str, task: str) -> None:
        self._ok = families.task_runs.labels(topic, task, "ok")
        self._error = families.task_runs.labels(topic, task, "error")
        self._duration = families.task_duration.labels(topic, task)
        self._lag = families.task_lag.labels(topic, task)

    def ran(self, seconds: float, *, failed: bool) -> None:
        """A run ended after ``seconds``, raising (``failed``) or not."""
        (self._error if failed else self._ok).inc()
        self._duration.observe(seconds)

    def late(self, seconds: float) -> None:
        """A scheduled run started ``seconds`` after its slot."""
        self._lag.observe(max(0.0, seconds))


class ServiceMetrics:
    """What one service counts: the process's metrics with its topic's labels bound.

    Built by :func:`serve_metrics`; the service hands it to its RPC server, its periodic
    tasks and its state reports, and closes it when it stops.
    """

    def __init__(self, families: _Families, topic: str, methods: Iterable[str], url: str) -> None:
        self.topic = topic
        self.url = url
        """Where the process serves its metrics (``http://127.0.0.1:9100/metrics``)."""
        self._families = families
        self._methods = {name: _Method(families, topic, name) for name in methods}
        self._dead_lettered = families.dead_lettered.labels(topic)
        self._reports = (
            families.state_reports.labels(topic, "error"),
            families.state_reports.labels(topic, "ok"),
        )
        self._closed = False

    def _method(self, name: str) -> _Method:
        method = self._methods.get(name)
        if method is None:
            method = self._methods.get(UNKNOWN_METHOD)
            if method is None:
                method = self._methods[UNKNOWN_METHOD] = _Method(
                    self._families, self.topic, UNKNOWN_METHOD
                )
        return method

    def handled(self, method: str, seconds: float, *, failed: bool) -> None:
        """Method ``method`` ran for ``seconds``, raising (``failed``) or not."""
        counters = self._method(method)
        (counters.error if failed else counters.ok).inc()
        counters.duration.observe(seconds)

    def refused(self, method: str) -> None:
        """A request for ``method`` was refused before it ran (NoSuchMethod and the like)."""
        self._method(method).refused.inc()

    def dead_lettered(self) -> None:
        """A message was dead-lettered."""
        self._dead_lettered.inc()

    def state_reported(self, ok: bool) -> None:
        """A state report was written (``ok``) or could not be."""
        self._reports[ok].inc()

    def task(self, name: str) -> TaskMetrics:
        """The metrics of the periodic task called ``name``."""
        return TaskMetrics(self._families, self.topic, name)

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        """Report ``count()`` in ``aiosvc_rpc_requests_in_flight`` until :meth:`close`."""
        self._families.in_flight.sources[self] = (self.topic, count)

    async def close(self) -> None:
        """The service stopped: stop serving the endpoint once no service uses it.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._families.in_flight.sources.pop(self, None)
        await _process.release(self)


class _Exporter:
    """``/metrics`` over HTTP, from a thread of its own."""

    def __init__(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            self.server: WSGIServer
            self.server, self.thread = start_http_server(port, host)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ServiceError(
                f"metrics_port {port}: cannot listen on {_address(host, port)}: {reason}"
            ) from None
        self.url = f"http://{_address(host, self.server.server_port)}/metrics"
        self.users: set[ServiceMetrics] = set()

    def close(self) -> None:
        self.server.shutdown()  # waits for serve_forever to notice: up to half a second
        self.server.server_close()
        self.thread.join()


class _Process:
    """What the process's services share: the families, the endpoints, the lag watch."""

    def __init__(self) -> None:
        self.families: _Families | None = None
        self.exporters: dict[tuple[str, int], _Exporter] = {}
        self.lag_watch: asyncio.Task[None] | None = None
        self.users: set[ServiceMetrics] = set()

    def acquire(self, settings: Settings, topic: str, methods: Iterable[str]) -> ServiceMetrics:
        assert settings.metrics_port is not None
        if self.families is None:
            self.families = _Families()
        families = self.families
        key = (settings.metrics_listen, settings.metrics_port)
        exporter = self.exporters.get(key)
        if exporter is None:
            exporter = _Exporter(*key)
            self.exporters[key] = exporter
            log.info("Metrics served on %s", exporter.url)
        metrics = ServiceMetrics(families, topic, methods, exporter.url)
        exporter.users.add(metrics)
        self.users.add(metrics)
        loop = asyncio.get_running_loop()
        watch = self.lag_watch
        if watch is None or watch.done() or watch.get_loop() is not loop:
            self.lag_watch = loop.create_task(
                _watch_loop_lag(families.loop_lag), name="aiosvc metrics: event loop lag"
            )
        return metrics

    async def release(self, metrics: ServiceMetrics) -> None:
        self.users.discard(metrics)
        for key, exporter in list(self.exporters.items()):
            exporter.users.discard(metrics)
            if not exporter.users:
                del self.exporters[key]
                await anyio.to_thread.run_sync(exporter.close)
        if not self.users and self.lag_watch is not None:
            watch, self.lag_watch = self.lag_watch, None
            if watch.get_loop() is asyncio.get_running_loop():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch


_process = _Process()


def serve_metrics(settings: Settings, topic: str, methods: Iterable[str]) -> ServiceMetrics | None:
    """Switch metrics on for a starting service, if ``settings.metrics_port`` says so.

    The first service of the process given an address serves ``/metrics`` there; the
    others share it. Call in the event loop; :meth:`ServiceMetrics.close` when stopped.

    Args:
        settings: its ``metrics_port`` (None: metrics off) and ``metrics_listen``.
        topic: the ``topic`` label of what the service counts.
        methods: the manager's RPC methods, counted from zero at once.

    Returns:
        The service's metrics, or None when metrics are off.

    Raises:
        ConfigError: prometheus-client is not installed.
        ServiceError: the port cannot be listened on (in use), in one line naming it.
    """
    if settings.metrics_port is None:
        return None
    require_prometheus()
    return _process.acquire(settings, topic, methods)


def transport_reconnected() -> None:
    """The broker connection was lost and is back: count it, if metrics are on."""
    families = _process.families
    if families is not None:
        families.reconnects.inc()


def asgi_app() -> Callable[..., Any]:
    """An ASGI application serving the process's metrics (an API service's ``/metrics``).

    Raises:
        ConfigError: prometheus-client is not installed.
    """
    require_prometheus()
    from prometheus_client import make_asgi_app

    return make_asgi_app()


async def _watch_loop_lag(histogram: Histogram) -> None:
    """Sleep :data:`LOOP_LAG_INTERVAL` seconds, over and over; observe how late each wakes."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LOOP_LAG_INTERVAL)
        histogram.observe(max(0.0, loop.time() - before - LOOP_LAG_INTERVAL))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
