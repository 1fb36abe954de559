"""Bad input never breaks a service: property tests of the decoder, the dispatcher and the
RPC server, fed arbitrary bytes, JSON, envelopes, headers, method names and arguments.

The promises (docs/rpc.md, "On the server"): a body the decoder cannot read raises
``MalformedMessage`` and nothing else; on a running service such a message is logged (one
line) and dead-lettered, and every other request gets a reply, an error of the right type
when it does not fit; no handler runs for a request that does not fit, and nothing that is
not an RPC endpoint ever runs. The examples are fixed (the ``aiosvc`` hypothesis profile
in ``tests/conftest.py``); ``HYPOTHESIS_PROFILE=explore`` searches further.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from aiosvc import Context, Manager, Service, periodic_task
from aiosvc.exceptions import InvalidArguments, MalformedMessage, NoSuchMethod, UnsupportedVersion
from aiosvc.rpc.dispatcher import Dispatcher
from aiosvc.rpc.protocol import (
    PROTOCOL_VERSION,
    Request,
    decode_reply,
    decode_request,
    encode_request,
    parse_version,
    version_is_compatible,
)
from aiosvc.testing import isolated_settings, wait_until
from aiosvc.transport import memory, topology

REFUSALS = (InvalidArguments, NoSuchMethod, UnsupportedVersion)
REFUSAL_TYPES = {f"{cls.__module__}.{cls.__qualname__}" for cls in REFUSALS}


class Target(Manager):
    """A small manager: a few endpoints, and things that must never be called over RPC."""

    topic = "target"
    RPC_API_VERSION = "1.2"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ran: list[str] = []  # every handler and hook that ran, in order

    async def echo(self, ctx: Context, value: Any) -> Any:
        self.ran.append("echo")
        return value

    async def add(self, ctx: Context, a: int, b: int = 0) -> int:
        self.ran.append("add")
        return a + b

    def scale(self, ctx: Context, factor: float, tags: list[str]) -> dict[str, Any]:
        self.ran.append("scale")
        return {"factor": factor, "tags": tags}

    async def options(self, ctx: Context, **options: Any) -> dict[str, Any]:
        self.ran.append("options")
        return options

    # Not endpoints: a hook, a private method, a periodic task.
    async def reset(self) -> None:
        self.ran.append("reset")

    async def _private(self, ctx: Context) -> None:
        self.ran.append("_private")

    @periodic_task(spacing=3600, run_immediately=False)
    async def sync_stats(self, ctx: Context) -> None:
        self.ran.append("sync_stats")


HANDLERS = {"echo", "add", "scale", "options"}  # they note that they ran
ENDPOINTS = set(Target.rpc_methods())  # HANDLERS and the Manager's own endpoints
NOT_ENDPOINTS = sorted(
    {name for name in dir(Target) if callable(getattr(Target, name, None))} - ENDPOINTS
)

# -- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=10**300)  # beyond any fixed-width integer
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
endpoint_names = st.sampled_from(sorted(ENDPOINTS))
method_names = endpoint_names | endpoint_names | st.sampled_from(NOT_ENDPOINTS) | st.text()
versions = st.sampled_from(["1.0", "1.2", "1.2.0", "1.3", "2.0", "0.9"]) | st.text(max_size=6)
namespaces = st.none() | st.sampled_from(["", "other"]) | st.text(max_size=6)
arguments = st.dictionaries(
    st.sampled_from(["value", "a", "b", "factor", "tags", "ctx", "self", "p0"]) | st.text(),
    json_values,
    max_size=4,
)


def valid_envelope(**fields: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "aiosvc": PROTOCOL_VERSION,
        "method": "echo",
        "args": {"value": 1},
        "version": "1.0",
        "namespace": None,
        "context": Context(request_id="req-1").to_dict(),
    }
    envelope.update(fields)
    return envelope


MISSING = object()


def field_is_valid(name: str, value: Any) -> bool:
    """Whether an envelope with ``name`` set to ``value`` (or missing) is a request."""
    if value is MISSING:
        return name in {"args", "version", "namespace", "context"}
    if name == "aiosvc":
        return type(value) is int and value == PROTOCOL_VERSION
    if name == "method":
        return isinstance(value, str) and value != ""
    if name == "args":
        return value is None or isinstance(value, dict)
    if name == "version":
        return value is None or (isinstance(value, str) and _is_version(value))
    if name == "namespace":
        return value is None or isinstance(value, str)
    assert name == "context"
    return value is None or (isinstance(value, dict) and _context_is_valid(value))


def _is_version(text: str) -> bool:
    return re.fullmatch(r"[0-9]{1,9}\.[0-9]{1,9}(\.[0-9]{1,9})?", text) is not None


def _context_is_valid(data: dict[str, Any]) -> bool:
    def ok(key: str, check: Any) -> bool:
        return data.get(key) is None or check(data[key])

    return (
        all(ok(k, lambda v: isinstance(v, str)) for k in ("request_id", "global_request_id"))
        and all(ok(k, lambda v: isinstance(v, str)) for k in ("user_id", "project_id"))
        and ok("roles", lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v))
        and ok("is_admin", lambda v: isinstance(v, bool))
        and ok("extra", lambda v: isinstance(v, dict))
    )


def decoded(body: bytes) -> Request | None:
    """The request, or None when the decoder refused it as it documents; anything else fails."""
    try:
        request = decode_request(body)
    except MalformedMessage as exc:
        reason = str(exc)
    else:
        assert isinstance(request.method, str)
        assert request.method
        assert isinstance(request.args, dict)
        parse_version(request.version)
        assert request.namespace is None or isinstance(request.namespace, str)
        assert isinstance(request.context, Context)
        return request
    assert reason, "a MalformedMessage must say what is wrong"
    assert len(reason) < 500, "the reason is logged per message: it must be short"
    return None


# -- the decoder


@hypothesis.given(st.binary(max_size=200))
def test_decoder_over_arbitrary_bytes(body: bytes) -> None:
    decoded(body)


@hypothesis.given(json_values)
def test_decoder_over_arbitrary_json(value: Any) -> None:
    assert decoded(json.dumps(value).encode()) is None or isinstance(value, dict)


@hypothesis.given(
    st.sampled_from(["aiosvc", "method", "args", "version", "namespace", "context"]),
    st.just(MISSING)
    | json_values
    | st.sampled_from(
        [True, 1.0, 0, -1, 10**40, "", "1.\u00b2", "1.\u0661", "1." + "9" * 5000, "x" * 100_000]
    )
    | st.dictionaries(
        st.sampled_from(["request_id", "user_id", "roles", "is_admin", "extra", "other"]),
        json_values,
    ),
)
def test_decoder_over_near_valid_envelopes(name: str, value: Any) -> None:
    envelope = valid_envelope()
    if value is MISSING:
        del envelope[name]
    else:
        envelope[name] = value
    request = decoded(json.dumps(envelope).encode())
    assert (request is not None) is field_is_valid(name, value), (name, value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"aiosvc": 1, "method": "echo", "args": {"value": NaN}}',
        b'{"aiosvc": 1, "method": "echo", "args": {"value": -Infinity}}',
        b'{"aiosvc": 1, "method": "echo", "args": {"value": 1e400}}',
        b'{"aiosvc": 1, "method": "echo", "args": {"value": ' + b"9" * 5000 + b"}}",
        b'{"aiosvc": 1, "method": "echo", "args": {"value": '
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}}",
        b'{"aiosvc": 1, "method": "echo", "args": {"value": "\\ud800"}}',  # a lone surrogate
        b'{"aiosvc": 1, "method": "\xff\xfe", "args": {}}',  # not UTF-8
        b'{"aiosvc": 1, "method": "echo"' + b" " * 1_000_000 + b"}",
        b'{"aiosvc": 1, "aiosvc": 2, "method": "echo"}',  # a duplicate key: the last one wins
        b"\xef\xbb\xbf" + json.dumps(valid_envelope()).encode(),  # a byte-order mark
    ],
)
def test_decoder_over_edge_cases(body: bytes) -> None:
    decoded(body)


@hypothesis.given(json_values, st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_decoder_over_corrupted_valid_bodies(value: Any, at: int, junk: bytes) -> None:
    body = json.dumps(valid_envelope(args={"value": value})).encode()
    at %= len(body)
    decoded(body[:at] + junk + body[at:])  # an inserted byte, maybe not UTF-8
    decoded(body[:at])  # cut short


# -- the dispatcher


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@hypothesis.given(method_names, arguments, versions, namespaces)
# Bugs found before: "ctx" or "self" given to a **kwargs method was a TypeError from the call.
@hypothesis.example("options", {"ctx": 1}, "1.0", None)
@hypothesis.example("options", {"self": None, "x": 2}, "1.1", None)
@hypothesis.example("reset", {}, "1.0", None)
def test_dispatcher_answers_a_result_or_the_right_refusal(
    method: str, args: dict[str, Any], version: str, namespace: str | None
) -> None:
    hypothesis.assume(_is_version(version))  # the decoder refuses any other version
    manager = Target(host="h", settings=isolated_settings())
    dispatcher = Dispatcher(manager)
    request = Request(method, args, Context(), version, namespace)
    refusal: Exception | None = None
    try:
        result = run(dispatcher.dispatch(request))
    except REFUSALS as exc:  # anything else fails the test
        refusal = exc
    if isinstance(refusal, UnsupportedVersion):
        assert namespace is not None or not version_is_compatible("1.2", version)
    elif isinstance(refusal, NoSuchMethod):
        assert method not in ENDPOINTS
    elif isinstance(refusal, InvalidArguments):
        assert method in ENDPOINTS
        assert str(refusal).startswith(f"{method}(): ")
    if refusal is not None:
        assert manager.ran == []  # no handler ran for a request that does not fit
        return
    # Only an endpoint runs, and only when everything fits.
    assert namespace is None
    assert version_is_compatible("1.2", version)
    assert manager.ran == ([method] if method in HANDLERS else [])
    if method == "echo":
        assert result == args["value"] or _nan_in(args["value"])
    if method == "options":
        assert result == args
        assert not {"ctx", "self"} & args.keys()


def _nan_in(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# -- the server, end to end on the in-memory transport


@dataclass(frozen=True)
class Garbage:
    """One message as the broker hands it over: a body and the properties around it."""

    body: bytes
    message_id: str
    reply_expected: bool
    redelivered: bool
    to_server_queue: bool


envelope_bodies = st.builds(
    lambda env: json.dumps(env).encode(),
    st.builds(
        valid_envelope,
        method=method_names,
        args=arguments | json_values,
        version=versions | json_values,
        namespace=namespaces,
    ),
)
requests = st.builds(
    lambda method, args: encode_request(Context(), method, args, "1.0", None),
    method_names,
    arguments,
)
garbage = st.builds(
    Garbage,
    body=st.binary(max_size=100)
    | st.builds(lambda v: json.dumps(v).encode(), json_values)
    | envelope_bodies
    | requests,
    message_id=st.text(max_size=20) | st.just(""),
    reply_expected=st.booleans(),
    redelivered=st.booleans(),
    to_server_queue=st.booleans(),
)


class Lines(logging.Handler):
    """Keeps the formatted log lines of the RPC server; each must be one line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def serve_garbage(messages: list[Garbage]) -> None:
    settings = isolated_settings()
    service = Service.create(Target, topic="target", host="h", settings=settings)
    lines = Lines()
    server_log = logging.getLogger("aiosvc.rpc.server")
    server_log.addHandler(lines)
    await service.start()
    try:
        assert isinstance(service.manager, Target)
        assert isinstance(service.transport, memory.MemoryTransport)
        broker = service.transport.broker
        replies: dict[str, list[bytes]] = {}
        for i, item in enumerate(messages):
            # Ids made unique (and never "-") so each outcome can be found; the sender's
            # text is kept, line breaks and all.
            message_id = f"{i}:{item.message_id}"
            queue = topology.server_queue("target", "h") if item.to_server_queue else "target"

            def reply(mid: str, body: bytes) -> None:
                replies.setdefault(mid, []).append(body)

            broker.queues[queue].put(
                memory._Message(
                    item.body,
                    message_id,
                    reply_to=reply if item.reply_expected else None,
                    redelivered=item.redelivered,
                )
            )
        # A valid call after the garbage is still answered.
        still = await service.transport.call(
            "target",
            encode_request(Context(), "echo", {"value": "still here"}, "1.0", None),
            message_id="probe",
            timeout=10,
        )
        assert decode_reply(still) == (True, "still here")
        server = service.rpc_server
        assert server is not None
        await wait_until(lambda: server.in_flight == 0, timeout=10)

        dead = {letter.message_id for letter in broker.dead_letters}
        for i, item in enumerate(messages):
            message_id = f"{i}:{item.message_id}"
            request = decoded(item.body)
            if request is None:
                # Malformed: dead-lettered, one error line naming it; no reply.
                assert message_id in dead
                assert message_id not in replies
                [line] = [
                    line
                    for line in lines.lines
                    if line.startswith(f"Dead-lettering malformed message {message_id!r} ")
                ]
                assert "\n" not in line
                continue
            assert message_id not in dead
            if not item.reply_expected:
                continue
            [body] = replies[message_id]  # exactly one reply
            ok, value = decode_reply(body)
            # A result, or one of aiosvc's refusals: never a handler's crash.
            assert ok or value["type"] in REFUSAL_TYPES, value
        assert not set(service.manager.ran) - HANDLERS
        # Nothing left unacknowledged or waiting.
        assert all(broker.queue_size(q) == 0 for q in ("target", "target.h"))
    finally:
        server_log.removeHandler(lines)
        await service.stop()


@hypothesis.settings(max_examples=40)
@hypothesis.given(st.lists(garbage, min_size=1, max_size=15))
def test_server_rejects_or_answers_every_bad_message_and_keeps_serving(
    messages: list[Garbage],
) -> None:
    run(serve_garbage(messages))
