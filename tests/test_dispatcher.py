"""The dispatcher: which requests reach a manager's method, with what arguments, and what
a request that does not fit gets back instead. The handler never runs for a bad request."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import anyio
import pydantic
import pytest

from aiosvc import Context, Manager, periodic_task
from aiosvc.exceptions import InvalidArguments, NoSuchMethod, UnsupportedVersion
from aiosvc.rpc.dispatcher import Dispatcher
from aiosvc.rpc.protocol import Request, decode_request, encode_request
from aiosvc.testing import isolated_settings

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ID = UUID("6f1c2b1e-7d5a-4c2b-9f1e-0a1b2c3d4e5f")


class Flavor(pydantic.BaseModel):
    name: str
    vcpus: int


class VolumeAPI(Manager):
    topic = "volume"
    RPC_API_VERSION = "1.3"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("settings", isolated_settings())
        super().__init__(**kwargs)
        self.calls: list[tuple[str, Any]] = []

    async def init_host(self) -> None:
        self.calls.append(("init_host", None))

    async def create_volume(self, ctx: Context, volume_id: str, size_gb: int) -> dict[str, Any]:
        self.calls.append(("create_volume", (ctx, volume_id, size_gb)))
        return {"id": volume_id, "size_gb": size_gb}

    async def resize(
        self, context: Context, volume_id: str, size_gb: Annotated[int, pydantic.Field(gt=0)]
    ) -> int:
        self.calls.append(("resize", size_gb))
        return size_gb

    async def typed(
        self, ctx: Context, when: datetime, ident: UUID, blob: bytes, flavor: Flavor
    ) -> dict[str, Any]:
        return {
            "when": type(when),
            "ident": type(ident),
            "blob": type(blob),
            "flavor": type(flavor),
            "values": (when, ident, blob, flavor),
        }

    async def with_defaults(self, ctx: Context, name: str, count: int = 1) -> tuple[str, int]:
        return name, count

    async def untyped(self, ctx, anything):  # type: ignore[no-untyped-def]
        return anything

    async def no_context(self, value: int) -> int:
        return value * 2

    async def renamed_context(self, request: Context, value: int) -> tuple[str, int]:
        return request.request_id, value

    async def kwargs(self, ctx: Context, first: int, **rest: Any) -> dict[str, Any]:
        return {"first": first, "rest": rest}

    async def awkward_names(
        self, ctx: Context, json: str, copy: bool, schema: int, model_config: str
    ) -> list[Any]:
        return [json, copy, schema, model_config]

    def sync_info(self, ctx: Context, value: str) -> dict[str, Any]:
        return {
            "thread": threading.current_thread(),
            "value": value,
            "request_id": ctx.request_id,
        }

    async def fails(self, ctx: Context) -> None:
        raise LookupError("volume v9 not found")

    async def stray_cancel(self, ctx: Context) -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # CancelledError, though nobody cancelled the handler

    async def hang(self, ctx: Context) -> None:
        self.calls.append(("hang", None))
        await anyio.sleep_forever()

    async def _private(self, ctx: Context) -> None:
        self.calls.append(("_private", None))

    @periodic_task(spacing=10)
    async def refresh_stats(self, ctx: Context) -> None:
        self.calls.append(("refresh_stats", None))


@pytest.fixture
def manager() -> VolumeAPI:
    return VolumeAPI()


@pytest.fixture
def dispatcher(manager: VolumeAPI) -> Dispatcher:
    return Dispatcher(manager)


def request(
    method: str,
    version: str = "1.0",
    namespace: str | None = None,
    ctx: Context | None = None,
    **args: Any,
) -> Request:
    """A request as it arrives: encoded to JSON by a client, decoded by the server."""
    return decode_request(encode_request(ctx or Context(), method, args, version, namespace))


async def test_dispatches_to_the_method_with_context_and_arguments(
    dispatcher: Dispatcher, manager: VolumeAPI
) -> None:
    ctx = Context(user_id="u1", project_id="p1")
    result = await dispatcher.dispatch(
        request("create_volume", ctx=ctx, volume_id="v1", size_gb=10)
    )
    assert result == {"id": "v1", "size_gb": 10}
    [(name, (got_ctx, volume_id, size_gb))] = manager.calls
    assert (name, volume_id, size_gb) == ("create_volume", "v1", 10)
    assert got_ctx == ctx


async def test_methods_exception_propagates_as_is(dispatcher: Dispatcher) -> None:
    with pytest.raises(LookupError, match="volume v9 not found"):
        await dispatcher.dispatch(request("fails"))


async def test_stray_cancelled_error_from_a_handler_is_a_failure(dispatcher: Dispatcher) -> None:
    # Passed on as CancelledError it would end the server's task group; as a failure
    # it is logged and sent back like any other.
    with pytest.raises(RuntimeError, match=r"stray_cancel\(\) raised CancelledError") as info:
        await dispatcher.dispatch(request("stray_cancel"))
    assert isinstance(info.value.__cause__, asyncio.CancelledError)


async def test_cancelling_a_dispatch_cancels_the_handler(
    dispatcher: Dispatcher, manager: VolumeAPI
) -> None:
    with anyio.move_on_after(0.05) as scope:
        await dispatcher.dispatch(request("hang"))
    assert scope.cancelled_caught
    assert manager.calls == [("hang", None)]


async def test_version_and_namespace_default_to_the_managers(manager: VolumeAPI) -> None:
    dispatcher = Dispatcher(manager)
    assert dispatcher.version == "1.3"
    assert dispatcher.namespace is None
    assert set(dispatcher.endpoints) == set(VolumeAPI.rpc_methods())


# -- version and namespace


@pytest.mark.parametrize("version", ["1.0", "1.2", "1.3", "1.3.0"])
async def test_compatible_versions_are_served(dispatcher: Dispatcher, version: str) -> None:
    assert await dispatcher.dispatch(request("no_context", version=version, value=2)) == 4


@pytest.mark.parametrize(
    ("version", "why"),
    [("2.0", "major"), ("0.9", "major"), ("1.4", "higher minor"), ("1.3.1", "higher revision")],
)
async def test_incompatible_version(
    dispatcher: Dispatcher, manager: VolumeAPI, version: str, why: str
) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        await dispatcher.dispatch(
            request("create_volume", version=version, volume_id="v", size_gb=1)
        )
    assert version in str(info.value)
    assert "1.3" in str(info.value)
    assert manager.calls == []


async def test_namespace_mismatch(dispatcher: Dispatcher, manager: VolumeAPI) -> None:
    with pytest.raises(UnsupportedVersion, match="namespace 'baseapi'"):
        await dispatcher.dispatch(
            request("create_volume", namespace="baseapi", volume_id="v", size_gb=1)
        )
    assert manager.calls == []


async def test_dispatcher_with_a_namespace_refuses_the_default_one(manager: VolumeAPI) -> None:
    dispatcher = Dispatcher(manager, namespace="storage")
    with pytest.raises(UnsupportedVersion, match="namespace None"):
        await dispatcher.dispatch(request("no_context", value=1))
    assert await dispatcher.dispatch(request("no_context", namespace="storage", value=1)) == 2


async def test_explicit_version_overrides_the_managers(manager: VolumeAPI) -> None:
    dispatcher = Dispatcher(manager, version="2.1")
    assert await dispatcher.dispatch(request("no_context", version="2.0", value=1)) == 2
    with pytest.raises(UnsupportedVersion):
        await dispatcher.dispatch(request("no_context", version="1.0", value=1))


# -- which methods


@pytest.mark.parametrize(
    "method",
    [
        "no_such_method",
        "_private",
        "init_host",  # a hook, even overridden
        "cleanup_host",
        "reset",
        "refresh_stats",  # a periodic task, even with a public name
        "periodic_tasks",
        "update_service_capabilities",
        "watch_capabilities",
        "rpc_methods",
        "__init__",
        "__class__",
    ],
)
async def test_no_such_method(dispatcher: Dispatcher, manager: VolumeAPI, method: str) -> None:
    with pytest.raises(NoSuchMethod) as info:
        await dispatcher.dispatch(request(method))
    assert repr(method) in str(info.value)
    assert "VolumeAPI" in str(info.value)
    assert isinstance(info.value, AttributeError)
    assert manager.calls == []


# -- arguments


async def test_ill_typed_argument_is_named_and_the_handler_does_not_run(
    dispatcher: Dispatcher, manager: VolumeAPI
) -> None:
    with pytest.raises(InvalidArguments) as info:
        await dispatcher.dispatch(request("create_volume", volume_id="v1", size_gb="oops"))
    message = str(info.value)
    assert message.startswith("create_volume(): size_gb:")
    assert "'oops'" in message
    assert "volume_id" not in message  # only the bad one
    assert isinstance(info.value, TypeError)
    assert manager.calls == []


async def test_missing_argument(dispatcher: Dispatcher, manager: VolumeAPI) -> None:
    with pytest.raises(InvalidArguments, match="size_gb: missing required argument"):
        await dispatcher.dispatch(request("create_volume", volume_id="v1"))
    assert manager.calls == []


async def test_unexpected_argument(dispatcher: Dispatcher, manager: VolumeAPI) -> None:
    with pytest.raises(InvalidArguments, match="colour: unexpected argument"):
        await dispatcher.dispatch(request("create_volume", volume_id="v1", size_gb=1, colour="red"))
    assert manager.calls == []


async def test_every_bad_argument_is_named(dispatcher: Dispatcher) -> None:
    with pytest.raises(InvalidArguments) as info:
        await dispatcher.dispatch(request("create_volume", size_gb="x", extra=1))
    message = str(info.value)
    for part in ("volume_id: missing", "size_gb:", "extra: unexpected"):
        assert part in message


async def test_constraints_in_annotated_hints_are_checked(
    dispatcher: Dispatcher, manager: VolumeAPI
) -> None:
    with pytest.raises(InvalidArguments, match="size_gb: Input should be greater than 0"):
        await dispatcher.dispatch(request("resize", volume_id="v1", size_gb=0))
    assert manager.calls == []
    assert await dispatcher.dispatch(request("resize", volume_id="v1", size_gb=5)) == 5


# Pydantic's lax mode, as its conversion table documents for JSON input: numeric strings,
# integral floats and booleans become ints; non-integral floats do not; nothing becomes a str.
@pytest.mark.parametrize(
    ("size_gb", "expected"),
    [("5", 5), (" 5 ", 5), (5.0, 5), ("5.0", 5), (True, 1)],
)
async def test_lax_conversion_to_int(dispatcher: Dispatcher, size_gb: Any, expected: int) -> None:
    result = await dispatcher.dispatch(request("create_volume", volume_id="v1", size_gb=size_gb))
    assert result["size_gb"] == expected
    assert type(result["size_gb"]) is int


@pytest.mark.parametrize("size_gb", [5.5, "five", None, [5], {"gb": 5}])
async def test_no_lossy_or_guessed_conversion_to_int(dispatcher: Dispatcher, size_gb: Any) -> None:
    with pytest.raises(InvalidArguments, match="size_gb"):
        await dispatcher.dispatch(request("create_volume", volume_id="v1", size_gb=size_gb))


@pytest.mark.parametrize("volume_id", [5, True, None])
async def test_nothing_is_converted_to_str(dispatcher: Dispatcher, volume_id: Any) -> None:
    with pytest.raises(InvalidArguments, match="volume_id: Input should be a valid string"):
        await dispatcher.dispatch(request("create_volume", volume_id=volume_id, size_gb=1))


async def test_rich_types_arrive_as_themselves(dispatcher: Dispatcher) -> None:
    blob = b"\x00\xfb\xff binary"
    result = await dispatcher.dispatch(
        request(
            "typed",
            when=WHEN,
            ident=ID,
            blob=blob,
            flavor=Flavor(name="m1.small", vcpus=1),
        )
    )
    assert result["when"] is datetime
    assert result["ident"] is UUID
    assert result["blob"] is bytes
    assert result["flavor"] is Flavor
    assert result["values"] == (WHEN, ID, blob, Flavor(name="m1.small", vcpus=1))


async def test_rich_types_from_their_json_forms(dispatcher: Dispatcher) -> None:
    # A caller in another language sends plain JSON; base64 in either alphabet.
    result = await dispatcher.dispatch(
        request(
            "typed",
            when="2026-01-02T03:04:05Z",
            ident=str(ID),
            blob="APv/",  # standard alphabet for b"\x00\xfb\xff"
            flavor={"name": "m1.small", "vcpus": "1"},
        )
    )
    assert result["values"] == (WHEN, ID, b"\x00\xfb\xff", Flavor(name="m1.small", vcpus=1))


async def test_bad_rich_value_is_named(dispatcher: Dispatcher) -> None:
    with pytest.raises(InvalidArguments) as info:
        await dispatcher.dispatch(
            request("typed", when="yesterday", ident="not-a-uuid", blob="", flavor={"name": "x"})
        )
    message = str(info.value)
    assert "when:" in message
    assert "ident:" in message
    assert "flavor.vcpus: missing required argument" in message


async def test_defaults_apply(dispatcher: Dispatcher) -> None:
    assert await dispatcher.dispatch(request("with_defaults", name="n")) == ("n", 1)
    assert await dispatcher.dispatch(request("with_defaults", name="n", count=3)) == ("n", 3)


async def test_unannotated_arguments_take_any_json(dispatcher: Dispatcher) -> None:
    value = {"a": [1, "b", None]}
    assert await dispatcher.dispatch(request("untyped", anything=value)) == value


async def test_method_without_context(dispatcher: Dispatcher) -> None:
    assert await dispatcher.dispatch(request("no_context", value=21)) == 42


async def test_context_recognised_by_its_type_hint(dispatcher: Dispatcher) -> None:
    ctx = Context(request_id="req-42")
    assert await dispatcher.dispatch(request("renamed_context", ctx=ctx, value=1)) == (
        "req-42",
        1,
    )


async def test_kwargs_handler_accepts_extra_arguments(dispatcher: Dispatcher) -> None:
    result = await dispatcher.dispatch(request("kwargs", first="1", second=2, third=[3]))
    assert result == {"first": 1, "rest": {"second": 2, "third": [3]}}


async def test_kwargs_handler_still_checks_named_arguments(dispatcher: Dispatcher) -> None:
    with pytest.raises(InvalidArguments, match="first: missing"):
        await dispatcher.dispatch(request("kwargs", second=2))


@pytest.mark.parametrize("name", ["ctx", "self"])
async def test_kwargs_handler_refuses_its_own_self_and_ctx(
    dispatcher: Dispatcher, name: str
) -> None:
    # Passed on to **rest they would be a second value for the parameter: a TypeError
    # from the call, logged with a traceback as if the method had failed.
    raw = encode_request(Context(), "kwargs", {"first": 1, name: 2}, "1.0", None)
    with pytest.raises(InvalidArguments, match=rf"^kwargs\(\): {name}: unexpected argument$"):
        await dispatcher.dispatch(decode_request(raw))


async def test_a_huge_bad_argument_is_named_briefly(dispatcher: Dispatcher) -> None:
    # The message is logged and sent back: it must not be as big as the request.
    with pytest.raises(InvalidArguments) as info:
        await dispatcher.dispatch(request("create_volume", volume_id="v1", size_gb="9x" * 500_000))
    assert str(info.value).startswith("create_volume(): size_gb: Input should be a valid integer")
    assert len(str(info.value)) < 300


async def test_many_unexpected_arguments_are_counted_not_listed(dispatcher: Dispatcher) -> None:
    args = {f"{'k' * 1000}{i}": i for i in range(1000)}
    with pytest.raises(InvalidArguments) as info:
        await dispatcher.dispatch(request("create_volume", volume_id="v1", size_gb=1, **args))
    assert str(info.value).endswith("; and 990 more")
    assert len(str(info.value)) < 2000


async def test_a_huge_unknown_method_is_named_briefly(dispatcher: Dispatcher) -> None:
    with pytest.raises(NoSuchMethod) as info:
        await dispatcher.dispatch(request("m" * 1_000_000))
    assert len(str(info.value)) < 200


async def test_an_argument_without_a_json_form_is_invalid(dispatcher: Dispatcher) -> None:
    # Only an in-process caller can hand the dispatcher such a value.
    bad = Request("untyped", {"anything": object()}, Context(), "1.0", None)
    with pytest.raises(InvalidArguments, match=r"^untyped\(\): not JSON-serialisable"):
        await dispatcher.dispatch(bad)


async def test_argument_names_that_clash_with_pydantic_members() -> None:
    # json, copy, schema, model_config: fine names for an RPC argument.
    dispatcher = Dispatcher(VolumeAPI())
    result = await dispatcher.dispatch(
        request("awkward_names", json="{}", copy=True, schema=2, model_config="x")
    )
    assert result == ["{}", True, 2, "x"]
    with pytest.raises(InvalidArguments, match="copy: missing"):
        await dispatcher.dispatch(request("awkward_names", json="{}", schema=2, model_config="x"))


async def test_sync_handler_runs_in_a_worker_thread(dispatcher: Dispatcher) -> None:
    ctx = Context(request_id="req-sync")
    result = await dispatcher.dispatch(request("sync_info", ctx=ctx, value="v"))
    assert result["thread"] is not threading.main_thread()
    assert result["thread"] is not threading.current_thread()
    assert (result["value"], result["request_id"]) == ("v", "req-sync")


async def test_sync_handler_does_not_block_the_loop() -> None:
    entered = threading.Event()
    release = threading.Event()

    class Blocking(Manager):
        def wait_for_release(self, ctx: Context) -> bool:
            entered.set()
            return release.wait(timeout=5)

    dispatcher = Dispatcher(Blocking(settings=isolated_settings()))
    results: list[bool] = []

    async def call() -> None:
        results.append(await dispatcher.dispatch(request("wait_for_release")))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            # Had the handler blocked the loop, this would only run after it gave up.
            await anyio.to_thread.run_sync(entered.wait, 5)
            release.set()
    assert results == [True]


# -- endpoints that cannot work are refused up front


@pytest.mark.parametrize(
    "source",
    [
        "async def bad(self, ctx, *volumes): ...",
        "async def bad(self, ctx, volume_id, /): ...",
    ],
)
def test_positional_only_or_star_args_refused_when_building(source: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    cls = type("Bad", (Manager,), {"bad": namespace["bad"]})
    with pytest.raises(TypeError, match="arguments travel by name"):
        Dispatcher(cls(settings=isolated_settings()))


def test_unresolvable_type_hint_refused_when_building() -> None:
    namespace: dict[str, Any] = {}
    exec("async def bad(self, ctx, volume: 'NoSuchType'): ...", namespace)
    cls = type("Bad", (Manager,), {"bad": namespace["bad"]})
    with pytest.raises(TypeError, match="type hints of bad"):
        Dispatcher(cls(settings=isolated_settings()))
