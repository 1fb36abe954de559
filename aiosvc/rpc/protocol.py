"""The wire format of aiosvc RPC: pure functions, no I/O.

A request body is one JSON object::

    {"aiosvc": 1, "method": "create_volume", "args": {"volume_id": "v1", "size_gb": 1},
     "version": "1.1", "namespace": null, "context": {"request_id": "req-...", ...}}

and a reply is ``{"result": ...}`` or ``{"failure": {"type": "pkg.mod.Class",
"message": "...", "args": [...], "traceback": [...]}}``.

Values are JSON: besides JSON's own types, pydantic models, dataclasses, datetimes,
UUIDs, enums, sets and tuples are encoded as JSON, and bytes as base64 strings. Never
pickle: a message can never make the receiver run code.

Nova: oslo.messaging's ``{'oslo.version': '2.0', 'oslo.message': ...}`` envelope, the
``_context_*`` fields, and ``_drivers/common.py`` ``serialize_remote_exception``.
"""

from __future__ import annotations

import functools
import importlib
import re
import reprlib
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydantic_core

from .. import exceptions
from ..context import Context
from ..exceptions import MalformedMessage, RemoteError

__all__ = [
    "PROTOCOL_VERSION",
    "Request",
    "brief",
    "check_arguments",
    "decode_reply",
    "decode_request",
    "dumps",
    "encode_failure",
    "encode_request",
    "encode_result",
    "exception_text",
    "parse_version",
    "rebuild_allowed",
    "rebuild_exception",
    "request_fields",
    "valid_utf8",
    "version_is_compatible",
]

PROTOCOL_VERSION = 1
# Fields only an oslo.messaging request has, enveloped or not (a plain one has no envelope).
_OSLO_FIELDS = frozenset({"_unique_id", "_msg_id", "_reply_q", "_context_request_id"})

_VERSION = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}(?:\.[0-9]{1,9})?")

_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 80
_brief.maxlevel = 3
_BRIEF_MAX = 200


def brief(value: Any) -> str:
    """``repr(value)`` cut to about 80 characters a level and 200 in all, for an error
    message or a log line.

    A peer's value goes into messages this way: a 1 MB string in a malformed message must
    not make a 1 MB log line (nor a reply to match).
    """
    shown = _brief.repr(value)
    return shown if len(shown) <= _BRIEF_MAX else shown[: _BRIEF_MAX - 3] + "..."


def valid_utf8(text: str) -> str:
    """``text`` with lone surrogates (which JSON cannot carry) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def exception_text(exc: BaseException) -> str:
    """``str(exc)`` as valid UTF-8, even when its ``__str__`` fails (as traceback shows it)."""
    try:
        return valid_utf8(str(exc))
    except Exception:
        return f"<exception str() failed: {type(exc).__qualname__}>"


def dumps(value: Any) -> bytes:
    """``value`` as JSON bytes (bytes values as base64).

    Raises:
        TypeError: some part of ``value`` has no JSON form.
    """
    try:
        return pydantic_core.to_json(value, bytes_mode="base64")
    except pydantic_core.PydanticSerializationError as exc:
        raise TypeError(f"not JSON-serialisable: {exc}") from None


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request.

    The last four fields come from the oslo.messaging wire (:mod:`aiosvc.rpc.oslo`), which
    carries the reply's address in the body; on aiosvc's wire the transport knows it.
    """

    method: str
    args: dict[str, Any]
    context: Context
    version: str
    namespace: str | None
    reply_to: str | None = None  # oslo: the caller's reply queue (a call), else None
    msg_id: str | None = None  # oslo: the call's id, echoed in its replies
    call_monitor_timeout: float | None = None  # oslo: heartbeat every half of it
    unique_id: str | None = None  # oslo: the sender's id of this message (duplicates)


def encode_request(
    ctx: Context, method: str, args: dict[str, Any], version: str, namespace: str | None
) -> bytes:
    """The body of a request.

    Raises:
        TypeError: an argument has no JSON form (the message names it).
    """
    try:
        return dumps(
            {
                "aiosvc": PROTOCOL_VERSION,
                "method": method,
                "args": args,
                "version": version,
                "namespace": namespace,
                "context": ctx.to_dict(),
            }
        )
    except TypeError:
        check_arguments(method, args)
        raise


def check_arguments(method: str, args: dict[str, Any]) -> None:
    """Name the argument of ``method`` that has no JSON form (for a body that failed).

    Raises:
        TypeError: ``argument 'name' of method(): why``, for the first such argument.
    """
    for name, value in args.items():
        try:
            dumps(value)
        except TypeError as exc:
            raise TypeError(f"argument {name!r} of {method}(): {exc}") from None


def decode_request(body: bytes) -> Request:
    """Parse a request body.

    Raises:
        MalformedMessage: not JSON, not an object, or a field is missing or has the
            wrong type; the message says which.
    """
    data = _loads(body)
    if not isinstance(data, dict):
        raise MalformedMessage(f"request must be a JSON object, got {type(data).__name__}")
    if "aiosvc" not in data and ("oslo.version" in data or _OSLO_FIELDS.intersection(data)):
        oslo_envelope = (
            f"envelope 'oslo.version': {brief(data['oslo.version'])}"
            if "oslo.version" in data
            else "without an envelope"
        )
        raise MalformedMessage(
            f"an oslo.messaging request ({oslo_envelope}) on the aiosvc wire: its sender uses "
            "oslo.messaging's wire, this side rpc_wire='aiosvc' (set rpc_wire='oslo' to serve "
            "oslo.messaging clients)"
        )
    envelope = data.get("aiosvc")
    if type(envelope) is not int or envelope != PROTOCOL_VERSION:  # not True, not 1.0
        raise MalformedMessage(f"unsupported envelope version {brief(envelope)}")
    method, args, version, namespace = request_fields(data)
    return Request(method, args, Context.from_dict(data.get("context")), version, namespace)


def request_fields(data: dict[str, Any]) -> tuple[str, dict[str, Any], str, str | None]:
    """``method``, ``args``, ``version`` and ``namespace`` of a request, as both wires name
    them (``args`` absent or null: none; ``version`` absent or null: ``"1.0"``, oslo's default).

    Raises:
        MalformedMessage: a field is missing or has the wrong type; the message says which.
    """
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise MalformedMessage("request field 'method' must be a non-empty string")
    args = data.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise MalformedMessage("request field 'args' must be an object")
    version = data.get("version")
    if version is None:
        version = "1.0"
    if not isinstance(version, str):
        raise MalformedMessage("request field 'version' must be a string")
    try:
        parse_version(version)
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None
    namespace = data.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise MalformedMessage("request field 'namespace' must be a string or null")
    return method, args, version, namespace


def encode_result(result: Any) -> bytes:
    """The body of a successful reply.

    Raises:
        TypeError: the result has no JSON form.
    """
    return b'{"result":' + dumps(result) + b"}"


def encode_failure(exc: BaseException) -> bytes:
    """The body of a failed reply, from the exception the method raised."""
    cls = type(exc)
    message = exception_text(exc)
    try:
        args: Any = pydantic_core.to_json(list(exc.args))
        args = pydantic_core.from_json(args)
    except (pydantic_core.PydanticSerializationError, ValueError):
        args = [message]
    failure = {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": message,
        "args": args,
        "traceback": [valid_utf8(line) for line in traceback.format_exception(exc)],
    }
    try:
        return dumps({"failure": failure})
    except TypeError:  # args hold a lone surrogate: not JSON
        return dumps({"failure": failure | {"args": [message]}})


def decode_reply(body: bytes) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, failure)`` from a reply body.

    Raises:
        MalformedMessage: not a reply.
    """
    data = _loads(body)
    if isinstance(data, dict):
        if "result" in data:
            return True, data["result"]
        failure = data.get("failure")
        if isinstance(failure, dict) and isinstance(failure.get("type"), str):
            return False, failure
    raise MalformedMessage("reply must be an object with 'result' or 'failure'")


def rebuild_exception(failure: dict[str, Any], allowed: Iterable[str] = ()) -> BaseException:
    """The exception to raise at the caller for a remote failure.

    aiosvc's own errors (``NoSuchMethod``, ``InvalidArguments``, ...) come back as
    themselves. A class whose module or full name is in ``allowed`` comes back as itself,
    built from the remote ``args`` (or the message), with ``remote_traceback`` set. Every
    other failure is a :class:`RemoteError`.
    """
    type_name: str = failure["type"]
    message = str(failure.get("message", ""))
    remote_tb = [str(line) for line in failure.get("traceback") or ()]
    module, _, qualname = type_name.rpartition(".")
    own = getattr(exceptions, qualname, None) if module == exceptions.__name__ else None
    if (
        qualname in exceptions.__all__
        and isinstance(own, type)
        and issubclass(own, exceptions.AiosvcError)
        and own is not exceptions.RemoteError
    ):
        exc: BaseException = own(message)
    elif module and (module in allowed or type_name in allowed):
        args = failure.get("args")
        exc = rebuild_allowed(
            module, qualname, args if isinstance(args, list) else None, {}, message
        ) or RemoteError(type_name, message, remote_tb)
    else:
        return RemoteError(type_name, message, remote_tb)
    exc.remote_traceback = remote_tb  # type: ignore[attr-defined]
    return exc


def rebuild_allowed(
    module: str, qualname: str, args: list[Any] | None, kwargs: dict[str, Any], message: str
) -> BaseException | None:
    """``module.qualname(*args, **kwargs)`` (or built from ``message`` alone), or None when
    that is not an importable exception class or will not build."""
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError, ValueError, TypeError):  # ValueError: "" or ".x"
        return None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    try:
        return cls(*args, **kwargs) if args is not None else cls(message, **kwargs)
    except Exception:
        try:
            return cls(message)
        except Exception:
            return None


@functools.lru_cache(maxsize=256)
def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2"`` or ``"1.2.3"`` as a tuple.

    Raises:
        ValueError: not of that form.
    """
    # ASCII digits only: str.isdigit() also takes a superscript two (int() refuses it)
    # and an Arabic-Indic one (int() reads 1), which no version should contain.
    if not _VERSION.fullmatch(version):
        raise ValueError(f"invalid API version {brief(version)}: expected 'X.Y' or 'X.Y.Z'")
    major, minor, *rest = (int(p) for p in version.split("."))
    return major, minor, rest[0] if rest else 0


def version_is_compatible(implemented: str, requested: str) -> bool:
    """True when a server implementing ``implemented`` can serve ``requested``.

    Same major version, and the requested minor (then revision) not above the server's.
    Nova: ``oslo_messaging._utils.version_is_compatible``.
    """
    imp, req = parse_version(implemented), parse_version(requested)
    return imp[0] == req[0] and req[1:] <= imp[1:]


def _loads(body: bytes) -> Any:
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise MalformedMessage(f"not valid JSON: {exc}") from None
