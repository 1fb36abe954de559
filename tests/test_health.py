"""Health in the services table: a service says not only that it is alive but whether it
can work, at every state report, and ``services list`` shows it.

The checks (``Service.health``): its consumers are attached (an API service: its HTTP
server serves), its broker is connected, no periodic task is overdue, and its manager's
``is_working()`` says yes. Being up keeps Nova's meaning throughout.

Most tests run on the in-memory transport and store with a fake clock, so each report
happens when the test moves time; one breaks a real RabbitMQ connection, and one reads
what ``services list`` prints from a real PostgreSQL.

Reference: Cinder's ``Manager.is_working`` (the volume driver's ``initialized``), which
skips the heartbeat instead, so the service shows down.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

import anyio
import pytest

from aiosvc import Context, Manager, Service, ServiceGroup, periodic_task
from aiosvc.api import APIService
from aiosvc.settings import Settings
from aiosvc.store import ServiceRecord, get_store
from aiosvc.testing import FakeClock, isolated_settings, wait_until
from tests.servers import RabbitNode
from tests.test_cli_services import cli, parse_table

INTERVAL = 10.0  # report_interval, in the fake clock's seconds
#: A deadline for one step on a loaded 2-core machine; a healthy run takes milliseconds.
STEP = 10.0
OK_ALL = {"consumers": "ok", "broker": "ok", "periodic": "ok", "driver": "ok"}


class Volume(Manager):
    """A manager whose driver's readiness the test sets, and a periodic task it can hold."""

    topic = "health-volume"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer: object = True
        self.hang = anyio.Event()  # is_working() waits on it while self.answer is this event
        self.hold_next_run = False
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def is_working(self) -> bool | str:
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is self.hang:
            await self.hang.wait()
        return cast("bool | str", self.answer)

    async def ping(self, ctx: Context) -> str:
        return "pong"

    @periodic_task(spacing=INTERVAL, run_immediately=True)
    async def _sync_stats(self, ctx: Context) -> None:
        if self.hold_next_run:
            self.held.set()
            await self.release.wait()


def settings(**overrides: Any) -> Settings:
    return isolated_settings(**{"report_interval": INTERVAL, **overrides})


async def start(clock: FakeClock, **overrides: Any) -> Service:
    service = Service.create(Volume, settings=settings(**overrides), clock=clock)
    await service.start()
    return service


async def record_of(service: Service) -> ServiceRecord:
    assert service.store is not None
    return await service.store.get(service.host, service.binary)


async def reported(service: Service, clock: FakeClock, after: int) -> ServiceRecord:
    """Move the clock one report interval on and return the record once that report is in.

    ``after``: the report count before; waits for the store's record, never for a guess.
    """
    await clock.advance(INTERVAL)
    latest: list[ServiceRecord] = []

    async def written() -> bool:
        latest[:] = [await record_of(service)]
        return latest[0].report_count > after

    await wait_until(written, timeout=STEP)
    return latest[0]


async def first_report(service: Service) -> ServiceRecord:
    """The report a service makes as it starts (with its health)."""

    async def written() -> bool:
        return (await record_of(service)).working is not None

    await wait_until(written, timeout=STEP)
    return await record_of(service)


async def test_a_healthy_service_reports_every_check_ok() -> None:
    clock = FakeClock()
    service = await start(clock)
    try:
        first = await first_report(service)
        assert (first.working, first.health, first.is_up) == (True, OK_ALL, True)
        assert await service.health() == OK_ALL
        again = await reported(service, clock, first.report_count)
        assert (again.working, again.health) == (True, OK_ALL)
    finally:
        await service.stop()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (False, "not working"),
        ("disk  full\n(pool 3)", "disk full (pool 3)"),  # one line
        (RuntimeError("backend\ngone"), "is_working() raised RuntimeError: backend gone"),
    ],
)
async def test_a_driver_that_is_not_working_is_reported_while_the_service_stays_up(
    answer: object, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiosvc.servicegroup")
    clock = FakeClock()
    service = await start(clock)
    manager = cast(Volume, service.manager)
    try:
        count = (await first_report(service)).report_count
        manager.answer = answer
        sick = await reported(service, clock, count)
        assert sick.working is False
        assert sick.problems == {"driver": expected}
        assert sick.health == OK_ALL | {"driver": expected}
        assert (sick.is_up, sick.state) == (True, "up")  # alive: Nova's meaning is kept
        # It still works as it did: RPC is served while its driver says no.
        assert service.rpc_server is not None
        assert service.rpc_server.serving

        still = await reported(service, clock, sick.report_count)  # logged once, not again
        assert still.problems == {"driver": expected}
        manager.answer = ""  # an empty reason is a yes
        well = await reported(service, clock, still.report_count)
        assert (well.working, well.health) == (True, OK_ALL)
    finally:
        await service.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{service.binary} on host {service.host} is not working: driver: {expected}"
    ]
    assert f"{service.binary} on host {service.host} is working again" in caplog.messages


async def test_an_is_working_that_never_answers_is_not_working_within_its_bound() -> None:
    clock = FakeClock()
    # The bound is max(1, min(5, report_interval / 2)) real seconds: 1 s here.
    service = await start(clock, report_interval=2)
    manager = cast(Volume, service.manager)
    try:
        count = (await first_report(service)).report_count
        manager.answer = manager.hang
        started = time.monotonic()
        await clock.advance(2)

        async def reported_hang() -> bool:
            record = await record_of(service)
            return record.report_count > count

        await wait_until(reported_hang, timeout=STEP)
        took = time.monotonic() - started
        hung = await record_of(service)
        assert hung.problems == {"driver": "is_working() gave no answer within 1s"}
        assert hung.is_up
        assert 1.0 <= took <= 1.0 + STEP
    finally:
        await service.stop()
    print(f"a hanging is_working() reported after {took:.2f} s (bound 1 s)")


async def test_a_stuck_periodic_task_is_named_once_overdue_by_twice_its_spacing() -> None:
    clock = FakeClock()
    service = await start(clock)
    manager = cast(Volume, service.manager)
    task = "Volume._sync_stats"
    try:
        record = await first_report(service)
        (periodic,) = manager.periodic.tasks
        await wait_until(lambda: periodic.runs == 1, timeout=STEP)  # t=0: ran; next at t=10
        manager.hold_next_run = True
        record = await reported(service, clock, record.report_count)  # t=10: it starts...
        assert manager.held.is_set()  # ...and never ends
        assert record.working  # a run in progress is not late
        record = await reported(service, clock, record.report_count)  # t=20: 10 s over
        assert record.working
        record = await reported(service, clock, record.report_count)  # t=30: 20 s, the edge
        assert record.working
        record = await reported(service, clock, record.report_count)  # t=40: 30 s > 2 x 10 s
        assert (record.working, record.is_up) == (False, True)
        assert record.problems == {"periodic": f"{task} overdue by 30.0s (spacing 10s)"}

        manager.hold_next_run = False
        manager.release.set()  # the run ends; the task keeps its schedule
        record = await reported(service, clock, record.report_count)
        assert (record.working, record.health) == (True, OK_ALL)
    finally:
        await service.stop()


async def test_a_disabled_service_is_still_working_and_a_cancelled_consumer_is_not() -> None:
    clock = FakeClock()
    service = await start(clock)
    assert service.store is not None
    assert service.rpc_server is not None
    try:
        record = await first_report(service)
        await service.store.update(service.host, service.binary, disabled=True)
        record = await reported(service, clock, record.report_count)  # pauses the shared queue
        record = await reported(service, clock, record.report_count)
        assert (record.disabled, record.working) == (True, True)

        consumer = service.rpc_server.consumer
        assert consumer is not None
        await consumer.cancel()  # what a lost consumer looks like to the service
        record = await reported(service, clock, record.report_count)
        assert record.problems == {"consumers": "not attached to its queues"}
    finally:
        await service.stop()


async def test_an_api_service_reports_its_http_server() -> None:
    clock = FakeClock()
    api = APIService.create(
        app="tests.webapp:app",
        settings=settings(api_listen="127.0.0.1", api_port=0),
        clock=clock,
    )
    async with api:
        record = await first_report(api)
        assert record.health == {"http": "ok", "broker": "ok", "periodic": "ok", "driver": "ok"}
        assert api.http_server is not None
        await api.http_server.stop(timeout=STEP)  # the server ended under the service
        record = await reported(api, clock, record.report_count)
        assert record.problems == {"http": "not serving HTTP"}


# --- a real broker ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_lost_broker_is_reported_by_the_next_report_and_its_return_too(
    fresh_amqp_url: str, rabbitmq: RabbitNode | None, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ closes every connection of the service's vhost and refuses new ones for a
    while: the service, whose store is elsewhere, reports broker and consumers not ok,
    stays up, and reports working again once it has reconnected by itself."""
    assert rabbitmq is not None  # fresh_amqp_url needs the session's own node
    caplog.set_level(logging.INFO, logger="aiosvc.servicegroup")
    vhost = fresh_amqp_url.rsplit("/", 1)[1]
    interval = 0.5

    async def ctl(*args: str) -> None:
        # In a thread: each run starts an Erlang VM (a second or so), and the service runs
        # on this event loop meanwhile.
        await anyio.to_thread.run_sync(rabbitmq.rabbitmqctl, *args)

    service = Service.create(
        Volume,
        settings=isolated_settings(transport_url=fresh_amqp_url, report_interval=interval),
    )
    async with service:
        assert (await first_report(service)).working

        async def working_is(value: bool) -> bool:
            return (await record_of(service)).working is value

        # No new connection to the vhost from now on; then the broker drops the service's.
        await ctl("set_vhost_limits", "-p", vhost, '{"max-connections": 0}')
        await ctl("close_all_connections", "--vhost", vhost, "health test")
        lost = time.monotonic()
        await wait_until(lambda: working_is(False), timeout=interval + STEP, interval=0.05)
        seen_lost = time.monotonic() - lost
        down = await record_of(service)
        assert down.problems == {
            "consumers": "not attached to its queues",
            "broker": "not connected",
        }
        assert down.is_up

        await ctl("clear_vhost_limits", "-p", vhost)
        back = time.monotonic()
        await wait_until(lambda: working_is(True), timeout=30.0, interval=0.05)
        seen_back = time.monotonic() - back
        assert (await record_of(service)).health == OK_ALL
        # It serves again, on the connections it made by itself.
        client = service.manager.rpc_client(Volume.topic)
        assert await client.call(None, "ping") == "pong"
    # aiosvc's own lines: aio-pika logs records whose arguments cannot always be formatted
    # once the connection is gone (OneShotCallback's repr), which caplog.messages would raise.
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("aiosvc")]
    assert sum("is not working: consumers:" in m for m in messages) == 1, messages
    assert sum(m.endswith("is working again") for m in messages) == 1, messages
    print(
        f"connections closed to working=false in the store: {seen_lost:.2f} s; "
        f"broker open again to working=true: {seen_back:.2f} s (report_interval {interval} s)"
    )


# --- services list -----------------------------------------------------------------------------


async def test_services_list_shows_whether_each_service_works(
    fresh_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = get_store(Settings.load(database_url=fresh_database_url, service_down_time=60))
    await store.connect()
    try:
        ok = await store.register("host-a", "aiosvc-volume", "volume", 1)
        await store.report(ok.id, health=OK_ALL)
        sick = await store.register("host-b", "aiosvc-volume", "volume", 1)
        problems = {"driver": "disk full", "broker": "not connected"}
        await store.report(sick.id, health=OK_ALL | problems)
        unknown = await store.register("host-c", "aiosvc-volume", "volume", 1)
        await store.report(unknown.id)  # an older aiosvc: no health
        stopped = await store.register("host-d", "aiosvc-volume", "volume", 1)
        await store.report(stopped.id, health=OK_ALL)
        await store.mark_stopped(stopped.id)  # down: what it said last is stale
    finally:
        await store.close()

    result = await cli(capsys, "services", "list", "--database-url", fresh_database_url)
    assert (result.code, result.err) == (0, "")
    header, rows = parse_table(result.out)
    assert header[-1] == "Working"
    shown = {row[2]: (row[5], row[-1]) for row in rows}
    assert shown == {
        "host-a": ("up", "yes"),
        "host-b": ("up", "no: broker, driver"),  # the checks in the order of HEALTH_CHECKS
        "host-c": ("up", "-"),
        "host-d": ("down (stopped)", "-"),
    }

    result = await cli(capsys, "services", "list", "--json", "--database-url", fresh_database_url)
    listed = {r["host"]: r for r in json.loads(result.out)}
    assert (listed["host-a"]["working"], listed["host-a"]["health"]) == (True, OK_ALL)
    assert (listed["host-b"]["working"], listed["host-b"]["health"]) == (
        False,
        OK_ALL | problems,
    )
    assert (listed["host-c"]["working"], listed["host-c"]["health"]) == (None, None)
    assert listed["host-d"]["working"] is True  # the raw record; the table says "-"


async def test_each_change_of_health_is_logged_once_and_only_new_failures_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiosvc.servicegroup")
    settings = isolated_settings()
    async with get_store(settings) as store:
        record = await store.register("host-a", "aiosvc-volume", "volume", 1)
        group = ServiceGroup(store, settings)
        for failing in ({"broker", "consumers"}, {"broker", "consumers"}, {"consumers"}, set()):
            group._log_health(record, OK_ALL | dict.fromkeys(failing, "down"))
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "aiosvc-volume on host host-a is not working: consumers: down; broker: down"),
        ("INFO", "aiosvc-volume on host host-a is still not working: consumers: down"),
        ("INFO", "aiosvc-volume on host host-a is working again"),
    ]
