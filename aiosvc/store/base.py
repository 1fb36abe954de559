"""What a service store must do: the ``services`` table and the up/down rule.

Nova: ``nova.db.main.models.Service``, ``nova.objects.Service`` and the servicegroup
DB driver. The store, not the host, owns the clock: ``last_seen_up`` is written with
the store's ``now()`` and ``is_up`` is computed by the store, so host clocks never matter.

``is_up`` is ``not forced_down and stopped_at is null and now() - last_seen_up <=
service_down_time`` (a record that never reported counts from ``created_at``, as nova's
does). ``stopped_at`` is set by a graceful stop (:meth:`ServiceStore.mark_stopped`), so a
stopped service is down at once, while one that crashed turns down after
``service_down_time``; only :meth:`ServiceStore.register` (a restart) clears it.

Alive is not the same as able to work. Each report also carries the service's health:
one result per check (``aiosvc.store.HEALTH_CHECKS``), ``"ok"`` or what is wrong,
stored with ``working`` (every check ok) in the same statement. ``working`` is ``None``
while not known: not reported since the service (re)started, or written by an older
aiosvc.
Cinder: ``Manager.is_working`` and the volume driver's ``initialized``; here the service
stays up, as Nova's ``is_up`` says, and ``working`` tells the rest.
"""

from __future__ import annotations

import abc
import builtins
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from ..settings import Settings

__all__ = ["HEALTH_CHECKS", "OK", "ServiceRecord", "ServiceStore", "failed_checks"]

OK = "ok"
"""A health check's result when it passed; any other text says what is wrong."""

HEALTH_CHECKS = ("consumers", "http", "broker", "periodic", "driver")
"""The checks a service reports, in the order they are shown: its RPC consumers are
attached (``consumers``; an API service's HTTP server is up: ``http``), its transport is
connected to the broker, no periodic task is overdue, and its manager's
:meth:`~aiosvc.Manager.is_working` says yes."""


def failed_checks(health: Mapping[str, str]) -> dict[str, str]:
    """The checks of ``health`` that did not pass, in the order of
    ``aiosvc.store.HEALTH_CHECKS`` (others after, by name); empty when all passed."""
    order = {name: i for i, name in enumerate(HEALTH_CHECKS)}
    names = sorted(health, key=lambda name: (order.get(name, len(order)), name))
    return {name: health[name] for name in names if health[name] != OK}


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One row of the ``services`` table, with ``is_up`` as the store judged it when read."""

    id: int
    uuid: uuid.UUID
    host: str
    binary: str
    topic: str
    report_count: int
    disabled: bool
    disabled_reason: str | None
    forced_down: bool
    last_seen_up: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime | None
    deleted_at: datetime | None
    is_up: bool
    # Last, with a default, so records built by name or position without it still work.
    stopped_at: datetime | None = None
    """When the service stopped gracefully; ``None`` while it runs, or after a crash."""
    working: bool | None = None
    """Whether every health check passed at the last report; ``None``: not known (not
    reported since the service started, or reported by an older aiosvc)."""
    health: Mapping[str, str] | None = field(default=None, hash=False)
    """Each health check's result at the last report (``"ok"`` or what is wrong)."""

    @property
    def stopped(self) -> bool:
        """Whether the service stopped gracefully (it is then down, whatever its reports)."""
        return self.stopped_at is not None

    @property
    def problems(self) -> dict[str, str]:
        """The health checks that failed at the last report, by name, in the order of
        ``aiosvc.store.HEALTH_CHECKS``."""
        return failed_checks(self.health or {})

    @property
    def status(self) -> str:
        """``"enabled"`` or ``"disabled"``, as ``nova service-list`` shows it."""
        return "disabled" if self.disabled else "enabled"

    @property
    def state(self) -> str:
        """``"up"`` or ``"down"``, as ``nova service-list`` shows it."""
        return "up" if self.is_up else "down"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``services list --json``)."""
        return {
            "id": self.id,
            "uuid": str(self.uuid),
            "host": self.host,
            "binary": self.binary,
            "topic": self.topic,
            "status": self.status,
            "state": self.state,
            "report_count": self.report_count,
            "disabled_reason": self.disabled_reason,
            "forced_down": self.forced_down,
            "stopped": self.stopped,
            "stopped_at": _iso(self.stopped_at),
            "working": self.working,
            "health": dict(self.health) if self.health is not None else None,
            "last_seen_up": _iso(self.last_seen_up),
            "version": self.version,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class ServiceStore(abc.ABC):
    """Where services record themselves, chosen by the scheme of ``settings.database_url``.

    Implementations: :mod:`aiosvc.store.memory` (``memory://``) and
    :mod:`aiosvc.store.postgres` (``postgresql://``); the scheme table is
    :data:`aiosvc.backends.STORES`. Every method raises
    :class:`~aiosvc.exceptions.StoreError` when the store cannot be reached.
    """

    in_process: ClassVar[bool] = False
    """True when the records live in this process, so no other process can read them."""

    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        self.settings = settings
        self.migrate = migrate

    @property
    def service_down_time(self) -> float:
        return self.settings.service_down_time

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect, and bring the schema up to date (idempotent, safe when many start at once).

        With ``migrate=False`` (operator commands that only read or change rows) the schema
        is left alone, and an out-of-date one is an error that says to run ``db upgrade``.

        Raises:
            StoreError: unreachable, refused or bad credentials; never shows a password.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection. Idempotent."""

    @abc.abstractmethod
    async def register(self, host: str, binary: str, topic: str, version: int) -> ServiceRecord:
        """Create the live record for ``host`` + ``binary``, or revive the existing one.

        An existing live record keeps its id, uuid, report_count and admin state
        (disabled, forced_down); its ``topic`` and ``version`` are updated, and its
        ``stopped_at``, ``working`` and ``health`` are cleared (the service runs again,
        its health not known until it reports). Safe when
        several services register the same pair at once: one row results.
        """

    @abc.abstractmethod
    async def report(
        self, service_id: int, *, health: Mapping[str, str] | None = None
    ) -> ServiceRecord:
        """One heartbeat, in one statement: ``report_count += 1, last_seen_up = now()``.

        With ``health`` (each check's result, ``"ok"`` or what is wrong), the same
        statement stores it and ``working`` (every check ok); without, both stay as they
        were. Returns the updated record (so the caller sees ``disabled``). Leaves
        ``stopped_at`` alone: a heartbeat that races with a graceful stop cannot make the
        service look up again; only :meth:`register` does.

        Raises:
            ServiceNotFound: the record was deleted.
        """

    @abc.abstractmethod
    async def mark_stopped(self, service_id: int) -> ServiceRecord:
        """Record a graceful stop: ``stopped_at = now()`` (the first one is kept).

        The record is down from now on (``is_up`` is false), and shown as stopped rather
        than crashed, until :meth:`register` clears ``stopped_at`` at the next start.

        Raises:
            ServiceNotFound: the record was deleted.
        """

    @abc.abstractmethod
    async def get(self, host: str, binary: str) -> ServiceRecord:
        """The live record of ``host`` + ``binary``.

        Raises:
            ServiceNotFound: there is none.
        """

    @abc.abstractmethod
    async def list(
        self, *, topic: str | None = None, host: str | None = None, binary: str | None = None
    ) -> list[ServiceRecord]:
        """Every live record matching the filters, ordered by id."""

    @abc.abstractmethod
    async def update(
        self,
        host: str,
        binary: str,
        *,
        disabled: bool | None = None,
        disabled_reason: str | None = None,
        forced_down: bool | None = None,
    ) -> ServiceRecord:
        """Change the admin state of a live record; ``None`` leaves a field as it is.

        Enabling clears ``disabled_reason``; a reason is kept only with ``disabled=True``.
        Never touches ``last_seen_up`` (so admin changes cannot make a dead service look up).

        Raises:
            ServiceNotFound: there is no live record.
        """

    @abc.abstractmethod
    async def delete(self, host: str, binary: str) -> None:
        """Soft-delete the live record (``deleted_at = now()``).

        Raises:
            ServiceNotFound: there is no live record.
        """

    @classmethod
    async def upgrade_schema(cls, settings: Settings) -> builtins.list[int]:
        """Apply the pending schema migrations to the store ``settings.database_url`` names.

        Returns the versions applied; a store without a versioned schema has none.
        Nova: ``nova-manage db sync``.

        Raises:
            StoreError: unreachable, or a migration failed.
        """
        return []

    @classmethod
    async def schema_versions(cls, settings: Settings) -> tuple[int, int]:
        """The schema version of that store, and the latest this aiosvc knows.

        Raises:
            StoreError: unreachable.
        """
        return (0, 0)

    async def __aenter__(self) -> ServiceStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
