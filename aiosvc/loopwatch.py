"""The blocked-loop alarm: one WARNING for each stretch in which the event loop does not run.

A handler that makes a synchronous call (``time.sleep``, a blocking HTTP client, a driver's
sync SDK) stops every other handler, periodic task and state report on its event loop. The
setting ``loop_block_warning`` (seconds; 0 turns it off) finds the culprit:

* On the loop, a heartbeat: a ``loop.call_later`` chain that notes the time every quarter
  of the threshold. It costs nothing per message.
* In a daemon thread, a check every quarter of the threshold. When the heartbeat is late
  by more than the threshold, the loop is blocked *now*, so the thread logs one WARNING at
  once, while the culprit still holds the loop. The warning says how long the loop has been
  held so far, which asyncio task is running (RPC handlers are named
  ``rpc <topic>.<method>``, periodic tasks ``periodic <Manager.task>``), and the loop
  thread's stack, innermost frame last, from the task's coroutine on.
* When the loop runs again, the heartbeat logs one INFO line saying how long it was held.
  A stall that ended before the thread could look (the whole process was paused, say) is
  logged then, as a WARNING without a stack.

A block longer than 1.5 times the threshold is always reported while it lasts, with its
task and stack; a shorter one over the threshold may be reported after it ended, without
them, or not at all. One watchdog serves each event loop, shared by the services
on it (:func:`acquire`, :func:`release`), with the smallest threshold they asked for. How
late the heartbeat runs is the loop's lag, for metrics: :meth:`LoopWatch.max_lag_since_last_read`
and :attr:`LoopWatch.on_lag`. It works on uvloop as on the stock loop: it needs only
``call_later`` and the running task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from .context import current_context
from .log import current_service

__all__ = ["LoopWatch", "acquire", "current", "release"]

log = logging.getLogger(__name__)

STACK_FRAMES = 25
"""Most frames of the loop thread's stack a warning shows (the innermost ones)."""

JOIN_TIMEOUT = 1.0
"""Seconds :meth:`LoopWatch.stop` waits for the watchdog thread to end."""

# The event loop's own frames: the stack a warning shows begins after the last of them.
_MACHINERY = (os.path.dirname(asyncio.__file__) + os.sep, f"{os.sep}uvloop{os.sep}")


class LoopWatch:
    """The watchdog of one event loop; most code uses :func:`acquire` and :func:`release`.

    Args:
        loop: the event loop to watch; :meth:`start` and :meth:`stop` run in its thread.
        threshold: seconds the loop may go without running before a WARNING.

    Raises:
        ValueError: ``threshold`` is not a positive, finite number of seconds.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float) -> None:
        self.loop = loop
        self._threshold = _check_threshold(threshold)
        self.on_lag: list[Callable[[float], None]] = []
        """Called on the loop with each heartbeat's lag in seconds (4 per threshold)."""
        self.blocks = 0
        """Blocked stretches reported so far."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stretch = 0  # counts heartbeats: a stretch is the time between two of them
        self._claimed = -1  # the stretch a warning was logged for
        self._idle = -1  # the last stretch the thread saw the loop waiting for events in
        self._due = 0.0  # time.monotonic() at which the next heartbeat should run
        self._max_lag = 0.0
        self._handle: asyncio.TimerHandle | None = None
        # The heartbeat runs in a context of its own, not in that of the service that
        # happened to start it (the loop's watchdog is every service's on the loop).
        self._context = contextvars.Context()
        self._thread: threading.Thread | None = None
        self._thread_id = 0
        self._users = 0

    @property
    def threshold(self) -> float:
        """Seconds the loop may go without running before a WARNING."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = _check_threshold(value)

    @property
    def running(self) -> bool:
        """Whether the watchdog thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the heartbeat and the watchdog thread; call it in the loop's thread."""
        if self._thread is not None:
            raise RuntimeError("this LoopWatch was already started")
        self._thread_id = threading.get_ident()
        self._schedule(time.monotonic())
        self._thread = threading.Thread(target=self._watch, name="aiosvc-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat and the thread (joined, within ``JOIN_TIMEOUT``); idempotent.

        Nothing is logged once it returns. Call it in the loop's thread.
        """
        with self._lock:
            self._stopping.set()
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT)

    def max_lag_since_last_read(self) -> float:
        """The longest the loop has been late, in seconds, since the previous call.

        A stall in progress counts as far as it has gone, so a reader in another thread
        (an exporter's) sees it while the loop is held.
        """
        with self._lock:
            lag = max(self._max_lag, time.monotonic() - self._due)
            self._max_lag = 0.0
        return max(lag, 0.0)

    # -- on the loop

    def _schedule(self, now: float) -> None:
        interval = self._threshold / 4
        self._due = now + interval
        self._handle = self.loop.call_later(interval, self._beat, context=self._context)

    def _beat(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._stopping.is_set():
                return
            lag = max(0.0, now - self._due)
            claimed = self._claimed == self._stretch
            # Seen waiting for events: the process was starved (of CPU, or of the GIL by
            # other threads), no code of the loop's held it.
            starved = self._idle == self._stretch
            missed = not claimed and not starved and lag > self._threshold
            self.blocks += missed
            self._stretch += 1
            self._max_lag = max(self._max_lag, lag)
            self._schedule(now)
            threshold = self._threshold
        if claimed:
            log.info("The event loop runs again, after being held for at least %.3f s", lag)
        elif missed:
            log.warning(
                "The event loop did not run for at least %.3f s (more than "
                "loop_block_warning=%g s); it ran again before the watchdog could see what "
                "held it",
                lag,
                threshold,
            )
        for listener in self.on_lag:
            try:
                listener(lag)
            except Exception:
                log.exception("Loop lag listener %r failed", listener)

    # -- in the watchdog thread

    def _watch(self) -> None:
        while not self._stopping.wait(self._threshold / 4):
            with self._lock:
                late = time.monotonic() - self._due
                if (
                    late <= self._threshold
                    or self._claimed == self._stretch
                    or self._stopping.is_set()
                ):
                    continue
                task = _running_task(self.loop)
                frame = sys._current_frames().get(self._thread_id)
                if task is None and _waiting_for_events(frame):
                    # Late, but the loop is in its selector: nothing holds it but a busy
                    # machine. Not a block; the heartbeat runs as soon as it gets the CPU.
                    self._idle = self._stretch
                    del frame
                    continue
                # Claimed under the lock: the heartbeat cannot end this stretch meanwhile,
                # so it is reported once, by this thread or by the heartbeat, never both.
                self._claimed = self._stretch
                self.blocks += 1
                stack = _extract(frame)
                threshold = self._threshold
            del frame
            self._warn(late, threshold, task, stack)

    def _warn(
        self,
        held: float,
        threshold: float,
        task: asyncio.Task[Any] | None,
        stack: traceback.StackSummary,
    ) -> None:
        extra: dict[str, str] = {}
        get_context = getattr(task, "get_context", None)
        context: contextvars.Context | None = get_context() if get_context is not None else None
        if context is not None:  # Python 3.12+: the blocked task's service and request
            extra["service"] = context.get(current_service, "-")
            request = context.get(current_context, None)
            extra["request_id"] = request.request_id if request is not None else "-"
        log.warning(
            "The event loop has been held for at least %.3f s (more than loop_block_warning=%g s) "
            "by %s: a synchronous call in async code? Its stack, innermost last:\n%s",
            held,
            threshold,
            _describe(task),
            "".join(stack.format()).rstrip("\n"),
            extra=extra,
        )


_watches: dict[asyncio.AbstractEventLoop, LoopWatch] = {}


def acquire(threshold: float) -> LoopWatch:
    """Watch the running event loop; the watchdog starts with its first user.

    Services on one loop share its watchdog, with the smallest threshold asked for.
    Each call must be matched by one :func:`release`.

    Raises:
        ValueError: ``threshold`` is not a positive, finite number of seconds.
    """
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = LoopWatch(loop, threshold)
        watch.start()
        _watches[loop] = watch
    elif threshold < watch.threshold:
        watch.threshold = threshold
    watch._users += 1
    return watch


def release(watch: LoopWatch) -> None:
    """Give back what :func:`acquire` returned; the last user stops the watchdog."""
    watch._users -= 1
    if watch._users <= 0:
        if _watches.get(watch.loop) is watch:
            del _watches[watch.loop]
        watch.stop()


def current(loop: asyncio.AbstractEventLoop | None = None) -> LoopWatch | None:
    """The watchdog of ``loop`` (by default the running one), if it has one."""
    return _watches.get(loop if loop is not None else asyncio.get_running_loop())


def _check_threshold(value: float) -> float:
    if not 0 < value < float("inf"):
        raise ValueError(f"loop_block_warning must be a positive number of seconds, got {value!r}")
    return float(value)


def _running_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task(loop)
    except RuntimeError:  # the loop is closed or gone
        return None


def _extract(frame: FrameType | None) -> traceback.StackSummary:
    """The stack below ``frame``, outermost first, from after the event loop's own frames."""
    if frame is None:
        return traceback.StackSummary()
    stack = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
    stack.reverse()
    start = 0
    for i in range(len(stack) - 1):
        if _is_machinery(stack[i].filename) and not _is_machinery(stack[i + 1].filename):
            start = i + 1
    return traceback.StackSummary.from_list(stack[start:][-STACK_FRAMES:])


def _waiting_for_events(frame: FrameType | None) -> bool:
    """Whether the loop thread's innermost frame is the loop waiting for I/O or a timer:
    the stock loop's selector (``selectors.py``), or the loop's own code (uvloop waits in
    C, below the frame that started the loop)."""
    if frame is None:
        return True
    filename = frame.f_code.co_filename
    return filename.endswith(f"{os.sep}selectors.py") or _is_machinery(filename)


def _is_machinery(filename: str) -> bool:
    return filename.startswith(_MACHINERY[0]) or _MACHINERY[1] in filename


def _describe(task: asyncio.Task[Any] | None) -> str:
    if task is None:
        return "no task (a callback, or the loop itself)"
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", type(coro).__name__)
    return f"task {task.get_name()!r} ({where})"
