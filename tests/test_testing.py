"""The test kit users get: FakeClock, wait_until, and the pytest plugin's fixtures."""

from __future__ import annotations

import anyio
import pytest

from aiosvc.testing import FakeClock, wait_until


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 30)
        tg.start_soon(sleeper, "early", 10)
        await clock.advance(5)
        assert woke == []
        await clock.advance(30)
    assert woke == [("early", 10), ("late", 30)]
    assert clock.now() == 35


async def test_fake_clock_runs_what_a_woken_task_schedules_within_the_window() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def every_ten() -> None:
        while True:
            await clock.sleep(10)
            ticks.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(every_ten)
        await clock.advance(45)
        tg.cancel_scope.cancel()
    assert ticks == [10, 20, 30, 40]


async def test_fake_clock_cannot_go_back() -> None:
    with pytest.raises(ValueError, match="back"):
        await FakeClock().advance(-1)


async def test_wait_until_returns_once_true_and_times_out_otherwise() -> None:
    box: list[int] = []

    async def fill() -> None:
        await anyio.sleep(0.05)
        box.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(fill)
        await wait_until(lambda: bool(box), timeout=2)

    def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match="never"):
        await wait_until(never, timeout=0.05)


def test_plugin_fixtures_start_and_stop_services(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import aiosvc
        from aiosvc import Context, Manager, periodic_task

        started = []

        class Counter(Manager):
            topic = "counter"

            def __init__(self, **kw):
                super().__init__(**kw)
                self.ticks = 0

            async def add(self, ctx: Context, a: int, b: int) -> int:
                return a + b

            @periodic_task(spacing=10, run_immediately=True)
            async def _tick(self, ctx):
                self.ticks += 1

        async def test_service_answers(aiosvc_service, aiosvc_settings, aiosvc_clock):
            service = await aiosvc_service(Counter, clock=aiosvc_clock)
            started.append(service)
            await aiosvc_clock.advance(25)
            assert service.manager.ticks == 3
            async with aiosvc.connect(aiosvc_settings) as transport:
                client = aiosvc.RPCClient(transport, "counter")
                assert await client.call(None, "add", a=2, b=3) == 5

        def test_service_was_stopped_after_the_test():
            assert started and not started[0].started

        async def test_each_test_gets_its_own_broker(aiosvc_settings):
            async with aiosvc.connect(aiosvc_settings) as transport:
                client = aiosvc.RPCClient(transport, "counter")
                try:
                    await client.call(None, "add", a=1, b=1)
                except aiosvc.MessageUndeliverable:
                    return
                raise AssertionError("saw another test's queue")
        """
    )
    result = pytester.runpytest(
        "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=3)
