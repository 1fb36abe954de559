"""Worker processes: N copies of one ``python -m aiosvc run`` command, kept running.

``python -m aiosvc run --workers N ...`` makes this process the parent of N workers, each a
fresh ``python -m aiosvc run`` with the same arguments (never a fork of a process that runs
an event loop). The parent connects to nothing itself. It:

* restarts a worker that dies: at once if it had started (told its parent so), else after
  a backoff doubling from 0.1 s up to 10 s, so a worker that crashes while starting cannot
  spin the CPU; each death and restart is logged;
* on SIGTERM or SIGINT stops restarting, passes SIGTERM on to every worker (each stops
  gracefully) and waits for them, up to ``stop_timeout`` seconds, after which the rest are
  killed; a SIGINT while stopping is passed on as SIGINT (the workers force their stop),
  a repeated SIGTERM changes nothing (:mod:`aiosvc.launcher` gives the rules). The exit
  status is 0 when every worker stopped cleanly, else 1;
* passes SIGHUP on to every started worker (each calls ``reset()`` on its managers);
* for ``--api``, serves one listening socket, bound once by the parent: every worker is
  given its file descriptor, so N workers share one port.

The workers run in a process group of their own, so a Ctrl-C in the terminal reaches the
parent only, which passes it on once. Each is linked to its parent by a socket pair
(:class:`ParentLink`): it says ``ready`` there once its services have started, and stops,
as on SIGTERM, when the parent's end closes because the parent died.

Nova: ``oslo_service`` ``ProcessLauncher``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .launcher import signal_handlers, stop_signal_action

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "ParentLink", "ProcessLauncher", "stop_timeout"]

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
"""Seconds before restarting a worker that died before it started; doubles each time."""
BACKOFF_MAX = 10.0
"""The longest wait before restarting a worker that keeps dying before it starts."""
_READY = b"ready\n"


@dataclass(eq=False)
class _Worker:
    number: int
    process: asyncio.subprocess.Process
    link: socket.socket
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


class ProcessLauncher:
    """Runs ``workers`` copies of ``python -m aiosvc <argv>`` until SIGTERM or SIGINT.

    Args:
        argv: the worker's arguments (``run ...`` without ``--workers``).
        workers: how many; at least 1.
        listen_socket: a listening socket every worker serves (``--listen-fd``).
        stop_timeout: seconds to wait for the workers to stop before killing them;
            None waits forever.

    Nova: ``oslo_service`` ``ProcessLauncher`` (``launch_service``, ``wait``, the
    respawn loop and its signal handlers).
    """

    def __init__(
        self,
        argv: Sequence[str],
        workers: int,
        *,
        listen_socket: socket.socket | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}")
        self.argv = list(argv)
        self.workers = workers
        self.listen_socket = listen_socket
        self.stop_timeout = stop_timeout
        self.running: dict[int, _Worker] = {}  # by worker number, 1..workers
        self._stopping = asyncio.Event()
        self._forced = False
        self._exits: dict[int, int] = {}  # worker number -> its exit status after the stop

    async def run(self, *, handle_signals: bool = True, restore_signals: bool = True) -> int:
        """Start the workers, keep them running until SIGTERM/SIGINT, stop them.

        ``restore_signals=False`` leaves SIGTERM, SIGINT and SIGHUP ignored afterwards (see
        :func:`aiosvc.launcher.signal_handlers`), for a process that exits next.

        Returns:
            0 when every worker stopped cleanly (exit status 0, or ended by the SIGTERM it
            was passed before it had set up its own handlers, as systemd counts it), else 1.
        """
        loop = asyncio.get_running_loop()
        with signal_handlers(
            loop, handle_signals, self._on_stop, self._on_hup, restore=restore_signals
        ):
            keepers = [
                asyncio.create_task(self._keep(n), name=f"worker {n}")
                for n in range(1, self.workers + 1)
            ]
            await self._stopping.wait()
            _, pending = await asyncio.wait(keepers, timeout=self.stop_timeout)
            if pending:
                for worker in self.running.values():
                    log.error(
                        "Worker %d (pid %d) did not stop within %ss: killing it",
                        worker.number,
                        worker.pid,
                        self.stop_timeout,
                    )
                    worker.signal(signal.SIGKILL)
                await asyncio.wait(pending)
            for task in keepers:
                task.result()  # a bug in a keeper is not hidden
        clean = all(code in (0, -signal.SIGTERM) for code in self._exits.values())
        log.info("All %d worker(s) stopped%s", self.workers, "" if clean else " (not all cleanly)")
        return 0 if clean and not self._forced else 1

    def _on_stop(self, signame: str) -> None:
        action = stop_signal_action(signame, self._stopping.is_set())
        if action == "ignore":
            log.info("Caught %s again: the workers are already stopping", signame)
            return
        if action == "force":
            log.warning("Caught %s again: forcing the workers to stop", signame)
            self._forced = True
        else:
            log.info("Caught %s: stopping %d worker(s)", signame, len(self.running))
            self._stopping.set()
        passed_on = signal.SIGINT if action == "force" else signal.SIGTERM
        for worker in self.running.values():
            worker.signal(passed_on)

    def _on_hup(self) -> None:
        started = [w for w in self.running.values() if w.ready]
        log.info("Caught SIGHUP: passing it on to %d worker(s)", len(started))
        for worker in started:
            worker.signal(signal.SIGHUP)

    async def _keep(self, number: int) -> None:
        """Keep worker ``number`` running until the stop; restart it when it dies."""
        failures = 0
        while not self._stopping.is_set():
            try:
                worker = await self._spawn(number)
            except OSError as exc:  # out of processes or memory, for now: try again later
                failures += 1
                delay = _backoff(failures)
                log.error("Could not start worker %d: %s; trying again in %g s", number, exc, delay)
            else:
                if self._stopping.is_set():  # the stop came while it was being started
                    worker.signal(signal.SIGTERM)
                code = await self._watch(worker)
                if self._stopping.is_set():
                    self._exits[number] = code
                    log.info("Worker %d (pid %d) %s", number, worker.pid, _described(code))
                    return
                failures = 0 if worker.ready else failures + 1
                delay = _backoff(failures)
                log.warning(
                    "Worker %d (pid %d) %s%s; starting another%s",
                    number,
                    worker.pid,
                    _described(code),
                    "" if worker.ready else " before it had started",
                    f" in {delay:g} s" if delay else "",
                )
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _spawn(self, number: int) -> _Worker:
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno()]
        argv = [*self.argv, "--parent-fd", str(theirs.fileno())]
        if self.listen_socket is not None:
            fds.append(self.listen_socket.fileno())
            argv += ["--listen-fd", str(self.listen_socket.fileno())]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aiosvc",
                *argv,
                stdin=subprocess.DEVNULL,
                pass_fds=fds,
                process_group=0,  # a terminal's Ctrl-C reaches the parent only
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = self.running[number] = _Worker(number, process, ours)
        log.info("Started worker %d (pid %d)", number, worker.pid)
        return worker

    async def _watch(self, worker: _Worker) -> int:
        """Wait until ``worker`` exits, noting when it says it is ready; its exit status."""
        listening = asyncio.create_task(self._listen(worker))
        try:
            code = await worker.process.wait()
            # Its end of the link closed with it: what it said before is read to the end.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(listening), 1.0)
            return code
        finally:
            listening.cancel()
            worker.link.close()
            if self.running.get(worker.number) is worker:
                del self.running[worker.number]

    async def _listen(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        received = b""
        while data := await loop.sock_recv(worker.link, 64):
            received += data
            if not worker.ready and _READY in received:
                worker.ready = True
                log.info("Worker %d (pid %d) is ready", worker.number, worker.pid)


def _backoff(failures: int) -> float:
    """Seconds before the next start after ``failures`` starts in a row that failed."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1)) if failures else 0.0


def _described(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class ParentLink:
    """A worker's end of the socket pair to its parent (``--parent-fd``).

    :meth:`ready` tells the parent the worker's services have started; :meth:`watch`
    stops the worker (as SIGTERM does) once the parent's end closes: the parent died.
    """

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.parent = os.getppid()

    def ready(self) -> None:
        """Tell the parent this worker has started."""
        with contextlib.suppress(OSError):
            self.sock.sendall(_READY)

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """While inside, a parent that dies makes this process stop gracefully."""
        loop = asyncio.get_running_loop()
        fd = self.sock.fileno()

        def readable() -> None:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                log.error("Parent process %d has died: stopping", self.parent)
                os.kill(os.getpid(), signal.SIGTERM)

        self.sock.setblocking(False)
        loop.add_reader(fd, readable)
        try:
            yield
        finally:
            loop.remove_reader(fd)
            self.sock.close()


def stop_timeout(graceful_shutdown_timeout: float, services: int) -> float | None:
    """How long a parent waits for its workers to stop: each stops its ``services`` one
    after the other, each within ``graceful_shutdown_timeout`` (0: forever), plus a margin
    for closing connections."""
    if not graceful_shutdown_timeout:
        return None
    return graceful_shutdown_timeout * services + _STOP_MARGIN


_STOP_MARGIN = 15.0
