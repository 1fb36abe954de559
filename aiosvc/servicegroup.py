"""Liveness: each service reports to the store, and anyone can ask who is up.

Every ``report_interval`` seconds the service increments its ``report_count`` and the
store stamps ``last_seen_up`` with its own clock. A service is up when it is not
forced down, not stopped, and ``now() - last_seen_up <= service_down_time``, judged by
the store.

The report loop never dies and never piles up: a failing store is logged once at
ERROR, retried every interval (each attempt bounded by the interval), and its recovery
logged once at INFO, while the service keeps serving RPC and periodic tasks.

A graceful stop calls :meth:`ServiceGroup.leave`: the record is marked stopped, so the
service is down at once (a crashed one turns down after ``service_down_time``).

Each report also carries the service's health, when :meth:`ServiceGroup.join` is given a
probe (:meth:`aiosvc.Service.health`): each check's result, stored with ``working`` in
the same statement. A service that stops working is logged once at WARNING, naming the
checks that failed, and once at INFO when it works again. Being up is unchanged by it
(Nova's ``is_up``); Cinder instead skips the heartbeat while ``is_working()`` is false.

Nova: ``nova.servicegroup.api.API`` and ``nova.servicegroup.drivers.db.DbDriver``
(``join``, ``_report_state``, ``is_up``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio

from .clock import Clock, MonotonicClock
from .exceptions import ServiceNotFound
from .log import one_line
from .metrics import ServiceMetrics
from .settings import Settings
from .store.base import ServiceRecord, ServiceStore, failed_checks

__all__ = ["ServiceGroup"]

log = logging.getLogger(__name__)

LEAVE_TIMEOUT = 5.0
"""Seconds :meth:`ServiceGroup.leave` waits for the store before giving up."""

StateCallback = Callable[[ServiceRecord], Awaitable[None]]
HealthProbe = Callable[[], Awaitable[Mapping[str, str]]]
"""Returns each health check's result (``"ok"`` or what is wrong); bounds its own time."""


class ServiceGroup:
    """The membership API over a :class:`~aiosvc.store.base.ServiceStore`."""

    def __init__(self, store: ServiceStore, settings: Settings, clock: Clock | None = None):
        self.store = store
        self.settings = settings
        self.clock: Clock = clock or MonotonicClock()
        self.disconnected = False
        # Why reports fail ("gone" or "unreachable"): each kind is logged once, so a record
        # deleted while the store was unreachable is still reported when it comes back.
        self._failure: str | None = None
        self.metrics: ServiceMetrics | None = None  # counts join()'s reports, if set
        # The names of the failed health checks last logged: a change is logged, once.
        self._failed: list[str] = []

    async def is_up(self, record: ServiceRecord) -> bool:
        """Whether the service of ``record`` is up now (re-read from the store)."""
        try:
            return (await self.store.get(record.host, record.binary)).is_up
        except ServiceNotFound:
            return False

    async def list(
        self, *, topic: str | None = None, host: str | None = None, binary: str | None = None
    ) -> list[ServiceRecord]:
        """The live services matching the filters, each with ``is_up``."""
        return await self.store.list(topic=topic, host=host, binary=binary)

    async def report_state(
        self, record: ServiceRecord, *, health: Mapping[str, str] | None = None
    ) -> ServiceRecord | None:
        """One heartbeat, with ``health`` if given; the updated record, or ``None`` when it
        could not be written.

        Never raises (besides cancellation): Nova's zombie-service bug (1517926) was an
        exception escaping this and killing the timer.
        """
        if health is not None:
            self._log_health(record, health)
        try:
            with anyio.fail_after(max(self.settings.report_interval, 1.0)):
                if health is None:
                    fresh = await self.store.report(record.id)
                else:
                    fresh = await self.store.report(record.id, health=health)
        except ServiceNotFound:
            if self._failure != "gone":
                log.error(
                    "The services record of %s on host %s is gone (deleted by an operator?); "
                    "restart this service to recreate it",
                    record.binary,
                    record.host,
                )
            self._failure = "gone"
            self.disconnected = True
            return None
        except Exception as exc:
            if self._failure != "unreachable":
                log.error(
                    "Cannot report the state of %s to the service store: %s; "
                    "retrying every %ss while the service keeps serving",
                    record.binary,
                    one_line(exc),
                    self.settings.report_interval,
                )
            self._failure = "unreachable"
            self.disconnected = True
            return None
        if self.disconnected:
            self.disconnected = False
            self._failure = None
            log.info("Recovered: reporting the state of %s again", record.binary)
        return fresh

    async def _probe(
        self, record: ServiceRecord, health: HealthProbe | None
    ) -> Mapping[str, str] | None:
        """The probe's answer; ``None`` (the report goes without) if it failed, logged."""
        if health is None:
            return None
        try:
            return await health()
        except Exception:
            log.exception("Error while checking the health of %s", record.binary)
            return None

    def _log_health(self, record: ServiceRecord, health: Mapping[str, str]) -> None:
        """Log a change of which checks fail, once: a WARNING when a check starts failing,
        an INFO when some recover (the others still failing) and when all have."""
        problems = failed_checks(health)
        if list(problems) == self._failed:
            return
        reasons = "; ".join(f"{name}: {why}" for name, why in problems.items())
        if not problems:
            log.info("%s on host %s is working again", record.binary, record.host)
        elif set(problems) - set(self._failed):
            log.warning("%s on host %s is not working: %s", record.binary, record.host, reasons)
        else:
            log.info("%s on host %s is still not working: %s", record.binary, record.host, reasons)
        self._failed = list(problems)

    async def leave(
        self, record: ServiceRecord, *, timeout: float | None = None
    ) -> ServiceRecord | None:
        """Mark ``record`` stopped (a graceful stop); the stopped record, or ``None``.

        The service is down from now on, shown as stopped rather than crashed. Never
        raises (besides cancellation) and never waits more than ``timeout`` seconds
        (default ``LEAVE_TIMEOUT``, 5 s): a store that cannot be reached is logged in one
        line, and the record then turns down after ``service_down_time``, as after a crash.
        """
        try:
            with anyio.fail_after(LEAVE_TIMEOUT if timeout is None else timeout):
                return await self.store.mark_stopped(record.id)
        except ServiceNotFound:
            log.warning(
                "The services record of %s on host %s is gone: nothing to mark stopped",
                record.binary,
                record.host,
            )
        except Exception as exc:
            log.warning(
                "Could not mark %s stopped in the service store: %s; it shows down "
                "after service_down_time (%ss), like a crashed service",
                record.binary,
                one_line(exc),
                self.settings.service_down_time,
            )
        return None

    async def join(
        self,
        record: ServiceRecord,
        on_report: StateCallback | None = None,
        health: HealthProbe | None = None,
    ) -> None:
        """Report now, then every ``report_interval`` seconds until cancelled.

        ``on_report`` gets each record written, so the service can follow admin changes
        such as ``disabled``. ``health`` is asked before each report, and its answer
        written with it.
        """
        interval = self.settings.report_interval
        if not interval:
            return
        next_at = self.clock.now()
        while True:
            await self.clock.sleep_until(next_at)
            fresh = await self.report_state(record, health=await self._probe(record, health))
            if self.metrics is not None:
                self.metrics.state_reported(fresh is not None)
            if fresh is not None:
                record = fresh
                if on_report is not None:
                    try:
                        await on_report(fresh)
                    except Exception:
                        log.exception("Error while applying the state of %s", record.binary)
            next_at += interval
            now = self.clock.now()
            if now > next_at:  # a slow store: skip the slots missed, never pile up
                next_at += interval * ((now - next_at) // interval + 1)
