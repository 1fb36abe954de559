"""The three cooperating example services, in one process, with the plugin's fixtures only:
volume hosts publish capabilities, the scheduler places volumes, the API takes requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

import aiosvc
from aiosvc.testing import ClientFactory, ServiceFactory, wait_until
from examples.api import app
from examples.scheduler import VolumeScheduler
from examples.volume import VolumeManager

VOLUME = "aiosvc-volume"
# A new scheduler waits this long at most for the hosts' capabilities: generous, for a
# loaded machine (the default is 1 s); an idle one answers within milliseconds.
WAIT = {"capabilities_wait": 20}


async def two_hosts(aiosvc_service: ServiceFactory) -> tuple[aiosvc.Service, aiosvc.Service]:
    a = await aiosvc_service(VolumeManager, host="host-a", settings={"volume_capacity_gb": 50})
    b = await aiosvc_service(VolumeManager, host="host-b", settings={"volume_capacity_gb": 80})
    return a, b


def volumes(service: aiosvc.Service) -> set[str]:
    return set(service.manager.driver.volumes)  # type: ignore[attr-defined]


async def test_the_scheduler_places_volumes_on_the_host_with_most_room(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    a, b = await two_hosts(aiosvc_service)
    await aiosvc_service(VolumeScheduler, host="scheduler-1", settings=WAIT)
    scheduler = await aiosvc_client("scheduler")

    placed = await scheduler.call(None, "create_volume", volume_id="v1", size_gb=40)
    assert placed == {"volume_id": "v1", "host": "host-b"}  # 80 GiB free against 50
    await wait_until(lambda: volumes(b) == {"v1"})
    # host-b published its new free space at once (40), so host-a (50) is chosen next.
    placed = await scheduler.call(None, "create_volume", volume_id="v2", size_gb=10)
    assert placed["host"] == "host-a"
    await wait_until(lambda: volumes(a) == {"v2"})


async def test_a_started_scheduler_knows_every_live_host_at_once(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    await two_hosts(aiosvc_service)
    service = await aiosvc_service(VolumeScheduler, host="scheduler-1", settings=WAIT)
    scheduler = service.manager
    assert isinstance(scheduler, VolumeScheduler)
    hosts = await scheduler.hosts_up(VOLUME)
    assert [h.host for h in hosts] == ["host-a", "host-b"]
    assert [h.capabilities["free_capacity_gb"] for h in hosts] == [50, 80]
    known = await (await aiosvc_client("scheduler")).call(None, "hosts")
    assert {h["host"] for h in known} == {"host-a", "host-b"}
    assert all(0 <= h["seconds_after_asking"] < WAIT["capabilities_wait"] for h in known)


async def test_a_disabled_host_is_not_chosen(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    _, b = await two_hosts(aiosvc_service)
    await aiosvc_service(VolumeScheduler, host="scheduler-1", settings=WAIT)
    assert b.store is not None
    await b.store.update("host-b", VOLUME, disabled=True, disabled_reason="maintenance")
    scheduler = await aiosvc_client("scheduler")
    placed = await scheduler.call(None, "create_volume", volume_id="v1", size_gb=1)
    assert placed["host"] == "host-a"


async def test_no_host_with_room_is_a_clear_remote_error(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    await two_hosts(aiosvc_service)
    await aiosvc_service(VolumeScheduler, host="scheduler-1", settings=WAIT)
    scheduler = await aiosvc_client("scheduler")
    with pytest.raises(aiosvc.RemoteError) as info:
        await scheduler.call(None, "create_volume", volume_id="v1", size_gb=500)
    assert info.value.exc_type == "examples.scheduler.manager.NoValidHost"
    assert "no volume host that is up and enabled has 500 GiB free" in info.value.value


async def test_a_request_queued_while_no_scheduler_runs_is_placed_by_the_next(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    _, b = await two_hosts(aiosvc_service)
    first = await aiosvc_service(VolumeScheduler, host="scheduler-1", settings=WAIT)
    await first.stop()  # its shared queue stays, as RabbitMQ's durable queue does
    await (await aiosvc_client("scheduler")).cast(
        None, "create_volume", volume_id="queued", size_gb=1
    )
    assert volumes(b) == set()
    await aiosvc_service(VolumeScheduler, host="scheduler-2", settings=WAIT)
    await wait_until(lambda: volumes(b) == {"queued"})


# -- the API application, over the connections of a running service


async def asgi(connections: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request through the ASGI app, as the API service would pass it."""
    sent: list[dict[str, Any]] = []
    payload = json.dumps(body).encode() if body is not None else b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "state": {"aiosvc": connections}}
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


async def test_the_api_creates_shows_and_lists(aiosvc_service: ServiceFactory) -> None:
    await two_hosts(aiosvc_service)
    scheduler = await aiosvc_service(VolumeScheduler, host="scheduler-1", settings=WAIT)
    connections = scheduler.connections

    status, body = await asgi(connections, "POST", "/volumes", {"volume_id": "v1", "size_gb": 2})
    assert (status, body) == (202, {"volume_id": "v1", "host": "host-b", "status": "creating"})

    async def shown() -> bool:  # the scheduler casts: the host creates it a moment later
        return (await asgi(connections, "GET", "/volumes/v1"))[0] == 200

    await wait_until(shown)
    status, body = await asgi(connections, "GET", "/volumes/v1")
    assert status == 200
    assert (body["id"], body["size_gb"], body["host"]) == ("v1", 2, "host-b")

    status, body = await asgi(connections, "GET", "/services")
    assert status == 200
    assert {(s["host"], s["binary"], s["state"]) for s in body} == {
        ("host-a", VOLUME, "up"),
        ("host-b", VOLUME, "up"),
        ("scheduler-1", "aiosvc-scheduler", "up"),
    }
    assert await asgi(connections, "GET", "/volumes/nope") == (404, {"error": "no volume nope"})
    assert (await asgi(connections, "POST", "/volumes", {"size_gb": "big"}))[0] == 400
    status, body = await asgi(connections, "POST", "/volumes", {"size_gb": 1000})
    assert status == 507
    assert "1000 GiB" in body["error"]
