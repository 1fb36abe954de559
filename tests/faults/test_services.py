"""Faults of the services themselves: killed, stopped, starved, or losing their database.

Every scenario runs real ``python -m aiosvc run --manager tests.apps:Working`` processes on the
session's RabbitMQ (a fresh vhost each) and loads them from this process with aiosvc's own
client. Each cast carries an id; a cast is *confirmed* once ``cast()`` returned, and each
service journals every id it handled, so a loss (confirmed, never handled) or a duplicate
(handled twice) is counted, not guessed. Each test prints one ``FIGURES`` line (``-rP`` or
``-s`` shows them; the format is ``tests/faults/conftest.py``'s), which docs/reliability.md
quotes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

import aiosvc
from aiosvc.testing import isolated_settings
from tests.conftest import IN_CI
from tests.faults.conftest import BROKER_ERRORS, CallProbe, Figures, rss_mb
from tests.procs import Proc, clean_env, journal
from tests.servers import PostgresCluster, RabbitNode, find_postgres_bin

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

TOPIC = "journal"
#: Upper bound for anything to happen on a loaded CI machine (2 cores shared with the servers).
DEADLINE = 60.0


# --- services and load --------------------------------------------------------------------------


@dataclass
class Service:
    """One ``python -m aiosvc run`` process of ``tests.apps:Working`` and its journal."""

    host: str
    proc: Proc
    journal_path: Path

    def entries(self, event: str) -> list[dict[str, Any]]:
        return [e for e in journal(self.journal_path) if e["event"] == event]

    def started(self) -> set[Any]:
        """Ids of the casts this service began."""
        return {e["item"] for e in self.entries("record-start")}

    def done(self) -> set[Any]:
        """Ids of the casts this service finished."""
        return {e["item"] for e in self.entries("record")}

    def in_flight(self) -> set[Any]:
        """Ids begun and not finished (yet, or ever: once it was killed)."""
        return self.started() - self.done()

    def log_count(self, text: str) -> int:
        return sum(text in line for line in self.proc.lines)

    async def wait_logged(self, text: str, timeout: float = DEADLINE) -> str:
        return await asyncio.to_thread(self.proc.wait_for, text, timeout)

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)


class Services:
    """Starts services on the test's vhost; every process is killed after the test."""

    def __init__(self, env: dict[str, str], tmp_path: Path, stack: ExitStack) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.stack = stack

    def start(self, *hosts: str, **env: str) -> list[Service]:
        """Start one service per host (all at once), with ``env`` added to their environment;
        return once each has logged that it started."""
        services = []
        for host in hosts:
            path = self.tmp_path / f"{host}.jsonl"
            proc = Proc(
                ["run", "--manager", "tests.apps:Working", "--host", host],
                {**self.env, **env, "AIOSVC_JOURNAL": str(path)},
            )
            self.stack.callback(proc.stop)
            services.append(Service(host, proc, path))
        for service in services:
            service.proc.wait_for("Started", timeout=DEADLINE)
        return services


@pytest.fixture
def service_env(fresh_amqp_url: str) -> dict[str, str]:
    """The services' environment: this test's vhost, no start-up delay, 30 s to drain."""
    return clean_env(
        AIOSVC_TRANSPORT_URL=fresh_amqp_url,
        AIOSVC_PERIODIC_FUZZY_DELAY="0",
        AIOSVC_GRACEFUL_SHUTDOWN_TIMEOUT="30",
    )


@pytest.fixture
def services(service_env: dict[str, str], tmp_path: Path) -> Iterator[Services]:
    """Starts services for the test (``services.start(host, ...)``); kills them after it."""
    with ExitStack() as stack:
        yield Services(service_env, tmp_path, stack)


@pytest.fixture
async def client(fresh_amqp_url: str) -> AsyncIterator[aiosvc.RPCClient]:
    """An RPC client of the services' topic, on a transport of this process."""
    async with aiosvc.connect(isolated_settings(transport_url=fresh_amqp_url)) as transport:
        yield aiosvc.RPCClient(transport, TOPIC)


@dataclass
class CastLoad:
    """Casts ``record(item=i)`` for ``i`` in ``range(count)``: ``rate`` per second (None: as
    fast as confirms come), at most ``window`` unconfirmed at once."""

    client: aiosvc.RPCClient
    count: int
    rate: float | None
    window: int = 32
    padding: str = ""
    sent: int = 0
    confirmed: set[int] = field(default_factory=set)
    failed: Counter[str] = field(default_factory=Counter)
    failed_ids: set[int] = field(default_factory=set)

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.window)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        async with asyncio.TaskGroup() as tasks:
            for i in range(self.count):
                if self.rate is not None:  # a steady load, so the fault lands in its middle
                    await asyncio.sleep(max(0.0, begin + i / self.rate - loop.time()))
                await slots.acquire()
                tasks.create_task(self._cast(i, slots))

    async def _cast(self, item: int, slots: asyncio.Semaphore) -> None:
        self.sent += 1
        extra = {"padding": self.padding} if self.padding else {}
        try:
            await self.client.cast(None, "record", item=item, **extra)
        except BROKER_ERRORS as exc:  # not confirmed: it may or may not be handled
            self.failed[type(exc).__name__] += 1
            self.failed_ids.add(item)
        else:
            self.confirmed.add(item)
        finally:
            slots.release()


def handled(*services: Service) -> Counter[Any]:
    """How many times each id was handled, over all the services."""
    return Counter(item for s in services for item in s.done())


async def until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` (which may read files: it runs in a thread) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def poll(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Await ``condition()`` every 0.1 s until it holds, for up to ``DEADLINE``."""
    deadline = time.monotonic() + DEADLINE
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def all_handled(load: CastLoad, *services: Service) -> Counter[Any]:
    """Wait until every confirmed cast was handled somewhere; the final tally."""
    await until(
        lambda: load.confirmed <= handled(*services).keys(),
        f"all {len(load.confirmed)} confirmed casts handled",
        timeout=2 * DEADLINE,
    )
    return handled(*services)


def figures(
    scenario: str,
    load: CastLoad,
    tally: Counter[Any],
    recovery: dict[str, float] | None = None,
    **extra: object,
) -> Figures:
    """The scenario's figures, printed as one ``FIGURES`` line."""
    result = Figures(
        scenario,
        load.sent,
        set(load.confirmed),
        load.failed.copy(),
        set(load.failed_ids),
        tally,
        recovery or {},
        extra,
    )
    print(result.line())
    return result


# --- a service SIGKILLed during casts -----------------------------------------------------------


async def test_sigkill_during_casts_redelivers_to_the_survivor(
    services: Services, client: aiosvc.RPCClient
) -> None:
    """A cast is acknowledged only after its handler finished: a service SIGKILLed under a
    steady load of casts loses none of them, and those it was handling are redelivered to
    the service that survives. Delivery is at least once: the duplicates are counted, and
    each one is a cast both services handled."""
    doomed, survivor = services.start("doomed", "survivor", AIOSVC_WORK_SECONDS="0.2")
    load = CastLoad(client, count=1500, rate=150)
    casting = asyncio.create_task(load.run())
    await until(
        lambda: len(doomed.done()) >= 100 and bool(doomed.in_flight()),
        "the doomed service busy, 100 casts in",
    )
    doomed.proc.signal(signal.SIGKILL)
    killed_at = time.time()
    assert await doomed.wait_exit() == -signal.SIGKILL
    await casting
    tally = await all_handled(load, doomed, survivor)

    interrupted = doomed.in_flight()  # begun, never finished: the broker must redeliver them
    assert interrupted, "the kill found no cast in flight: the test proved nothing"
    assert interrupted <= survivor.done()
    for item, times in tally.items():
        if times > 1:  # handled by the doomed one, killed before its acknowledgement left
            assert item in doomed.done(), item
            assert item in survivor.done(), item
            assert times == 2, item
    redelivered = [e["t"] for e in survivor.entries("record") if e["item"] in interrupted]
    result = figures(
        "sigkill during casts",
        load,
        tally,
        {"redelivered_and_done_within": max(redelivered) - killed_at},
        in_flight_at_kill=len(interrupted),
    )
    assert not load.failed
    assert load.confirmed == set(range(load.count))
    assert not result.lost


# --- SIGTERM under load -------------------------------------------------------------------------


async def test_sigterm_under_load_finishes_the_work_in_flight(
    services: Services, client: aiosvc.RPCClient
) -> None:
    """A graceful stop (SIGTERM) under a steady load of casts stops consuming, finishes every
    cast in flight within ``graceful_shutdown_timeout`` and acknowledges it: nothing confirmed
    is lost, and nothing is handled twice (no cast is left half done to be redelivered)."""
    stopping, staying = services.start("stopping", "staying", AIOSVC_WORK_SECONDS="0.3")
    load = CastLoad(client, count=1200, rate=150)
    casting = asyncio.create_task(load.run())
    await until(
        lambda: len(stopping.done()) >= 100 and bool(stopping.in_flight()),
        "the stopping service busy, 100 casts in",
    )
    stopping.proc.signal(signal.SIGTERM)
    signalled_at = time.time()
    assert await stopping.wait_exit() == 0, "\n".join(stopping.proc.lines[-30:])
    exited_after = time.time() - signalled_at
    await casting
    tally = await all_handled(load, stopping, staying)

    assert not stopping.in_flight(), "casts begun and never finished by the stopped service"
    drained = [e for e in stopping.entries("record") if e["t"] > signalled_at]
    assert drained, "nothing was in flight at SIGTERM: the test proved nothing"
    assert stopping.log_count("requeued 0") == 1, "\n".join(stopping.proc.lines[-30:])
    result = figures(
        "sigterm under load",
        load,
        tally,
        {"exit_after": exited_after},
        finished_after_sigterm=len(drained),
    )
    assert not load.failed
    assert load.confirmed == set(range(load.count))
    assert not result.lost
    assert result.duplicated == 0


# --- a slow consumer with a full prefetch window ------------------------------------------------


def queue_depth(rabbitmq: RabbitNode, vhost: str, queue: str) -> tuple[int, int]:
    """``(messages_ready, messages_unacknowledged)`` of ``queue`` in the broker."""
    rows = rabbitmq.rabbitmqctl(
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "--no-table-headers",
    )
    for row in rows.splitlines():
        name, ready, unacked = row.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError(f"no queue {queue!r} in vhost {vhost!r}: {rows!r}")


async def sample_while(
    running: Awaitable[object], sample: Callable[[], object], into: list[Any], every: float
) -> None:
    """Take ``sample()`` (in a thread) every ``every`` seconds until ``running`` is done."""
    task = asyncio.ensure_future(running)
    while not task.done():
        into.append(await asyncio.to_thread(sample))
        await asyncio.wait([task], timeout=every)
    await task


async def test_slow_consumer_holds_no_more_than_its_prefetch_window(
    services: Services,
    client: aiosvc.RPCClient,
    rabbitmq: RabbitNode | None,
    fresh_amqp_url: str,
) -> None:
    """A service slower than its callers takes no more than ``rpc_max_concurrency`` casts at
    a time (its AMQP prefetch): the broker holds the rest, the service's memory stays
    bounded whatever the backlog, and every cast is handled in the end."""
    assert rabbitmq is not None  # fresh_amqp_url skipped the test otherwise
    prefetch, count, padding = 8, 2000, "x" * 20 * 1024  # ~40 MiB of casts in all
    (slow,) = services.start(
        "slow", AIOSVC_WORK_SECONDS="0.05", AIOSVC_RPC_MAX_CONCURRENCY=str(prefetch)
    )
    vhost = urlsplit(fresh_amqp_url).path.lstrip("/")
    # Warm up (imports, validators, buffers) before the baseline is taken.
    warm_up = [-1 - i for i in range(32)]
    await asyncio.gather(*(client.cast(None, "record", item=i, padding=padding) for i in warm_up))
    await until(lambda: set(warm_up) <= slow.done(), "the warm-up casts handled")
    baseline = rss_mb(slow.proc)

    load = CastLoad(client, count=count, rate=None, window=64, padding=padding)
    memory: list[float] = []
    depths: list[tuple[int, int]] = []

    async def drain() -> Counter[Any]:
        await load.run()
        return await all_handled(load, slow)

    finished = asyncio.ensure_future(drain())
    await asyncio.gather(
        sample_while(finished, lambda: rss_mb(slow.proc), memory, every=0.1),
        sample_while(finished, lambda: queue_depth(rabbitmq, vhost, TOPIC), depths, every=0.5),
    )
    tally = finished.result()
    tally.subtract(dict.fromkeys(warm_up, 1))
    tally = +tally  # drop the warm-up ids

    growth = max(memory) - baseline
    max_ready = max(ready for ready, _ in depths)
    max_unacked = max(unacked for _, unacked in depths)
    result = figures(
        "slow consumer",
        load,
        tally,
        prefetch=prefetch,
        max_ready=max_ready,
        max_unacked=max_unacked,
        rss_baseline=f"{baseline:.1f}MiB",
        rss_growth=f"{growth:.1f}MiB",
        queue_samples=len(depths),
    )
    assert len(depths) >= 3, "too few samples of the queue to judge it"
    assert max_unacked <= prefetch
    assert max_ready >= count // 2, "the broker never held the backlog"
    assert growth < 30, f"the service grew by {growth:.1f} MiB"
    assert not load.failed
    assert load.confirmed == set(range(count))
    assert not result.lost
    assert result.duplicated == 0


# --- a call whose server dies mid-call ----------------------------------------------------------


def _hangs(service: Service, event: str) -> set[str]:
    """Names of the ``hang`` calls the service journaled ``event`` (start or done) for."""
    return {e["name"] for e in service.entries(event)}


async def test_call_whose_server_dies_times_out_and_its_late_reply_reaches_nobody(
    services: Services, client: aiosvc.RPCClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A call whose server is SIGKILLed while it runs raises ``MessagingTimeout`` at its
    timeout, never hangs. The request is redelivered to the other server, which answers after
    the caller gave up: that late reply is dropped, and the calls in flight on the same
    connection meanwhile each get their own answer (replies match by correlation id)."""
    caplog.set_level(logging.DEBUG, logger="aiosvc.transport.amqp.replies")
    timeout, hang = 3.0, 6.0  # the redelivered request is answered ~3 s after the timeout
    first, second = services.start("first", "second")
    sent = time.monotonic()
    victim = asyncio.create_task(
        client.prepare(timeout=timeout).call(None, "hang", name="victim", seconds=hang)
    )

    def running_on() -> list[Service]:
        return [s for s in (first, second) if "victim" in _hangs(s, "hang-start")]

    await until(lambda: bool(running_on()), "the call running on a server")
    (doomed,) = running_on()
    survivor = second if doomed is first else first
    doomed.proc.signal(signal.SIGKILL)
    with pytest.raises(aiosvc.MessagingTimeout) as timed_out:
        async with asyncio.timeout(timeout + DEADLINE):  # never hangs
            await victim
    waited = time.monotonic() - sent
    found = re.search(r"message ID (\w+)", str(timed_out.value))
    assert found, str(timed_out.value)
    victim_id = found.group(1)

    def dropped() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("dropping reply")
        ]

    answers: dict[str, str] = {}

    async def other_caller(k: int) -> None:
        # Keeps a call in flight until the late reply came and went.
        n = 0
        while not dropped():
            name = f"other-{k}-{n}"
            answers[name] = await client.call(None, "hang", name=name, seconds=0.2)
            n += 1

    try:
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*(other_caller(k) for k in range(8)))
    except TimeoutError:
        pytest.fail(f"no late reply to {victim_id} came within {DEADLINE:.0f} s")
    late = time.monotonic() - sent
    wrong = sum(name != answer for name, answer in answers.items())
    print(
        f"FIGURES server dies mid-call: timeout={timeout:.2f}s "
        f"MessagingTimeout_after={waited:.2f}s late_reply_dropped_after={late:.2f}s "
        f"other_calls={len(answers)} wrong_answers={wrong}"
    )
    assert timeout <= waited <= timeout + 5, waited
    assert dropped() == [f"dropping reply to {victim_id}: the caller is gone"]
    assert "victim" in _hangs(survivor, "hang-done")  # the late reply was really sent
    assert "victim" not in _hangs(doomed, "hang-done")
    assert answers
    assert wrong == 0


# --- PostgreSQL killed and started again --------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this test's own, to kill: the session's serves other tests."""
    if find_postgres_bin() is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not installed (CI is set: a missing server is a failure)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresCluster() as cluster:
        yield cluster


async def _rows(url: str) -> list[asyncpg.Record]:
    con = await asyncpg.connect(url)
    try:
        return await con.fetch(
            'SELECT host, "binary", topic, report_count, updated_at FROM services '
            "WHERE deleted_at IS NULL"
        )
    finally:
        await con.close()


async def _db_now(url: str) -> datetime:
    con = await asyncpg.connect(url)
    try:
        now: datetime = await con.fetchval("SELECT now()")
    finally:
        await con.close()
    return now


@pytest.mark.postgres
async def test_postgres_killed_and_started_again_while_services_run(
    own_postgres: PostgresCluster, services: Services, client: aiosvc.RPCClient
) -> None:
    """PostgreSQL SIGKILLed (and started again on its data) under running services: their RPC
    is unaffected, each logs the outage once and the recovery once (not every report
    interval), their reports resume, and each still has exactly one ``services`` row."""
    interval, outage = 0.5, 3.0
    hosts = ("pg-a", "pg-b")
    running = services.start(
        *hosts,
        AIOSVC_DATABASE_URL=own_postgres.url,
        AIOSVC_REPORT_INTERVAL=str(interval),
        AIOSVC_SERVICE_DOWN_TIME="5",
    )
    url = own_postgres.url

    async def reports() -> dict[str, int]:
        return {r["host"]: r["report_count"] for r in await _rows(url)}

    async def all_reported(above: dict[str, int]) -> bool:
        counts = await reports()
        return all(counts.get(h, 0) > above.get(h, 0) for h in hosts)

    await poll(lambda: all_reported(dict.fromkeys(hosts, 1)), "both services reporting")
    calls = CallProbe(client.prepare(timeout=5))
    calls.start()

    await asyncio.to_thread(own_postgres.kill)
    killed = time.monotonic()
    for service in running:
        await service.wait_logged("Cannot report the state")
    await asyncio.sleep(outage)  # the outage itself: several report intervals long
    await asyncio.to_thread(own_postgres.start)
    restarted = time.monotonic()
    during_outage = sum(killed < start < restarted for start, _ in calls.successes)

    # Reporting again: each row written after the restart (by the database's clock).
    restarted_db = await _db_now(url)

    async def all_updated() -> bool:
        rows = await _rows(url)
        return {r["host"] for r in rows if r["updated_at"] > restarted_db} >= set(hosts)

    await poll(all_updated, "reports after the restart")
    recovery = time.monotonic() - restarted
    snapshot = await reports()
    await poll(lambda: all_reported(snapshot), "reports continuing after the restart")
    for service in running:
        await service.wait_logged("Recovered: reporting the state")
    await calls.stop()

    rows = await _rows(url)
    groups = Counter((r["host"], r["binary"], r["topic"]) for r in rows)
    failed = sum(calls.failures.values())
    print(
        f"FIGURES postgres kill -9: outage={restarted - killed:.2f}s "
        f"calls_answered={len(calls.successes)} answered_during_outage={during_outage} "
        f"calls_failed={failed} reports_back_after={recovery:.2f}s "
        f"rows_per_service={sorted(groups.values())}"
    )
    assert failed == 0, calls.last_failure
    assert during_outage >= 10
    assert recovery <= 15
    assert set(groups) == {(h, "aiosvc-journal", TOPIC) for h in hosts}
    assert all(n == 1 for n in groups.values()), groups
    for service in running:
        errors = [line for line in service.proc.lines if " ERROR " in line]
        assert service.log_count("Cannot report the state") == 1, errors
        assert service.log_count("Recovered: reporting the state") == 1
        assert len(errors) == 1, errors
