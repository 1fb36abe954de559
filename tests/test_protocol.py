"""The wire format: what a request and a reply look like, what is refused, and how a
remote failure comes back to the caller."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pydantic
import pytest

from aiosvc import exceptions
from aiosvc.context import Context
from aiosvc.exceptions import (
    InvalidArguments,
    MalformedMessage,
    MessagingTimeout,
    NoSuchMethod,
    RemoteError,
    UnsupportedVersion,
)
from aiosvc.rpc.protocol import (
    PROTOCOL_VERSION,
    decode_reply,
    decode_request,
    dumps,
    encode_failure,
    encode_request,
    encode_result,
    parse_version,
    rebuild_exception,
    version_is_compatible,
)

WHEN = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
ID = UUID("6f1c2b1e-7d5a-4c2b-9f1e-0a1b2c3d4e5f")
BLOB = b"\x00\xfb\xff\xfe binary"


class Flavor(pydantic.BaseModel):
    name: str
    vcpus: int
    created: datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Color(enum.Enum):
    RED = "red"


def body(**fields: Any) -> bytes:
    message = {"aiosvc": PROTOCOL_VERSION, "method": "m", "args": {}, "version": "1.0"}
    message.update(fields)
    return json.dumps(message).encode()


# -- requests


def test_request_round_trip() -> None:
    ctx = Context(user_id="u1", project_id="p1", roles=("admin", "member"), is_admin=True)
    raw = encode_request(ctx, "create_volume", {"volume_id": "v1", "size_gb": 1}, "1.1", "storage")
    request = decode_request(raw)
    assert request.method == "create_volume"
    assert request.args == {"volume_id": "v1", "size_gb": 1}
    assert request.version == "1.1"
    assert request.namespace == "storage"
    assert request.context == ctx


def test_request_is_plain_json_with_the_documented_fields() -> None:
    ctx = Context(request_id="req-1")
    data = json.loads(encode_request(ctx, "m", {"a": 1}, "1.0", None))
    assert data["aiosvc"] == PROTOCOL_VERSION
    assert data["method"] == "m"
    assert data["args"] == {"a": 1}
    assert data["version"] == "1.0"
    assert data["namespace"] is None
    assert data["context"]["request_id"] == "req-1"


def test_rich_argument_values_travel_as_json() -> None:
    args = {
        "when": WHEN,
        "naive": datetime(2026, 1, 2, 3, 4, 5),
        "day": date(2026, 1, 2),
        "offset": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        "id": ID,
        "blob": BLOB,
        "flavor": Flavor(name="m1.small", vcpus=1, created=WHEN),
        "point": Point(1, 2),
        "color": Color.RED,
        "tags": ("a", "b"),
        "nested": {"ids": [ID], "blobs": [b"x"]},
    }
    decoded = decode_request(encode_request(Context(), "m", args, "1.0", None)).args
    assert datetime.fromisoformat(decoded["when"]) == WHEN
    assert decoded["naive"] == "2026-01-02T03:04:05"
    assert decoded["day"] == "2026-01-02"
    assert datetime.fromisoformat(decoded["offset"]).utcoffset() == timedelta(hours=2)
    assert decoded["id"] == str(ID)
    assert base64.urlsafe_b64decode(decoded["blob"]) == BLOB
    assert decoded["flavor"]["name"] == "m1.small"
    assert datetime.fromisoformat(decoded["flavor"]["created"]) == WHEN
    assert decoded["point"] == {"x": 1, "y": 2}
    assert decoded["color"] == "red"
    assert decoded["tags"] == ["a", "b"]
    assert decoded["nested"]["ids"] == [str(ID)]


def test_argument_without_a_json_form_is_named() -> None:
    with pytest.raises(TypeError, match=r"argument 'handle' of attach\(\)"):
        encode_request(Context(), "attach", {"ok": 1, "handle": object()}, "1.0", None)


def test_no_pickle_ever() -> None:
    class Sneaky:
        def __reduce__(self) -> Any:
            raise AssertionError("pickled")

    with pytest.raises(TypeError):
        dumps(Sneaky())


def test_absent_version_means_1_0_and_absent_args_mean_none() -> None:
    raw = json.dumps({"aiosvc": PROTOCOL_VERSION, "method": "m"}).encode()
    request = decode_request(raw)
    assert request.version == "1.0"
    assert request.args == {}
    assert request.namespace is None
    assert request.context.request_id.startswith("req-")
    assert decode_request(body(version=None)).version == "1.0"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'"create_volume"', "must be a JSON object, got str"),
        (b"null", "must be a JSON object, got NoneType"),
        (json.dumps({"method": "m"}).encode(), "unsupported envelope version None"),
        (body(aiosvc=2), "unsupported envelope version 2"),
        (body(aiosvc="1"), "unsupported envelope version '1'"),
        (body(aiosvc=True), "unsupported envelope version True"),  # True == 1 in Python
        (body(aiosvc=1.0), "unsupported envelope version 1.0"),
        (body(method=None), "'method' must be a non-empty string"),
        (body(method=""), "'method' must be a non-empty string"),
        (body(method=["m"]), "'method' must be a non-empty string"),
        (body(args=[1, 2]), "'args' must be an object"),
        (body(args="size_gb=1"), "'args' must be an object"),
        (body(version=1.1), "'version' must be a string"),
        (body(version=0), "'version' must be a string"),
        (body(version=""), "invalid API version ''"),
        (body(version="one"), "invalid API version 'one'"),
        (body(version="1"), "invalid API version '1'"),
        (body(version="1.2.3.4"), "invalid API version"),
        (body(namespace=5), "'namespace' must be a string or null"),
        (body(context="admin"), "context must be an object"),
        (body(context=[]), "context must be an object"),
        (body(context={"request_id": 5}), "context field 'request_id' must be a string"),
        (body(context={"user_id": ["u"]}), "context field 'user_id' must be a string"),
        (body(context={"roles": "admin"}), "'roles' must be a list of strings"),
        (body(context={"roles": [1]}), "'roles' must be a list of strings"),
        (body(context={"is_admin": "yes"}), "'is_admin' must be a boolean"),
        (body(context={"extra": []}), "'extra' must be an object"),
    ],
)
def test_malformed_request_names_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_request(raw)
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_huge_bad_value_is_named_briefly() -> None:
    # The reason is logged for each malformed message: it must not be as big as the message.
    with pytest.raises(MalformedMessage) as info:
        decode_request(body(aiosvc="x" * 1_000_000))
    assert len(str(info.value)) < 200
    assert "unsupported envelope version 'xxx" in str(info.value)


def test_unknown_context_fields_are_ignored() -> None:
    # A newer sender may carry more; an older receiver must still serve it.
    request = decode_request(
        body(context={"request_id": "req-9", "tenant": "t", "auth_token": "x"})
    )
    assert request.context.request_id == "req-9"


def test_context_extra_and_chain_travel() -> None:
    parent = Context(request_id="req-parent", extra={"trace": "abc"})
    child = parent.child()
    request = decode_request(encode_request(child, "m", {}, "1.0", None))
    assert request.context.global_request_id == "req-parent"
    assert request.context.request_id != "req-parent"
    assert request.context.extra == {"trace": "abc"}


# -- replies


def test_result_round_trip_with_rich_values() -> None:
    ok, result = decode_reply(
        encode_result(
            {"id": ID, "at": WHEN, "blob": BLOB, "flavor": Flavor(name="f", vcpus=2, created=WHEN)}
        )
    )
    assert ok is True
    assert result["id"] == str(ID)
    assert datetime.fromisoformat(result["at"]) == WHEN
    assert base64.urlsafe_b64decode(result["blob"]) == BLOB
    assert result["flavor"] == {"name": "f", "vcpus": 2, "created": result["at"]}


@pytest.mark.parametrize("value", [None, 0, "", [], {}, False])
def test_falsy_results_are_results(value: Any) -> None:
    assert decode_reply(encode_result(value)) == (True, value)


def test_result_without_a_json_form_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        encode_result({"lock": object()})


def test_decimal_result_keeps_its_value() -> None:
    ok, result = decode_reply(encode_result(Decimal("1.10")))
    assert ok
    assert Decimal(str(result)) == Decimal("1.10")


@pytest.mark.parametrize(
    "raw", [b"{}", b"[]", b'{"failure": "boom"}', b'{"failure": {"message": "m"}}', b"42"]
)
def test_malformed_reply(raw: bytes) -> None:
    with pytest.raises(MalformedMessage, match="reply must be an object"):
        decode_reply(raw)


def _failure_of(exc: Exception) -> dict[str, Any]:
    try:
        raise exc
    except Exception as raised:
        ok, failure = decode_reply(encode_failure(raised))
    assert ok is False
    assert isinstance(failure, dict)
    return failure


def test_failure_carries_type_message_args_and_traceback() -> None:
    failure = _failure_of(ValueError("size_gb must be positive", -1))
    assert failure["type"] == "builtins.ValueError"
    assert failure["message"] == "('size_gb must be positive', -1)"
    assert failure["args"] == ["size_gb must be positive", -1]
    assert any("_failure_of" in line for line in failure["traceback"])
    assert "ValueError" in failure["traceback"][-1]


def test_failure_with_unserialisable_args_falls_back_to_the_message() -> None:
    failure = _failure_of(RuntimeError(object()))
    assert failure["args"] == [failure["message"]]
    assert "object object" in failure["message"]


# -- rebuilding the failure at the caller


class VolumeBusy(Exception):
    """An application error a caller may choose to receive as itself."""


class TwoArgs(Exception):
    def __init__(self, volume_id: str, state: str) -> None:
        super().__init__(volume_id, state)
        self.volume_id = volume_id
        self.state = state


class KeywordOnly(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(code)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize(
    "cls", [NoSuchMethod, InvalidArguments, UnsupportedVersion, MessagingTimeout, MalformedMessage]
)
def test_aiosvc_errors_come_back_as_themselves(cls: type[Exception]) -> None:
    exc = rebuild_exception(_failure_of(cls("create_volume(): size_gb: bad")))
    assert type(exc) is cls
    assert str(exc) == "create_volume(): size_gb: bad"
    assert exc.remote_traceback  # type: ignore[attr-defined]


def test_every_public_aiosvc_error_but_remote_error_rebuilds() -> None:
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        if cls is RemoteError:
            continue
        assert type(rebuild_exception({"type": _name(cls), "message": "m"})) is cls


def test_other_errors_come_back_as_remote_error() -> None:
    exc = rebuild_exception(_failure_of(VolumeBusy("v1 is attached")))
    assert isinstance(exc, RemoteError)
    assert exc.exc_type == _name(VolumeBusy)
    assert exc.value == "v1 is attached"
    assert any("VolumeBusy" in line for line in exc.traceback)
    assert str(exc) == f"{_name(VolumeBusy)}: v1 is attached"


def test_allowed_module_rebuilds_the_class_with_remote_traceback() -> None:
    exc = rebuild_exception(_failure_of(VolumeBusy("v1 is attached")), [VolumeBusy.__module__])
    assert type(exc) is VolumeBusy
    assert exc.args == ("v1 is attached",)
    assert any("_failure_of" in line for line in exc.remote_traceback)  # type: ignore[attr-defined]


def test_allowed_class_by_full_name() -> None:
    exc = rebuild_exception(_failure_of(VolumeBusy("busy")), [_name(VolumeBusy)])
    assert type(exc) is VolumeBusy
    other = rebuild_exception(_failure_of(TwoArgs("v", "s")), [_name(VolumeBusy)])
    assert isinstance(other, RemoteError)


def test_allowed_builtins() -> None:
    exc = rebuild_exception(_failure_of(KeyError("v1")), ["builtins"])
    assert type(exc) is KeyError
    assert exc.args == ("v1",)


def test_allowed_class_rebuilt_from_its_args() -> None:
    exc = rebuild_exception(_failure_of(TwoArgs("v1", "in-use")), [TwoArgs.__module__])
    assert type(exc) is TwoArgs
    assert (exc.volume_id, exc.state) == ("v1", "in-use")


def test_allowed_class_that_cannot_be_rebuilt_is_a_remote_error() -> None:
    exc = rebuild_exception(_failure_of(KeywordOnly(code=3)), [KeywordOnly.__module__])
    assert isinstance(exc, RemoteError)
    assert exc.exc_type == _name(KeywordOnly)


@pytest.mark.parametrize(
    "failure",
    [
        {"type": "builtins.SystemExit", "message": "0", "args": [0]},
        {"type": "builtins.KeyboardInterrupt", "message": "", "args": []},
        {"type": "os.system", "message": "rm -rf /", "args": ["rm -rf /"]},
        {"type": "builtins.print", "message": "x", "args": ["x"]},
        {"type": "no_such_module_xyz.Error", "message": "x", "args": ["x"]},
        {"type": "builtins.NoSuchError", "message": "x", "args": ["x"]},
    ],
)
def test_a_remote_can_only_make_the_caller_raise_exceptions(failure: dict[str, Any]) -> None:
    allowed = ["builtins", "os", "no_such_module_xyz"]
    exc = rebuild_exception(failure, allowed)
    assert isinstance(exc, RemoteError)
    assert exc.exc_type == failure["type"]


def test_unlisted_module_is_a_remote_error_even_if_importable() -> None:
    exc = rebuild_exception(_failure_of(ValueError("nope")), ["json"])
    assert isinstance(exc, RemoteError)
    assert exc.exc_type == "builtins.ValueError"


def test_remote_error_raised_remotely_stays_a_remote_error() -> None:
    inner = RemoteError("builtins.ValueError", "deep")
    exc = rebuild_exception(_failure_of(inner))
    assert isinstance(exc, RemoteError)
    assert "deep" in exc.value


def test_failure_with_missing_optional_fields() -> None:
    exc = rebuild_exception({"type": "myapp.Error"})
    assert isinstance(exc, RemoteError)
    assert (exc.exc_type, exc.value, exc.traceback) == ("myapp.Error", "", [])


# -- versions


@pytest.mark.parametrize(
    ("implemented", "requested", "ok"),
    [
        ("1.0", "1.0", True),
        ("1.1", "1.0", True),  # older client, newer server
        ("1.0", "1.1", False),  # newer client: the server lacks what it asks for
        ("2.0", "1.0", False),  # major mismatch, either way
        ("1.5", "2.0", False),
        ("1.10", "1.9", True),  # numeric, not string, comparison
        ("1.9", "1.10", False),
        ("1.2.3", "1.2.3", True),
        ("1.2.3", "1.2.2", True),
        ("1.2.3", "1.2.4", False),  # revision counts when minors are equal
        ("1.2", "1.2.1", False),
        ("1.3", "1.2.9", True),
        ("1.2.9", "1.3", False),
        ("6.4", "6.0", True),
    ],
)
def test_version_is_compatible(implemented: str, requested: str, ok: bool) -> None:
    assert version_is_compatible(implemented, requested) is ok


@pytest.mark.parametrize(
    "version",
    [
        *["1", "1.2.3.4", "a.b", "1.x", "", "1..2", "-1.0", "1.2 "],
        "1.\u00b2",  # superscript two: str.isdigit() is true, int() refuses it
        "1.\u0661",  # Arabic-Indic one: int() reads it as 1
        "1." + "1" * 5000,  # more digits than int() converts
    ],
)
def test_parse_version_rejects(version: str) -> None:
    with pytest.raises(
        ValueError, match=r"^invalid API version .*: expected 'X\.Y' or 'X\.Y\.Z'$"
    ) as info:
        parse_version(version)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("version", ["1.\u00b2", "1.\u0661"])
def test_a_request_with_non_ascii_digits_in_its_version_is_malformed(version: str) -> None:
    with pytest.raises(MalformedMessage, match="invalid API version"):
        decode_request(body(version=version))


def test_parse_version() -> None:
    assert parse_version("1.2") == (1, 2, 0)
    assert parse_version("6.4.1") == (6, 4, 1)


# -- a message of oslo.messaging's wire (rpc_wire="oslo") on aiosvc's


@pytest.mark.parametrize("version", ["2.0", "1.0", 2])
def test_an_oslo_request_on_the_aiosvc_wire_is_named(version: Any) -> None:
    from aiosvc.rpc import oslo

    envelope = json.loads(oslo.encode_request(Context(), "m", {}, "1.0", None, msg_id="x"))
    envelope["oslo.version"] = version
    with pytest.raises(MalformedMessage) as info:
        decode_request(json.dumps(envelope).encode())
    message = str(info.value)
    assert f"an oslo.messaging request (envelope 'oslo.version': {version!r})" in message
    assert "set rpc_wire='oslo'" in message
    assert "\n" not in message
