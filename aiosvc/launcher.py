"""Run services until a signal says stop.

* SIGTERM or SIGINT: stop every service gracefully (each drains within its
  ``graceful_shutdown_timeout``), in the reverse order of their start: an API service
  given last drains its requests while the managers it calls still serve them.
* SIGINT while stopping (Ctrl-C pressed twice) forces: the stops are cancelled, unfinished
  messages go back to their queues, and the exit status is 1.
* SIGTERM while stopping changes nothing: supervisors, ``timeout`` and process groups
  deliver the same SIGTERM twice within milliseconds, and the graceful stop is bounded
  already.
* SIGHUP: call ``reset()`` on every service's manager (Nova's ``mutate`` restart).
* A service that stops by itself because of an error stops the others too.

When :func:`launch` returns, the handlers that were there before are put back, or, with
``restore_signals=False`` (a process that exits next, as ``python -m aiosvc run`` does),
SIGTERM, SIGINT and SIGHUP are ignored from then on: a signal that arrives while the
process exits changes nothing.

Nova: ``oslo_service`` ``ServiceLauncher`` (``launch``, ``wait``, the signal handlers);
worker processes (oslo's ``ProcessLauncher``) are :mod:`aiosvc.workers`.
Unlike oslo, SIGINT is graceful the first time: people press Ctrl-C in a terminal and
expect in-flight work to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any, Literal

from .service import Service

__all__ = ["launch", "signal_handlers", "stop_signal_action"]

log = logging.getLogger(__name__)

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_signal_action(signame: str, stopping: bool) -> Literal["stop", "force", "ignore"]:
    """What SIGTERM or SIGINT means now: the rules of this module's docstring."""
    if not stopping:
        return "stop"
    return "force" if signame == "SIGINT" else "ignore"


async def launch(
    *services: Service,
    handle_signals: bool = True,
    restore_signals: bool = True,
    on_started: Callable[[], object] | None = None,
) -> int:
    """Start ``services``, run until SIGTERM/SIGINT, stop them; return an exit status.

    ``on_started()`` is called once every service has started (oslo notifies systemd
    there; a worker process tells its parent). ``restore_signals=False`` leaves SIGTERM,
    SIGINT and SIGHUP ignored afterwards, for a process that exits next.

    Returns:
        0 after a clean stop; 1 when a service failed or the stop was forced.

    Raises:
        Exception: a service failed to start (the services already started were
            stopped first).
    """
    if not services:
        raise ValueError("launch() needs at least one service")
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    forced = asyncio.Event()
    resets: set[asyncio.Task[None]] = set()

    def on_stop(signame: str) -> None:
        action = stop_signal_action(signame, stop_requested.is_set())
        if action == "stop":
            log.info("Caught %s: stopping gracefully (SIGINT again forces)", signame)
            stop_requested.set()
        elif action == "force":
            log.warning("Caught %s again: forcing the stop", signame)
            forced.set()
        else:
            log.info("Caught %s again: already stopping gracefully", signame)

    def on_hup() -> None:
        log.info("Caught SIGHUP: resetting %d service(s)", len(services))
        for service in services:
            task = loop.create_task(_reset(service))
            resets.add(task)
            task.add_done_callback(resets.discard)

    with signal_handlers(loop, handle_signals, on_stop, on_hup, restore=restore_signals):
        started: list[Service] = []
        try:
            for service in services:
                await service.start()
                started.append(service)
        except BaseException:
            await _stop_all(started, forced)
            raise
        if on_started is not None:
            on_started()
        failed = await _run_until_stopped(started, stop_requested)
        ok = await _stop_all(started, forced)
    return 0 if ok and not failed and not forced.is_set() else 1


async def _run_until_stopped(services: list[Service], stop_requested: asyncio.Event) -> bool:
    """Wait for a stop request or a service ending by itself; True if one failed."""
    waits: dict[asyncio.Future[Any], Service] = {
        asyncio.ensure_future(s.wait()): s for s in services
    }
    stop: asyncio.Future[Any] = asyncio.ensure_future(stop_requested.wait())
    try:
        done, _ = await asyncio.wait([*waits, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        for fut in waits:
            fut.cancel()
    failed = False
    for fut in done:
        if fut in waits and not fut.cancelled() and fut.exception() is not None:
            failed = True
            log.error("%s failed: %s", waits[fut].binary, fut.exception())
        elif fut in waits:
            log.warning("%s stopped by itself; stopping the others", waits[fut].binary)
    return failed


async def _stop_all(services: list[Service], forced: asyncio.Event) -> bool:
    """Stop the services, the last started first; True if all stopped cleanly and in time."""
    if not services:
        return True
    stops: asyncio.Future[list[bool]] = asyncio.ensure_future(_stop_each(services[::-1]))
    force: asyncio.Future[Any] = asyncio.ensure_future(forced.wait())
    try:
        await asyncio.wait([stops, force], return_when=asyncio.FIRST_COMPLETED)
    finally:
        force.cancel()
    if not stops.done():
        stops.cancel()
        for service in services:
            service.force_stop()
        with contextlib.suppress(BaseException):
            await stops
        for service in services:
            with contextlib.suppress(BaseException):
                await service.wait()
        return False
    return all(stops.result())


async def _stop_each(services: list[Service]) -> list[bool]:
    return [await _stop(service) for service in services]


async def _stop(service: Service) -> bool:
    try:
        await service.stop()
    except Exception as exc:
        log.error("%s stopped with an error: %s", service.binary, exc)
        return False
    return True


async def _reset(service: Service) -> None:
    try:
        await service.reset()
    except Exception:
        log.exception("Error while resetting %s", service.binary)


@contextlib.contextmanager
def signal_handlers(
    loop: asyncio.AbstractEventLoop,
    enabled: bool,
    on_stop: Callable[[str], None],
    on_hup: Callable[[], None],
    *,
    restore: bool = True,
) -> Iterator[None]:
    """While inside: SIGTERM and SIGINT call ``on_stop(name)``, SIGHUP ``on_hup()``.

    On the way out the handlers that were there before are put back (``restore``), or the
    three signals are ignored from then on. Either way they are blocked during the swap,
    so none can meet the default action (death) in between; one that arrived meanwhile is
    delivered to what is put in place.
    """
    if not enabled:
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _HANDLED}
    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        yield
    finally:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            for sig in _HANDLED:
                loop.remove_signal_handler(sig)
                before = previous[sig] if restore else signal.SIG_IGN
                signal.signal(sig, before if before is not None else signal.SIG_DFL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
