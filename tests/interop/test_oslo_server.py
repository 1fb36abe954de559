"""An aiosvc ``RPCClient`` on ``rpc_wire="oslo"`` calling an unmodified oslo.messaging server.

The server is oslo.messaging's ``get_rpc_server`` (threading executor) with an endpoint
class (:class:`~tests.interop.conftest.Endpoint`, ``target = Target(version="1.3")``), as
an OpenStack service runs it. What an aiosvc service that calls one relies on: calls and
their results, casts, fanout casts, ``server=``, version checks, aiosvc's own
``NoSuchMethod`` and ``UnsupportedVersion`` for oslo.messaging's, exceptions rebuilt per
``allowed_remote_exceptions``, the context as the endpoint's ``ctxt`` dict, timeouts and
call-monitor heartbeats.
"""

from __future__ import annotations

import time

import pytest

import aiosvc
from aiosvc import Context
from aiosvc.testing import wait_until
from tests.interop import QuotaExceeded
from tests.interop.conftest import ALLOWED_MODULE, AiosvcClient, Oslo, Unlisted

pytestmark = pytest.mark.interop


async def test_call_returns_the_result_for_each_compatible_version(
    oslo: Oslo, aiosvc_client: AiosvcClient
) -> None:
    await oslo.serve("oslo-a")  # implements 1.3
    client = await aiosvc_client()
    value = {"size": [1, 2.5, None, True], "name": "vol-ü"}
    for version in ("1.0", "1.1", "1.3"):
        prepared = client.prepare(version=version)
        assert await prepared.call(None, "echo", value=[version, value]) == [version, value]


async def test_a_cast_reaches_one_server_and_a_fanout_cast_all(
    oslo: Oslo, aiosvc_client: AiosvcClient
) -> None:
    a, b = await oslo.serve("oslo-a"), await oslo.serve("oslo-b")
    client = await aiosvc_client()
    await client.cast(None, "record", item="to-one")
    await wait_until(lambda: a.records + b.records == ["to-one"], timeout=30)
    await client.prepare(fanout=True).cast(None, "record", item="to-all")
    await wait_until(lambda: "to-all" in a.records and "to-all" in b.records, timeout=30)
    assert a.records.count("to-all") == b.records.count("to-all") == 1


async def test_server_reaches_that_server_only(oslo: Oslo, aiosvc_client: AiosvcClient) -> None:
    a, b = await oslo.serve("oslo-a"), await oslo.serve("oslo-b")
    to_b = (await aiosvc_client()).prepare(server="oslo-b")
    assert [await to_b.call(None, "whoami") for _ in range(4)] == ["oslo-b"] * 4
    await to_b.cast(None, "record", item="for-b")
    await wait_until(lambda: b.records == ["for-b"], timeout=30)
    assert a.records == []


async def test_refusals_are_aiosvcs_own_errors(oslo: Oslo, aiosvc_client: AiosvcClient) -> None:
    endpoint = await oslo.serve("oslo-a")  # implements 1.3
    client = await aiosvc_client()
    for version in ("1.5", "2.0"):
        with pytest.raises(aiosvc.UnsupportedVersion, match=f"version {version}"):
            await client.prepare(version=version).call(None, "record", item=version)
    with pytest.raises(aiosvc.NoSuchMethod, match="resize_volume"):
        await client.call(None, "resize_volume", size=2)
    assert endpoint.records == []


async def test_exceptions_are_rebuilt_as_allowed(oslo: Oslo, aiosvc_client: AiosvcClient) -> None:
    await oslo.serve("oslo-a")
    allowing = await aiosvc_client(allowed_remote_exceptions=[ALLOWED_MODULE])
    with pytest.raises(QuotaExceeded) as quota:
        await allowing.call(None, "fail", kind="quota")
    assert quota.value.args == ("quota exceeded for volumes",)
    assert quota.value.kwargs == {"resource": "volumes", "limit": 10}
    assert "in fail" in "".join(quota.value.remote_traceback)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="size must be positive"):
        await allowing.call(None, "fail", kind="value")  # builtins: always
    with pytest.raises(aiosvc.RemoteError) as remote:
        await allowing.call(None, "fail", kind="unlisted")
    expected = f"{Unlisted.__module__}.Unlisted"
    assert (remote.value.exc_type, remote.value.value) == (expected, "the disk is on fire")
    assert "in fail" in "".join(remote.value.traceback)
    # A client that allows nothing gets the application's errors as RemoteError too.
    strict = await aiosvc_client()
    with pytest.raises(aiosvc.RemoteError) as remote:
        await strict.call(None, "fail", kind="quota")
    assert remote.value.exc_type == f"{ALLOWED_MODULE}.QuotaExceeded"


async def test_the_context_arrives_as_the_endpoints_ctxt(
    oslo: Oslo, aiosvc_client: AiosvcClient
) -> None:
    from oslo_context.context import RequestContext  # what OpenStack services read it with

    endpoint = await oslo.serve("oslo-a")
    client = await aiosvc_client()
    ctx = Context(
        request_id="req-aiosvc-1",
        global_request_id="req-global-1",
        user_id="alice",
        project_id="proj-1",
        roles=("member", "reader"),
        is_admin=True,
        extra={"instance_lock_checked": True},
    )
    await client.call(ctx, "record", item="with-context")
    ctxt = endpoint.contexts[-1]
    assert {k: ctxt[k] for k in ("request_id", "global_request_id", "roles", "is_admin")} == {
        "request_id": "req-aiosvc-1",
        "global_request_id": "req-global-1",
        "roles": ["member", "reader"],
        "is_admin": True,
    }
    assert ctxt["user_id"] == ctxt["user"] == "alice"
    assert ctxt["project_id"] == ctxt["project"] == "proj-1"
    assert ctxt["instance_lock_checked"] is True
    context = RequestContext.from_dict(ctxt)
    assert (context.user_id, context.project_id, context.roles) == (
        "alice",
        "proj-1",
        ["member", "reader"],
    )
    assert (context.request_id, context.global_request_id) == ("req-aiosvc-1", "req-global-1")


async def test_a_call_times_out_then_the_server_goes_on(
    oslo: Oslo, aiosvc_client: AiosvcClient
) -> None:
    endpoint = await oslo.serve("oslo-a")
    client = await aiosvc_client()
    started = time.monotonic()
    with pytest.raises(aiosvc.MessagingTimeout):
        await client.prepare(timeout=1).call(None, "hold")
    assert 0.9 < time.monotonic() - started < 20  # late on a loaded machine, never early
    endpoint.release.set()  # its late reply is dropped by aiosvc's client
    assert await client.call(None, "echo", value="after") == "after"


async def test_heartbeats_keep_a_long_call_alive_and_their_absence_ends_it(
    oslo: Oslo, aiosvc_client: AiosvcClient
) -> None:
    await oslo.serve("oslo-a")
    client = (await aiosvc_client()).prepare(timeout=30, call_monitor_timeout=2)
    started = time.monotonic()
    # Without heartbeats (every 1 s) the call would fail after 2 s; the method takes 3.
    assert await client.call(None, "work", seconds=3) == "done"
    assert time.monotonic() - started >= 3

    # A server whose queue is there but which is gone sends none: the call fails after
    # the call-monitor timeout, long before its own timeout.
    gone = await oslo.serve("oslo-gone")
    await oslo.stop(gone)
    started = time.monotonic()
    with pytest.raises(aiosvc.MessagingTimeout, match="call-monitor"):
        await client.prepare(server="oslo-gone").call(None, "echo", value=1)
    assert 1.9 < time.monotonic() - started < 20
