"""The volume example works as its docs say, with both of its drivers."""

from __future__ import annotations

from pathlib import Path

import pytest

import aiosvc
from aiosvc.testing import FakeClock, isolated_settings, wait_until
from examples.volume import VolumeManager, VolumeSettings


@pytest.fixture(params=["memory", "file"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> VolumeSettings:
    driver = {
        "memory": "examples.volume.drivers:MemoryVolumeDriver",
        "file": "examples.volume.drivers:FileVolumeDriver",
    }[request.param]
    base = isolated_settings()
    return VolumeSettings.load(
        **base.model_dump(include=base.model_fields_set),
        volume_driver=driver,
        volume_dir=str(tmp_path / "volumes"),
        volume_capacity_gb=10,
    )


async def test_create_list_delete_and_capabilities(settings: VolumeSettings) -> None:
    clock = FakeClock()
    service = aiosvc.Service.create(VolumeManager, settings=settings, clock=clock)
    async with service, aiosvc.connect(settings) as transport:
        volume = aiosvc.RPCClient(transport, "volume", version="1.1")
        created = await volume.call(None, "create_volume", volume_id="v1", size_gb=3)
        assert (created["id"], created["size_gb"]) == ("v1", 3)
        assert [v["id"] for v in await volume.call(None, "list_volumes")] == ["v1"]
        await clock.advance(30)  # _publish_stats runs at start and every 30 s
        manager = service.manager
        assert isinstance(manager, VolumeManager)
        # The file driver scans in a worker thread, which the fake clock does not wait for.
        await wait_until(
            lambda: (manager.last_capabilities or {}).get("free_capacity_gb") == 7, timeout=5
        )
        await volume.call(None, "delete_volume", volume_id="v1")
        assert await volume.call(None, "list_volumes") == []
        with pytest.raises(aiosvc.RemoteError) as info:
            await volume.call(None, "delete_volume", volume_id="v1")
        assert info.value.exc_type == "examples.volume.drivers.VolumeNotFound"


async def test_list_volumes_needs_api_1_1(settings: VolumeSettings) -> None:
    async with (
        aiosvc.Service.create(VolumeManager, settings=settings),
        aiosvc.connect(settings) as transport,
    ):
        with pytest.raises(aiosvc.UnsupportedVersion):
            await aiosvc.RPCClient(transport, "volume", version="1.2").call(None, "list_volumes")


async def test_a_bad_driver_path_stops_the_start() -> None:
    settings = VolumeSettings.load(
        **isolated_settings().model_dump(exclude={"allowed_remote_exceptions"}),
        volume_driver="examples.volume.drivers:NoSuchDriver",
    )
    with pytest.raises(aiosvc.LoadError, match="NoSuchDriver"):
        await aiosvc.Service.create(VolumeManager, settings=settings).start()
