"""The in-process service store (``memory://``), with the Postgres store's semantics.

Tables live at module level, keyed by the URL's netloc (``memory://`` and
``memory://x`` are two tables), so several services in one process share one
``services`` table as they would share a database. The clock is injectable so tests
can check the up/down rule at its edges without sleeping.

Nova: the ``services`` table of ``nova.db.main`` with the servicegroup DB driver.
"""

from __future__ import annotations

import builtins
import dataclasses
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from ..exceptions import ServiceNotFound, StoreError
from ..settings import Settings
from .base import ServiceRecord, ServiceStore, failed_checks

__all__ = ["MemoryStore", "reset_stores"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(slots=True)
class _Row:
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
    stopped_at: datetime | None = None
    working: bool | None = None
    health: dict[str, str] | None = None


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(_Row))


@dataclasses.dataclass(slots=True)
class _Table:
    rows: dict[int, _Row] = dataclasses.field(default_factory=dict)
    # (host, binary) -> id of the live row: the partial unique index of the SQL table.
    live: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    last_id: int = 0


_tables: dict[str, _Table] = {}


def reset_stores() -> None:
    """Forget every in-memory table (for tests); connected stores see empty tables."""
    _tables.clear()


class MemoryStore(ServiceStore):
    """A :class:`ServiceStore` in process memory, shared by every store of the same URL.

    Nova: ``nova.db.main.api.service_*`` against an in-process table.

    Args:
        settings: ``database_url`` (``memory://`` or ``memory://name``) and
            ``service_down_time`` are read.
        now: the store's clock, returning an aware UTC datetime; it stamps
            ``last_seen_up`` and judges ``is_up``. Tests replace it (also after
            construction, through the ``now`` attribute).
    """

    in_process = True

    def __init__(
        self,
        settings: Settings,
        *,
        now: Callable[[], datetime] | None = None,
        migrate: bool = True,
    ) -> None:
        super().__init__(settings, migrate=migrate)
        self.now: Callable[[], datetime] = now or _utcnow
        self._key = urlsplit(settings.database_url).netloc
        self._connected = False

    async def connect(self) -> None:
        """Attach to the shared table of this URL (created on first use).

        Nova: ``nova.db.main.api.configure`` (no schema to migrate here).
        """
        _tables.setdefault(self._key, _Table())
        self._connected = True

    async def close(self) -> None:
        """Detach; the table stays for other stores of the same URL. Idempotent."""
        self._connected = False

    def _table(self) -> _Table:
        # Looked up on every call so that reset_stores() also empties connected stores.
        if not self._connected:
            raise StoreError(f"store memory://{self._key} is not connected")
        return _tables.setdefault(self._key, _Table())

    def _record(self, row: _Row, now: datetime) -> ServiceRecord:
        # Same rule as the SQL: not forced down, not stopped, and
        # coalesce(last_seen_up, created_at) >= now() - down_time.
        last = row.last_seen_up or row.created_at
        is_up = (
            not row.forced_down
            and row.stopped_at is None
            and last >= now - timedelta(seconds=self.service_down_time)
        )
        fields = {name: getattr(row, name) for name in _ROW_FIELDS}
        # A copy, as a database hands out: a record never changes with the row.
        fields["health"] = dict(row.health) if row.health is not None else None
        return ServiceRecord(**fields, is_up=is_up)

    def _live(self, table: _Table, host: str, binary: str) -> _Row:
        try:
            return table.rows[table.live[host, binary]]
        except KeyError:
            raise ServiceNotFound(
                f"no service record for host {host!r} and binary {binary!r}"
            ) from None

    async def register(self, host: str, binary: str, topic: str, version: int) -> ServiceRecord:
        """Create the live record for ``host`` + ``binary``, or revive the existing one.

        Nova: ``nova.db.main.api.service_create`` / ``Service.create`` (here an upsert).
        """
        table = self._table()
        now = self.now()
        try:
            row = self._live(table, host, binary)
        except ServiceNotFound:
            table.last_id += 1
            row = _Row(
                id=table.last_id,
                uuid=uuid.uuid4(),
                host=host,
                binary=binary,
                topic=topic,
                report_count=0,
                disabled=False,
                disabled_reason=None,
                forced_down=False,
                last_seen_up=None,
                version=version,
                created_at=now,
                updated_at=None,
                deleted_at=None,
            )
            table.rows[row.id] = row
            table.live[host, binary] = row.id
        else:
            row.topic = topic
            row.version = version
            row.stopped_at = None  # running again
            row.working = row.health = None  # not known until it reports
            row.updated_at = now
        return self._record(row, now)

    async def report(
        self, service_id: int, *, health: Mapping[str, str] | None = None
    ) -> ServiceRecord:
        """One heartbeat: ``report_count += 1, last_seen_up = now()``, with ``health``
        (and ``working``) when given.

        Nova: ``nova.servicegroup.drivers.db.DbDriver._report_state``.

        Raises:
            ServiceNotFound: the record was deleted.
        """
        row = self._by_id(service_id)
        now = self.now()
        row.report_count += 1
        row.last_seen_up = now
        row.updated_at = now
        if health is not None:
            row.health = {str(name): str(result) for name, result in health.items()}
            row.working = not failed_checks(row.health)
        return self._record(row, now)

    async def mark_stopped(self, service_id: int) -> ServiceRecord:
        """Record a graceful stop: ``stopped_at = now()``, the first one kept.

        Nova has none; Manila marks its ``services`` row ``stopped`` in the same place.

        Raises:
            ServiceNotFound: the record was deleted.
        """
        row = self._by_id(service_id)
        now = self.now()
        if row.stopped_at is None:
            row.stopped_at = now
        row.updated_at = now
        return self._record(row, now)

    def _by_id(self, service_id: int) -> _Row:
        row = self._table().rows.get(service_id)
        if row is None or row.deleted_at is not None:
            raise ServiceNotFound(f"service record {service_id} is gone")
        return row

    async def get(self, host: str, binary: str) -> ServiceRecord:
        """The live record of ``host`` + ``binary``.

        Nova: ``nova.db.main.api.service_get_by_host_and_binary``.

        Raises:
            ServiceNotFound: there is none.
        """
        return self._record(self._live(self._table(), host, binary), self.now())

    async def list(
        self, *, topic: str | None = None, host: str | None = None, binary: str | None = None
    ) -> builtins.list[ServiceRecord]:
        """Every live record matching the filters, ordered by id.

        Nova: ``nova.db.main.api.service_get_all`` with ``GET /os-services`` filters.
        """
        table = self._table()
        now = self.now()
        # rows is in insertion order, which is id order.
        return [
            self._record(row, now)
            for row in table.rows.values()
            if row.deleted_at is None
            and (topic is None or row.topic == topic)
            and (host is None or row.host == host)
            and (binary is None or row.binary == binary)
        ]

    async def update(
        self,
        host: str,
        binary: str,
        *,
        disabled: bool | None = None,
        disabled_reason: str | None = None,
        forced_down: bool | None = None,
    ) -> ServiceRecord:
        """Change the admin state of a live record; never touches ``last_seen_up``.

        Nova: ``nova.db.main.api.service_update`` via ``PUT /os-services/{uuid}``.

        Raises:
            ServiceNotFound: there is no live record.
        """
        table = self._table()
        row = self._live(table, host, binary)
        now = self.now()
        if disabled is not None:
            row.disabled = disabled
        # A reason only lives with disabled=True: enabling clears it.
        if not row.disabled:
            row.disabled_reason = None
        elif disabled_reason is not None:
            row.disabled_reason = disabled_reason
        if forced_down is not None:
            row.forced_down = forced_down
        row.updated_at = now
        return self._record(row, now)

    async def delete(self, host: str, binary: str) -> None:
        """Soft-delete the live record (``deleted_at = now()``).

        Nova: ``nova.db.main.api.service_destroy``.

        Raises:
            ServiceNotFound: there is no live record.
        """
        table = self._table()
        self._live(table, host, binary).deleted_at = self.now()
        del table.live[host, binary]
