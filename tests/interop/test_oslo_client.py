"""An unmodified oslo.messaging ``RPCClient`` calling an aiosvc manager on ``rpc_wire="oslo"``.

What an OpenStack service that calls an aiosvc one relies on: calls and their results,
casts, fanout casts, ``prepare(server=...)``, version checks, the errors oslo.messaging
raises (its own ``NoSuchMethod`` and ``UnsupportedVersion``, allowed exceptions as
themselves, others as ``RemoteError``), the request context, timeouts and call-monitor
heartbeats. The aiosvc services here take oslo's ``rabbit://`` URL, as an operator copies
it from the OpenStack service's configuration.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest

from aiosvc import Service
from aiosvc.testing import handled, wait_until
from tests.interop import QuotaExceeded
from tests.interop.conftest import ALLOWED_MODULE, Oslo, ServeAiosvc, compute, rabbit_url

pytestmark = pytest.mark.interop

DISPATCHER = "oslo_messaging.rpc.dispatcher"


@pytest.fixture
def serve(serve_aiosvc: ServeAiosvc, fresh_amqp_url: str) -> ServeAiosvc:
    """``serve_aiosvc`` with the ``rabbit://`` URL oslo.messaging uses."""

    async def start(host: str = "aiosvc-a", **overrides: Any) -> Service:
        return await serve_aiosvc(host, url=rabbit_url(fresh_amqp_url), **overrides)

    return start


async def call(client: Any, ctxt: Any, method: str, **kwargs: Any) -> Any:
    """oslo's blocking ``client.call``, in a thread."""
    return await anyio.to_thread.run_sync(lambda: client.call(ctxt, method, **kwargs))


async def cast(client: Any, ctxt: Any, method: str, **kwargs: Any) -> None:
    """oslo's ``client.cast`` (it blocks until the broker has the message), in a thread."""
    await anyio.to_thread.run_sync(lambda: client.cast(ctxt, method, **kwargs))


async def test_call_returns_the_result_for_each_compatible_version(
    oslo: Oslo, serve: ServeAiosvc
) -> None:
    await serve()  # implements 1.3
    value = {"size": [1, 2.5, None, True], "name": "vol-ü"}
    for version in ("1.0", "1.1", "1.3"):
        client = oslo.client(version=version)
        assert await call(client, {}, "echo", value=[version, value]) == [version, value]


async def test_a_cast_reaches_one_service_and_a_fanout_cast_all(
    oslo: Oslo, serve: ServeAiosvc
) -> None:
    a, b = await serve("aiosvc-a"), await serve("aiosvc-b")
    client = oslo.client()
    async with handled(a, b, timeout=30):
        await cast(client, {}, "record", item="to-one")
    assert sorted(compute(a).records + compute(b).records) == ["to-one"]
    async with handled(a, b, count=2, timeout=30):
        await cast(client.prepare(fanout=True), {}, "record", item="to-all")
    assert compute(a).records.count("to-all") == compute(b).records.count("to-all") == 1


async def test_prepare_server_reaches_that_host_only(oslo: Oslo, serve: ServeAiosvc) -> None:
    a, b = await serve("aiosvc-a"), await serve("aiosvc-b")
    to_b = oslo.client().prepare(server="aiosvc-b")
    assert [await call(to_b, {}, "whoami") for _ in range(4)] == ["aiosvc-b"] * 4
    async with handled(b, timeout=30):
        await cast(to_b, {}, "record", item="for-b")
    assert compute(b).records == ["for-b"]
    assert compute(a).records == []
    assert a.rpc_server is not None
    assert a.rpc_server.handled == 0


async def test_refusals_are_oslo_messagings_dispatcher_errors(
    oslo: Oslo, serve: ServeAiosvc
) -> None:
    service = await serve()  # implements 1.3
    for version in ("1.5", "2.0"):
        with pytest.raises(oslo.messaging.RemoteError) as remote:
            await call(oslo.client(version=version), {}, "record", item=version)
        assert remote.value.exc_type == "UnsupportedVersion"
        # A client that allows oslo.messaging's dispatcher errors gets its own class.
        allowing = oslo.client(version=version, allowed_remote_exmods=(DISPATCHER,))
        with pytest.raises(oslo.messaging.UnsupportedVersion) as rebuilt:
            await call(allowing, {}, "record", item=version)
        assert (rebuilt.value.version, rebuilt.value.method) == (version, "record")
        assert f"requested API version {version}" in str(rebuilt.value)  # aiosvc's message
    assert compute(service).records == []

    with pytest.raises(oslo.messaging.RemoteError) as remote:
        await call(oslo.client(), {}, "resize_volume", size=2)
    assert remote.value.exc_type == "NoSuchMethod"
    assert "resize_volume" in remote.value.value
    allowing = oslo.client(allowed_remote_exmods=(DISPATCHER,))
    with pytest.raises(oslo.messaging.NoSuchMethod) as no_such:
        await call(allowing, {}, "resize_volume", size=2)
    assert no_such.value.method == "resize_volume"


async def test_allowed_and_builtin_exceptions_arrive_as_themselves(
    oslo: Oslo, serve: ServeAiosvc
) -> None:
    await serve()
    client = oslo.client(allowed_remote_exmods=(ALLOWED_MODULE,))
    with pytest.raises(QuotaExceeded) as raised:
        await call(client, {}, "fail", kind="quota")
    assert raised.value.args == ("quota exceeded for volumes",)
    assert raised.value.kwargs == {"resource": "volumes", "limit": 10}
    # oslo.messaging's rebuilt exception shows the message, then the remote traceback.
    assert "in fail" in str(raised.value)
    with pytest.raises(ValueError, match="size must be positive"):
        await call(client, {}, "fail", kind="value")


async def test_other_exceptions_arrive_as_remote_error(oslo: Oslo, serve: ServeAiosvc) -> None:
    await serve()
    client = oslo.client()  # allows nothing: the application's errors too are remote
    for kind, exc_type, value in [
        ("unlisted", "Unlisted", "the disk is on fire"),
        ("quota", "QuotaExceeded", "quota exceeded for volumes"),
    ]:
        with pytest.raises(oslo.messaging.RemoteError) as remote:
            await call(client, {}, "fail", kind=kind)
        assert (remote.value.exc_type, remote.value.value) == (exc_type, value)
        assert "in fail" in "".join(remote.value.traceback)
    # Arguments the method does not take: refused by aiosvc, remote to oslo.
    with pytest.raises(oslo.messaging.RemoteError) as remote:
        await call(client, {}, "echo", values=1)
    assert remote.value.exc_type == "InvalidArguments"


async def test_the_context_arrives_in_the_handler(oslo: Oslo, serve: ServeAiosvc) -> None:
    from oslo_context.context import RequestContext  # what OpenStack services send

    service = await serve()
    client = oslo.client()
    ctxt = RequestContext(
        user_id="alice",
        project_id="proj-1",
        roles=["member", "reader"],
        is_admin=True,
        request_id="req-" + str(uuid.uuid4()),
        global_request_id="req-" + str(uuid.uuid4()),
    )
    await call(client, ctxt, "record", item="oslo.context")
    ctx = compute(service).contexts[-1]
    assert (ctx.request_id, ctx.global_request_id) == (ctxt.request_id, ctxt.global_request_id)
    assert (ctx.user_id, ctx.project_id) == ("alice", "proj-1")  # from oslo.context's "user"
    assert (ctx.roles, ctx.is_admin) == (("member", "reader"), True)
    assert ctx.extra["user_identity"] == ctxt.to_dict()["user_identity"]

    # A plain dict, with older names and a key of the application's own.
    ctxt_dict = {
        "request_id": "req-dict",
        "user": "bob",
        "tenant": "proj-2",
        "roles": ["admin"],
        "is_admin": False,
        "instance_lock_checked": {"uuid": "i-1"},
    }
    await call(client, ctxt_dict, "record", item="dict")
    ctx = compute(service).contexts[-1]
    assert (ctx.request_id, ctx.user_id, ctx.project_id) == ("req-dict", "bob", "proj-2")
    assert (ctx.roles, ctx.is_admin) == (("admin",), False)
    assert ctx.extra == {"instance_lock_checked": {"uuid": "i-1"}}


async def test_a_call_times_out_then_the_service_goes_on(oslo: Oslo, serve: ServeAiosvc) -> None:
    service = await serve()
    manager = compute(service)
    client = oslo.client()
    started = time.monotonic()
    with pytest.raises(oslo.messaging.MessagingTimeout):
        await call(client.prepare(timeout=1), {}, "hold")
    # Late on a loaded machine, never early.
    assert 0.9 < time.monotonic() - started < 20
    manager.release.set()  # the held method returns; its late reply is dropped by oslo
    server = service.rpc_server
    assert server is not None
    await wait_until(lambda: server.in_flight == 0, timeout=30)
    assert await call(client, {}, "echo", value="after") == "after"


async def test_heartbeats_keep_a_long_call_alive(oslo: Oslo, serve: ServeAiosvc) -> None:
    await serve()
    # Without heartbeats (every 1 s) oslo's client gives up after 2 s; the method takes 3.
    client = oslo.client().prepare(timeout=30, call_monitor_timeout=2)
    started = time.monotonic()
    assert await call(client, {}, "work", seconds=3) == "done"
    assert time.monotonic() - started >= 3
