"""``Manager``: which methods other services may call, defaults, and capabilities."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from aiosvc import Context, Manager, Service, ServiceError, Settings, periodic_task
from aiosvc.testing import isolated_settings
from examples.volume import VolumeManager, VolumeSettings


@pytest.fixture
def settings() -> Settings:
    return isolated_settings()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AIOSVC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class ComputeBase(Manager):
    """A project's own base manager, shared by several managers."""

    async def ping(self, ctx: Context, arg: str) -> dict[str, str]:
        return {"service": self.service_name, "arg": arg}


class ComputeManager(ComputeBase):
    topic = "compute"

    async def init_host(self) -> None:  # a hook, overridden
        self.ready = True

    async def cleanup_host(self) -> None: ...

    async def pre_start_hook(self) -> None: ...

    async def post_start_hook(self) -> None: ...

    async def reset(self) -> None: ...

    async def build_instance(self, ctx: Context, instance_id: str) -> str:
        return instance_id

    def get_console_output(self, ctx: Context, instance_id: str) -> str:  # sync: a thread
        return "login:"

    async def _private_helper(self, ctx: Context) -> None: ...

    def __call__(self) -> None: ...

    @periodic_task(spacing=60)
    async def _sync_power_states(self, ctx: Context) -> None: ...

    @periodic_task(spacing=60)
    async def heal_instance_info_cache(self, ctx: Context) -> None: ...  # public name

    @property
    def hypervisor(self) -> str:
        return "kvm"

    @staticmethod
    def helper(value: int) -> int:
        return value

    @classmethod
    def factory(cls) -> None: ...

    version_string = "6.0"  # plain attribute


def test_endpoints_are_public_methods_of_the_managers_own_classes() -> None:
    methods = ComputeManager.rpc_methods()
    assert set(methods) == {
        "ping",
        "build_instance",
        "get_console_output",
        "publish_service_capabilities",  # served by every manager, on purpose
    }
    assert methods["build_instance"] is ComputeManager.build_instance
    assert methods["ping"] is ComputeBase.ping


@pytest.mark.parametrize(
    "name",
    [
        "init_host",
        "cleanup_host",
        "pre_start_hook",
        "post_start_hook",
        "reset",
        "_private_helper",
        "__call__",
        "_sync_power_states",
        "heal_instance_info_cache",
        "hypervisor",
        "helper",
        "factory",
        "version_string",
        # what Manager itself defines is never callable remotely
        "periodic_tasks",
        "update_service_capabilities",
        "rpc_methods",
        "periodic",
        "rpc_client",
        "servicegroup",
        "attach",
        "__init__",
    ],
)
def test_not_an_endpoint(name: str) -> None:
    assert name not in ComputeManager.rpc_methods()


def test_manager_itself_serves_only_publish_service_capabilities() -> None:
    assert Manager.rpc_methods() == {
        "publish_service_capabilities": Manager.publish_service_capabilities
    }


def test_sync_and_async_endpoints_both_count() -> None:
    class M(Manager):
        def sync_one(self, ctx: Context) -> None: ...

        async def async_one(self, ctx: Context) -> None: ...

    assert set(M.rpc_methods()) == {"sync_one", "async_one", "publish_service_capabilities"}


def test_subclass_override_of_an_endpoint_is_the_endpoint() -> None:
    class Child(ComputeManager):
        async def build_instance(self, ctx: Context, instance_id: str) -> str:
            return "child"

    assert Child.rpc_methods()["build_instance"] is Child.build_instance


def test_subclass_can_hide_an_inherited_endpoint() -> None:
    class Child(ComputeManager):
        build_instance = None  # type: ignore[assignment]

    assert "build_instance" not in Child.rpc_methods()
    assert "ping" in Child.rpc_methods()


def test_method_turned_into_a_periodic_task_in_a_subclass_is_not_an_endpoint() -> None:
    class Child(ComputeManager):
        @periodic_task(spacing=10)
        async def ping(self, ctx: Context, arg: str = "") -> dict[str, str]:
            return {}

    assert "ping" not in Child.rpc_methods()


def test_mixin_subclassing_manager_contributes_endpoints() -> None:
    class CapabilitiesMixin(Manager):
        async def get_capabilities(self, ctx: Context) -> dict[str, Any]:
            return self.last_capabilities or {}

    class VolumeWithCaps(CapabilitiesMixin, VolumeManager):
        pass

    methods = VolumeWithCaps.rpc_methods()
    assert {"get_capabilities", "create_volume", "delete_volume", "list_volumes"} <= set(methods)
    assert "_publish_stats" not in methods
    assert "init_host" not in methods


def test_volume_example_endpoints() -> None:
    assert set(VolumeManager.rpc_methods()) == {
        "create_volume",
        "delete_volume",
        "list_volumes",
        "publish_service_capabilities",
    }


# -- names aiosvc uses: a method of the user's that takes one is refused, never silently hidden


def test_a_method_named_like_a_framework_method_is_refused() -> None:
    class NovaStyleScheduler(Manager):
        # Nova's scheduler endpoint, ported by hand: Manager already has this name.
        async def update_service_capabilities(  # type: ignore[override]
            self, ctx: Context, service_name: str, host: str, capabilities: dict[str, Any]
        ) -> None: ...

    with pytest.raises(ServiceError) as info:
        NovaStyleScheduler.rpc_methods()
    message = str(info.value)
    assert "NovaStyleScheduler.update_service_capabilities() cannot be an RPC method" in message
    assert "aiosvc.Manager's" in message
    assert "subclass aiosvc.SchedulerManager and override receive_service_capabilities" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["rpc_methods", "periodic_tasks", "rpc_client", "attach"])
def test_every_framework_name_is_refused(name: str) -> None:
    cls = type("Clash", (Manager,), {name: lambda self, ctx: None})
    with pytest.raises(ServiceError, match=rf"Clash\.{name}\(\) cannot be an RPC method"):
        Manager.rpc_methods.__func__(cls)  # type: ignore[attr-defined]


def test_overriding_a_hook_or_a_framework_endpoint_is_fine() -> None:
    class Fine(Manager):
        async def init_host(self) -> None: ...

        async def reset(self) -> None: ...

        async def publish_service_capabilities(self, ctx: Context) -> None: ...

    assert Fine.rpc_methods() == {"publish_service_capabilities": Fine.publish_service_capabilities}


def test_a_clash_fails_the_service_before_it_connects() -> None:
    class Clash(Manager):
        topic = "clash"

        async def periodic_tasks(self, ctx: Context) -> None:  # type: ignore[override]
            ...

    with pytest.raises(ServiceError, match=r"Clash\.periodic_tasks"):
        Service.create(Clash, settings=isolated_settings())


# -- construction


def test_defaults_from_settings(settings: Settings) -> None:
    manager = ComputeManager(settings=settings)
    assert manager.host == "test-host"
    assert manager.settings is settings
    assert manager.service_name == "aiosvc-compute"
    assert manager.last_capabilities is None
    assert manager.service_record is None


def test_service_name_without_a_topic(settings: Settings) -> None:
    assert Manager(settings=settings).service_name == "aiosvc-undefined"


def test_explicit_host_and_service_name(settings: Settings) -> None:
    manager = ComputeManager(host="compute-7", settings=settings, service_name="nova-compute")
    assert manager.host == "compute-7"
    assert manager.service_name == "nova-compute"


@pytest.mark.usefixtures("clean_environment")
def test_settings_default_to_loading_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_HOST", "env-host")
    monkeypatch.setenv("AIOSVC_PERIODIC_INTERVAL", "12")
    manager = ComputeManager()
    assert manager.host == "env-host"
    assert manager.settings.periodic_interval == 12


@pytest.mark.usefixtures("clean_environment")
def test_host_defaults_to_the_machine_name() -> None:
    assert ComputeManager().host == socket.gethostname()


@pytest.mark.usefixtures("clean_environment")
def test_settings_are_upgraded_to_the_managers_settings_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIOSVC_VOLUME_CAPACITY_GB", "500")
    manager = VolumeManager(settings=Settings.load(host="volume-1"))
    assert isinstance(manager.settings, VolumeSettings)
    assert manager.settings.volume_capacity_gb == 500
    assert manager.host == "volume-1"


class WithOwnArguments(Manager):
    topic = "scheduler"

    def __init__(self, *, driver: str = "filter", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.driver = driver


def test_subclass_init_passing_kwargs_on(settings: Settings) -> None:
    manager = WithOwnArguments(host="h1", settings=settings, driver="caching")
    assert (manager.host, manager.driver, manager.service_name) == (
        "h1",
        "caching",
        "aiosvc-scheduler",
    )


def test_service_create_builds_a_subclass_with_its_own_init(settings: Settings) -> None:
    service = Service.create(WithOwnArguments, settings=settings, host="sched-1")
    assert isinstance(service.manager, WithOwnArguments)
    assert service.manager.driver == "filter"
    assert service.manager.host == "sched-1"
    assert service.manager.service_name == "aiosvc-scheduler"


def test_repr_names_class_topic_and_host(settings: Settings) -> None:
    assert repr(ComputeManager(settings=settings)) == (
        "<ComputeManager topic='compute' host='test-host'>"
    )


# -- hooks and capabilities


def test_update_service_capabilities_keeps_a_copy(settings: Settings) -> None:
    manager = ComputeManager(settings=settings)
    caps = {"free_ram_mb": 1024, "hypervisor": "kvm"}
    manager.update_service_capabilities(caps)
    caps["free_ram_mb"] = 0
    assert manager.last_capabilities == {"free_ram_mb": 1024, "hypervisor": "kvm"}
    manager.update_service_capabilities({"free_ram_mb": 512})
    assert manager.last_capabilities == {"free_ram_mb": 512}  # replaced, not merged


@pytest.mark.parametrize(
    ("capabilities", "why"),
    [
        ({"when": object()}, "capabilities must be JSON: Object of type object"),
        ({"free": float("nan")}, "capabilities must be JSON: Out of range float values"),
        (["not", "a", "mapping"], "capabilities must be a mapping, got list"),
    ],
)
def test_capabilities_that_are_not_json_are_refused_at_once(
    settings: Settings, capabilities: Any, why: str
) -> None:
    manager = ComputeManager(settings=settings)
    manager.update_service_capabilities({"ok": 1})
    with pytest.raises(TypeError, match=why):
        manager.update_service_capabilities(capabilities)
    assert manager.last_capabilities == {"ok": 1}  # the last good ones stay


def test_a_change_of_capabilities_asks_for_a_publish_and_no_change_does_not(
    settings: Settings,
) -> None:
    manager = ComputeManager(settings=settings)
    asked: list[int] = []
    manager.watch_capabilities(lambda: asked.append(1))
    manager.update_service_capabilities({"free": 1})
    manager.update_service_capabilities({"free": 1})  # the same: the interval covers it
    manager.update_service_capabilities({"free": 2})
    assert len(asked) == 2


def test_connections_outside_a_service_say_so(settings: Settings) -> None:
    manager = ComputeManager(settings=settings)
    with pytest.raises(ServiceError, match="ComputeManager is not running in a service"):
        manager.rpc_client("volume")


async def test_volume_example_publishes_capabilities_from_its_periodic_task(
    settings: Settings,
) -> None:
    manager = VolumeManager(settings=settings)
    await manager.init_host()
    await manager.create_volume(Context(), "v1", 10)
    await manager._publish_stats(Context.admin())
    assert manager.last_capabilities == {
        "driver": "MemoryVolumeDriver",
        "total_capacity_gb": 100,
        "free_capacity_gb": 90,
        "volumes": 1,
    }
