"""``@periodic_task`` and the runner of periodic tasks.

The decorator only attaches a :class:`PeriodicSpec`; the method is returned unchanged, so
a unit test can still ``await manager.task(ctx)``.

Scheduling rules (DESIGN section 3, oslo.service then better):

* ``spacing`` in seconds; 0 (the default) means ``settings.periodic_interval``; a negative
  spacing or ``enabled=False`` turns the task off.
* The first run is immediate only with ``run_immediately=True``; otherwise it comes one
  spacing after the service starts, plus a random ``0..periodic_fuzzy_delay`` so a fleet
  restarted at once does not stampede.
* Drift-free: each run is scheduled at the previous *scheduled* start plus ``spacing``, so
  the time a run takes never shifts the phase. A run covers every slot up to the moment it
  started (a late run that starts exactly on a later slot serves that slot too). Slots that
  pass while it runs are skipped (logged), except the one it ends exactly on: it never
  bursts to catch up.
* Runs of one task never overlap; different tasks run concurrently, each a task of its own.
* An exception is logged with its traceback and the task keeps its schedule.
* Sync (``def``) tasks run in a worker thread, so they never block the event loop.

Time comes from the :class:`~aiosvc.clock.Clock` the manager was given, so tests drive
schedules with a fake one (:class:`aiosvc.testing.FakeClock`) instead of sleeping.

Nova: ``oslo_service.periodic_task`` and the dynamic looping call in ``nova.service``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio

from . import tracing
from .clock import Clock, MonotonicClock
from .context import Context, use_context
from .settings import Settings
from .tasks import as_async, cancel_requested

if TYPE_CHECKING:
    from .metrics import TaskMetrics

__all__ = [
    "PeriodicRunner",
    "PeriodicSpec",
    "PeriodicTask",
    "collect_periodic_specs",
    "periodic_task",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

SPEC_ATTR = "__aiosvc_periodic__"


@dataclass(frozen=True, slots=True)
class PeriodicSpec:
    """What ``@periodic_task`` attached to a method."""

    spacing: float = 0
    run_immediately: bool = False
    name: str | None = None
    enabled: bool = True


@overload
def periodic_task(func: F, /) -> F: ...
@overload
def periodic_task(
    *,
    spacing: float = 0,
    run_immediately: bool = False,
    name: str | None = None,
    enabled: bool = True,
) -> Callable[[F], F]: ...


def periodic_task(
    func: F | None = None,
    /,
    *,
    spacing: float = 0,
    run_immediately: bool = False,
    name: str | None = None,
    enabled: bool = True,
) -> F | Callable[[F], F]:
    """Mark a manager method as a periodic task: bare, or with options.

    ``@periodic_task`` runs every ``periodic_interval`` seconds;
    ``@periodic_task(spacing=N, run_immediately=True)`` every ``N`` seconds from start.
    The method takes ``(self, ctx)`` and may be ``async def`` or ``def``.

    Args:
        spacing: seconds between runs; 0 means ``periodic_interval``, negative disables.
        run_immediately: first run at service start instead of one spacing later.
        name: the name in logs and in ``periodic_tasks()``; defaults to the method's.
        enabled: ``False`` turns the task off (e.g. from a module-level flag).

    Raises:
        TypeError: an option has the wrong type.
    """
    if isinstance(spacing, bool) or not isinstance(spacing, int | float) or math.isnan(spacing):
        raise TypeError(f"periodic_task spacing must be a number of seconds, got {spacing!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"periodic_task name must be a non-empty string, got {name!r}")
    spec = PeriodicSpec(float(spacing), bool(run_immediately), name, bool(enabled))

    def decorate(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@periodic_task decorates a method, got {f!r}")
        setattr(f, SPEC_ATTR, spec)
        return f

    return decorate(func) if func is not None else decorate


def collect_periodic_specs(cls: type) -> dict[str, PeriodicSpec]:
    """The periodic tasks of ``cls`` by attribute name, parents' first.

    A subclass inherits its parents' tasks. Overriding the method keeps the task and
    its schedule (the override runs); decorating the override again changes the schedule,
    and ``@periodic_task(enabled=False)`` turns it off.
    """
    specs: dict[str, PeriodicSpec] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            spec = getattr(value, SPEC_ATTR, None)
            if isinstance(spec, PeriodicSpec):
                specs[attr] = spec
    return specs


@dataclass(eq=False)
class PeriodicTask:
    """One task bound to its manager, with its schedule and counters."""

    name: str
    spacing: float
    run_immediately: bool
    func: Callable[[Context], Awaitable[Any]]
    next_run: float | None = None
    runs: int = 0
    failures: int = 0
    missed: int = 0
    last_duration: float | None = None
    metrics: TaskMetrics | None = field(default=None, repr=False)
    """Where its runs are counted, when the service has metrics on."""
    traced: bool = field(default=False, repr=False)
    """Whether each run is an OpenTelemetry span (the ``tracing`` setting)."""
    _lock: anyio.Lock = field(default_factory=anyio.Lock, repr=False)

    def schedule_first(self, now: float, fuzzy_delay: float = 0.0) -> None:
        """Set the first run: now, or one spacing (plus up to ``fuzzy_delay``) from now."""
        if self.run_immediately:
            self.next_run = now
        else:
            self.next_run = now + self.spacing + random.uniform(0, fuzzy_delay)

    def advance(self, started: float, ended: float) -> int:
        """Move to the next slot after a run from ``started`` to ``ended``.

        The run covers every slot up to ``started``: one that started late, exactly on a
        later slot, served that slot too. Slots that passed while it ran are skipped,
        except one it ended exactly on. Returns how many slots were skipped that way.
        """
        assert self.next_run is not None
        spacing = self.spacing
        nxt = self.next_run + spacing
        if nxt <= started:
            nxt += (math.floor((started - nxt) / spacing) + 1) * spacing
        skipped = 0
        if ended > nxt:
            skipped = math.ceil((ended - nxt) / spacing)
            nxt += skipped * spacing
        self.next_run = nxt
        self.missed += skipped
        return skipped

    async def run_once(self, clock: Clock, *, raise_on_error: bool = False) -> bool:
        """Run the task now, never alongside another run of itself; True if it succeeded."""
        async with self._lock:
            started = clock.now()
            runs, failures = self.runs, self.failures
            ctx = Context.admin()
            try:
                with use_context(ctx), tracing.periodic_run(self.traced, self.name, ctx):
                    log.debug("Running periodic task %s", self.name)
                    await self.func(ctx)
                self.runs += 1
                return True
            except (Exception, anyio.get_cancelled_exc_class()) as exc:
                if not isinstance(exc, Exception) and cancel_requested():
                    raise  # a real cancellation: the service is stopping
                # Anything else is a failure of this run, a CancelledError the task raised
                # itself included (it awaited a future someone cancelled): let through, it
                # would end the runner's task group, and so every task, without a word.
                self.runs += 1
                self.failures += 1
                if raise_on_error:
                    raise
                with use_context(ctx):
                    log.exception("Error during periodic task %s", self.name)
                return False
            finally:
                self.last_duration = clock.now() - started
                if self.metrics is not None and self.runs != runs:
                    self.metrics.ran(self.last_duration, failed=self.failures != failures)

    async def run_slot(self, clock: Clock, *, raise_on_error: bool = False) -> None:
        """Run the task for its due slot, then move its schedule on (see :meth:`advance`).

        Even when the error is re-raised, the task has had its run for this slot (oslo
        moves ``last_run`` before running): it is not due again at once.
        """
        started = clock.now()
        if self.metrics is not None and self.next_run is not None:
            self.metrics.late(started - self.next_run)
        try:
            await self.run_once(clock, raise_on_error=raise_on_error)
        finally:
            skipped = self.advance(started, clock.now())
            if skipped:
                log.warning(
                    "Periodic task %s skipped %d run(s): its run took %.3fs, its spacing is %.3fs",
                    self.name,
                    skipped,
                    self.last_duration or 0.0,
                    self.spacing,
                )


class PeriodicRunner:
    """Runs the periodic tasks of one manager.

    Args:
        owner: the manager whose decorated methods are the tasks.
        settings: gives ``periodic_interval`` (spacing 0) and ``periodic_fuzzy_delay``.
        clock: time source; the event loop's monotonic clock by default.
    """

    def __init__(self, owner: object, settings: Settings, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.settings = settings
        self.tasks: list[PeriodicTask] = []
        owner_name = type(owner).__name__
        for attr, spec in collect_periodic_specs(type(owner)).items():
            name = f"{owner_name}.{spec.name or attr}"
            if not spec.enabled:
                log.info("Skipping periodic task %s because it is disabled", name)
                continue
            if spec.spacing < 0:
                log.info("Skipping periodic task %s because its interval is negative", name)
                continue
            if any(t.name == name for t in self.tasks):
                raise TypeError(f"two periodic tasks of {owner_name} are named {name!r}")
            self.tasks.append(
                PeriodicTask(
                    name=name,
                    spacing=spec.spacing or settings.periodic_interval,
                    run_immediately=spec.run_immediately,
                    func=as_async(getattr(owner, attr)),
                    traced=settings.tracing,
                )
            )
        self._stopping = False
        self._sleep_scopes: dict[PeriodicTask, anyio.CancelScope] = {}

    def _schedule(self, fuzzy_delay: float) -> None:
        now = self.clock.now()
        for task in self.tasks:
            if task.next_run is None:
                task.schedule_first(now, fuzzy_delay)

    async def run_due(self, *, raise_on_error: bool = False) -> float:
        """Run every task that is due, once each, in order; seconds until the next is due.

        Nova: ``Manager.periodic_tasks`` / ``run_periodic_tasks``. The returned value is
        oslo's ``idle_for`` without its cap: oslo never returns more than 60 s
        (``DEFAULT_INTERVAL``), this returns the real wait, however long. Without tasks it
        returns ``periodic_interval``.
        """
        self._schedule(fuzzy_delay=0.0)
        for task in self.tasks:
            assert task.next_run is not None
            if task.next_run <= self.clock.now():
                await task.run_slot(self.clock, raise_on_error=raise_on_error)
        if not self.tasks:
            return self.settings.periodic_interval
        now = self.clock.now()
        return max(0.0, min(t.next_run or now for t in self.tasks) - now)

    async def run(self, *, fuzzy: bool = True) -> None:
        """Run every task on its own schedule until :meth:`stop` (or cancellation)."""
        self._schedule(self.settings.periodic_fuzzy_delay if fuzzy else 0.0)
        async with anyio.create_task_group() as tg:
            for task in self.tasks:
                tg.start_soon(self._loop, task, name=f"periodic {task.name}")

    async def _loop(self, task: PeriodicTask) -> None:
        while not self._stopping:
            assert task.next_run is not None
            with anyio.CancelScope() as scope:
                self._sleep_scopes[task] = scope
                await self.clock.sleep_until(task.next_run)
            self._sleep_scopes.pop(task, None)
            if self._stopping:
                return
            await task.run_slot(self.clock)

    def stop(self) -> None:
        """Start no new runs; tasks sleeping until their next run end now.

        Runs in progress finish; :meth:`run` returns when they have.
        """
        self._stopping = True
        for scope in list(self._sleep_scopes.values()):
            scope.cancel()
