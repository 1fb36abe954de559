"""Publishing a manager's capabilities to the scheduler: :class:`CapabilityPublisher`.

A running service publishes the latest capabilities of its manager by fanout cast of
``update_service_capabilities(service_name, host, capabilities)`` to ``scheduler_topic``: at
once when the manager sets new ones (or a scheduler asks, through
``publish_service_capabilities``), and every ``periodic_interval`` even if unchanged, so a
scheduler that restarts learns every host within one interval. Nothing is sent while the
manager has none. A broker that cannot take the cast is logged once, retried at the next
interval, and its recovery logged once.

Cinder: ``SchedulerDependentManager._publish_service_capabilities`` and the scheduler
RPC API's fanout ``update_service_capabilities``.
"""

from __future__ import annotations

import asyncio
import logging

import anyio

from .clock import Clock
from .context import Context
from .log import one_line
from .manager import Manager
from .rpc.client import RPCClient

__all__ = ["CapabilityPublisher"]

log = logging.getLogger(__name__)


class CapabilityPublisher:
    """Publishes ``manager.last_capabilities`` for the service ``binary`` on its host."""

    def __init__(self, manager: Manager, client: RPCClient, binary: str, interval: float) -> None:
        self.manager = manager
        self.client = client.prepare(fanout=True)
        self.binary = binary
        self.interval = interval
        self.published = 0
        self._wanted = asyncio.Event()
        self._failing = False

    def want(self) -> None:
        """Publish at once (what the manager calls when its capabilities change)."""
        self._wanted.set()

    async def run(self) -> None:
        """Publish until cancelled; the manager's changes wake it at once."""
        clock = self.manager.clock
        self.manager.watch_capabilities(self.want)
        try:
            while True:
                await _until(self._wanted, clock, clock.now() + self.interval)
                self._wanted.clear()
                await self.publish()
        finally:
            self.manager.watch_capabilities(None)

    async def publish(self) -> bool:
        """Send the capabilities once, if there are any; True if the broker took them."""
        capabilities = self.manager.last_capabilities
        if capabilities is None:
            return False
        try:
            await self.client.cast(
                Context.admin(),
                "update_service_capabilities",
                service_name=self.binary,
                host=self.manager.host,
                capabilities=capabilities,
            )
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "Could not publish the capabilities of %s to %s: %s; retrying every %ss",
                    self.binary,
                    self.client.topic,
                    one_line(exc),
                    self.interval,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("Publishing the capabilities of %s again", self.binary)
            self._failing = False
        self.published += 1
        log.debug("Published the capabilities of %s to %s", self.binary, self.client.topic)
        return True


async def _until(event: asyncio.Event, clock: Clock, deadline: float) -> None:
    """Return when ``event`` is set or ``clock`` reaches ``deadline``, whichever is first."""
    if event.is_set():
        return
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep_until(deadline)
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        await event.wait()
        tg.cancel_scope.cancel()
