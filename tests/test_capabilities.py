"""Capabilities: a manager sets them, its service publishes them to the scheduler topic at
once on a change and every periodic_interval; a scheduler keeps them with their age."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosvc
from aiosvc import Context, Manager
from aiosvc.testing import FakeClock, ServiceFactory, wait_until


class Worker(Manager):
    topic = "worker"


class Recorder(aiosvc.SchedulerManager):
    """A scheduler that also remembers every receipt, with the time it came."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.receipts: list[tuple[str, dict[str, Any], float]] = []

    async def receive_service_capabilities(
        self, ctx: Context, service_name: str, host: str, capabilities: dict[str, Any]
    ) -> None:
        self.receipts.append((host, capabilities, self.clock.now()))
        await super().receive_service_capabilities(ctx, service_name, host, capabilities)


async def started(
    aiosvc_service: ServiceFactory, clock: FakeClock
) -> tuple[Recorder, aiosvc.Manager]:
    settings = {"periodic_interval": 60, "service_down_time": 180}
    scheduler = (await aiosvc_service(Recorder, clock=clock, host="s", settings=settings)).manager
    worker = (await aiosvc_service(Worker, clock=clock, host="w", settings=settings)).manager
    assert isinstance(scheduler, Recorder)
    return scheduler, worker


async def test_published_at_once_when_they_change_and_every_interval(
    aiosvc_service: ServiceFactory, aiosvc_clock: FakeClock
) -> None:
    scheduler, worker = await started(aiosvc_service, aiosvc_clock)
    await aiosvc_clock.advance(120)
    assert scheduler.receipts == []  # nothing to publish yet

    worker.update_service_capabilities({"free": 1})
    await wait_until(lambda: len(scheduler.receipts) == 1)
    assert scheduler.receipts[0] == ("w", {"free": 1}, 120)

    worker.update_service_capabilities({"free": 1})  # unchanged: no extra cast
    await aiosvc_clock.advance(59)
    assert len(scheduler.receipts) == 1
    await aiosvc_clock.advance(1)  # one interval after the last: again, though unchanged
    await wait_until(lambda: len(scheduler.receipts) == 2)
    assert scheduler.receipts[1] == ("w", {"free": 1}, 180)

    await aiosvc_clock.advance(10)
    worker.update_service_capabilities({"free": 2})
    await wait_until(lambda: len(scheduler.receipts) == 3)
    assert scheduler.receipts[2] == ("w", {"free": 2}, 190)
    [known] = scheduler.host_capabilities("aiosvc-worker")
    assert (known.host, known.capabilities, known.received_at) == ("w", {"free": 2}, 190)


async def test_the_scheduler_forgets_hosts_silent_for_service_down_time(
    aiosvc_service: ServiceFactory, aiosvc_clock: FakeClock
) -> None:
    scheduler, worker = await started(aiosvc_service, aiosvc_clock)
    worker.update_service_capabilities({"free": 1})
    await wait_until(lambda: len(scheduler.host_capabilities()) == 1)
    await scheduler.receive_service_capabilities(Context.admin(), "aiosvc-gone", "g", {"x": 1})
    await aiosvc_clock.advance(100)
    # w published again at 60 (every interval); g has been silent for 100 s of the 180.
    assert {c.host for c in scheduler.host_capabilities()} == {"w", "g"}
    await aiosvc_clock.advance(81)
    assert {c.host for c in scheduler.host_capabilities()} == {"w"}


async def test_a_scheduler_asks_running_services_to_publish_when_it_starts(
    aiosvc_service: ServiceFactory, aiosvc_clock: FakeClock
) -> None:
    worker = (await aiosvc_service(Worker, clock=aiosvc_clock, host="w")).manager
    worker.update_service_capabilities({"free": 7})  # published to nobody: no scheduler yet
    service = await aiosvc_service(Recorder, clock=aiosvc_clock, host="s")
    scheduler = service.manager
    assert isinstance(scheduler, Recorder)
    [known] = await scheduler.hosts_up("aiosvc-worker")  # waits for the answer
    assert (known.host, known.capabilities) == ("w", {"free": 7})
    assert scheduler.capabilities_requested_at == known.received_at  # no fake time passed


async def test_hosts_up_leaves_out_hosts_down_or_disabled(
    aiosvc_service: ServiceFactory, aiosvc_clock: FakeClock
) -> None:
    scheduler, worker = await started(aiosvc_service, aiosvc_clock)
    worker.update_service_capabilities({"free": 1})
    await wait_until(lambda: len(scheduler.host_capabilities()) == 1)
    assert [h.host for h in await scheduler.hosts_up("aiosvc-worker")] == ["w"]
    await scheduler.servicegroup.store.update("w", "aiosvc-worker", disabled=True)
    assert await scheduler.hosts_up("aiosvc-worker") == []
    await scheduler.servicegroup.store.update("w", "aiosvc-worker", disabled=False)
    await scheduler.servicegroup.store.update("w", "aiosvc-worker", forced_down=True)
    assert await scheduler.hosts_up("aiosvc-worker") == []


async def test_a_request_handled_before_the_hosts_were_asked_waits_for_the_asking(
    aiosvc_service: ServiceFactory, aiosvc_clock: FakeClock
) -> None:
    # A request queued while no scheduler ran is delivered as soon as the new scheduler
    # consumes, which is before its service asks the hosts to publish.
    worker = await aiosvc_service(Worker, clock=aiosvc_clock, host="w")
    scheduler = Recorder(settings=worker.settings, clock=aiosvc_clock, host="s")
    scheduler.attach(worker.connections)  # what its service does before init_host
    placing = asyncio.ensure_future(scheduler.hosts_up("aiosvc-worker"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not placing.done()  # not "no host at all": it waits for the asking
    await scheduler.request_capabilities()
    await scheduler.receive_service_capabilities(Context.admin(), "aiosvc-worker", "w", {"f": 1})
    [known] = await placing
    assert (known.host, known.capabilities) == ("w", {"f": 1})
