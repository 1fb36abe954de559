"""Liveness: each service reports to the store, and anyone can ask who is up.

Every ``report_interval`` seconds the service increments its ``report_count`` and the
store stamps ``last_seen_up`` with its own clock. A service is up when it is not
forced down and ``now() - last_seen_up <= service_down_time``, judged by the store.

The report loop never dies and never piles up: a failing store is logged once at
ERROR, retried every interval (each attempt bounded by the interval), and its recovery
logged once at INFO, while the service keeps serving RPC and periodic tasks.

Nova: ``nova.servicegroup.api.API`` and ``nova.servicegroup.drivers.db.DbDriver``
(``join``, ``_report_state``, ``is_up``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from .exceptions import ServiceNotFound
from .periodic import Clock, MonotonicClock
from .settings import Settings
from .store.base import ServiceRecord, ServiceStore

__all__ = ["ServiceGroup"]

log = logging.getLogger(__name__)

StateCallback = Callable[[ServiceRecord], Awaitable[None]]


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

    async def report_state(self, record: ServiceRecord) -> ServiceRecord | None:
        """One heartbeat; the updated record, or ``None`` when it could not be written.

        Never raises (besides cancellation): Nova's zombie-service bug (1517926) was an
        exception escaping this and killing the timer.
        """
        try:
            with anyio.fail_after(max(self.settings.report_interval, 1.0)):
                fresh = await self.store.report(record.id)
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
                    _reason(exc),
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

    async def join(self, record: ServiceRecord, on_report: StateCallback | None = None) -> None:
        """Report now, then every ``report_interval`` seconds until cancelled.

        ``on_report`` gets each record written, so the service can follow admin changes
        such as ``disabled``.
        """
        interval = self.settings.report_interval
        if not interval:
            return
        next_at = self.clock.now()
        while True:
            await self.clock.sleep_until(next_at)
            fresh = await self.report_state(record)
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__
