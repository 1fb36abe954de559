"""``@periodic_task`` and the runner: what gets scheduled, when it runs, what a failure does.

Schedules are driven by :class:`aiosvc.testing.FakeClock`, so "30 seconds later" takes no
time and every start time is exact. Two tests marked ``slow`` check the same promises on
the real monotonic clock, with only what a loaded machine cannot break: times read from
the clock the runner uses, and bounds with plenty of slack.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aiosvc import Context, Manager, periodic_task
from aiosvc.clock import MonotonicClock
from aiosvc.context import current_context
from aiosvc.periodic import PeriodicRunner, PeriodicSpec, collect_periodic_specs
from aiosvc.testing import FakeClock, isolated_settings, wait_until


class Recorder(Manager):
    """A manager that notes when each of its tasks started."""

    topic = "recorder"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("settings", isolated_settings())
        super().__init__(**kwargs)
        self.starts: dict[str, list[float]] = {}

    def note(self, name: str) -> None:
        self.starts.setdefault(name, []).append(self.periodic.clock.now())


def make(cls: type[Recorder], clock: FakeClock, **settings: Any) -> Recorder:
    return cls(settings=isolated_settings(**settings), clock=clock)


async def run_for(
    manager: Manager, clock: FakeClock, seconds: float, *, fuzzy: bool = False, drain: float = 0
) -> None:
    """Run the manager's periodic tasks for ``seconds`` of fake time, then stop them.

    A run still in progress at the end finishes after ``drain`` more seconds.
    """
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: manager.periodic.run(fuzzy=fuzzy))
            await clock.advance(seconds)
            manager.periodic.stop()
            await clock.advance(drain)


def task_names(manager: Manager) -> list[str]:
    return [t.name for t in manager.periodic.tasks]


# -- the decorator


async def test_bare_decorator_returns_the_function_still_awaitable() -> None:
    async def poll(self: Any, ctx: Context) -> str:
        return "polled"

    assert periodic_task(poll) is poll
    assert await poll(None, Context.admin()) == "polled"


async def test_decorator_with_options_returns_the_function() -> None:
    async def poll(self: Any, ctx: Context) -> str:
        return "polled"

    assert periodic_task(spacing=5, run_immediately=True, name="p")(poll) is poll
    assert await poll(None, Context.admin()) == "polled"


async def test_decorated_method_can_be_called_on_the_manager() -> None:
    class M(Recorder):
        @periodic_task(spacing=10)
        async def _sync_power_states(self, ctx: Context) -> int:
            return 42

    assert await M()._sync_power_states(Context.admin()) == 42


def test_options_are_recorded() -> None:
    class M(Manager):
        @periodic_task
        async def _a(self, ctx: Context) -> None: ...

        @periodic_task(spacing=2.5, run_immediately=True, name="bee", enabled=False)
        async def _b(self, ctx: Context) -> None: ...

    specs = collect_periodic_specs(M)
    assert specs == {
        "_a": PeriodicSpec(spacing=0, run_immediately=False, name=None, enabled=True),
        "_b": PeriodicSpec(spacing=2.5, run_immediately=True, name="bee", enabled=False),
    }


@pytest.mark.parametrize("spacing", ["10", None, True, math.nan, [10]])
def test_bad_spacing_type_is_a_type_error(spacing: Any) -> None:
    with pytest.raises(TypeError, match="spacing"):
        periodic_task(spacing=spacing)


@pytest.mark.parametrize("name", ["", 5])
def test_bad_name_is_a_type_error(name: Any) -> None:
    with pytest.raises(TypeError, match="name"):
        periodic_task(name=name)


def test_spacing_given_positionally_is_a_clear_type_error() -> None:
    # @periodic_task(30) is a likely slip; it must fail at import time, not run hourly.
    with pytest.raises(TypeError, match="decorates a method"):
        periodic_task(30)  # type: ignore[call-overload]


# -- what gets scheduled


def test_spacing_zero_means_periodic_interval() -> None:
    class M(Recorder):
        @periodic_task
        async def _bare(self, ctx: Context) -> None: ...

        @periodic_task(spacing=0)
        async def _zero(self, ctx: Context) -> None: ...

    manager = M(settings=isolated_settings(periodic_interval=42))
    assert [t.spacing for t in manager.periodic.tasks] == [42, 42]


def test_negative_spacing_and_disabled_are_not_scheduled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class M(Recorder):
        @periodic_task(spacing=-1)
        async def _negative(self, ctx: Context) -> None: ...

        @periodic_task(spacing=10, enabled=False)
        async def _disabled(self, ctx: Context) -> None: ...

        @periodic_task(spacing=10)
        async def _kept(self, ctx: Context) -> None: ...

    with caplog.at_level(logging.INFO, logger="aiosvc.periodic"):
        manager = M()
        assert task_names(manager) == ["M._kept"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("M._negative" in m and "negative" in m for m in messages)
    assert any("M._disabled" in m and "disabled" in m for m in messages)


def test_name_overrides_the_method_name() -> None:
    class M(Recorder):
        @periodic_task(spacing=10, name="sync_power_states")
        async def _sync(self, ctx: Context) -> None: ...

    assert task_names(M()) == ["M.sync_power_states"]


def test_two_tasks_with_one_name_are_refused() -> None:
    class M(Recorder):
        @periodic_task(spacing=10, name="same")
        async def _a(self, ctx: Context) -> None: ...

        @periodic_task(spacing=20, name="same")
        async def _b(self, ctx: Context) -> None: ...

    with pytest.raises(TypeError, match="same"):
        _ = M().periodic


# -- inheritance


class Parent(Recorder):
    @periodic_task(spacing=10, run_immediately=True)
    async def _poll(self, ctx: Context) -> None:
        self.note("parent poll")

    @periodic_task(spacing=20, run_immediately=True)
    async def _audit(self, ctx: Context) -> None:
        self.note("audit")


class InheritsAll(Parent):
    @periodic_task(spacing=30, run_immediately=True)
    async def _own(self, ctx: Context) -> None:
        self.note("own")


class OverridesWithoutDecorator(Parent):
    async def _poll(self, ctx: Context) -> None:
        self.note("child poll")


class RedecoratesFaster(Parent):
    @periodic_task(spacing=5, run_immediately=True)
    async def _poll(self, ctx: Context) -> None:
        self.note("fast poll")


class DisablesAudit(Parent):
    @periodic_task(enabled=False)
    async def _audit(self, ctx: Context) -> None:
        self.note("audit")


async def test_parent_tasks_are_inherited(aiosvc_clock: FakeClock) -> None:
    manager = make(InheritsAll, aiosvc_clock)
    assert task_names(manager) == ["InheritsAll._poll", "InheritsAll._audit", "InheritsAll._own"]
    await run_for(manager, aiosvc_clock, 30)
    assert manager.starts == {
        "parent poll": [0, 10, 20, 30],
        "audit": [0, 20],
        "own": [0, 30],
    }


async def test_override_without_decorator_keeps_the_schedule_and_runs_the_override(
    aiosvc_clock: FakeClock,
) -> None:
    manager = make(OverridesWithoutDecorator, aiosvc_clock)
    await run_for(manager, aiosvc_clock, 20)
    assert manager.starts["child poll"] == [0, 10, 20]
    assert "parent poll" not in manager.starts


async def test_redecorated_override_changes_the_spacing(aiosvc_clock: FakeClock) -> None:
    manager = make(RedecoratesFaster, aiosvc_clock)
    assert len(manager.periodic.tasks) == 2  # replaced, not added
    await run_for(manager, aiosvc_clock, 20)
    assert manager.starts["fast poll"] == [0, 5, 10, 15, 20]
    assert "parent poll" not in manager.starts


async def test_override_with_enabled_false_disables(aiosvc_clock: FakeClock) -> None:
    manager = make(DisablesAudit, aiosvc_clock)
    assert task_names(manager) == ["DisablesAudit._poll"]
    await run_for(manager, aiosvc_clock, 40)
    assert "audit" not in manager.starts


def test_parent_schedule_unchanged_by_a_subclass() -> None:
    assert [t.spacing for t in Parent().periodic.tasks] == [10, 20]


# -- when tasks run (fake clock)


class Immediate(Recorder):
    @periodic_task(spacing=10, run_immediately=True)
    async def _now(self, ctx: Context) -> None:
        self.note("now")


class Later(Recorder):
    @periodic_task(spacing=10)
    async def _later(self, ctx: Context) -> None:
        self.note("later")


class Both(Immediate, Later):
    pass


async def test_run_immediately_runs_at_start(aiosvc_clock: FakeClock) -> None:
    manager = make(Immediate, aiosvc_clock)
    await run_for(manager, aiosvc_clock, 25)
    assert manager.starts["now"] == [0, 10, 20]


async def test_first_run_waits_one_spacing(aiosvc_clock: FakeClock) -> None:
    manager = make(Later, aiosvc_clock)
    await run_for(manager, aiosvc_clock, 9.999)
    assert "later" not in manager.starts
    clock = FakeClock()
    manager = make(Later, clock)
    await run_for(manager, clock, 25)
    assert manager.starts["later"] == [10, 20]


async def test_fuzzy_delay_applies_only_to_tasks_that_wait(
    aiosvc_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds: list[tuple[float, float]] = []

    def highest(a: float, b: float) -> float:
        bounds.append((a, b))
        return b

    monkeypatch.setattr(random, "uniform", highest)
    manager = make(Both, aiosvc_clock, periodic_fuzzy_delay=30)
    await run_for(manager, aiosvc_clock, 60, fuzzy=True)
    assert manager.starts["now"] == [0, 10, 20, 30, 40, 50, 60]  # no delay
    assert manager.starts["later"] == [40, 50, 60]  # spacing + the whole fuzzy delay
    assert bounds == [(0, 30)]


async def test_fuzzy_first_run_stays_within_its_bound() -> None:
    for _ in range(20):
        clock = FakeClock()
        manager = make(Later, clock, periodic_fuzzy_delay=30)
        await run_for(manager, clock, 60, fuzzy=True)
        starts = manager.starts["later"]
        assert 10 <= starts[0] <= 40
        assert len(starts) >= 3
        assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx(
            [10] * (len(starts) - 1)
        )


async def test_no_fuzzy_delay_when_set_to_zero(aiosvc_clock: FakeClock) -> None:
    manager = make(Later, aiosvc_clock, periodic_fuzzy_delay=0)
    await run_for(manager, aiosvc_clock, 10, fuzzy=True)
    assert manager.starts["later"] == [10]


async def test_schedule_is_drift_free_over_many_runs(aiosvc_clock: FakeClock) -> None:
    class Busy(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _busy(self, ctx: Context) -> None:
            self.note("busy")
            await self.periodic.clock.sleep(3)  # type: ignore[attr-defined]

    manager = make(Busy, aiosvc_clock)
    await run_for(manager, aiosvc_clock, 1000, drain=3)
    # Start to start, from the *scheduled* start: the 3 s of each run never add up.
    assert manager.starts["busy"] == [10.0 * i for i in range(101)]
    assert manager.periodic.tasks[0].missed == 0


async def test_long_run_never_overlaps_and_skips_missed_slots(
    aiosvc_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    active = 0
    most = 0

    class Slow(Recorder):
        @periodic_task(spacing=10)
        async def _slow(self, ctx: Context) -> None:
            nonlocal active, most
            active += 1
            most = max(most, active)
            self.note("slow")
            await self.periodic.clock.sleep(25)  # type: ignore[attr-defined]
            active -= 1

    manager = make(Slow, aiosvc_clock)
    with caplog.at_level(logging.WARNING, logger="aiosvc.periodic"):
        await run_for(manager, aiosvc_clock, 95)
    # 10..35 covers slots 20 and 30 (skipped); next at 40; 40..65 -> 70; 70..95 -> 100.
    assert manager.starts["slow"] == [10, 40, 70]
    assert most == 1
    task = manager.periodic.tasks[0]
    assert task.missed == 6
    assert task.runs == 3
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert (
        skips
        == [
            "Periodic task Slow._slow skipped 2 run(s): its run took 25.000s, "
            "its spacing is 10.000s"
        ]
        * 3
    )


async def test_run_ending_on_a_slot_starts_that_slot(aiosvc_clock: FakeClock) -> None:
    class Exact(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _exact(self, ctx: Context) -> None:
            self.note("exact")
            await self.periodic.clock.sleep(20)  # type: ignore[attr-defined]

    manager = make(Exact, aiosvc_clock)
    await run_for(manager, aiosvc_clock, 40, drain=20)
    assert manager.starts["exact"] == [0, 20, 40]
    assert manager.periodic.tasks[0].missed == 3  # slots 10, 30 and 50


class LateWake(FakeClock):
    """A fake clock that wakes a sleeper late for the deadlines in ``late``, as a loaded
    machine's event loop does: the run for that slot starts late."""

    def __init__(self, late: dict[float, float]) -> None:
        super().__init__()
        self.late = late

    async def sleep_until(self, deadline: float) -> None:
        await super().sleep_until(deadline + self.late.pop(deadline, 0.0))


@pytest.mark.parametrize(
    ("late", "starts"),
    [
        (7, [0, 17, 20, 30, 40]),  # slot 10 runs at 17; slot 20 still runs on time
        (25, [0, 35, 40]),  # slot 10 runs at 35, which covers slots 20 and 30
    ],
)
async def test_a_late_run_keeps_the_phase_and_never_bursts(
    late: float, starts: list[float]
) -> None:
    # Two runs may be closer than a spacing (17 -> 20), so a real-clock test must not
    # assert a minimum gap; but no slot runs twice and missed slots are never made up.
    clock = LateWake({10.0: late})
    manager = make(Immediate, clock)
    await run_for(manager, clock, 40)
    assert manager.starts["now"] == starts
    assert manager.periodic.tasks[0].failures == 0


async def test_exception_is_logged_with_traceback_and_schedule_kept(
    aiosvc_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(Recorder):
        @periodic_task(spacing=10, run_immediately=True, name="flaky_poll")
        async def _fail(self, ctx: Context) -> None:
            self.note("fail")
            raise RuntimeError("hypervisor went away")

        @periodic_task(spacing=10, run_immediately=True)
        async def _fine(self, ctx: Context) -> None:
            self.note("fine")

    manager = make(Failing, aiosvc_clock)
    with caplog.at_level(logging.ERROR, logger="aiosvc.periodic"):
        await run_for(manager, aiosvc_clock, 30)
    assert manager.starts["fail"] == [0, 10, 20, 30]
    assert manager.starts["fine"] == [0, 10, 20, 30]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    for record in errors:
        assert "Failing.flaky_poll" in record.getMessage()
        assert record.exc_info is not None
        assert record.exc_info[0] is RuntimeError
    assert "hypervisor went away" in caplog.text
    assert "Traceback" in caplog.text
    task = manager.periodic.tasks[0]
    assert (task.runs, task.failures) == (4, 4)


async def test_stray_cancelled_error_is_a_failure_not_the_end_of_all_tasks(
    aiosvc_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Stray(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _stray(self, ctx: Context) -> None:
            self.note("stray")
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # CancelledError, though nobody cancelled this task

        @periodic_task(spacing=10, run_immediately=True)
        async def _other(self, ctx: Context) -> None:
            self.note("other")

    manager = make(Stray, aiosvc_clock)
    with caplog.at_level(logging.ERROR, logger="aiosvc.periodic"):
        await run_for(manager, aiosvc_clock, 20)
    assert manager.starts == {"stray": [0, 10, 20], "other": [0, 10, 20]}
    assert manager.periodic.tasks[0].failures == 3
    assert "Error during periodic task Stray._stray" in caplog.text


async def test_cancelling_the_runner_interrupts_a_run_in_progress(
    aiosvc_clock: FakeClock,
) -> None:
    interrupted: list[bool] = []

    class Stuck(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _stuck(self, ctx: Context) -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                interrupted.append(True)
                raise

    manager = make(Stuck, aiosvc_clock)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: manager.periodic.run(fuzzy=False))
            await aiosvc_clock.advance(1)
            tg.cancel_scope.cancel()
    assert interrupted == [True]
    assert manager.periodic.tasks[0].failures == 0


async def test_sync_task_failure_is_logged_and_schedule_kept(
    aiosvc_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class SyncFailing(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        def _sync_fail(self, ctx: Context) -> None:
            raise OSError("disk full")

    manager = make(SyncFailing, aiosvc_clock)
    with caplog.at_level(logging.ERROR, logger="aiosvc.periodic"):
        await manager.periodic_tasks()
        await aiosvc_clock.advance(10)
        await manager.periodic_tasks()
    assert manager.periodic.tasks[0].failures == 2
    assert caplog.text.count("OSError: disk full") == 2


async def test_each_run_gets_an_admin_context_as_the_current_one(
    aiosvc_clock: FakeClock,
) -> None:
    seen: list[Context] = []

    class Ctx(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _ctx(self, ctx: Context) -> None:
            assert current_context.get() is ctx  # log lines carry its request id
            seen.append(ctx)

    await run_for(make(Ctx, aiosvc_clock), aiosvc_clock, 10)
    assert len(seen) == 2
    assert all(c.is_admin for c in seen)
    assert seen[0].request_id != seen[1].request_id


async def test_stop_lets_the_run_in_progress_finish_and_starts_no_more(
    aiosvc_clock: FakeClock,
) -> None:
    finished: list[float] = []

    class Long(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _long(self, ctx: Context) -> None:
            self.note("long")
            await self.periodic.clock.sleep(5)  # type: ignore[attr-defined]
            finished.append(self.periodic.clock.now())

    manager = make(Long, aiosvc_clock)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: manager.periodic.run(fuzzy=False))
            await aiosvc_clock.advance(2)
            manager.periodic.stop()
            await aiosvc_clock.advance(30)
    assert manager.starts["long"] == [0]
    assert finished == [5]


# -- sync tasks


async def test_sync_task_runs_in_a_worker_thread_without_blocking_the_loop() -> None:
    entered = threading.Event()
    release = threading.Event()
    threads: list[threading.Thread] = []

    class Sync(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        def _blocking(self, ctx: Context) -> None:
            threads.append(threading.current_thread())
            entered.set()
            if not release.wait(timeout=5):  # blocks its thread, and only that
                raise AssertionError("the event loop never got to release the task")

    manager = Sync()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.periodic_tasks)
            # If the task blocked the loop, this coroutine could not run at all.
            await anyio.to_thread.run_sync(entered.wait, 5)
            await anyio.lowlevel.checkpoint()
            release.set()
    assert threads
    assert threads[0] is not threading.main_thread()
    assert manager.periodic.tasks[0].failures == 0
    assert manager.periodic.tasks[0].runs == 1


# -- Manager.periodic_tasks(): run what is due once, say how long to idle


async def test_periodic_tasks_runs_due_tasks_once_and_returns_idle_time(
    aiosvc_clock: FakeClock,
) -> None:
    class Two(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _ten(self, ctx: Context) -> None:
            self.note("ten")

        @periodic_task(spacing=25)
        async def _twenty_five(self, ctx: Context) -> None:
            self.note("twenty-five")

    manager = make(Two, aiosvc_clock)
    assert await manager.periodic_tasks(Context.admin()) == 10
    assert manager.starts == {"ten": [0]}
    assert await manager.periodic_tasks() == 10  # nothing due: nothing runs again
    assert manager.starts == {"ten": [0]}

    await aiosvc_clock.advance(4)
    assert await manager.periodic_tasks() == 6

    await aiosvc_clock.advance(6)
    assert await manager.periodic_tasks() == 10  # ran "ten" at 10; next 20
    await aiosvc_clock.advance(15)
    assert await manager.periodic_tasks() == 5  # ran both at 25; "ten" next at 30
    assert manager.starts == {"ten": [0, 10, 25], "twenty-five": [25]}


async def test_periodic_tasks_without_tasks_returns_periodic_interval() -> None:
    class Empty(Recorder):
        pass

    manager = Empty(settings=isolated_settings(periodic_interval=45))
    assert await manager.periodic_tasks() == 45


async def test_periodic_tasks_logs_errors_by_default(
    aiosvc_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Bad(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _bad(self, ctx: Context) -> None:
            raise ValueError("bad value")

        @periodic_task(spacing=10, run_immediately=True)
        async def _after(self, ctx: Context) -> None:
            self.note("after")

    manager = make(Bad, aiosvc_clock)
    with caplog.at_level(logging.ERROR):
        assert await manager.periodic_tasks() == 10
    assert manager.starts == {"after": [0]}  # the failure did not stop the pass
    assert "bad value" in caplog.text


async def test_periodic_tasks_raise_on_error_reraises(aiosvc_clock: FakeClock) -> None:
    runs: list[float] = []

    class Bad(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        async def _bad(self, ctx: Context) -> None:
            runs.append(self.periodic.clock.now())
            raise ValueError("bad value")

    manager = make(Bad, aiosvc_clock)
    with pytest.raises(ValueError, match="bad value"):
        await manager.periodic_tasks(raise_on_error=True)
    # The failed run was this slot's run: the task is not due again until the next one.
    assert await manager.periodic_tasks(raise_on_error=True) == 10
    assert runs == [0]
    await aiosvc_clock.advance(10)
    with pytest.raises(ValueError, match="bad value"):
        await manager.periodic_tasks(raise_on_error=True)
    assert runs == [0, 10]


class EverySeven(Recorder):
    """oslo's example: spacing 7, first run at 10."""

    takes = 0.0

    @periodic_task(spacing=7, run_immediately=True)
    async def _seven(self, ctx: Context) -> None:
        self.note("seven")
        await self.periodic.clock.sleep(self.takes)  # type: ignore[attr-defined]


async def test_a_late_pass_exactly_on_a_slot_runs_the_task_once() -> None:
    # Last run at 10, so slot 17 is due; the pass comes late, at 24, exactly on the next
    # slot. The run that starts at 24 covers slot 24 too: the next pass at the same
    # instant runs nothing, and the task is next due at 31 (as in oslo).
    clock = FakeClock(start=10)
    manager = make(EverySeven, clock)
    assert await manager.periodic_tasks() == 7
    await clock.advance(14)
    assert await manager.periodic_tasks() == 7
    assert await manager.periodic_tasks() == 7
    assert manager.starts == {"seven": [10, 24]}
    assert manager.periodic.tasks[0].missed == 0


async def test_a_run_that_ends_on_a_slot_does_not_cover_it() -> None:
    # The run for slot 17 starts at 17 and ends at 24: slot 24 began while it ran, so it
    # is still due, and the pass at 24 runs it.
    clock = FakeClock(start=10)
    manager = make(EverySeven, clock)
    await manager.periodic_tasks()
    await clock.advance(7)
    manager.takes = 7
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.periodic_tasks)
        await clock.advance(7)
    assert clock.now() == 24
    manager.takes = 0
    assert await manager.periodic_tasks() == 7
    assert manager.starts == {"seven": [10, 17, 24]}


# -- the real clock (acceptance)
#
# The exact schedule is asserted above on the fake clock. On the real clock a loaded machine
# (CI shares two cores with RabbitMQ and PostgreSQL) may start any run late, and a late run
# then serves its slot closer than a spacing to the next one. So these tests read times from
# the clock the runner itself uses and assert only what lateness cannot break: each run
# serves a slot of the original grid (the phase), never before that slot, never two runs
# for one slot, never overlapping; and "enough runs" with a generous deadline.

SPACING = 0.2
#: For the event loop waking a timer up to its clock resolution early, and float sums.
EPSILON = 1e-3


class RealTimeSample(Manager):
    """Notes, for each run of a 0.2 s task whose body takes a little time, its start and
    the slot it serves, both on the runner's clock (the event loop's)."""

    topic = "realtime"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runs: list[tuple[float, float]] = []
        self.active = 0
        self.most = 0

    @periodic_task(spacing=SPACING, run_immediately=True)
    async def _tick(self, ctx: Context) -> None:
        (task,) = self.periodic.tasks
        assert task.next_run is not None  # the slot this run serves, until it ends
        self.runs.append((self.periodic.clock.now(), task.next_run))
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            # Work inside the run: a scheduler that slept `spacing` after each run would
            # put the next slot 0.03 s (and more, under load) off the grid.
            await anyio.sleep(0.03)
        finally:
            self.active -= 1


def assert_on_the_grid(runs: list[tuple[float, float]], begun: float, *, step: int) -> None:
    """Each run serves a slot ``step`` or more spacings after the last, on the grid of the
    first slot (not after), and starts no earlier than that slot."""
    first_slot = runs[0][1]
    assert first_slot >= begun - EPSILON
    for start, slot in runs:
        assert start >= slot - EPSILON, (start, slot)
        phase = (slot - first_slot) / SPACING
        assert phase == pytest.approx(round(phase), abs=EPSILON), runs
    slots = [slot for _, slot in runs]
    gaps = [round((b - a) / SPACING) for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= step, runs


@pytest.mark.slow
async def test_real_clock_schedule_keeps_its_phase_without_bursts(
    aiosvc_service: Callable[..., Any],
) -> None:
    begun = MonotonicClock().now()  # the runner's clock: the event loop's
    service = await aiosvc_service(RealTimeSample)
    manager: RealTimeSample = service.manager
    # 20 runs take 3.8 s on an idle machine; the deadline is for a loaded one.
    await wait_until(lambda: len(manager.runs) >= 20, timeout=60)
    runs = list(manager.runs)
    now = manager.periodic.clock.now()
    assert manager.most == 1  # never overlapping
    assert_on_the_grid(runs, begun, step=1)
    # No burst: no more runs than slots since the service started.
    assert len(runs) <= (now - begun) / SPACING + 1 + EPSILON


@pytest.mark.slow
async def test_real_clock_long_runs_never_overlap() -> None:
    duration = 0.3  # longer than the spacing: every run covers the next slot
    active = 0
    most = 0
    runs: list[tuple[float, float]] = []
    ends: list[float] = []

    class Overrunning(Manager):
        topic = "overrun"

        @periodic_task(spacing=SPACING, run_immediately=True)
        async def _overrun(self, ctx: Context) -> None:
            nonlocal active, most
            active += 1
            most = max(most, active)
            (task,) = runner.tasks
            assert task.next_run is not None
            runs.append((runner.clock.now(), task.next_run))
            try:
                await anyio.sleep(duration)
            finally:
                active -= 1
                ends.append(runner.clock.now())

    manager = Overrunning(settings=isolated_settings())
    runner = PeriodicRunner(manager, manager.settings, MonotonicClock())
    begun = runner.clock.now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        # 5 runs take 1.9 s on an idle machine; the deadline is for a loaded one.
        await wait_until(lambda: len(runs) >= 5, timeout=60)
        runner.stop()
    assert most == 1
    assert len(ends) == len(runs)  # stop() let the run in progress finish
    # Each run starts after the one before ended.
    assert all(start >= end - EPSILON for (start, _), end in zip(runs[1:], ends, strict=False))
    # Each overrun skips the slot it covered: the next run serves a slot two or more later.
    assert_on_the_grid(runs, begun, step=2)
    assert runner.tasks[0].missed >= len(runs)
