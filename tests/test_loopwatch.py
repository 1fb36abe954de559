"""The blocked-loop alarm (``loop_block_warning``): one WARNING per stretch the event loop is
held, naming the RPC handler or periodic task that holds it and showing where, on the stock
loop and on uvloop, in-process and in a real ``python -m aiosvc run`` against RabbitMQ.

Thresholds are generous for a busy machine: each test asserts on the warnings that name
its own culprit, and asserts the absence of others only where a 1 s stall of the whole
process would be needed to produce one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import aiosvc
from aiosvc import Context, Manager, Service, loopwatch, periodic_task
from aiosvc.exceptions import ConfigError
from aiosvc.settings import Settings
from aiosvc.testing import isolated_settings, wait_until
from tests.procs import aiosvc_proc, clean_env, run_cli

WATCHDOG_THREAD = "aiosvc-loopwatch"


class Napper(Manager):
    """A manager whose handler makes the mistake the alarm is for."""

    topic = "napper"

    async def nap(self, ctx: Context, seconds: float) -> str:
        time.sleep(seconds)  # the sync call in an async handler  # noqa: ASYNC251
        return "rested"

    async def busy(self, ctx: Context, seconds: float) -> int:
        """Busy for ``seconds``, but yielding to the loop every 5 ms."""
        deadline = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < deadline:
            time.sleep(0.005)  # noqa: ASYNC251
            await asyncio.sleep(0)
            rounds += 1
        return rounds


class Stalling(Manager):
    """A periodic task that blocks the loop on its first run only."""

    topic = "stalling"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runs = 0

    @periodic_task(spacing=0.5, run_immediately=True)
    async def stall(self, ctx: Context) -> None:
        self.runs += 1
        if self.runs == 1:
            time.sleep(1)  # noqa: ASYNC251


def alarms(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The WARNINGs of the blocked-loop alarm captured so far."""
    return [
        r for r in caplog.records if r.name == "aiosvc.loopwatch" and r.levelno == logging.WARNING
    ]


def naming(records: list[logging.LogRecord], text: str) -> list[str]:
    return [r.getMessage() for r in records if text in r.getMessage()]


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WATCHDOG_THREAD]


async def nap_calls(settings: Settings, *seconds: float) -> None:
    """Start a Napper service, call ``nap`` once per entry of ``seconds``, stop it."""
    async with (
        Service.create(Napper, settings=settings),
        aiosvc.connect(settings) as transport,
    ):
        client = aiosvc.RPCClient(transport, "napper", timeout=30)
        for s in seconds:
            assert await client.call(None, "nap", seconds=s) == "rested"


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="aiosvc.loopwatch")
    return caplog


def assert_one_alarm_for_nap(caplog: pytest.LogCaptureFixture) -> None:
    (message,) = naming(alarms(caplog), "'rpc napper.nap'")
    assert "loop_block_warning=0.5 s" in message
    assert ", in nap\n" in message  # the handler's frame...
    assert "time.sleep(seconds)  # the sync call in an async handler" in message  # ...its line
    # The stack starts at the handler's task, not in the event loop's machinery.
    assert "base_events.py" not in message


async def test_a_blocking_handler_gets_one_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = isolated_settings(loop_block_warning=0.5)
    await nap_calls(settings, 1.0)
    assert_one_alarm_for_nap(caplog)
    # The loop said when it ran again, and nothing was logged after the service stopped.
    assert any("runs again" in r.getMessage() for r in caplog.records)
    assert not watchdog_threads()


def test_the_alarm_works_on_uvloop(caplog: pytest.LogCaptureFixture) -> None:
    uvloop = pytest.importorskip("uvloop")
    run: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    run(nap_calls(isolated_settings(loop_block_warning=0.5), 1.0))
    assert_one_alarm_for_nap(caplog)


async def test_two_blocks_give_two_warnings(caplog: pytest.LogCaptureFixture) -> None:
    settings = isolated_settings(loop_block_warning=0.5)
    await nap_calls(settings, 1.0, 1.0)
    assert len(naming(alarms(caplog), "'rpc napper.nap'")) == 2
    assert len([r for r in caplog.records if "runs again" in r.getMessage()]) >= 2


async def test_a_blocking_periodic_task_is_named(caplog: pytest.LogCaptureFixture) -> None:
    settings = isolated_settings(loop_block_warning=0.5)
    async with Service.create(Stalling, settings=settings) as service:
        manager = service.manager
        assert isinstance(manager, Stalling)
        await wait_until(lambda: manager.runs >= 2, timeout=30)
    (message,) = naming(alarms(caplog), "'periodic Stalling.stall'")
    assert ", in stall\n" in message
    assert "time.sleep(1)" in message


async def test_a_busy_loop_that_keeps_turning_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = isolated_settings(loop_block_warning=1.0)
    lags: list[float] = []
    async with (
        Service.create(Napper, settings=settings),
        aiosvc.connect(settings) as transport,
    ):
        watch = loopwatch.current()
        assert watch is not None
        assert watch.threshold == 1.0
        watch.on_lag.append(lags.append)
        client = aiosvc.RPCClient(transport, "napper", timeout=30)
        rounds = await client.call(None, "busy", seconds=2.0)
    assert rounds > 10
    assert len(lags) >= 3, lags  # the heartbeat ran all along: it could have seen a block
    assert alarms(caplog) == []


async def test_zero_turns_the_alarm_off(caplog: pytest.LogCaptureFixture) -> None:
    settings = isolated_settings(loop_block_warning=0)
    async with Service.create(Napper, settings=settings):
        assert loopwatch.current() is None
        assert not watchdog_threads()
    await nap_calls(settings, 0.8)
    assert alarms(caplog) == []


async def test_services_on_one_loop_share_one_watchdog() -> None:
    first = Service.create(Napper, settings=isolated_settings(loop_block_warning=0.8))
    second = Service.create(Napper, settings=isolated_settings(loop_block_warning=0.6))
    async with first:
        watch = loopwatch.current()
        assert watch is not None
        assert watch.running
        async with second:
            assert loopwatch.current() is watch
            assert len(watchdog_threads()) == 1
            assert watch.threshold == 0.6  # the smallest asked for
        assert loopwatch.current() is watch
        assert watch.running
    assert loopwatch.current() is None
    assert not watch.running
    assert not watchdog_threads()


async def test_lag_is_readable_for_metrics() -> None:
    watch = loopwatch.acquire(2.0)
    try:
        time.sleep(0.6)  # noqa: ASYNC251 (held, but under the threshold: lag, no warning)
        await asyncio.sleep(0)
        assert watch.max_lag_since_last_read() >= 0.1
        assert watch.max_lag_since_last_read() < 0.6  # read, so reset
        assert watch.blocks == 0
    finally:
        loopwatch.release(watch)


async def test_a_negative_threshold_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_LOOP_BLOCK_WARNING", "-1")
    with pytest.raises(ConfigError) as err:
        Settings.load()
    assert str(err.value) == (
        "invalid setting loop_block_warning (AIOSVC_LOOP_BLOCK_WARNING=-1): "
        "Input should be greater than or equal to 0"
    )
    with pytest.raises(ValueError, match="loop_block_warning must be a positive number"):
        loopwatch.LoopWatch(asyncio.get_running_loop(), 0)


@pytest.mark.slow
@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_a_service_process_names_its_blocking_handler(fresh_amqp_url: str, event_loop: str) -> None:
    if event_loop == "uvloop":
        pytest.importorskip("uvloop")
    topic = f"napper-{uuid.uuid4().hex[:8]}"
    env = clean_env(
        AIOSVC_TRANSPORT_URL=fresh_amqp_url,
        AIOSVC_LOOP_BLOCK_WARNING="0.5",
        AIOSVC_EVENT_LOOP=event_loop,
    )
    run = ["run", "--manager", "tests.test_loopwatch:Napper", "--topic", topic]
    with aiosvc_proc(run, env) as service:
        service.wait_for("Started", timeout=60)
        service.wait_for(f"Event loop: {event_loop}")
        done = run_cli(["call", topic, "nap", "seconds:=1"], env, timeout=60)
        assert done.returncode == 0, done.stderr
        warning = service.wait_for("aiosvc.loopwatch", timeout=10)
        assert "WARNING" in warning
        assert f"'rpc {topic}.nap'" in warning
        service.wait_for("time.sleep(seconds)  # the sync call in an async handler")
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0
    assert len([line for line in service.lines if "WARNING aiosvc.loopwatch" in line]) == 1


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_a_loop_waiting_for_events_is_told_from_one_held_by_code(use_uvloop: bool) -> None:
    """What keeps a starved process (a late heartbeat, the loop in its selector) from
    being reported as a block: the watchdog's reading of the loop thread's stack."""
    if use_uvloop:
        uvloop = pytest.importorskip("uvloop")
    shared: dict[str, Any] = {}  # the loop, and the event that lets main() go on
    started, holding, release = threading.Event(), threading.Event(), threading.Event()

    async def main() -> None:
        shared.update(loop=asyncio.get_running_loop(), proceed=asyncio.Event())
        started.set()
        await shared["proceed"].wait()  # nothing to do: the loop waits in its selector
        holding.set()
        release.wait(10)  # held by code

    def run() -> None:
        if use_uvloop:
            uvloop.run(main())
        else:
            asyncio.run(main())

    thread = threading.Thread(target=run)
    thread.start()
    assert thread.ident is not None
    try:
        assert started.wait(10)

        def waiting() -> bool:
            return loopwatch._waiting_for_events(sys._current_frames()[thread.ident or 0])

        deadline = time.monotonic() + 10
        while not waiting():  # until the loop has gone back to its selector
            assert time.monotonic() < deadline, "the idle loop never read as waiting"
            time.sleep(0.01)
        shared["loop"].call_soon_threadsafe(shared["proceed"].set)
        assert holding.wait(10)
        assert not waiting()
    finally:
        release.set()
        thread.join(10)
