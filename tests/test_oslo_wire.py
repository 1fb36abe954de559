"""oslo.messaging's wire (``rpc_wire = "oslo"``), without a broker: the codec in
:mod:`aiosvc.rpc.oslo` against the real oslo.messaging functions.

What aiosvc writes is read with oslo's own code (kombu's JSON decoding, ``deserialize_msg``,
``unpack_context``, ``deserialize_remote_exception``, the reply waiter's
``_process_reply``), and what oslo writes (``serialize_msg``, ``pack_context``,
``serialize_remote_exception``, ``AMQPIncomingMessage._send_reply``) is read with aiosvc's.
Those tests are marked ``interop`` and import oslo.messaging inside (it is installed by the
``interop-test`` extra only). The rest need no oslo: bad input is refused with a
``MalformedMessage`` naming what was wrong, and nothing else ever escapes the decoders.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from aiosvc.context import Context
from aiosvc.exceptions import MalformedMessage, NoSuchMethod, RemoteError, UnsupportedVersion
from aiosvc.rpc import oslo
from aiosvc.rpc.client import RPCClient
from aiosvc.rpc.protocol import Request, encode_request, parse_version
from aiosvc.testing import isolated_settings
from aiosvc.transport.amqp import AMQPTransport
from aiosvc.transport.memory import MemoryTransport
from tests.interop import QuotaExceeded
from tests.test_properties import json_values
from tests.test_protocol import KeywordOnly

interop = pytest.mark.interop
DISPATCHER = "oslo_messaging.rpc.dispatcher"
#: The application's exceptions module (Nova's ``nova.exception``), which callers may allow.
APP = QuotaExceeded.__module__

CTX = Context(
    request_id="req-1",
    global_request_id="req-0",
    user_id="u1",
    project_id="p1",
    roles=("admin", "member"),
    is_admin=True,
    extra={"user_identity": "u1 p1 - - -", "auth_token": "tok", "read_only": False},
)


def raised(exc: BaseException) -> Any:
    """``sys.exc_info()`` with ``exc`` raised (so it has a traceback), as oslo takes it."""
    try:
        raise exc
    except BaseException:
        return sys.exc_info()


def call(**fields: Any) -> bytes:
    """An enveloped oslo call (aiosvc's encoder) with ``fields`` set."""
    message = json.loads(
        json.loads(
            oslo.encode_request(
                CTX, "echo", {"value": 1}, "1.0", None, msg_id="m1", reply_q="reply_q1"
            )
        )["oslo.message"]
    )
    message.update(fields)
    return envelope(message)


def envelope(message: Any, version: Any = "2.0") -> bytes:
    return json.dumps({"oslo.version": version, "oslo.message": json.dumps(message)}).encode()


# -- what oslo.messaging does, with its own functions


def oslo_receives(body: bytes) -> dict[str, Any]:
    """The message oslo's rabbit driver makes of ``body``: kombu decodes it
    (application/json, utf-8), then impl_rabbit's ``RabbitMessage`` (``deserialize_msg``)."""
    from kombu import serialization
    from oslo_messaging._drivers import common

    payload = serialization.loads(body, content_type="application/json", content_encoding="utf-8")
    message = common.deserialize_msg(payload)
    assert isinstance(message, dict)
    return message


def oslo_listens(body: bytes) -> tuple[dict[str, Any], Any, str | None]:
    """What oslo's ``AMQPListener.__call__`` takes from a request: the message (the fields
    left), its ``RpcContext`` (``unpack_context``) and its ``_unique_id`` (duplicate check)."""
    from oslo_messaging._drivers import amqp

    message = oslo_receives(body)
    ctxt = amqp.unpack_context(message)
    unique_id = amqp._MsgIdCache().check_duplicate_message(message)
    return message, ctxt, unique_id


def oslo_body(message: dict[str, Any], *, enveloped: bool = True) -> bytes:
    """``message`` as oslo's rabbit driver publishes it (``serialize_msg``, kombu JSON)."""
    from kombu import serialization
    from oslo_messaging._drivers import common

    _, _, data = serialization.dumps(
        common.serialize_msg(message) if enveloped else message, serializer="json"
    )
    return data if isinstance(data, bytes) else data.encode()


def oslo_request(
    ctxt: dict[str, Any],
    method: str,
    args: dict[str, Any],
    *,
    version: str | None = "1.0",
    namespace: str | None = None,
    msg_id: str | None = None,
    timeout: float | None = None,
    enveloped: bool = True,
) -> bytes:
    """A request as ``RPCClient._make_message`` and ``AMQPDriverBase._send`` build it."""
    from oslo_messaging._drivers import amqp

    message: dict[str, Any] = {"method": method, "args": args}
    if namespace is not None:
        message["namespace"] = namespace
    if version is not None:
        message["version"] = version
    if msg_id is not None:
        message.update(_msg_id=msg_id, _reply_q="reply_0a1b", _timeout=timeout)
    amqp._add_unique_id(message)
    amqp.pack_context(message, ctxt)
    return oslo_body(message, enveloped=enveloped)


def oslo_reply(
    msg_id: str, *, result: Any = None, failure: Any = None, ending: bool = True
) -> bytes:
    """What an oslo server's ``AMQPIncomingMessage._send_reply`` sends to the reply queue
    (``reply()`` with a result or ``sys.exc_info()``; ``heartbeat()`` is ending=False)."""
    from oslo_messaging._drivers import amqpdriver

    class Outbox:
        """The connection's ``direct_send``: what would go to the reply queue."""

        def __init__(self) -> None:
            self.sent: list[Any] = []

        def direct_send(self, reply_q: str, message: Any) -> None:
            self.sent.append(message)

    incoming = amqpdriver.AMQPIncomingMessage(
        None, {}, {}, None, msg_id, "reply_0a1b", None, amqpdriver.ObsoleteReplyQueuesCache(), None
    )
    outbox = Outbox()
    incoming._send_reply(outbox, result, failure, ending=ending)
    (message,) = outbox.sent
    return oslo_body(message, enveloped=False)  # _send_reply has enveloped it


def oslo_caller_reads(body: bytes, allowed: list[str]) -> tuple[Any, bool, str]:
    """What an oslo caller makes of a reply: ``(result or exception, ending, msg_id)``.

    The reply waiter's own code: ``ReplyWaiter.__call__`` pops ``_msg_id``, then
    ``_process_reply`` (duplicate check, ``deserialize_remote_exception``).
    """
    from oslo_messaging._drivers import amqp, amqpdriver

    message = oslo_receives(body)
    msg_id = message.pop("_msg_id")
    waiter = types.SimpleNamespace(msg_id_cache=amqp._MsgIdCache(), allowed_remote_exmods=allowed)
    result, ending = amqpdriver.ReplyWaiter._process_reply(waiter, message)
    return result, ending, msg_id


# -- aiosvc writes, oslo reads: requests


@interop
def test_oslo_reads_an_aiosvc_call() -> None:
    body = oslo.encode_request(
        CTX,
        "create_volume",
        {"volume_id": "v1", "size_gb": 2},
        "1.3",
        "storage",
        msg_id="0f0e",
        reply_q="reply_abc",
        call_monitor_timeout=30,
    )
    message, ctxt, unique_id = oslo_listens(body)
    assert message["method"] == "create_volume"
    assert message["args"] == {"volume_id": "v1", "size_gb": 2}
    assert (message["version"], message["namespace"]) == ("1.3", "storage")
    assert (ctxt.msg_id, ctxt.reply_q, ctxt.client_timeout) == ("0f0e", "reply_abc", 30)
    assert isinstance(unique_id, str)
    assert len(unique_id) == 32
    assert set(message) == {"method", "args", "version", "namespace"}  # nothing else left


@interop
def test_oslo_reads_an_aiosvc_cast() -> None:
    body = oslo.encode_request(CTX, "record", {"item": [1, "a"]}, "1.0", None)
    message, ctxt, unique_id = oslo_listens(body)
    assert message == {"method": "record", "args": {"item": [1, "a"]}, "version": "1.0"}
    assert (ctxt.msg_id, ctxt.reply_q, ctxt.client_timeout) == (None, None, None)  # a cast
    assert unique_id


@interop
def test_the_aiosvc_context_arrives_in_an_oslo_handler() -> None:
    from oslo_context.context import RequestContext

    _, rpc_context, _ = oslo_listens(oslo.encode_request(CTX, "m", {}, "1.0", None))
    ctxt = rpc_context.to_dict()
    # The raw dict an endpoint gets without a serializer: aiosvc's and oslo.context's names.
    assert ctxt["user_id"] == ctxt["user"] == "u1"
    assert ctxt["project_id"] == ctxt["project"] == "p1"
    assert (ctxt["request_id"], ctxt["global_request_id"]) == ("req-1", "req-0")
    assert (ctxt["roles"], ctxt["is_admin"]) == (["admin", "member"], True)
    assert (ctxt["user_identity"], ctxt["auth_token"], ctxt["read_only"]) == (
        "u1 p1 - - -",
        "tok",
        False,
    )
    # And what a service with oslo.context's RequestContextSerializer rebuilds.
    rebuilt = RequestContext.from_dict(ctxt)
    assert (rebuilt.user_id, rebuilt.project_id) == ("u1", "p1")
    assert (rebuilt.request_id, rebuilt.global_request_id) == ("req-1", "req-0")
    assert (rebuilt.roles, rebuilt.is_admin, rebuilt.auth_token) == (
        ["admin", "member"],
        True,
        "tok",
    )


@interop
@pytest.mark.parametrize("serializer", ["none", "oslo.context"])
def test_a_context_through_an_oslo_service_and_back(serializer: str) -> None:
    # An oslo service passes the context it got on to a call of its own, to aiosvc.
    from oslo_context.context import RequestContext

    _, rpc_context, _ = oslo_listens(oslo.encode_request(CTX, "m", {}, "1.0", None))
    ctxt = rpc_context.to_dict()
    if serializer == "oslo.context":
        ctxt = RequestContext.from_dict(ctxt).to_dict()
    ctx = oslo.decode_request(oslo_request(ctxt, "next", {})).context
    mapped = ("request_id", "global_request_id", "user_id", "project_id", "roles", "is_admin")
    assert [getattr(ctx, name) for name in mapped] == [getattr(CTX, name) for name in mapped]
    assert ctx.extra["auth_token"] == "tok"
    if serializer == "none":  # the raw dict keeps every key aiosvc sent
        assert CTX.extra.items() <= ctx.extra.items()


# -- oslo writes, aiosvc reads: requests


def _oslo_context(**kwargs: Any) -> dict[str, Any]:
    from oslo_context.context import RequestContext

    return RequestContext(**kwargs).to_dict()


@interop
def test_aiosvc_reads_an_oslo_call() -> None:
    ctxt = _oslo_context(
        user_id="u1",
        project_id="p1",
        roles=["reader", "member"],
        is_admin=False,
        auth_token="tok",
        request_id="req-9",
        global_request_id="req-8",
    )
    body = oslo_request(
        ctxt,
        "resize",
        {"flavor": {"vcpus": 2}},
        version="2.1",
        namespace="compute",
        msg_id="c0ffee",
        timeout=20,
    )
    request = oslo.decode_request(body)
    assert (request.method, request.args) == ("resize", {"flavor": {"vcpus": 2}})
    assert (request.version, request.namespace) == ("2.1", "compute")
    assert (request.msg_id, request.reply_to, request.call_monitor_timeout) == (
        "c0ffee",
        "reply_0a1b",
        20.0,
    )
    assert request.unique_id
    assert len(request.unique_id) == 32
    ctx = request.context
    assert (ctx.user_id, ctx.project_id) == ("u1", "p1")  # from oslo.context's user/project
    assert (ctx.roles, ctx.is_admin) == (("reader", "member"), False)
    assert (ctx.request_id, ctx.global_request_id) == ("req-9", "req-8")
    # Every other key is kept (and sent again on a call made while handling this one).
    assert ctx.extra["auth_token"] == "tok"
    assert ctx.extra["user_identity"] == "u1 p1 - - -"
    assert ctx.extra["read_only"] is False
    assert "user" not in ctx.extra
    assert "project" not in ctx.extra
    resent = oslo.pack_context(ctx)
    assert resent["_context_auth_token"] == "tok"
    assert resent["_context_user_identity"] == "u1 p1 - - -"


@interop
@pytest.mark.parametrize(
    ("fields", "user_id", "project_id"),
    [
        ({"user": "u", "project": "p"}, "u", "p"),  # oslo.context's to_dict()
        ({"user_id": "u", "tenant": "t"}, "u", "t"),  # older nova contexts
        ({"user_id": "u", "user": "other", "project_id": "p", "tenant": "t"}, "u", "p"),
        ({}, None, None),
    ],
)
def test_aiosvc_reads_oslo_context_aliases(
    fields: dict[str, Any], user_id: str | None, project_id: str | None
) -> None:
    ctx = oslo.decode_request(oslo_request(fields, "m", {})).context
    assert (ctx.user_id, ctx.project_id) == (user_id, project_id)
    assert not {"user", "project", "tenant"} & set(ctx.extra)


@interop
@pytest.mark.parametrize("enveloped", [True, False])  # oslo reads messages from before 2.0 too
def test_aiosvc_reads_an_oslo_cast_without_version(enveloped: bool) -> None:
    body = oslo_request(
        {"request_id": "req-2"}, "record", {"item": 3}, version=None, enveloped=enveloped
    )
    request = oslo.decode_request(body)
    assert (request.method, request.args, request.version) == ("record", {"item": 3}, "1.0")
    assert request.msg_id is request.reply_to is request.call_monitor_timeout is None
    assert request.context.request_id == "req-2"


@interop
def test_aiosvc_reads_an_oslo_call_without_a_call_monitor() -> None:
    request = oslo.decode_request(oslo_request({}, "m", {}, msg_id="c1", timeout=None))
    assert (request.msg_id, request.call_monitor_timeout) == ("c1", None)


# -- aiosvc alone: requests and contexts


def test_request_round_trip() -> None:
    body = oslo.encode_request(
        CTX,
        "m",
        {"a": [1, 2]},
        "1.2",
        "ns",
        msg_id="id1",
        reply_q="reply_x",
        call_monitor_timeout=6,
    )
    request = oslo.decode_request(body)
    assert request == Request(
        "m",
        {"a": [1, 2]},
        CTX,
        "1.2",
        "ns",
        reply_to="reply_x",
        msg_id="id1",
        call_monitor_timeout=6.0,
        unique_id=request.unique_id,
    )


def test_each_message_has_its_own_unique_id() -> None:
    ids = {oslo.decode_request(oslo.encode_request(CTX, "m", {}, "1.0", None)).unique_id}
    ids.add(oslo.decode_request(oslo.encode_request(CTX, "m", {}, "1.0", None)).unique_id)
    assert len(ids) == 2
    assert None not in ids


@pytest.mark.parametrize(
    "ctx",
    [
        CTX,
        Context(),
        Context(request_id="r", roles=("a",), extra={"nested": {"k": [1, None]}, "n": None}),
    ],
)
def test_context_round_trip(ctx: Context) -> None:
    packed = oslo.pack_context(ctx)
    assert all(key.startswith("_context_") for key in packed)
    assert oslo.unpack_context({k.removeprefix("_context_"): v for k, v in packed.items()}) == ctx


_MAPPED_NAMES = {
    "request_id",
    "global_request_id",
    "user_id",
    "user",
    "project_id",
    "project",
    "tenant",
    "roles",
    "is_admin",
}


@hypothesis.given(
    st.builds(
        Context,
        request_id=st.text(max_size=8),
        global_request_id=st.none() | st.text(max_size=8),
        user_id=st.none() | st.text(max_size=8),
        project_id=st.none() | st.text(max_size=8),
        roles=st.lists(st.text(max_size=6), max_size=3).map(tuple),
        is_admin=st.booleans(),
        extra=st.dictionaries(
            st.text(max_size=8).filter(lambda k: k not in _MAPPED_NAMES), json_values, max_size=4
        ),
    )
)
def test_any_context_round_trips(ctx: Context) -> None:
    body = oslo.encode_request(ctx, "m", {}, "1.0", None)
    assert oslo.decode_request(body).context == ctx


def test_context_is_sent_with_oslo_contexts_names_too() -> None:
    packed = oslo.pack_context(CTX)
    assert (packed["_context_user"], packed["_context_project"]) == ("u1", "p1")
    assert packed["_context_roles"] == ["admin", "member"]


def test_an_argument_without_a_json_form_is_named() -> None:
    with pytest.raises(TypeError, match=r"argument 'when' of m\(\)"):
        oslo.encode_request(CTX, "m", {"ok": 1, "when": object()}, "1.0", None)


# -- bad input: requests


@pytest.mark.parametrize("version", ["3.0", "1.0", 2, 2.0, "2.1", "2.0.1", "", None, "2.0x"])
def test_an_unsupported_envelope_version_is_named(version: Any) -> None:
    body = json.dumps({"oslo.version": version, "oslo.message": json.dumps({"method": "m"})})
    with pytest.raises(MalformedMessage, match=r"unsupported oslo\.messaging envelope") as info:
        oslo.decode_request(body.encode())
    assert repr(version) in str(info.value)
    with pytest.raises(MalformedMessage, match=r"unsupported oslo\.messaging envelope"):
        oslo.decode_reply(body.encode())


@pytest.mark.parametrize("version", ["2.0", "2.0.0"])  # what oslo's version_is_compatible takes
def test_envelope_version_2_0_is_read(version: str) -> None:
    assert oslo.decode_request(envelope({"method": "m"}, version)).method == "m"


@pytest.mark.parametrize(
    ("inner", "reason"),
    [
        (5, "must be a JSON string"),
        ({"method": "m"}, "must be a JSON string"),  # an object, not its JSON text
        (None, "must be a JSON string"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"text"', "must be a JSON object, got str"),
    ],
)
def test_a_bad_oslo_message_inside_the_envelope(inner: Any, reason: str) -> None:
    body = json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode()
    with pytest.raises(MalformedMessage, match=reason):
        oslo.decode_request(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x80\x01binary", "not valid JSON"),
        (b"[]", "must be a JSON object, got list"),
        (b"null", "must be a JSON object, got NoneType"),
    ],
)
def test_a_body_that_is_not_an_object(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        oslo.decode_request(body)


def test_an_aiosvc_wire_request_is_named() -> None:
    body = encode_request(CTX, "m", {}, "1.0", None)
    with pytest.raises(MalformedMessage) as info:
        oslo.decode_request(body)
    message = str(info.value)
    assert "aiosvc-wire request" in message
    assert "rpc_wire='aiosvc'" in message
    assert "rpc_wire='oslo'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"method": None}, "'method' must be a non-empty string"),
        ({"method": ""}, "'method' must be a non-empty string"),
        ({"method": 3}, "'method' must be a non-empty string"),
        ({"args": [1]}, "'args' must be an object"),
        ({"version": 1.0}, "'version' must be a string"),
        ({"version": "1"}, "invalid API version"),
        ({"namespace": 5}, "'namespace' must be a string or null"),
        ({"_msg_id": 7}, "'_msg_id' must be a string"),
        ({"_reply_q": None}, "needs '_reply_q'"),
        ({"_reply_q": ""}, "needs '_reply_q'"),
        ({"_reply_q": 1}, "needs '_reply_q'"),
        ({"_timeout": "x"}, "'_timeout' must be a non-negative"),
        ({"_timeout": -1}, "'_timeout' must be a non-negative"),
        ({"_timeout": True}, "'_timeout' must be a non-negative"),
        ({"_timeout": [5]}, "'_timeout' must be a non-negative"),
        ({"_context_roles": "admin"}, "'roles' must be a list of strings"),
        ({"_context_roles": ["admin", 1]}, "'roles' must be a list of strings"),
        ({"_context_user_id": 5}, "'user_id' must be a string"),
        ({"_context_user_id": None, "_context_user": 5}, "'user_id' must be a string"),
        (
            {"_context_tenant": ["p"], "_context_project": None, "_context_project_id": None},
            "'project_id' must be a string",
        ),
        ({"_context_request_id": {}}, "'request_id' must be a string"),
        ({"_context_is_admin": "yes"}, "'is_admin' must be a boolean"),
    ],
)
def test_a_bad_request_field_is_named(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        oslo.decode_request(call(**fields))


@pytest.mark.parametrize(
    "timeout",
    [b"Infinity", b"-Infinity", b"NaN", b"1e400", b"1" + b"0" * 400],
)
def test_a_call_monitor_timeout_that_is_no_number_of_seconds(timeout: bytes) -> None:
    # 10**400 has no float form; inf and NaN would reach the server's heartbeat interval
    # (int(inf) fails there) after it acknowledged the message: the caller would get nothing.
    body = b'{"method": "m", "_msg_id": "a", "_reply_q": "reply_a", "_timeout": ' + timeout + b"}"
    with pytest.raises(MalformedMessage, match="'_timeout' must be a non-negative"):
        oslo.decode_request(body)


@pytest.mark.parametrize(("timeout", "seconds"), [(None, None), (0, None), (5, 5.0), (2.5, 2.5)])
def test_call_monitor_timeout(timeout: float | None, seconds: float | None) -> None:
    assert oslo.decode_request(call(_timeout=timeout)).call_monitor_timeout == seconds


def test_a_cast_has_no_reply_address_even_with_a_reply_queue() -> None:
    request = oslo.decode_request(call(_msg_id=None, _timeout=9))
    assert request.msg_id is request.reply_to is None


# -- replies


@interop
def test_oslo_reads_an_aiosvc_result() -> None:
    body = oslo.encode_result("m1", {"id": "v1", "sizes": [1, 2]})
    message = oslo_receives(body)
    assert set(message) == {"result", "failure", "ending", "_msg_id", "_unique_id"}
    assert oslo_caller_reads(body, []) == ({"id": "v1", "sizes": [1, 2]}, True, "m1")


@interop
def test_oslo_reads_an_aiosvc_heartbeat() -> None:
    body = oslo.encode_heartbeat("m1")
    message = oslo_receives(body)
    assert (message["result"], message["failure"], message["ending"]) == (None, None, False)
    # (None, False) is what oslo's waiter takes for a heartbeat: it restarts its timer.
    assert oslo_caller_reads(body, []) == (None, False, "m1")


@interop
def test_oslo_reads_an_aiosvc_none_result_as_the_end_of_the_call() -> None:
    assert oslo_caller_reads(oslo.encode_result("m1", None), []) == (None, True, "m1")


@interop
def test_oslo_reads_an_aiosvc_failure() -> None:
    body = oslo.encode_failure("m1", raised(KeyError("v1"))[1], "detach")
    message = oslo_receives(body)
    assert set(message) == {"result", "failure", "ending", "_msg_id", "_unique_id"}
    assert isinstance(message["failure"], str)  # a JSON string inside the JSON, as oslo's
    exc, ending, msg_id = oslo_caller_reads(body, [])
    assert (type(exc), ending, msg_id) == (KeyError, True, "m1")


@interop
@pytest.mark.parametrize("result", [{"a": [1, None]}, 0, "", [], False, "text"])
def test_aiosvc_reads_an_oslo_result(result: Any) -> None:
    reply = oslo.decode_reply(oslo_reply("m7", result=result))
    assert (reply.msg_id, reply.ending, reply.result, reply.failure) == ("m7", True, result, None)
    assert not reply.heartbeat


@interop
def test_aiosvc_reads_an_oslo_heartbeat() -> None:
    reply = oslo.decode_reply(oslo_reply("m7", ending=False))
    assert (reply.msg_id, reply.ending, reply.result, reply.failure) == ("m7", False, None, None)
    assert reply.heartbeat


@interop
def test_aiosvc_reads_an_oslo_failure() -> None:
    reply = oslo.decode_reply(oslo_reply("m7", failure=raised(ValueError("bad size", 3))))
    assert (reply.msg_id, reply.ending, reply.result) == ("m7", True, None)
    assert reply.failure is not None
    assert not reply.heartbeat
    exc = oslo.rebuild_failure(reply.failure)
    assert type(exc) is ValueError
    assert exc.args == ("bad size", 3)


def test_a_none_result_is_no_heartbeat() -> None:
    reply = oslo.decode_reply(oslo.encode_result("m1", None))
    assert (reply.ending, reply.result, reply.heartbeat) == (True, None, False)
    assert oslo.decode_reply(oslo.encode_heartbeat("m1")).heartbeat


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "'failure' must hold a JSON object"),
        ([1], "'failure' must hold a JSON object"),
        (5, "'failure' must hold a JSON object"),
    ],
)
def test_a_bad_failure_in_a_reply(failure: Any, reason: str) -> None:
    body = envelope({"result": None, "failure": failure, "ending": True, "_msg_id": "m"})
    with pytest.raises(MalformedMessage, match=reason):
        oslo.decode_reply(body)


# -- failures: aiosvc raises, oslo rebuilds


def _oslo_rebuilds(
    exc: BaseException, allowed: list[str], method: str = "m", version: str = "1.0"
) -> Any:
    from oslo_messaging._drivers.common import deserialize_remote_exception

    return deserialize_remote_exception(oslo.serialize_failure(exc, method, version), allowed)


@interop
def test_oslo_rebuilds_a_builtin_exception() -> None:
    exc = _oslo_rebuilds(raised(ValueError("size_gb must be positive", -1))[1], [])
    assert type(exc) is ValueError
    # oslo puts the message and the remote traceback in the first arg of a builtin.
    assert "size_gb must be positive" in exc.args[0]
    assert "Traceback" in exc.args[0]
    assert exc.args[1:] == (-1,)


@interop
def test_oslo_rebuilds_an_allowed_exception_with_its_kwargs() -> None:
    exc = _oslo_rebuilds(
        QuotaExceeded("quota exceeded for cores", resource="cores", limit=4), [APP]
    )
    assert isinstance(exc, QuotaExceeded)
    assert exc.kwargs == {"resource": "cores", "limit": 4}
    assert "quota exceeded for cores" in str(exc)


@interop
def test_oslo_gets_a_remote_error_for_a_class_it_does_not_allow() -> None:
    from oslo_messaging import RemoteError as OsloRemoteError

    exc = _oslo_rebuilds(raised(QuotaExceeded("over quota"))[1], ["some.other.module"])
    assert type(exc) is OsloRemoteError
    assert (exc.exc_type, exc.value) == ("QuotaExceeded", "over quota")
    assert any("QuotaExceeded" in line for line in exc.traceback)


@interop
def test_oslo_rebuilds_aiosvcs_no_such_method_and_unsupported_version_as_its_own() -> None:
    from oslo_messaging import RemoteError as OsloRemoteError
    from oslo_messaging.rpc import dispatcher

    exc = _oslo_rebuilds(NoSuchMethod("Volumes has no RPC method fly"), [DISPATCHER], "fly")
    assert isinstance(exc, dispatcher.NoSuchMethod)
    assert exc.method == "fly"
    exc = _oslo_rebuilds(UnsupportedVersion("needs 2.0, has 1.3"), [DISPATCHER], "fly", "2.0")
    assert isinstance(exc, dispatcher.UnsupportedVersion)
    assert (exc.method, exc.version) == ("fly", "2.0")
    # An oslo caller that allows nothing (the default) gets RemoteError, as from oslo.
    exc = _oslo_rebuilds(NoSuchMethod("no fly"), [], "fly")
    assert type(exc) is OsloRemoteError
    assert exc.exc_type == "NoSuchMethod"


# -- failures: oslo raises, aiosvc rebuilds


def _oslo_failure(exc: BaseException) -> dict[str, Any]:
    from oslo_messaging._drivers.common import serialize_remote_exception

    failure = json.loads(serialize_remote_exception(raised(exc)))
    assert isinstance(failure, dict)
    return failure


@interop
@pytest.mark.parametrize("exc", [ValueError("bad", 2), KeyError("v1"), OSError(2, "gone")])
def test_aiosvc_rebuilds_an_oslo_builtin_exception(exc: Exception) -> None:
    rebuilt = oslo.rebuild_failure(_oslo_failure(exc))  # builtins always, as oslo does
    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args
    assert any("Traceback" in line for line in rebuilt.remote_traceback)  # type: ignore[attr-defined]


@interop
@pytest.mark.parametrize("allowed", [APP, f"{APP}.QuotaExceeded"])
def test_aiosvc_rebuilds_an_allowed_oslo_exception_with_its_kwargs(allowed: str) -> None:
    rebuilt = oslo.rebuild_failure(
        _oslo_failure(QuotaExceeded("quota exceeded for ram", resource="ram")), [allowed]
    )
    assert type(rebuilt) is QuotaExceeded
    assert rebuilt.kwargs == {"resource": "ram"}
    assert str(rebuilt) == "quota exceeded for ram"
    assert rebuilt.remote_traceback  # type: ignore[attr-defined]


@interop
def test_aiosvc_gets_a_remote_error_for_an_oslo_exception_it_does_not_allow() -> None:
    rebuilt = oslo.rebuild_failure(_oslo_failure(QuotaExceeded("over")), ["other.module"])
    assert isinstance(rebuilt, RemoteError)
    assert (rebuilt.exc_type, rebuilt.value) == (f"{APP}.QuotaExceeded", "over")
    assert any("QuotaExceeded" in line for line in rebuilt.traceback)


@interop
def test_aiosvc_rebuilds_oslos_no_such_method_and_unsupported_version_as_its_own() -> None:
    from oslo_messaging.rpc import dispatcher

    rebuilt = oslo.rebuild_failure(_oslo_failure(dispatcher.NoSuchMethod("fly")))
    assert type(rebuilt) is NoSuchMethod
    assert str(rebuilt) == "Endpoint does not support RPC method fly"
    rebuilt = oslo.rebuild_failure(_oslo_failure(dispatcher.UnsupportedVersion("3.0", "fly")))
    assert type(rebuilt) is UnsupportedVersion
    assert "3.0" in str(rebuilt)
    assert "fly" in str(rebuilt)
    assert rebuilt.remote_traceback  # type: ignore[attr-defined]


@interop
def test_an_allowed_oslo_exception_that_cannot_be_rebuilt_is_a_remote_error() -> None:
    rebuilt = oslo.rebuild_failure(_oslo_failure(KeywordOnly(code=3)), [KeywordOnly.__module__])
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.exc_type == f"{KeywordOnly.__module__}.KeywordOnly"


# -- failures: aiosvc alone


def test_a_failure_has_oslos_fields() -> None:
    failure = json.loads(
        oslo.serialize_failure(raised(QuotaExceeded("quota exceeded for ram", resource="ram"))[1])
    )
    assert set(failure) == {"class", "module", "message", "tb", "args", "kwargs"}
    assert (failure["class"], failure["module"]) == ("QuotaExceeded", APP)
    assert (failure["message"], failure["kwargs"]) == (
        "quota exceeded for ram",
        {"resource": "ram"},
    )
    assert failure["args"] == ["quota exceeded for ram"]
    assert any("QuotaExceeded" in line for line in failure["tb"])


@pytest.mark.parametrize(
    ("exc", "name", "args"),
    [
        (NoSuchMethod("Volumes has no RPC method fly"), "NoSuchMethod", ["fly"]),
        (UnsupportedVersion("'fly': requested 3.0"), "UnsupportedVersion", ["3.0", "fly"]),
    ],
)
def test_aiosvc_refusals_travel_as_oslos(exc: Exception, name: str, args: list[str]) -> None:
    failure = json.loads(oslo.serialize_failure(exc, "fly", "3.0"))
    assert (failure["module"], failure["class"], failure["args"]) == (DISPATCHER, name, args)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError(object()),  # args without a JSON form
        ValueError("\ud800 a lone surrogate"),
        ValueError({"nested": {1, 2}}),
    ],
)
def test_any_exception_serialises(exc: Exception) -> None:
    failure = json.loads(oslo.serialize_failure(raised(exc)[1]))
    assert failure["class"] == type(exc).__name__
    assert isinstance(failure["message"], str)
    assert isinstance(failure["args"], list)


class Unprintable(Exception):
    """An exception whose ``__str__`` fails."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize("args", [(), (object(),)])
def test_an_exception_whose_str_fails_serialises(args: tuple[Any, ...]) -> None:
    failure = json.loads(oslo.serialize_failure(raised(Unprintable(*args))[1]))
    assert failure["class"] == "Unprintable"
    assert "str() failed" in failure["message"]


@pytest.mark.parametrize(
    ("failure", "exc_type"),
    [
        ({"class": "SystemExit", "module": "builtins", "args": [0]}, "builtins.SystemExit"),
        ({"class": "KeyboardInterrupt", "module": "exceptions"}, "builtins.KeyboardInterrupt"),
        ({"class": "print", "module": "builtins", "args": ["x"]}, "builtins.print"),
        ({"class": "system", "module": "os", "args": ["true"]}, "os.system"),
        ({"class": "NoSuchError", "module": "builtins"}, "builtins.NoSuchError"),
        ({"class": "Error", "module": "no_such_module_xyz"}, "no_such_module_xyz.Error"),
    ],
)
def test_a_remote_can_only_make_the_caller_raise_exceptions(
    failure: dict[str, Any], exc_type: str
) -> None:
    rebuilt = oslo.rebuild_failure(failure, ["os", "no_such_module_xyz"])
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.exc_type == exc_type


def test_a_python2_builtin_is_rebuilt() -> None:
    rebuilt = oslo.rebuild_failure({"class": "KeyError", "module": "exceptions", "args": ["k"]})
    assert type(rebuilt) is KeyError
    assert rebuilt.args == ("k",)


@pytest.mark.parametrize(
    "failure",
    [
        {"class": "ValueError", "module": "builtins", "tb": 5},
        {"class": "QuotaExceeded", "module": APP, "tb": 5},
        {"class": "Mystery", "module": "far.away", "tb": {"a": 1}},
        {"class": "ValueError", "module": "builtins", "tb": "one string"},
        {"class": "ValueError", "module": "builtins", "args": "abc", "kwargs": [1]},
        {"class": "ValueError", "module": "builtins", "kwargs": {"nope": 1}},
        {"class": ["x"], "module": {"y": 1}, "message": 5},
        {"class": APP},  # no module: the class name alone matches an allowed module
        {},
    ],
)
def test_a_failure_with_bad_fields_is_still_an_exception(failure: dict[str, Any]) -> None:
    rebuilt = oslo.rebuild_failure(failure, [APP])
    assert isinstance(rebuilt, Exception)
    remote_tb = getattr(rebuilt, "remote_traceback", None) or getattr(rebuilt, "traceback", [])
    assert isinstance(remote_tb, list)
    assert all(isinstance(line, str) for line in remote_tb)


# -- never anything but MalformedMessage (the project's hypothesis profile)


def _decodes_or_refuses(decode: Callable[[bytes], Any], body: bytes) -> Any:
    """What ``decode`` returns, or None when it refused ``body`` as documented."""
    try:
        return decode(body)
    except MalformedMessage as exc:
        reason = str(exc)
    assert reason, "a MalformedMessage must say what is wrong"
    assert len(reason) < 500, "the reason is logged per message: it must be short"
    assert "\n" not in reason, "one log line"
    return None


def _check_request(request: Request | None) -> None:
    if request is None:
        return
    assert isinstance(request.method, str)
    assert request.method
    assert isinstance(request.args, dict)
    parse_version(request.version)
    assert isinstance(request.context, Context)
    assert request.msg_id is None or isinstance(request.reply_to, str)
    cmt = request.call_monitor_timeout
    assert cmt is None or (0 < cmt < float("inf"))
    int(cmt or 0)  # as the server computes its heartbeat interval


def _check_reply(reply: oslo.Reply | None) -> None:
    if reply is not None and reply.failure is not None:
        assert isinstance(oslo.rebuild_failure(reply.failure, [APP, "os"]), Exception)


#: The fields of a request (the properties below vary them one at a time, or at random).
REQUEST_FIELDS = [
    "method",
    "args",
    "version",
    "namespace",
    "_msg_id",
    "_reply_q",
    "_timeout",
    "_context_roles",
    "_context_user",
    "_context_project",
    "_context_is_admin",
]
OTHER_FIELDS = ["_unique_id", "result", "failure", "ending", "oslo.version", "oslo.message"]

bodies = json_values | st.dictionaries(
    st.sampled_from([*REQUEST_FIELDS, *OTHER_FIELDS, "aiosvc"]),
    json_values | st.sampled_from([1e400, float("nan"), 10**400, "2.0", "echo", "reply_q"]),
)


@hypothesis.given(bodies, st.booleans())
def test_decoders_over_arbitrary_json(value: Any, enveloped: bool) -> None:
    if enveloped:
        body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(value)}).encode()
    else:
        body = json.dumps(value).encode()
    _check_request(_decodes_or_refuses(oslo.decode_request, body))
    _check_reply(_decodes_or_refuses(oslo.decode_reply, body))


@hypothesis.given(
    st.sampled_from(REQUEST_FIELDS),
    json_values | st.sampled_from([True, -1, 0, 1e400, float("nan"), 10**400]),
)
def test_decoder_over_near_valid_calls(name: str, value: Any) -> None:
    _check_request(_decodes_or_refuses(oslo.decode_request, call(**{name: value})))


@hypothesis.given(
    st.dictionaries(
        st.sampled_from(["class", "module", "message", "tb", "args", "kwargs"]),
        json_values | st.sampled_from(["ValueError", "builtins", "KeyError", APP]),
    )
)
def test_rebuild_over_arbitrary_failures(failure: dict[str, Any]) -> None:
    _check_reply(oslo.decode_reply(envelope({"failure": json.dumps(failure), "ending": True})))


@hypothesis.given(st.binary(max_size=200))
def test_decoders_over_arbitrary_bytes(body: bytes) -> None:
    _check_request(_decodes_or_refuses(oslo.decode_request, body))
    _check_reply(_decodes_or_refuses(oslo.decode_reply, body))


# -- the client's option


def test_call_monitor_timeout_needs_the_oslo_wire() -> None:
    transport = MemoryTransport(isolated_settings())
    with pytest.raises(ValueError, match="call_monitor_timeout needs rpc_wire='oslo'"):
        RPCClient(transport, "volume", call_monitor_timeout=5)
    client = RPCClient(transport, "volume")
    with pytest.raises(ValueError, match="rpc_wire='oslo'"):
        client.prepare(call_monitor_timeout=5)


def test_call_monitor_timeout_on_the_oslo_wire() -> None:
    settings = isolated_settings(transport_url="rabbit://127.0.0.1:1/", rpc_wire="oslo")
    transport = AMQPTransport(settings)  # not connected: the client checks its options
    client = RPCClient(transport, "volume", call_monitor_timeout=5)
    assert client.prepare(timeout=9).call_monitor_timeout == 5
    assert client.prepare(call_monitor_timeout=None).call_monitor_timeout is None
    for bad in (0, -1):
        with pytest.raises(ValueError, match="call_monitor_timeout must be positive"):
            RPCClient(transport, "volume", call_monitor_timeout=bad)
