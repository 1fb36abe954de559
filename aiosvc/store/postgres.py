"""The PostgreSQL service store (``postgresql://``), on one small asyncpg pool.

The only module that imports :mod:`asyncpg`. The database owns the clock:
``last_seen_up`` is written with ``now()`` and ``is_up`` is computed in SQL, so the
clocks of the hosts never matter. Every statement is parameterised, has a
``command_timeout``, and every failure surfaces as :class:`StoreError` whose message
is one line with the password replaced by ``***``. The pool replaces dead connections
on the next call, so a store outlives a database restart.

The schema is versioned SQL shipped in ``aiosvc/store/migrations/NNNN_name.sql``,
applied by :meth:`PostgresStore.connect` (and :func:`upgrade`) in one transaction
under an advisory lock, recorded in the table ``aiosvc_schema``.

URL query options of aiosvc's own (removed before the URL reaches asyncpg):
``pool_min_size`` (0), ``pool_max_size`` (4), ``command_timeout`` (10 s) and
``connect_timeout`` (10 s). Everything else, e.g. ``sslmode``, is asyncpg's. A
``pool_min_size`` above 0 makes asyncpg keep that many connections open in the
background, and log a warning at each retry while the database is down.

Nova: ``nova.db.main.api.service_*``, ``nova.db.main.models.Service`` and the
servicegroup DB driver; ``nova-manage db sync`` for :func:`upgrade`.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import importlib.resources
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ..exceptions import ConfigError, ServiceNotFound, StoreError
from ..log import one_line
from ..settings import Settings, redact_url
from .base import ServiceRecord, ServiceStore, failed_checks

__all__ = [
    "Migration",
    "PostgresStore",
    "current_version",
    "latest_version",
    "migrations",
    "upgrade",
]

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key that serialises migrations: b"aiosvc" read as an integer.
_MIGRATION_LOCK = int.from_bytes(b"aiosvc", "big")

_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

# Failures of the database or the path to it; anything else is a bug and propagates.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
# At connect, also a URL that parses but that asyncpg refuses (a port like 99999 or "x").
_CONNECT_ERRORS = (*_DB_ERRORS, ValueError, OverflowError)

# What every statement that returns records selects, in ServiceRecord's field order so
# that a row maps onto a record positionally (the fastest way, for list() at 5000 rows).
# $1 is always service_down_time in seconds: the database judges is_up by its own clock.
_IS_UP = (
    "(NOT forced_down AND stopped_at IS NULL"
    " AND coalesce(last_seen_up, created_at) >= now() - make_interval(secs => $1))"
    " AS is_up"
)
_FIELDS = [f.name for f in dataclasses.fields(ServiceRecord)]
_RETURNING = ", ".join(_IS_UP if name == "is_up" else f'"{name}"' for name in _FIELDS)
_UUID_AT = _FIELDS.index("uuid")
_HEALTH_AT = _FIELDS.index("health")

_REGISTER = f"""
    INSERT INTO services (uuid, host, "binary", topic, version)
    VALUES ($2, $3, $4, $5, $6)
    ON CONFLICT (host, "binary") WHERE deleted_at IS NULL
    DO UPDATE SET topic = EXCLUDED.topic, version = EXCLUDED.version, stopped_at = NULL,
                  working = NULL, health = NULL, updated_at = now()
    RETURNING {_RETURNING}
"""

# stopped_at is left alone: a report racing with a graceful stop cannot revive the record.
_REPORT = f"""
    UPDATE services
    SET report_count = report_count + 1, last_seen_up = now(), updated_at = now()
    WHERE id = $2 AND deleted_at IS NULL
    RETURNING {_RETURNING}
"""

# The same heartbeat, with the health in the same statement (no extra round trip).
_REPORT_HEALTH = f"""
    UPDATE services
    SET report_count = report_count + 1, last_seen_up = now(), updated_at = now(),
        working = $3, health = $4::jsonb
    WHERE id = $2 AND deleted_at IS NULL
    RETURNING {_RETURNING}
"""

_MARK_STOPPED = f"""
    UPDATE services
    SET stopped_at = coalesce(stopped_at, now()), updated_at = now()
    WHERE id = $2 AND deleted_at IS NULL
    RETURNING {_RETURNING}
"""

_GET = f"""
    SELECT {_RETURNING} FROM services
    WHERE host = $2 AND "binary" = $3 AND deleted_at IS NULL
"""

# The reason follows the resulting disabled flag: enabling clears it, and a reason
# given for an enabled service is dropped. last_seen_up is left alone (nova bug 1420848).
_UPDATE = f"""
    UPDATE services
    SET disabled = coalesce($4::boolean, disabled),
        disabled_reason = CASE WHEN coalesce($4::boolean, disabled)
                               THEN coalesce($5::text, disabled_reason) END,
        forced_down = coalesce($6::boolean, forced_down),
        updated_at = now()
    WHERE host = $2 AND "binary" = $3 AND deleted_at IS NULL
    RETURNING {_RETURNING}
"""

_DELETE = """
    UPDATE services SET deleted_at = now()
    WHERE host = $1 AND "binary" = $2 AND deleted_at IS NULL
    RETURNING id
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``migrations/NNNN_name.sql``."""

    version: int
    name: str
    sql: str


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The migrations shipped in the package, by version."""
    found = []
    for entry in importlib.resources.files(__package__).joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            sql = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), sql))
    found.sort(key=lambda m: m.version)
    return tuple(found)


def latest_version() -> int:
    """The schema version this aiosvc brings (the highest migration shipped)."""
    return migrations()[-1].version if migrations() else 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Options:
    dsn: str
    shown: str
    password: str | None
    min_size: int
    max_size: int
    command_timeout: float
    connect_timeout: float


_OPTION_DEFAULTS = {
    "pool_min_size": 0.0,
    "pool_max_size": 4.0,
    "command_timeout": 10.0,
    "connect_timeout": 10.0,
}


def _options(url: str) -> _Options:
    """Split aiosvc's own query options off ``url``; the rest is asyncpg's DSN.

    Raises:
        ConfigError: the URL does not parse, or an aiosvc option has a bad value.
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError as exc:
        raise ConfigError(f"database_url {shown}: {exc}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = dict(_OPTION_DEFAULTS)
    for key, raw in query:
        if key in values:
            try:
                values[key] = float(raw)
            except ValueError:
                values[key] = 0
            bad = values[key] < 0 if key == "pool_min_size" else values[key] <= 0
            if bad or (key.startswith("pool_") and not values[key].is_integer()):
                raise ConfigError(f"database_url {shown}: bad {key} {raw!r}")
    if values["pool_min_size"] > values["pool_max_size"]:
        raise ConfigError(f"database_url {shown}: pool_min_size is above pool_max_size")
    rest = urlencode([(k, v) for k, v in query if k not in _OPTION_DEFAULTS])
    return _Options(
        dsn=urlunsplit(parts._replace(query=rest)),
        shown=shown,
        password=password,
        min_size=int(values["pool_min_size"]),
        max_size=int(values["pool_max_size"]),
        command_timeout=values["command_timeout"],
        connect_timeout=values["connect_timeout"],
    )


def _application_name(dsn: str) -> dict[str, str]:
    """``aiosvc:<pid>`` as the pool's ``application_name`` (what ``pg_stat_activity``
    shows), unless the URL names one."""
    if any(key == "application_name" for key, _ in parse_qsl(urlsplit(dsn).query)):
        return {}
    return {"application_name": f"aiosvc:{os.getpid()}"}


def _error(prefix: str, opts: _Options, exc: BaseException) -> StoreError:
    """A one-line StoreError naming the redacted URL and the cause; never the password."""
    # Belt and braces: asyncpg does not echo DSNs, but a message must never leak one.
    return StoreError(f"{prefix} {opts.shown}: {one_line(exc, secret=opts.password)}")


async def _migrate(
    con: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any],
) -> list[int]:
    """Apply the pending migrations, once even when many processes start at once."""
    applied: list[int] = []
    async with con.transaction():
        # Held to the end of the transaction: the others wait, then find nothing to do.
        await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        if await con.fetchval("SELECT to_regclass('aiosvc_schema')") is None:
            await con.execute(
                "CREATE TABLE aiosvc_schema ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        done = {r["version"] for r in await con.fetch("SELECT version FROM aiosvc_schema")}
        for migration in migrations():
            if migration.version in done:
                continue
            await con.execute(migration.sql)
            await con.execute(
                "INSERT INTO aiosvc_schema (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied


async def _version(con: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]) -> int:
    if await con.fetchval("SELECT to_regclass('aiosvc_schema')") is None:
        return 0
    version = await con.fetchval("SELECT max(version) FROM aiosvc_schema")
    return int(version or 0)


async def _connect_one(opts: _Options) -> asyncpg.Connection[Any]:
    try:
        return await asyncpg.connect(
            opts.dsn, timeout=opts.connect_timeout, command_timeout=opts.command_timeout
        )
    except _CONNECT_ERRORS as exc:
        raise _error("cannot connect to database", opts, exc) from None


async def upgrade(url: str) -> list[int]:
    """Apply the pending migrations to the database at ``url``.

    Nova: ``nova-manage db sync``.

    Returns:
        The versions applied now, ascending (empty when already up to date).

    Raises:
        StoreError: the database cannot be reached or a migration failed.
    """
    opts = _options(url)
    con = await _connect_one(opts)
    try:
        applied = await _migrate(con)
    except _DB_ERRORS as exc:
        raise _error("cannot migrate database", opts, exc) from exc
    finally:
        await con.close()
    for version in applied:
        log.info("database %s: applied schema migration %04d", opts.shown, version)
    return applied


async def current_version(url: str) -> int:
    """The schema version of the database at ``url`` (0 for an empty database).

    Nova: ``nova-manage db version``.

    Raises:
        StoreError: the database cannot be reached.
    """
    opts = _options(url)
    con = await _connect_one(opts)
    try:
        return await _version(con)
    except _DB_ERRORS as exc:
        raise _error("database", opts, exc) from exc
    finally:
        await con.close()


class PostgresStore(ServiceStore):
    """A :class:`ServiceStore` in PostgreSQL, shared by every service of a deployment.

    Nova: ``nova.db.main.api`` service functions with the servicegroup DB driver.

    Args:
        settings: ``database_url`` and ``service_down_time`` are read.

    Raises:
        ConfigError: an aiosvc option in the URL's query has a bad value.
    """

    @classmethod
    async def upgrade_schema(cls, settings: Settings) -> builtins.list[int]:
        """Apply the pending migrations (see :func:`upgrade`)."""
        return await upgrade(settings.database_url)

    @classmethod
    async def schema_versions(cls, settings: Settings) -> tuple[int, int]:
        """The database's schema version and :func:`latest_version`."""
        return await current_version(settings.database_url), latest_version()

    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        super().__init__(settings, migrate=migrate)
        self._opts = _options(settings.database_url)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._connecting = asyncio.Lock()

    async def connect(self) -> None:
        """Open the pool and bring the schema up to date; no-op when connected.

        Nova: ``nova.db.main.api.configure`` plus ``nova-manage db sync``.

        Raises:
            StoreError: unreachable, refused, bad credentials, unknown database or a
                failed migration; the message is one line without the password.
        """
        async with self._connecting:
            if self._pool is None:
                self._pool = await self._open()

    async def _open(self) -> asyncpg.Pool[asyncpg.Record]:
        opts = self._opts
        try:
            pool = await asyncpg.create_pool(
                opts.dsn,
                # One connection up front proves the URL and credentials at connect().
                init_size=max(1, opts.min_size),
                min_size=opts.min_size,
                max_size=opts.max_size,
                timeout=opts.connect_timeout,
                command_timeout=opts.command_timeout,
                server_settings=_application_name(opts.dsn),
            )
        except _CONNECT_ERRORS as exc:
            raise _error("cannot connect to database", opts, exc) from None
        try:
            async with pool.acquire(timeout=opts.connect_timeout) as con:
                applied = await _migrate(con) if self.migrate else []
                version = await _version(con)
        except _DB_ERRORS as exc:
            pool.terminate()
            raise _error("cannot migrate database", opts, exc) from exc
        except BaseException:
            pool.terminate()
            raise
        if version < latest_version():
            pool.terminate()
            raise StoreError(
                f"database {opts.shown} has schema version {version}, this aiosvc needs "
                f"{latest_version()}: run `python -m aiosvc db upgrade` (or start a service)"
            )
        for number in applied:
            log.info("database %s: applied schema migration %04d", opts.shown, number)
        log.info("connected to database %s (schema version %d)", opts.shown, version)
        return pool

    async def close(self) -> None:
        """Close every connection; idempotent. Connections still busy are cut after a timeout."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._opts.command_timeout):
                await pool.close()
        except (TimeoutError, *_DB_ERRORS):
            # A database that went away cannot say goodbye; drop the sockets instead.
            pool.terminate()

    async def _fetch(self, sql: str, *args: object) -> builtins.list[asyncpg.Record]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"store {self._opts.shown} is not connected")
        try:
            async with pool.acquire(timeout=self._opts.command_timeout) as con:
                return await con.fetch(sql, *args)
        except _DB_ERRORS as exc:
            if not _is_query_error(exc):
                # The server restarted or the network broke: every idle connection is
                # likely dead too, so have the pool replace them on their next use.
                await pool.expire_connections()
            raise _error("database", self._opts, exc) from exc

    async def _records(self, sql: str, *args: object) -> builtins.list[ServiceRecord]:
        return [_record(row) for row in await self._fetch(sql, self.service_down_time, *args)]

    async def register(self, host: str, binary: str, topic: str, version: int) -> ServiceRecord:
        """Create the live record for ``host`` + ``binary``, or revive the existing one.

        One ``INSERT ... ON CONFLICT DO UPDATE``, so concurrent registers of one pair
        give one row. Note: ids come from a sequence and may skip numbers.

        Nova: ``nova.db.main.api.service_create`` / ``nova.objects.Service.create``.

        Raises:
            StoreError: the database cannot be reached.
        """
        (record,) = await self._records(_REGISTER, uuid.uuid4(), host, binary, topic, version)
        return record

    async def report(
        self, service_id: int, *, health: Mapping[str, str] | None = None
    ) -> ServiceRecord:
        """One heartbeat in one statement: ``report_count += 1, last_seen_up = now()``,
        and ``health`` (with ``working``) when given.

        Nova: ``nova.servicegroup.drivers.db.DbDriver._report_state``.

        Raises:
            ServiceNotFound: the record was deleted.
            StoreError: the database cannot be reached.
        """
        if health is None:
            records = await self._records(_REPORT, service_id)
        else:
            results = {str(name): str(result) for name, result in health.items()}
            records = await self._records(
                _REPORT_HEALTH, service_id, not failed_checks(results), json.dumps(results)
            )
        if not records:
            raise ServiceNotFound(f"service record {service_id} is gone")
        return records[0]

    async def mark_stopped(self, service_id: int) -> ServiceRecord:
        """Record a graceful stop in one statement: ``stopped_at = now()``, the first kept.

        Nova has none; Manila marks its ``services`` row ``stopped`` in the same place.

        Raises:
            ServiceNotFound: the record was deleted.
            StoreError: the database cannot be reached.
        """
        records = await self._records(_MARK_STOPPED, service_id)
        if not records:
            raise ServiceNotFound(f"service record {service_id} is gone")
        return records[0]

    async def get(self, host: str, binary: str) -> ServiceRecord:
        """The live record of ``host`` + ``binary``.

        Nova: ``nova.db.main.api.service_get_by_host_and_binary``.

        Raises:
            ServiceNotFound: there is none.
            StoreError: the database cannot be reached.
        """
        records = await self._records(_GET, host, binary)
        if not records:
            raise _not_found(host, binary)
        return records[0]

    async def list(
        self, *, topic: str | None = None, host: str | None = None, binary: str | None = None
    ) -> builtins.list[ServiceRecord]:
        """Every live record matching the filters, ordered by id, in one query.

        Nova: ``nova.db.main.api.service_get_all`` with ``GET /os-services`` filters.

        Raises:
            StoreError: the database cannot be reached.
        """
        where = ["deleted_at IS NULL"]
        args: builtins.list[object] = []
        # Only the given filters enter the SQL, so the planner can use their indexes.
        for column, value in (("topic", topic), ("host", host), ('"binary"', binary)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args) + 1}")
        sql = f"SELECT {_RETURNING} FROM services WHERE {' AND '.join(where)} ORDER BY id"
        return await self._records(sql, *args)

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
            StoreError: the database cannot be reached.
        """
        records = await self._records(_UPDATE, host, binary, disabled, disabled_reason, forced_down)
        if not records:
            raise _not_found(host, binary)
        return records[0]

    async def delete(self, host: str, binary: str) -> None:
        """Soft-delete the live record (``deleted_at = now()``).

        Nova: ``nova.db.main.api.service_destroy``.

        Raises:
            ServiceNotFound: there is no live record.
            StoreError: the database cannot be reached.
        """
        if not await self._fetch(_DELETE, host, binary):
            raise _not_found(host, binary)


def _is_query_error(exc: BaseException) -> bool:
    """True for errors of one statement (constraint, syntax...), not of the connection."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc, asyncpg.PostgresConnectionError | asyncpg.exceptions.OperatorInterventionError
    )


def _not_found(host: str, binary: str) -> ServiceNotFound:
    return ServiceNotFound(f"no service record for host {host!r} and binary {binary!r}")


def _record(row: asyncpg.Record) -> ServiceRecord:
    values = list(row.values())
    # asyncpg decodes to its own UUID subclass; records of every store carry uuid.UUID.
    values[_UUID_AT] = uuid.UUID(bytes=values[_UUID_AT].bytes)
    # asyncpg hands jsonb over as its text.
    if values[_HEALTH_AT] is not None:
        values[_HEALTH_AT] = json.loads(values[_HEALTH_AT])
    return ServiceRecord(*values)
