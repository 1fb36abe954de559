"""One contract suite for every service store: ``memory://`` and ``postgresql://``.

What services and operators rely on: one live row per host + binary, heartbeats that
count and stamp ``last_seen_up``, the up/down rule judged by the store's clock, admin
state that survives re-registration, soft delete, and errors that say what went wrong
without showing a password.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from aiosvc.exceptions import ConfigError, ServiceNotFound, StoreError
from aiosvc.settings import Settings
from aiosvc.store import ServiceRecord, ServiceStore, get_store
from aiosvc.store.memory import MemoryStore, reset_stores

DOWN_TIME = 60.0
BINARY = "aiosvc-compute"
TOPIC = "compute"

StoreFactory = Callable[..., Awaitable[ServiceStore]]


@dataclass
class Backend:
    name: str
    url: str


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    """Connected stores for a URL, all closed at teardown."""
    stores: list[ServiceStore] = []

    async def make(url: str, *, down_time: float = DOWN_TIME, connect: bool = True) -> ServiceStore:
        settings = Settings.load(database_url=url, service_down_time=down_time, report_interval=10)
        store = get_store(settings)
        stores.append(store)
        if connect:
            await store.connect()
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        reset_stores()
        yield Backend("memory", "memory://")
        reset_stores()
    else:
        yield Backend("postgres", request.getfixturevalue("fresh_database_url"))


@pytest.fixture
async def store(backend: Backend, make_store: StoreFactory) -> ServiceStore:
    return await make_store(backend.url)


async def _sql(url: str, query: str, *args: Any) -> Any:
    """Run one statement beside the store (postgres only), as an operator's psql would."""
    import asyncpg  # only the postgres half of the suite needs it

    con = await asyncpg.connect(url)
    try:
        return await con.fetch(query, *args)
    finally:
        await con.close()


async def age(
    backend: Backend,
    store: ServiceStore,
    record: ServiceRecord,
    seconds: float,
    column: str = "last_seen_up",
) -> None:
    """Make ``record``'s ``column`` (last_seen_up or created_at) ``seconds`` old."""
    if backend.name == "memory":
        stamp = getattr(record, column)
        cast(MemoryStore, store).now = lambda: stamp + timedelta(seconds=seconds)
    else:
        await _sql(
            backend.url,
            f"UPDATE services SET {column} = now() - make_interval(secs => $1) WHERE id = $2",
            seconds,
            record.id,
        )


async def stop_start(action: Callable[[], object]) -> None:
    """Call a controller's stop()/start(), whether it is a plain or a coroutine function."""
    result = action()
    if inspect.isawaitable(result):
        await result


# --- register -----------------------------------------------------------------------------


async def test_register_creates_a_live_record(store: ServiceStore) -> None:
    record = await store.register("host1", BINARY, TOPIC, 3)

    assert record.id >= 1
    assert type(record.uuid) is uuid.UUID
    assert (record.host, record.binary, record.topic, record.version) == (
        "host1",
        BINARY,
        TOPIC,
        3,
    )
    assert record.report_count == 0
    assert (record.disabled, record.disabled_reason, record.forced_down) == (False, None, False)
    assert record.last_seen_up is None
    assert record.deleted_at is None
    assert record.created_at.utcoffset() == timedelta(0)
    # Never reported: judged from created_at, so a fresh record is up.
    assert record.is_up
    assert (record.status, record.state) == ("enabled", "up")
    assert await store.get("host1", BINARY) == record


async def test_register_again_keeps_identity_and_admin_state(store: ServiceStore) -> None:
    first = await store.register("host1", BINARY, TOPIC, 1)
    await store.report(first.id)
    await store.update(
        "host1", BINARY, disabled=True, disabled_reason="maintenance", forced_down=True
    )

    again = await store.register("host1", BINARY, "compute2", 2)

    assert (again.id, again.uuid, again.created_at) == (first.id, first.uuid, first.created_at)
    assert again.report_count == 1
    assert (again.disabled, again.disabled_reason, again.forced_down) == (
        True,
        "maintenance",
        True,
    )
    assert (again.topic, again.version) == ("compute2", 2)
    assert again.updated_at is not None
    assert [r.id for r in await store.list()] == [first.id]


async def test_distinct_services_get_distinct_increasing_ids(store: ServiceStore) -> None:
    a = await store.register("host1", BINARY, TOPIC, 1)
    b = await store.register("host2", BINARY, TOPIC, 1)
    c = await store.register("host1", "aiosvc-scheduler", "scheduler", 1)

    assert a.id < b.id < c.id
    assert len({a.uuid, b.uuid, c.uuid}) == 3


@pytest.mark.parametrize("identical", [True, False], ids=["identical", "distinct"])
async def test_concurrent_connect_and_register(
    backend: Backend, make_store: StoreFactory, identical: bool
) -> None:
    # Ten services starting at once on an empty database: each connects (and so
    # migrates) and registers; the schema is applied once and identical pairs give one row.
    async def start(i: int) -> ServiceRecord:
        store = await make_store(backend.url)
        return await store.register("host" if identical else f"host{i}", BINARY, TOPIC, 1)

    records = await asyncio.gather(*(start(i) for i in range(10)))

    listed = await (await make_store(backend.url)).list()
    if identical:
        assert len(listed) == 1
        assert {(r.id, r.uuid) for r in records} == {(listed[0].id, listed[0].uuid)}
    else:
        assert len(listed) == 10
        assert len({r.id for r in records}) == len({r.uuid for r in records}) == 10
    if backend.name == "postgres":
        from aiosvc.store import postgres

        rows = await _sql(backend.url, "SELECT version FROM aiosvc_schema ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in postgres.migrations()]


# --- report and the up/down rule ---------------------------------------------------------


async def test_report_counts_and_stamps_last_seen_up(store: ServiceStore) -> None:
    record = await store.register("host1", BINARY, TOPIC, 1)

    first = await store.report(record.id)
    second = await store.report(record.id)

    assert (first.report_count, second.report_count) == (1, 2)
    assert first.last_seen_up is not None
    assert second.last_seen_up is not None
    assert first.last_seen_up.utcoffset() == timedelta(0)
    assert record.created_at <= first.last_seen_up <= second.last_seen_up
    assert second.is_up
    assert (await store.get("host1", BINARY)).report_count == 2


async def test_report_returns_admin_state(store: ServiceStore) -> None:
    record = await store.register("host1", BINARY, TOPIC, 1)
    await store.update("host1", BINARY, disabled=True, disabled_reason="drain")

    reported = await store.report(record.id)

    assert (reported.disabled, reported.disabled_reason) == (True, "drain")


# --- health (whether the service can work, beside being alive) -------------------------------


async def test_report_with_health_stores_it_with_working(store: ServiceStore) -> None:
    record = await store.register("host1", BINARY, TOPIC, 1)
    assert (record.working, record.health, record.problems) == (None, None, {})
    assert (await store.report(record.id)).working is None  # a report without health

    healthy = {"consumers": "ok", "broker": "ok", "periodic": "ok", "driver": "ok"}
    fine = await store.report(record.id, health=healthy)
    assert (fine.working, fine.health, fine.problems, fine.report_count) == (True, healthy, {}, 2)

    sick = healthy | {"driver": "disk full", "broker": "not connected", "extra": "odd"}
    ill = await store.report(record.id, health=sick)
    assert (ill.working, ill.health, ill.report_count, ill.is_up) == (False, sick, 3, True)
    # Failed checks in the order operators read them (known checks first, others after).
    assert list(ill.problems.items()) == [
        ("broker", "not connected"),
        ("driver", "disk full"),
        ("extra", "odd"),
    ]
    for read in (await store.get("host1", BINARY), *(await store.list())):
        assert (read.working, read.health) == (False, sick)
    assert ill.to_dict()["working"] is False
    assert ill.to_dict()["health"] == sick
    assert fine.health == healthy  # a record read earlier never changes with the row

    # A report without health (a liveness-only caller) leaves the last one as it was.
    kept = await store.report(record.id)
    assert (kept.working, kept.health, kept.report_count) == (False, sick, 4)


async def test_register_forgets_the_health_of_the_previous_run(store: ServiceStore) -> None:
    record = await store.register("host1", BINARY, TOPIC, 1)
    await store.report(record.id, health={"broker": "not connected"})
    await store.mark_stopped(record.id)

    again = await store.register("host1", BINARY, TOPIC, 1)  # the service starts again

    assert (again.working, again.health) == (None, None)  # not known until it reports
    assert (await store.get("host1", BINARY)).working is None


async def test_up_and_down_around_service_down_time(backend: Backend, store: ServiceStore) -> None:
    record = await store.report((await store.register("host1", BINARY, TOPIC, 1)).id)

    await age(backend, store, record, DOWN_TIME - 1)
    assert (await store.get("host1", BINARY)).is_up
    assert [r.is_up for r in await store.list()] == [True]

    await age(backend, store, record, DOWN_TIME + 1)
    down = await store.get("host1", BINARY)
    assert not down.is_up
    assert down.state == "down"
    assert not down.stopped  # silent, as after a crash: not a graceful stop
    assert [r.is_up for r in await store.list()] == [False]

    # The next heartbeat brings it back at once.
    assert (await store.report(record.id)).is_up


async def test_never_reported_counts_from_created_at(backend: Backend, store: ServiceStore) -> None:
    record = await store.register("host1", BINARY, TOPIC, 1)

    await age(backend, store, record, DOWN_TIME - 1, column="created_at")
    assert (await store.get("host1", BINARY)).is_up

    await age(backend, store, record, DOWN_TIME + 1, column="created_at")
    assert not (await store.get("host1", BINARY)).is_up


async def test_memory_edge_is_inclusive() -> None:
    # now - last_seen_up == service_down_time is still up; a microsecond later it is down.
    start = datetime(2025, 1, 1, tzinfo=UTC)
    clock = [start]
    reset_stores()
    settings = Settings.load(database_url="memory://edge", service_down_time=DOWN_TIME)
    async with MemoryStore(settings, now=lambda: clock[0]) as store:
        record = await store.report((await store.register("host1", BINARY, TOPIC, 1)).id)
        assert record.last_seen_up == start

        clock[0] = start + timedelta(seconds=DOWN_TIME)
        assert (await store.get("host1", BINARY)).is_up
        clock[0] = start + timedelta(seconds=DOWN_TIME, microseconds=1)
        assert not (await store.get("host1", BINARY)).is_up
    reset_stores()


async def test_forced_down_is_down_at_once(store: ServiceStore) -> None:
    record = await store.report((await store.register("host1", BINARY, TOPIC, 1)).id)

    forced = await store.update("host1", BINARY, forced_down=True)
    assert forced.forced_down
    assert not forced.is_up
    # Heartbeats still count, but cannot lift a forced down.
    reported = await store.report(record.id)
    assert (reported.report_count, reported.is_up) == (2, False)

    released = await store.update("host1", BINARY, forced_down=False)
    assert (released.forced_down, released.is_up) == (False, True)


# --- graceful stop: stopped_at ----------------------------------------------------------


async def test_mark_stopped_is_down_at_once_and_shown_as_stopped(store: ServiceStore) -> None:
    record = await store.report((await store.register("host1", BINARY, TOPIC, 1)).id)
    assert (record.is_up, record.stopped, record.stopped_at) == (True, False, None)
    assert (record.to_dict()["stopped"], record.to_dict()["stopped_at"]) == (False, None)

    stopped = await store.mark_stopped(record.id)

    # Down at once, seconds before service_down_time could have made it so.
    assert (stopped.stopped, stopped.is_up, stopped.state) == (True, False, "down")
    assert stopped.stopped_at is not None
    assert stopped.stopped_at.utcoffset() == timedelta(0)
    assert record.last_seen_up is not None
    assert stopped.stopped_at >= record.last_seen_up
    # Nothing else changes: the last heartbeat and the admin state are kept.
    assert (stopped.id, stopped.report_count, stopped.last_seen_up) == (
        record.id,
        1,
        record.last_seen_up,
    )
    assert (stopped.disabled, stopped.forced_down, stopped.deleted_at) == (False, False, None)
    assert await store.get("host1", BINARY) == stopped
    assert [(r.id, r.is_up, r.stopped_at) for r in await store.list()] == [
        (record.id, False, stopped.stopped_at)
    ]
    shown = stopped.to_dict()
    assert (shown["state"], shown["stopped"], shown["stopped_at"]) == (
        "down",
        True,
        stopped.stopped_at.isoformat(),
    )
    # Marking again keeps the time of the stop.
    assert (await store.mark_stopped(record.id)).stopped_at == stopped.stopped_at


async def test_a_report_after_the_stop_does_not_revive_the_record(store: ServiceStore) -> None:
    # The report loop may race with a stop: a heartbeat written after the mark still
    # counts, but the record stays stopped; so do admin changes.
    record = await store.report((await store.register("host1", BINARY, TOPIC, 1)).id)
    stopped = await store.mark_stopped(record.id)

    reported = await store.report(record.id)

    assert reported.report_count == 2
    assert reported.last_seen_up is not None
    assert record.last_seen_up is not None
    assert reported.last_seen_up >= record.last_seen_up
    assert (reported.stopped_at, reported.is_up) == (stopped.stopped_at, False)
    changed = await store.update("host1", BINARY, disabled=False, forced_down=False)
    assert (changed.stopped_at, changed.is_up) == (stopped.stopped_at, False)
    assert not (await store.get("host1", BINARY)).is_up


async def test_register_clears_stopped(store: ServiceStore) -> None:
    first = await store.report((await store.register("host1", BINARY, TOPIC, 1)).id)
    await store.update("host1", BINARY, disabled=True, disabled_reason="maintenance")
    await store.mark_stopped(first.id)
    other = await store.mark_stopped((await store.register("host2", BINARY, TOPIC, 1)).id)

    again = await store.register("host1", BINARY, TOPIC, 2)  # the service starts again

    assert (again.id, again.uuid, again.report_count) == (first.id, first.uuid, 1)
    assert (again.stopped_at, again.stopped, again.is_up) == (None, False, True)
    assert (again.disabled, again.disabled_reason) == (True, "maintenance")  # admin state kept
    assert (await store.get("host1", BINARY)).is_up
    # Only the record registered again.
    assert (await store.get("host2", BINARY)).stopped_at == other.stopped_at


async def test_mark_stopped_on_a_deleted_record_raises_service_not_found(
    store: ServiceStore,
) -> None:
    record = await store.register("host1", BINARY, TOPIC, 1)
    await store.delete("host1", BINARY)

    with pytest.raises(ServiceNotFound):
        await store.mark_stopped(record.id)
    with pytest.raises(ServiceNotFound):
        await store.mark_stopped(12345)
    # The record of the same host + binary registered since is not the deleted one's.
    fresh = await store.register("host1", BINARY, TOPIC, 1)
    with pytest.raises(ServiceNotFound):
        await store.mark_stopped(record.id)
    assert (await store.get("host1", BINARY)) == fresh
    assert not fresh.stopped


# --- admin updates ----------------------------------------------------------------------


async def test_disable_and_enable_with_reason(store: ServiceStore) -> None:
    await store.register("host1", BINARY, TOPIC, 1)

    disabled = await store.update("host1", BINARY, disabled=True, disabled_reason="maintenance")
    assert (disabled.disabled, disabled.disabled_reason, disabled.status) == (
        True,
        "maintenance",
        "disabled",
    )
    # None leaves a field alone: the reason can change while it stays disabled ...
    reworded = await store.update("host1", BINARY, disabled_reason="new disk")
    assert (reworded.disabled, reworded.disabled_reason) == (True, "new disk")
    # ... and disabling again without a reason keeps the one it has.
    assert (await store.update("host1", BINARY, disabled=True)).disabled_reason == "new disk"

    enabled = await store.update("host1", BINARY, disabled=False)
    assert (enabled.disabled, enabled.disabled_reason, enabled.status) == (
        False,
        None,
        "enabled",
    )
    # A reason is only kept with disabled=True.
    ignored = await store.update("host1", BINARY, disabled=False, disabled_reason="why")
    assert (ignored.disabled, ignored.disabled_reason) == (False, None)
    assert (await store.update("host1", BINARY, disabled_reason="why")).disabled_reason is None


async def test_admin_update_never_touches_last_seen_up(
    backend: Backend, store: ServiceStore
) -> None:
    # nova bug 1420848: enabling a dead service must not make it look up.
    record = await store.report((await store.register("host1", BINARY, TOPIC, 1)).id)
    await age(backend, store, record, DOWN_TIME + 1)
    aged = await store.get("host1", BINARY)

    for change in ({"disabled": True, "disabled_reason": "x"}, {"disabled": False}):
        updated = await store.update("host1", BINARY, **change)
        assert updated.last_seen_up == aged.last_seen_up
        assert updated.report_count == 1
        assert not updated.is_up
        assert updated.updated_at is not None


# --- get, list, delete ---------------------------------------------------------------------


async def test_list_filters_and_order(store: ServiceStore) -> None:
    a = await store.register("host1", BINARY, TOPIC, 1)
    b = await store.register("host2", BINARY, TOPIC, 1)
    c = await store.register("host1", "aiosvc-scheduler", "scheduler", 1)

    assert [r.id for r in await store.list()] == [a.id, b.id, c.id]
    assert [r.id for r in await store.list(host="host1")] == [a.id, c.id]
    assert [r.id for r in await store.list(binary=BINARY)] == [a.id, b.id]
    assert [r.id for r in await store.list(topic="scheduler")] == [c.id]
    assert [r.id for r in await store.list(host="host1", binary=BINARY)] == [a.id]
    assert await store.list(host="nowhere") == []


async def test_get_unknown_raises_service_not_found(store: ServiceStore) -> None:
    with pytest.raises(ServiceNotFound) as info:
        await store.get("host1", BINARY)
    # Callers catch it as a lookup miss or as a store problem.
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, StoreError)
    with pytest.raises(ServiceNotFound):
        await store.update("host1", BINARY, disabled=True)
    with pytest.raises(ServiceNotFound):
        await store.delete("host1", BINARY)
    with pytest.raises(ServiceNotFound):
        await store.report(12345)


async def test_delete_is_soft_and_final_for_the_record(store: ServiceStore) -> None:
    record = await store.register("host1", BINARY, TOPIC, 1)
    other = await store.register("host2", BINARY, TOPIC, 1)

    await store.delete("host1", BINARY)

    assert [r.id for r in await store.list()] == [other.id]
    with pytest.raises(ServiceNotFound):
        await store.get("host1", BINARY)
    # The running service's next heartbeat learns that its row is gone.
    with pytest.raises(ServiceNotFound):
        await store.report(record.id)
    with pytest.raises(ServiceNotFound):
        await store.delete("host1", BINARY)

    # Starting again makes a new record; the deleted one does not come back.
    fresh = await store.register("host1", BINARY, TOPIC, 1)
    assert fresh.id > other.id
    assert fresh.uuid != record.uuid
    assert fresh.report_count == 0


async def test_unconnected_store_raises_store_error(
    backend: Backend, make_store: StoreFactory
) -> None:
    store = await make_store(backend.url, connect=False)
    with pytest.raises(StoreError):
        await store.list()

    await store.connect()
    await store.register("host1", BINARY, TOPIC, 1)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.get("host1", BINARY)


# --- memory specifics ------------------------------------------------------------------------


async def test_memory_stores_share_a_table_per_url(make_store: StoreFactory) -> None:
    reset_stores()
    a = await make_store("memory://")
    b = await make_store("memory://")
    other = await make_store("memory://other")

    record = await a.register("host1", BINARY, TOPIC, 1)

    assert await b.get("host1", BINARY) == record
    assert await other.list() == []
    reset_stores()
    assert await a.list() == []


# --- postgres specifics ----------------------------------------------------------------------


@pytest.mark.postgres
async def test_migrations_from_empty_and_reapplied(
    fresh_database_url: str, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from aiosvc.store import postgres

    caplog.set_level(logging.DEBUG)

    latest = postgres.latest_version()
    assert latest >= 1
    assert await postgres.current_version(fresh_database_url) == 0

    assert await postgres.upgrade(fresh_database_url) == list(range(1, latest + 1))
    assert await postgres.current_version(fresh_database_url) == latest
    assert await postgres.upgrade(fresh_database_url) == []

    # connect() finds nothing to do and the store works.
    store = await make_store(fresh_database_url)
    await store.register("host1", BINARY, TOPIC, 1)
    assert await postgres.current_version(fresh_database_url) == latest
    rows = await _sql(
        fresh_database_url, "SELECT version, name FROM aiosvc_schema ORDER BY version"
    )
    assert [(r["version"], r["name"]) for r in rows] == [
        (m.version, m.name) for m in postgres.migrations()
    ]
    assert [(r["version"], r["name"]) for r in rows][:2] == [
        (1, "services"),
        (2, "services_stopped_at"),
    ]
    # Logs name the database, never with its password.
    password = urlsplit(fresh_database_url).password
    for migration in postgres.migrations():
        assert f"applied schema migration {migration.version:04d}" in caplog.text
    assert ":***@" in caplog.text
    assert f":{password}@" not in caplog.text


@pytest.mark.postgres
async def test_migration_from_version_1_keeps_the_rows(
    fresh_database_url: str, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0002 (stopped_at) on a database that services of schema version 1 have used."""
    import asyncpg

    from aiosvc.store import postgres

    url = fresh_database_url
    shipped = postgres.migrations()
    # The database an aiosvc of schema version 1 made (the same code path, one migration).
    monkeypatch.setattr(postgres, "migrations", lambda: shipped[:1])
    assert await postgres.upgrade(url) == [1]
    monkeypatch.undo()
    assert await postgres.current_version(url) == 1
    # ... with the rows its services and operators left: one reporting, one dead for an
    # hour, one disabled and forced down, one deleted.
    rows = await _sql(
        url,
        """INSERT INTO services (uuid, host, "binary", topic, report_count, last_seen_up,
                                 disabled, disabled_reason, forced_down, deleted_at)
           SELECT gen_random_uuid(), h, $1, $2, n, now() - make_interval(secs => age),
                  d, r, f, CASE WHEN gone THEN now() END
           FROM (VALUES ('up', 5, 0, false, NULL, false, false),
                        ('dead', 7, 3600, false, NULL, false, false),
                        ('fenced', 2, 0, true, 'disk', true, false),
                        ('gone', 1, 0, false, NULL, false, true))
                AS v(h, n, age, d, r, f, gone)
           RETURNING id, host""",
        BINARY,
        TOPIC,
    )
    ids = {r["host"]: r["id"] for r in rows}

    # Commands that never migrate say what to do; they change nothing.
    settings = Settings.load(database_url=url, service_down_time=DOWN_TIME)
    with pytest.raises(StoreError, match=r"schema version 1, .* db upgrade"):
        await get_store(settings, migrate=False).connect()
    assert await postgres.current_version(url) == 1

    # Five services of the new version starting at once: applied once, under the lock.
    stores = await asyncio.gather(*(make_store(url) for _ in range(5)))
    applied = await _sql(url, "SELECT version, name FROM aiosvc_schema ORDER BY version")
    assert [(r["version"], r["name"]) for r in applied] == [
        (m.version, m.name) for m in postgres.migrations()
    ]
    assert await postgres.current_version(url) == postgres.latest_version()
    assert await postgres.upgrade(url) == []

    # Every row is kept as it was, none stopped (their services ran or crashed).
    store = stores[0]
    listed = {r.host: r for r in await store.list()}
    assert {h: r.id for h, r in listed.items()} == {h: ids[h] for h in ("up", "dead", "fenced")}
    assert {h: (r.report_count, r.is_up, r.stopped_at) for h, r in listed.items()} == {
        "up": (5, True, None),
        "dead": (7, False, None),
        "fenced": (2, False, None),
    }
    assert (listed["fenced"].disabled_reason, listed["fenced"].forced_down) == ("disk", True)
    (gone,) = await _sql(
        url, "SELECT stopped_at, deleted_at FROM services WHERE id = $1", ids["gone"]
    )
    assert gone["stopped_at"] is None
    assert gone["deleted_at"] is not None

    # The new column works on the old rows.
    assert not (await store.mark_stopped(ids["up"])).is_up
    assert (await store.register("up", BINARY, TOPIC, 2)).is_up
    # The migration is idempotent: applying it again changes nothing.
    con = await asyncpg.connect(url)
    try:
        await con.execute(shipped[1].sql)
    finally:
        await con.close()
    assert [r.id for r in await store.list()] == sorted(ids[h] for h in ("up", "dead", "fenced"))


@pytest.mark.postgres
async def test_migration_to_health_keeps_rows_and_older_reports_read_as_unknown(
    fresh_database_url: str, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0003 (working, health) on a database of schema version 2, still written by services
    of that version (their heartbeat statement knows nothing of health)."""
    import asyncpg

    from aiosvc.store import postgres

    url = fresh_database_url
    shipped = postgres.migrations()
    monkeypatch.setattr(postgres, "migrations", lambda: shipped[:2])
    assert await postgres.upgrade(url) == [1, 2]
    monkeypatch.undo()
    old_report = """UPDATE services SET report_count = report_count + 1, last_seen_up = now(),
                    updated_at = now() WHERE id = $1"""
    (old,) = await _sql(
        url,
        """INSERT INTO services (uuid, host, "binary", topic, report_count, last_seen_up)
           VALUES (gen_random_uuid(), 'old', $1, $2, 3, now()) RETURNING id""",
        BINARY,
        TOPIC,
    )

    store = await make_store(url)  # a service of this version migrates
    assert await postgres.current_version(url) == postgres.latest_version() >= 3
    new = await store.register("new", BINARY, TOPIC, 1)
    await store.report(new.id, health={"broker": "ok", "driver": "disk full"})
    await _sql(url, old_report, old["id"])  # the older service reports on, as it always did

    listed = {r.host: r for r in await store.list()}
    assert (listed["old"].report_count, listed["old"].is_up) == (4, True)
    assert (listed["old"].working, listed["old"].health) == (None, None)  # unknown
    assert (listed["new"].working, listed["new"].problems) == (False, {"driver": "disk full"})
    # Operators can query it in SQL: health is jsonb, working a boolean.
    rows = await _sql(url, "SELECT host, health->>'driver' AS d FROM services WHERE NOT working")
    assert [(r["host"], r["d"]) for r in rows] == [("new", "disk full")]
    # The migration is idempotent: applying it again changes nothing.
    con = await asyncpg.connect(url)
    try:
        await con.execute(shipped[2].sql)
    finally:
        await con.close()
    assert (await store.get("new", BINARY)).health == {"broker": "ok", "driver": "disk full"}


@pytest.mark.postgres
async def test_unique_live_host_binary_is_enforced_by_the_database(
    fresh_database_url: str, make_store: StoreFactory
) -> None:
    import asyncpg

    store = await make_store(fresh_database_url)
    await store.register("host1", BINARY, TOPIC, 1)
    with pytest.raises(asyncpg.UniqueViolationError):
        await _sql(
            fresh_database_url,
            """INSERT INTO services (uuid, host, "binary", topic) VALUES ($1, 'host1', $2, 't')""",
            uuid.uuid4(),
            BINARY,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_clear(exc: StoreError, password: str) -> None:
    message = str(exc)
    assert message.startswith("cannot connect to database postgresql://aiosvc:***@")
    assert "\n" not in message
    assert password not in message


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://aiosvc:s3cr3t-pw@127.0.0.1:{port}/aiosvc", id="refused"),
        pytest.param(
            "postgresql://aiosvc:s3cr3t-pw@no-such-host.invalid:5432/aiosvc?connect_timeout=5",
            id="unknown-host",
        ),
        pytest.param("postgresql://aiosvc:s3cr3t-pw@127.0.0.1:99999/aiosvc", id="bad-port"),
        pytest.param(
            "postgresql://aiosvc:s3cr3t-pw@127.0.0.1:{port}/aiosvc?sslmode=bogus", id="bad-sslmode"
        ),
    ],
)
async def test_connect_failure_is_one_clear_line(
    url: str, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as info:
        await make_store(url.format(port=_free_port()))
    _assert_clear(info.value, "s3cr3t-pw")
    assert "s3cr3t-pw" not in caplog.text


@pytest.mark.postgres
async def test_bad_password_and_unknown_database(
    database_url: str, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    parts = urlsplit(database_url)
    where = f"{parts.hostname}:{parts.port}"

    with pytest.raises(StoreError) as info:
        await make_store(f"postgresql://aiosvc:wrong-s3cr3t@{where}/aiosvc")
    _assert_clear(info.value, "wrong-s3cr3t")
    assert "password authentication failed" in str(info.value)

    with pytest.raises(StoreError) as info:
        await make_store(f"postgresql://aiosvc:{parts.password}@{where}/no_such_db")
    _assert_clear(info.value, f":{parts.password}@")
    assert "no_such_db" in str(info.value)
    assert "wrong-s3cr3t" not in caplog.text
    assert f":{parts.password}@" not in caplog.text


def test_bad_pool_option_is_a_config_error() -> None:
    settings = Settings.load(database_url="postgresql://aiosvc:pw@127.0.0.1/aiosvc?pool_max_size=0")
    with pytest.raises(ConfigError, match="pool_max_size"):
        get_store(settings)


@pytest.mark.postgres
async def test_a_blocked_statement_times_out(
    fresh_database_url: str, make_store: StoreFactory
) -> None:
    import asyncpg

    store = await make_store(fresh_database_url + "?command_timeout=0.5")
    record = await store.register("host1", BINARY, TOPIC, 1)
    blocker = await asyncpg.connect(fresh_database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM services WHERE id = $1 FOR UPDATE", record.id)
            with pytest.raises(StoreError, match="timed out"):
                await store.report(record.id)
    finally:
        await blocker.close()
    assert (await store.report(record.id)).report_count == 1


@pytest.mark.postgres
@pytest.mark.slow
async def test_store_recovers_after_postgres_restart(
    postgres: Any, fresh_database_url: str, make_store: StoreFactory
) -> None:
    if postgres is None:
        pytest.skip("the test database is not run by this session, so it cannot be restarted")
    store = await make_store(fresh_database_url + "?pool_max_size=2")
    record = await store.register("host1", BINARY, TOPIC, 1)
    await asyncio.gather(*(store.report(record.id) for _ in range(4)))  # open both connections

    await stop_start(postgres.stop)
    try:
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: store.report(record.id),
            lambda: store.get("host1", BINARY),
            store.list,
        ]
        for attempt in attempts:
            with pytest.raises(StoreError) as info:
                await attempt()
            assert not isinstance(info.value, ServiceNotFound)
            assert "\n" not in str(info.value)
    finally:
        await stop_start(postgres.start)

    # The same store object works again: dead connections were replaced.
    reported = await asyncio.gather(*(store.report(record.id) for _ in range(4)))
    assert max(r.report_count for r in reported) == 8
    assert [r.id for r in await store.list()] == [record.id]
