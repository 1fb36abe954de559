"""oslo.messaging's wire format (its rabbit driver's), for ``rpc_wire = "oslo"``: pure functions.

A message is a JSON envelope whose ``oslo.message`` is itself a JSON string::

    {"oslo.version": "2.0", "oslo.message": "{\\"method\\": \\"create_volume\\", ...}"}

A request, once unwrapped::

    {"method": "create_volume", "args": {"volume_id": "v1"}, "version": "1.1",
     "namespace": null, "_unique_id": "<hex>", "_context_request_id": "req-...", ...,
     "_msg_id": "<hex>", "_reply_q": "reply_<hex>", "_timeout": 60}

(the last three for a call only; ``_timeout`` is the caller's call-monitor timeout, or
null), and a reply ``{"result": ..., "failure": null | "<json>", "ending": true,
"_msg_id": "<hex>", "_unique_id": "<hex>"}``. A reply with ``ending`` false and neither
result nor failure is a call-monitor heartbeat: the method still runs.

A failure is a JSON *string* of ``{"class", "module", "message", "tb", "args", "kwargs"}``.
The caller rebuilds a builtin exception, or one of a module it allows, as itself (built
from ``args`` and ``kwargs``); anything else is a :class:`~aiosvc.exceptions.RemoteError`.
aiosvc's ``NoSuchMethod`` and ``UnsupportedVersion`` travel as oslo.messaging's classes of
those names (``oslo_messaging.rpc.dispatcher``), so an oslo caller sees what an oslo server
would send, and the reverse.

The context travels as flat ``_context_<key>`` fields. aiosvc's :class:`~aiosvc.Context`
maps ``request_id``, ``global_request_id``, ``user_id`` (also read from oslo.context's
``user``), ``project_id`` (also ``project``, ``tenant``), ``roles`` and ``is_admin``; every
other key is kept in ``extra`` and sent again.

Nova: ``oslo_messaging._drivers.common`` (``serialize_msg``, ``serialize_remote_exception``,
``deserialize_remote_exception``) and ``amqp.py`` (``pack_context``, ``unpack_context``).
"""

from __future__ import annotations

import sys
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_core

from ..context import Context
from ..exceptions import MalformedMessage, NoSuchMethod, RemoteError, UnsupportedVersion
from .protocol import (
    Request,
    brief,
    check_arguments,
    dumps,
    exception_text,
    parse_version,
    rebuild_allowed,
    rebuild_exception,
    request_fields,
    valid_utf8,
)

__all__ = [
    "ENVELOPE_VERSION",
    "Reply",
    "decode_reply",
    "decode_request",
    "encode_failure",
    "encode_heartbeat",
    "encode_request",
    "encode_result",
    "is_oslo_envelope",
    "rebuild_failure",
]

ENVELOPE_VERSION = "2.0"
_VERSION_KEY = "oslo.version"
_MESSAGE_KEY = "oslo.message"
_CONTEXT = "_context_"
_OSLO_DISPATCHER = "oslo_messaging.rpc.dispatcher"
_BUILTINS = ("builtins", "exceptions")  # "exceptions" from Python 2 peers
# oslo.context's names for what aiosvc calls user_id and project_id, read when those are absent.
_ALIASES = {"user_id": ("user",), "project_id": ("project", "tenant")}
_KNOWN = ("request_id", "global_request_id", "user_id", "project_id", "roles", "is_admin")


def is_oslo_envelope(data: Any) -> bool:
    """True for a decoded body that is an oslo.messaging envelope."""
    return isinstance(data, dict) and _VERSION_KEY in data and _MESSAGE_KEY in data


def _envelope(message: dict[str, Any]) -> bytes:
    return dumps({_VERSION_KEY: ENVELOPE_VERSION, _MESSAGE_KEY: dumps(message).decode()})


def _unwrap(body: bytes, what: str) -> dict[str, Any]:
    """The message inside an envelope (or an unenveloped one, which oslo also accepts)."""
    data = _loads(body)
    if not isinstance(data, dict):
        raise MalformedMessage(f"{what} must be a JSON object, got {type(data).__name__}")
    if "aiosvc" in data and _MESSAGE_KEY not in data:
        raise MalformedMessage(
            f"an aiosvc-wire {what} (envelope 'aiosvc': {brief(data['aiosvc'])}) on the "
            "oslo.messaging wire: its sender uses rpc_wire='aiosvc', this side rpc_wire='oslo'"
        )
    if not is_oslo_envelope(data):
        return data
    version = data[_VERSION_KEY]
    try:
        parsed = parse_version(version if isinstance(version, str) else "")
    except ValueError:
        parsed = None
    if parsed != (2, 0, 0):  # oslo: version_is_compatible("2.0", version): 2.0.1 is not
        raise MalformedMessage(
            f"unsupported oslo.messaging envelope version {brief(version)} "
            f"(this side reads {ENVELOPE_VERSION})"
        )
    inner = data[_MESSAGE_KEY]
    if not isinstance(inner, str):
        raise MalformedMessage(f"'{_MESSAGE_KEY}' must be a JSON string")
    message = _loads(inner.encode())
    if not isinstance(message, dict):
        raise MalformedMessage(f"{what} must be a JSON object, got {type(message).__name__}")
    return message


# -- requests -------------------------------------------------------------------------


def pack_context(ctx: Context) -> dict[str, Any]:
    """``ctx`` as oslo's flat ``_context_<key>`` fields (with oslo.context's aliases)."""
    values: dict[str, Any] = {k: v for k, v in ctx.extra.items() if isinstance(k, str)}
    values.update(
        request_id=ctx.request_id,
        global_request_id=ctx.global_request_id,
        user_id=ctx.user_id,
        user=ctx.user_id,
        project_id=ctx.project_id,
        project=ctx.project_id,
        roles=list(ctx.roles),
        is_admin=ctx.is_admin,
    )
    return {_CONTEXT + key: value for key, value in values.items()}


def unpack_context(values: Mapping[str, Any]) -> Context:
    """The :class:`~aiosvc.Context` of oslo context fields (``_context_`` prefix removed).

    Raises:
        MalformedMessage: a field aiosvc maps has the wrong type.
    """
    known: dict[str, Any] = {}
    extra = dict(values)
    for key in _KNOWN:
        value = extra.pop(key, None)
        for alias in _ALIASES.get(key, ()):
            alias_value = extra.pop(alias, None)
            if value is None:
                value = alias_value
        if value is not None:
            known[key] = value
    known["extra"] = extra
    return Context.from_dict(known)


def encode_request(
    ctx: Context,
    method: str,
    args: dict[str, Any],
    version: str,
    namespace: str | None,
    *,
    msg_id: str | None = None,
    reply_q: str | None = None,
    call_monitor_timeout: float | None = None,
) -> bytes:
    """The body of a cast, or of a call when ``msg_id`` and ``reply_q`` are given.

    Raises:
        TypeError: an argument has no JSON form (the message names it).
    """
    message: dict[str, Any] = {"method": method, "args": args, "version": version}
    if namespace is not None:
        message["namespace"] = namespace
    if msg_id is not None:
        message["_msg_id"] = msg_id
        message["_reply_q"] = reply_q
        message["_timeout"] = call_monitor_timeout
    message["_unique_id"] = uuid.uuid4().hex
    message.update(pack_context(ctx))
    try:
        return _envelope(message)
    except TypeError:
        check_arguments(method, args)
        raise


def decode_request(body: bytes) -> Request:
    """Parse an oslo.messaging request (enveloped or not).

    Raises:
        MalformedMessage: not JSON, an envelope version other than 2.0, an aiosvc-wire
            message, or a field is missing or has the wrong type; the message says which.
    """
    message = _unwrap(body, "request")
    method, args, version, namespace = request_fields(message)
    msg_id = message.get("_msg_id")
    reply_q = message.get("_reply_q")
    if msg_id is not None and not isinstance(msg_id, str):
        raise MalformedMessage("request field '_msg_id' must be a string")
    if msg_id is not None and not (isinstance(reply_q, str) and reply_q):
        raise MalformedMessage("a call (with '_msg_id') needs '_reply_q', a queue name")
    timeout = _seconds(message.get("_timeout"))
    unique_id = message.get("_unique_id")
    context = unpack_context(
        {k[len(_CONTEXT) :]: v for k, v in message.items() if k.startswith(_CONTEXT)}
    )
    return Request(
        method,
        args,
        context,
        version,
        namespace,
        reply_to=reply_q if msg_id is not None else None,
        msg_id=msg_id,
        call_monitor_timeout=timeout or None,
        unique_id=unique_id if isinstance(unique_id, str) else None,
    )


def _seconds(value: Any) -> float | None:
    """``_timeout`` as seconds. Not NaN, inf or an integer beyond a float: they would break
    the server's heartbeat interval after it acknowledged the message."""
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and 0 <= value <= sys.float_info.max:
        return float(value)
    raise MalformedMessage("request field '_timeout' must be a non-negative number or null")


# -- replies --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply: a heartbeat when ``ending`` is false and it has neither part."""

    msg_id: str | None
    ending: bool
    result: Any
    failure: dict[str, Any] | None

    @property
    def heartbeat(self) -> bool:
        """Whether this is a call-monitor heartbeat (the method is still running)."""
        return not self.ending and self.result is None and self.failure is None


def _reply(msg_id: str, result: Any, failure: str | None, ending: bool) -> bytes:
    return _envelope(
        {
            "result": result,
            "failure": failure,
            "ending": ending,
            "_msg_id": msg_id,
            "_unique_id": uuid.uuid4().hex,
        }
    )


def encode_result(msg_id: str, result: Any) -> bytes:
    """The final reply to call ``msg_id`` with its result.

    Raises:
        TypeError: the result has no JSON form.
    """
    return _reply(msg_id, result, None, True)


def encode_failure(msg_id: str, exc: BaseException, method: str = "", version: str = "") -> bytes:
    """The final reply to call ``msg_id`` for the exception its method raised (``method``
    and ``version``: the request's)."""
    return _reply(msg_id, None, serialize_failure(exc, method, version), True)


def encode_heartbeat(msg_id: str) -> bytes:
    """A call-monitor heartbeat for call ``msg_id``: the method still runs."""
    return _reply(msg_id, None, None, False)


def decode_reply(body: bytes) -> Reply:
    """Parse a reply.

    Raises:
        MalformedMessage: not a reply (or a failure that is not a JSON object).
    """
    message = _unwrap(body, "reply")
    msg_id = message.get("_msg_id")
    failure = message.get("failure")
    if failure:
        if isinstance(failure, str):
            failure = _loads(failure.encode())
        if not isinstance(failure, dict):
            raise MalformedMessage("reply field 'failure' must hold a JSON object")
    else:
        failure = None
    return Reply(
        msg_id if isinstance(msg_id, str) else None,
        bool(message.get("ending", False)),
        message.get("result"),
        failure,
    )


# -- failures -------------------------------------------------------------------------


def serialize_failure(exc: BaseException, method: str = "", version: str = "") -> str:
    """``exc`` as oslo serializes a remote exception: a JSON string.

    ``method`` and ``version`` are the request's, for the arguments of oslo's
    ``NoSuchMethod(method)`` and ``UnsupportedVersion(version, method)``.
    """
    cls = type(exc)
    module, name = cls.__module__, cls.__qualname__
    args: Any = list(exc.args)
    kwargs: Any = getattr(exc, "kwargs", None)
    if isinstance(exc, NoSuchMethod):
        module, name, args = _OSLO_DISPATCHER, "NoSuchMethod", [method]
    elif isinstance(exc, UnsupportedVersion):
        module, name, args = _OSLO_DISPATCHER, "UnsupportedVersion", [version, method]
    try:
        args = pydantic_core.from_json(pydantic_core.to_json(args))
        kwargs = pydantic_core.from_json(pydantic_core.to_json(kwargs or {}))
    except (pydantic_core.PydanticSerializationError, ValueError):
        args, kwargs = [exception_text(exc)], {}
    if not isinstance(kwargs, dict):
        kwargs = {}
    failure = {
        "class": name,
        "module": module,
        "message": exception_text(exc),
        "tb": [valid_utf8(line) for line in traceback.format_exception(exc)],
        "args": args,
        "kwargs": kwargs,
    }
    try:
        return dumps(failure).decode()
    except TypeError:  # args or kwargs hold a lone surrogate: not JSON
        return dumps(failure | {"args": [failure["message"]], "kwargs": {}}).decode()


def rebuild_failure(failure: Mapping[str, Any], allowed: Iterable[str] = ()) -> BaseException:
    """The exception to raise at an aiosvc caller for an oslo failure.

    oslo.messaging's ``NoSuchMethod`` and ``UnsupportedVersion`` become aiosvc's; a builtin
    exception, or one whose module or class is in ``allowed``, comes back as itself
    (``remote_traceback`` set); anything else, or what cannot be rebuilt, is a
    :class:`~aiosvc.exceptions.RemoteError` named ``module.Class``.
    """
    name = str(failure.get("class") or "Exception")
    module = str(failure.get("module") or "")
    if module in _BUILTINS:
        module = "builtins"
    message = str(failure.get("message") or "")
    lines = failure.get("tb")
    tb = [str(line) for line in lines] if isinstance(lines, list) else []
    type_name = f"{module}.{name}" if module else name
    if module == _OSLO_DISPATCHER and name in ("NoSuchMethod", "UnsupportedVersion"):
        exc: BaseException = (
            NoSuchMethod(message) if name == "NoSuchMethod" else (UnsupportedVersion(message))
        )
    elif module == "builtins" or (module and (module in allowed or type_name in allowed)):
        args, kwargs = failure.get("args"), failure.get("kwargs")
        rebuilt = rebuild_allowed(
            module,
            name,
            args if isinstance(args, list) else None,
            kwargs if isinstance(kwargs, dict) else {},
            message,
        )
        if rebuilt is None:
            return RemoteError(type_name, message, tb)
        exc = rebuilt
    else:
        # aiosvc's own errors (a peer on the oslo wire that is aiosvc) come back as themselves.
        return rebuild_exception(
            {"type": type_name, "message": message, "traceback": tb, "args": failure.get("args")}
        )
    exc.remote_traceback = tb  # type: ignore[attr-defined]
    return exc


def _loads(body: bytes) -> Any:
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise MalformedMessage(f"not valid JSON: {exc}") from None
