"""Service lifecycle on the in-memory transport and store (the embedded default)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, cast

import anyio
import pytest

import aiosvc
import aiosvc.servicegroup
from aiosvc import Context, Manager, Service, periodic_task
from aiosvc.exceptions import ConfigError
from aiosvc.settings import Settings
from aiosvc.store import get_store
from aiosvc.store.memory import MemoryStore
from aiosvc.testing import FakeClock, isolated_settings, wait_until
from aiosvc.transport import get_transport


class Recorder(Manager):
    """Records the order of hooks, and what was ready when each ran."""

    topic = "recorder"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[str] = []
        self.transport: aiosvc.Transport | None = None

    async def init_host(self) -> None:
        self.events.append(f"init_host record={self.service_record is not None}")

    async def pre_start_hook(self) -> None:
        self.events.append(f"pre_start_hook record={self.service_record is not None}")

    async def post_start_hook(self) -> None:
        self.events.append("post_start_hook")

    async def cleanup_host(self) -> None:
        self.events.append("cleanup_host")

    async def reset(self) -> None:
        self.events.append("reset")

    async def echo(self, ctx: Context, value: Any) -> Any:
        return value

    async def whoami(self, ctx: Context) -> dict[str, Any]:
        return {"host": self.host, "request_id": ctx.request_id}

    @periodic_task(spacing=10, run_immediately=True)
    async def _tick(self, ctx: Context) -> None:
        self.events.append("tick")


class Slow(Manager):
    topic = "slow"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.finished: list[str] = []
        self.done = anyio.Event()

    async def work(self, ctx: Context, name: str) -> str:
        self.entered.set()
        await self.release.wait()
        self.finished.append(name)
        self.done.set()
        return name


async def test_create_defaults_from_manager(aiosvc_settings: Settings) -> None:
    service = Service.create("tests.test_service:Recorder", settings=aiosvc_settings)
    assert service.topic == "recorder"
    assert service.binary == "aiosvc-recorder"
    assert service.host == aiosvc_settings.host
    assert isinstance(service.manager, Recorder)
    assert service.manager.service_name == "aiosvc-recorder"


async def test_create_without_topic_or_with_bad_path_fails_clearly(
    aiosvc_settings: Settings,
) -> None:
    class NoTopic(Manager):
        pass

    with pytest.raises(aiosvc.ConfigError, match="declares no topic"):
        Service.create(NoTopic, settings=aiosvc_settings)
    with pytest.raises(aiosvc.LoadError, match="not found"):
        Service.create("no.such:Thing", settings=aiosvc_settings)
    with pytest.raises(aiosvc.LoadError, match="not a subclass of Manager"):
        Service.create("collections:OrderedDict", settings=aiosvc_settings)


async def test_start_order_and_readiness(aiosvc_settings: Settings) -> None:
    service = Service.create(Recorder, settings=aiosvc_settings)
    manager = service.manager
    assert isinstance(manager, Recorder)
    await service.start()
    try:
        # start() returned: consumers are bound (a call is answered) and the record exists.
        async with aiosvc.connect(aiosvc_settings) as transport:
            client = aiosvc.RPCClient(transport, "recorder")
            assert await client.call(None, "echo", value=[1, "two"]) == [1, "two"]
        assert service.store is not None
        record = await service.store.get(service.host, service.binary)
        assert record.topic == "recorder"
        assert record.report_count >= 1  # the first state report is made at start
        assert manager.events[:3] == [
            "init_host record=False",
            "pre_start_hook record=True",
            "post_start_hook",
        ]
    finally:
        await service.stop()
    assert manager.events[-1] == "cleanup_host"
    assert manager.events.count("cleanup_host") == 1


async def test_init_host_gets_the_existing_record_on_restart(aiosvc_settings: Settings) -> None:
    async with Service.create(Recorder, settings=aiosvc_settings):
        pass
    service = Service.create(Recorder, settings=aiosvc_settings)
    async with service:
        assert isinstance(service.manager, Recorder)
        assert service.manager.events[0] == "init_host record=True"


async def test_async_with_and_start_twice(aiosvc_settings: Settings) -> None:
    service = Service.create(Recorder, settings=aiosvc_settings)
    async with service:
        assert service.started
        with pytest.raises(aiosvc.ServiceError, match="already started"):
            await service.start()
    assert not service.started


async def test_start_failure_raises_the_cause_and_cleans_up(aiosvc_settings: Settings) -> None:
    class Broken(Recorder):
        async def pre_start_hook(self) -> None:
            raise RuntimeError("no disk")

    service = Service.create(Broken, settings=aiosvc_settings)
    with pytest.raises(RuntimeError, match="no disk"):
        await service.start()
    assert isinstance(service.manager, Broken)
    assert service.manager.events[-1] == "cleanup_host"
    assert service.transport is None  # closed again
    assert service.store is None


async def test_context_travels_to_the_handler(aiosvc_settings: Settings) -> None:
    async with (
        Service.create(Recorder, settings=aiosvc_settings),
        aiosvc.connect(aiosvc_settings) as transport,
    ):
        ctx = Context(user_id="alice")
        reply = await aiosvc.RPCClient(transport, "recorder").call(ctx, "whoami")
        assert reply == {"host": aiosvc_settings.host, "request_id": ctx.request_id}


async def test_stop_drains_in_flight_calls(aiosvc_settings: Settings) -> None:
    service = Service.create(Slow, settings=aiosvc_settings)
    manager = service.manager
    assert isinstance(manager, Slow)
    await service.start()
    async with aiosvc.connect(aiosvc_settings) as transport, anyio.create_task_group() as tg:
        client = aiosvc.RPCClient(transport, "slow")
        results: list[str] = []

        async def call() -> None:
            results.append(await client.call(None, "work", name="first"))

        tg.start_soon(call)
        with anyio.fail_after(5):
            await manager.entered.wait()
        stopping = anyio.Event()

        async def stop() -> None:
            await service.stop()
            stopping.set()

        tg.start_soon(stop)
        await anyio.wait_all_tasks_blocked()
        assert not stopping.is_set()  # waiting for the handler in flight
        manager.release.set()
    assert results == ["first"]
    assert manager.finished == ["first"]


async def test_unfinished_cast_is_requeued_and_redelivered() -> None:
    settings = isolated_settings(graceful_shutdown_timeout=0.2)
    first = Service.create(Slow, settings=settings)
    manager = first.manager
    assert isinstance(manager, Slow)
    await first.start()
    async with aiosvc.connect(settings) as transport:
        await aiosvc.RPCClient(transport, "slow").cast(None, "work", name="job")
        with anyio.fail_after(5):
            await manager.entered.wait()
        await first.stop()  # the handler never finishes: cancelled after 0.2 s
        assert manager.finished == []
        second = Service.create(Slow, settings=settings)
        again = second.manager
        assert isinstance(again, Slow)
        again.release.set()
        async with second:
            with anyio.fail_after(5):
                await again.done.wait()
            assert again.finished == ["job"]


async def test_kill_deletes_the_record(aiosvc_settings: Settings) -> None:
    service = Service.create(Recorder, settings=aiosvc_settings)
    await service.start()
    await service.kill()
    async with get_store(aiosvc_settings) as store:
        assert await store.list() == []


async def test_a_clean_stop_marks_the_record_stopped(aiosvc_settings: Settings) -> None:
    service = Service.create(Recorder, settings=aiosvc_settings)
    async with get_store(aiosvc_settings) as store:
        async with service:
            running = await store.get(service.host, service.binary)
            assert (running.is_up, running.stopped) == (True, False)

        # Down at once, as stopped: not service_down_time later, as after a crash.
        stopped = await store.get(service.host, service.binary)
        assert (stopped.is_up, stopped.stopped, stopped.state) == (False, True, "down")
        assert stopped.stopped_at is not None
        assert service.record is not None
        assert service.record.stopped_at == stopped.stopped_at

        # Starting again revives the same record.
        async with Service.create(Recorder, settings=aiosvc_settings):
            again = await store.get(service.host, service.binary)
            assert (again.id, again.is_up, again.stopped) == (stopped.id, True, False)


async def test_the_record_is_stopped_while_work_in_flight_drains(
    aiosvc_settings: Settings,
) -> None:
    # Consumers are stopped first, so the record says so at once: callers and schedulers
    # learn before the handlers in flight finish (up to graceful_shutdown_timeout).
    service = Service.create(Slow, settings=aiosvc_settings)
    manager = service.manager
    assert isinstance(manager, Slow)
    await service.start()
    async with (
        get_store(aiosvc_settings) as store,
        aiosvc.connect(aiosvc_settings) as transport,
        anyio.create_task_group() as tg,
    ):
        results: list[str] = []

        async def call() -> None:
            results.append(await aiosvc.RPCClient(transport, "slow").call(None, "work", name="a"))

        async def stopped() -> bool:
            return (await store.get(service.host, service.binary)).stopped

        tg.start_soon(call)
        with anyio.fail_after(5):
            await manager.entered.wait()
        tg.start_soon(service.stop)
        await wait_until(stopped, timeout=10)
        assert manager.finished == []  # still in flight
        manager.release.set()
    assert results == ["a"]


async def test_a_crashed_or_aborted_service_is_not_marked_stopped(
    aiosvc_settings: Settings,
) -> None:
    crashed = Service.create(Recorder, host="host-crash", settings=aiosvc_settings)

    async def crash(**kwargs: Any) -> None:
        raise RuntimeError("periodic runner broke")

    crashed.manager.periodic.run = crash  # type: ignore[method-assign]
    await crashed.start()
    with pytest.raises(RuntimeError, match="periodic runner broke"), anyio.fail_after(5):
        await crashed.wait()

    aborted = Service.create(Recorder, host="host-abort", settings=aiosvc_settings)
    await aborted.start()
    aborted.force_stop()  # as a second SIGINT does
    with pytest.raises(asyncio.CancelledError), anyio.fail_after(5):
        await aborted.wait()

    async with get_store(aiosvc_settings) as store:
        records = {r.host: r for r in await store.list()}
        assert {h: (r.stopped_at, r.is_up) for h, r in records.items()} == {
            "host-crash": (None, True),
            "host-abort": (None, True),
        }
        # They turn down only once service_down_time has passed since their last report.
        last = max(r.last_seen_up or r.created_at for r in records.values())
        down_time = timedelta(seconds=aiosvc_settings.service_down_time)
        cast(MemoryStore, store).now = lambda: last + down_time + timedelta(microseconds=1)
        assert [(r.is_up, r.stopped) for r in await store.list()] == [(False, False)] * 2


class UnmarkableStore:
    """Wraps a store whose ``mark_stopped`` fails as an unreachable database would, or hangs."""

    def __init__(self, inner: Any, failure: str) -> None:
        self.inner = inner
        self.failure = failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def mark_stopped(self, service_id: int) -> Any:
        if self.failure == "hangs":
            await anyio.sleep_forever()
        raise aiosvc.StoreError("database postgresql://x:***@db/x: connection refused")


@pytest.mark.parametrize(("failure", "reason"), [("refused", "refused"), ("hangs", "timed out")])
async def test_a_store_that_cannot_mark_the_stop_never_blocks_it(
    aiosvc_settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
    reason: str,
) -> None:
    monkeypatch.setattr(aiosvc.servicegroup, "LEAVE_TIMEOUT", 0.2)
    async with get_store(aiosvc_settings) as inner:
        store = UnmarkableStore(inner, failure)
        service = Service.create(Recorder, settings=aiosvc_settings, store=store)  # type: ignore[arg-type]
        await service.start()
        with caplog.at_level(logging.WARNING), anyio.fail_after(10):
            await service.stop()  # returns, and raises nothing
        record = await inner.get(service.host, service.binary)
        assert (record.stopped, record.is_up) == (False, True)  # left to age, like a crash
    lines = [
        r.getMessage() for r in caplog.records if "stopped in the service store" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    assert "\n" not in lines[0]
    assert lines[0].startswith("Could not mark aiosvc-recorder stopped in the service store: ")
    assert reason in lines[0]
    assert isinstance(service.manager, Recorder)
    assert service.manager.events[-1] == "cleanup_host"


async def test_reset_calls_the_manager(aiosvc_settings: Settings) -> None:
    async with Service.create(Recorder, settings=aiosvc_settings) as service:
        await service.reset()
        assert isinstance(service.manager, Recorder)
        assert "reset" in service.manager.events


async def test_periodic_tasks_run_and_stop_with_the_service(aiosvc_settings: Settings) -> None:
    clock = FakeClock()
    service = Service.create(Recorder, settings=aiosvc_settings, clock=clock)
    manager = service.manager
    assert isinstance(manager, Recorder)
    async with service:
        await clock.advance(0)
        assert manager.events.count("tick") == 1
        await clock.advance(25)
        assert manager.events.count("tick") == 3
    await clock.advance(100)
    assert manager.events.count("tick") == 3


async def test_periodic_enable_false_runs_no_task() -> None:
    settings = isolated_settings(periodic_enable=False)
    clock = FakeClock()
    service = Service.create(Recorder, settings=settings, clock=clock)
    async with service:
        await clock.advance(100)
    assert isinstance(service.manager, Recorder)
    assert "tick" not in service.manager.events


async def test_report_state_every_interval(aiosvc_settings: Settings) -> None:
    clock = FakeClock()
    service = Service.create(Recorder, settings=aiosvc_settings, clock=clock)
    async with service:
        assert service.store is not None
        await clock.advance(0)
        first = (await service.store.get(service.host, service.binary)).report_count
        await clock.advance(aiosvc_settings.report_interval * 3)
        now = (await service.store.get(service.host, service.binary)).report_count
        assert now == first + 3


async def test_report_interval_zero_turns_reporting_off() -> None:
    settings = isolated_settings(report_interval=0)
    clock = FakeClock()
    async with Service.create(Recorder, settings=settings, clock=clock) as service:
        await clock.advance(100)
        assert service.store is not None
        assert (await service.store.get(service.host, service.binary)).report_count == 0


class FlakyStore:
    """Wraps a store; ``down`` makes report() fail as an unreachable database would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def report(self, service_id: int, **kwargs: Any) -> Any:
        if self.down:
            raise aiosvc.StoreError("connection refused")
        return await self.inner.report(service_id, **kwargs)


async def test_store_outage_logged_once_and_recovery_once(
    aiosvc_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    inner = get_store(aiosvc_settings)
    await inner.connect()
    store = FlakyStore(inner)
    service = Service.create(Recorder, settings=aiosvc_settings, clock=clock, store=store)  # type: ignore[arg-type]
    try:
        async with service, aiosvc.connect(aiosvc_settings) as transport:
            await clock.advance(0)
            caplog.set_level(logging.INFO, logger="aiosvc.servicegroup")
            store.down = True
            await clock.advance(aiosvc_settings.report_interval * 5)
            # still serving while the store is down
            assert await aiosvc.RPCClient(transport, "recorder").call(None, "echo", value=1) == 1
            store.down = False
            await clock.advance(aiosvc_settings.report_interval * 2)
    finally:
        await inner.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    recoveries = [r for r in caplog.records if "Recovered" in r.getMessage()]
    assert len(errors) == 1
    assert "connection refused" in errors[0].getMessage()
    assert len(recoveries) == 1


async def test_disabled_service_leaves_the_shared_queue_to_others() -> None:
    settings = isolated_settings()
    clock = FakeClock()
    a = Service.create(Recorder, host="host-a", settings=settings, clock=clock)
    b = Service.create(Recorder, host="host-b", settings=settings, clock=clock)
    async with a, b, aiosvc.connect(settings) as transport, get_store(settings) as store:
        client = aiosvc.RPCClient(transport, "recorder")
        await store.update("host-a", "aiosvc-recorder", disabled=True, disabled_reason="maint")
        await clock.advance(settings.report_interval)  # a sees it at its next report
        hosts = {(await client.call(None, "whoami"))["host"] for _ in range(20)}
        assert hosts == {"host-b"}
        # a still answers on its own queue while disabled
        direct = await client.prepare(server="host-a").call(None, "whoami")
        assert direct["host"] == "host-a"
        await store.update("host-a", "aiosvc-recorder", disabled=False)
        await clock.advance(settings.report_interval)
        hosts = {(await client.call(None, "whoami"))["host"] for _ in range(20)}
        assert hosts == {"host-a", "host-b"}


async def test_service_disabled_before_start_never_takes_shared_work() -> None:
    settings = isolated_settings()
    async with Service.create(Recorder, host="host-a", settings=settings):
        pass
    async with get_store(settings) as store:
        await store.update("host-a", "aiosvc-recorder", disabled=True)
    async with (
        Service.create(Recorder, host="host-a", settings=settings),
        aiosvc.connect(settings) as transport,
    ):
        client = aiosvc.RPCClient(transport, "recorder", timeout=0.3)
        with pytest.raises(aiosvc.MessagingTimeout):
            await client.call(None, "whoami")


async def test_crashed_background_task_stops_the_service(
    aiosvc_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service.create(Recorder, settings=aiosvc_settings)

    async def crash(**kwargs: Any) -> None:
        raise RuntimeError("periodic runner broke")

    service.manager.periodic.run = crash  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        await service.start()
        with pytest.raises(RuntimeError, match="periodic runner broke"), anyio.fail_after(5):
            await service.wait()
    assert any("periodic runner broke" in r.getMessage() for r in caplog.records)
    assert isinstance(service.manager, Recorder)
    assert service.manager.events[-1] == "cleanup_host"


async def test_launch_returns_1_when_a_service_crashes(aiosvc_settings: Settings) -> None:
    service = Service.create(Recorder, settings=aiosvc_settings)

    async def crash(**kwargs: Any) -> None:
        raise RuntimeError("boom")

    service.manager.periodic.run = crash  # type: ignore[method-assign]
    with anyio.fail_after(5):
        assert await aiosvc.launch(service, handle_signals=False) == 1


async def test_transport_given_by_the_caller_is_not_closed(aiosvc_settings: Settings) -> None:
    transport = get_transport(aiosvc_settings)
    await transport.connect()
    try:
        async with Service.create(Recorder, settings=aiosvc_settings, transport=transport):
            pass
        # still usable: a new service on the same transport starts and answers
        async with Service.create(Recorder, settings=aiosvc_settings, transport=transport):
            client = aiosvc.RPCClient(transport, "recorder")
            assert await client.call(None, "echo", value="ok") == "ok"
    finally:
        await transport.close()


async def test_serve_in_your_own_task_group(aiosvc_settings: Settings) -> None:
    service = Service.create(Recorder, settings=aiosvc_settings)
    async with anyio.create_task_group() as tg:
        await tg.start(service.serve)  # returns once started
        assert service.started
        async with aiosvc.connect(aiosvc_settings) as transport:
            assert await aiosvc.RPCClient(transport, "recorder").call(None, "echo", value=7) == 7
        await service.stop()
    assert not service.started
    assert isinstance(service.manager, Recorder)
    assert service.manager.events[-1] == "cleanup_host"


@pytest.mark.parametrize(
    ("topic", "host"), [("#", "h"), ("volume.*", "h"), ("a b", "h"), ("", "h"), ("v", "h.#")]
)
def test_a_topic_or_host_that_would_bind_other_queues_is_refused(topic: str, host: str) -> None:
    """A shared queue bound by ``#`` on the topic exchange would take every message."""
    with pytest.raises(ConfigError, match="it names queues"):
        Service(Manager(), topic=topic, host=host, binary="aiosvc-x")
