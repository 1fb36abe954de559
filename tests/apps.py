"""Managers that subprocess tests run with ``python -m aiosvc run --manager tests.apps:...``.

They write what they handle to ``AIOSVC_JOURNAL`` (one JSON line per event), so a test in
another process can see what ran, where, and in what order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import anyio

from aiosvc import Context, Manager, Settings, periodic_task

log = logging.getLogger(__name__)


class JournalSettings(Settings):
    journal: str = ""


class Journaling(Manager):
    """Echoes, and journals casts; ``hang`` takes as long as it is told."""

    topic = "journal"
    settings_class = JournalSettings
    settings: JournalSettings

    def _write(self, event: str, **fields: Any) -> None:
        if self.settings.journal:
            line = json.dumps({"event": event, "host": self.host, "pid": os.getpid(), **fields})
            with open(self.settings.journal, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    async def echo(self, ctx: Context, value: Any) -> Any:
        return value

    async def whoami(self, ctx: Context) -> str:
        return self.host

    async def record(self, ctx: Context, item: Any) -> None:
        self._write("record", item=item)

    async def hang(self, ctx: Context, name: str, seconds: float) -> str:
        self._write("hang-start", name=name)
        await anyio.sleep(seconds)
        self._write("hang-done", name=name)
        return name

    async def reset(self) -> None:
        self._write("reset")
        log.info("reset called")

    async def cleanup_host(self) -> None:
        self._write("cleanup_host")


class WorkSettings(JournalSettings):
    work_seconds: float = 0.0


class Working(Journaling):
    """Its ``record`` takes ``AIOSVC_WORK_SECONDS``, so casts are in flight when a test strikes.

    It journals ``record-start`` when a cast begins and ``record`` once it is done, each with
    the wall-clock time ``t``; ``padding`` lets a test send big messages (it is not journaled).
    """

    settings_class = WorkSettings
    settings: WorkSettings

    async def record(self, ctx: Context, item: Any, padding: str = "") -> None:
        self._write("record-start", item=item, t=time.time())
        await anyio.sleep(self.settings.work_seconds)
        self._write("record", item=item, t=time.time())


class SlowCleanup(Journaling):
    """Its cleanup_host takes 30 s, so a test can force the stop with a second SIGINT."""

    async def cleanup_host(self) -> None:
        self._write("cleanup-start")
        await anyio.sleep(30)
        self._write("cleanup_host")


class GatedCleanup(Journaling):
    """Its cleanup_host journals ``cleanup-start``, then waits until ``$CLEANUP_GATE`` exists."""

    async def cleanup_host(self) -> None:
        self._write("cleanup-start")
        gate = anyio.Path(os.environ["CLEANUP_GATE"])
        while not await gate.exists():  # noqa: ASYNC110 - a file made by another process
            await anyio.sleep(0.02)
        self._write("cleanup_host")


class FailsToStart(Journaling):
    async def init_host(self) -> None:
        raise RuntimeError("the disk array is offline")


class Ticker(Journaling):
    topic = "ticker"

    @periodic_task(spacing=0.2, run_immediately=True)
    async def _tick(self, ctx: Context) -> None:
        self._write("tick", t=anyio.current_time())
