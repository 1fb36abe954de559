"""Running a manager's periodic tasks now, whatever their schedule: :func:`run_periodic_tasks`.

``Manager.periodic_tasks()`` runs only the tasks that are due (Nova's behaviour). A test
usually wants to see what a task does without waiting for it to fall due, or without
moving a :class:`~aiosvc.testing.FakeClock`; this runs each task once, at once.
"""

from __future__ import annotations

from ..manager import Manager
from ..service import Service

__all__ = ["run_periodic_tasks"]


async def run_periodic_tasks(
    target: Service | Manager, *names: str, raise_on_error: bool = True
) -> list[str]:
    """Run the periodic tasks of a manager (or a service's manager) once each, now, in order.

    The tasks' schedules do not change: this run comes on top of the scheduled ones, and
    never alongside another run of the same task (it waits for one in progress). Works
    whether or not the service runs its periodic tasks (``periodic_enable``).

    Args:
        target: a :class:`~aiosvc.Service` or a :class:`~aiosvc.Manager`.
        names: run only these tasks, named by method (``"_publish_stats"``), by their
            ``@periodic_task(name=...)``, or in full (``"VolumeManager._publish_stats"``).
        raise_on_error: re-raise a task's exception (the default: a failing task fails
            the test); with False it is logged, as a scheduled run's would be.

    Returns:
        The full names of the tasks that ran.

    Raises:
        LookupError: a name matches no periodic task of the manager.
        Exception: the first task that raised, with ``raise_on_error``.
    """
    manager = target.manager if isinstance(target, Service) else target
    tasks = manager.periodic.tasks
    if names:
        known = {alias: task for task in tasks for alias in (task.name, _short(task.name))}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise LookupError(
                f"{type(manager).__name__} has no periodic task {', '.join(map(repr, unknown))}; "
                f"it has {', '.join(repr(_short(t.name)) for t in tasks) or 'none'}"
            )
        tasks = [task for task in tasks if {task.name, _short(task.name)} & set(names)]
    for task in tasks:
        await task.run_once(manager.clock, raise_on_error=raise_on_error)
    return [task.name for task in tasks]


def _short(name: str) -> str:
    return name.partition(".")[2] or name
