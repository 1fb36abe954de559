"""OpenTelemetry spans for calls, casts, their handling and periodic runs.

aiosvc uses the OpenTelemetry *API* only (``pip install 'aiosvc[tracing]'`` brings
``opentelemetry-api``); which SDK and exporter record the spans is the application's
choice. The spans (docs/observability.md has the names and attributes):

* ``topic/method``, kind CLIENT: an :meth:`~aiosvc.RPCClient.call`, until its reply;
* ``topic/method``, kind PRODUCER: a cast (plain or in a batch), until the broker's confirm;
* ``topic/method``, kind SERVER (a call) or CONSUMER (a cast): a service handling the
  message; its parent is the sender's span, read from the message's W3C trace context
  headers (``traceparent``, ``tracestate``, ``baggage``), and it is the current span while
  the method runs, so a call the method makes is its child;
* ``periodic Manager.task``, kind INTERNAL: one run of a periodic task, a trace of its own;
* ``METHOD`` (``POST``...), kind SERVER: an HTTP request to an API service
  (:mod:`aiosvc.api`), a child of the request's ``traceparent`` header when it has one.

Tracing is on when the ``tracing`` setting is (the default) and ``opentelemetry-api`` can be
imported; otherwise every function here returns a shared object that does nothing. The
tracer comes from OpenTelemetry's global provider (``opentelemetry.trace``), looked up
when a span starts, so a provider set after aiosvc started is used too. Without an SDK
(no provider set) no span is made: a message costs a check of the global provider, and a
trace context that came in with a message is passed on to the calls its handler makes, so
a service with no SDK between two with one keeps their trace whole.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from .context import Context

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = [
    "Active",
    "Sending",
    "available",
    "handling",
    "http_request",
    "messaging_system",
    "periodic_run",
    "sending",
]

log = logging.getLogger(__name__)

_SYSTEMS: Final = {
    "memory": "memory",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "rabbit": "rabbitmq",
}


class _OTel:
    """opentelemetry-api, imported: what the spans are made with."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.trace = trace
        self.context = context
        self.propagate = propagate
        self.kind = SpanKind
        self.status = Status
        self.error = StatusCode.ERROR
        self.root = context.Context()
        # A ProxyTracer while no provider is set: it finds the provider set later.
        self.tracer = trace.get_tracer("aiosvc", _version())
        self._no_sdk = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._sdk = False
        trace.get_tracer_provider()  # sets the global from OTEL_PYTHON_TRACER_PROVIDER

    def idle(self) -> bool:
        """True while no SDK provider is set: every span would be a no-op, so only the
        trace context that came in is carried on, and no span is made.

        The global provider can be set once, so once set this is False for good. Until
        then it reads the variable the API's ``ProxyTracer`` reads (``get_tracer_provider``
        costs microseconds a message), or calls ``get_tracer_provider`` if it is gone.
        """
        if self._sdk:
            return False
        provider = getattr(self.trace, "_TRACER_PROVIDER", _GONE)
        if provider is _GONE:
            provider = self.trace.get_tracer_provider()
        if provider is None or isinstance(provider, self._no_sdk):
            return True
        self._sdk = True
        return False


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aiosvc")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return None


_GONE: Final = object()


@functools.cache
def _load() -> _OTel | None:
    try:
        return _OTel()
    except ImportError:
        log.debug("opentelemetry-api is not installed: aiosvc does not trace")
        return None


def available() -> bool:
    """True when ``opentelemetry-api`` is installed, so ``tracing = true`` traces."""
    return _load() is not None


def _otel_for(enabled: bool) -> _OTel | None:
    if not enabled:
        return None
    return _load()


def _request_attributes(attributes: dict[str, Any], ctx: Context) -> dict[str, Any]:
    attributes["aiosvc.request_id"] = ctx.request_id
    if ctx.global_request_id is not None:
        attributes["aiosvc.global_request_id"] = ctx.global_request_id
    return attributes


def _fail(otel: _OTel, span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(otel.status(otel.error, f"{type(exc).__name__}: {exc}"))


class Sending:
    """A CLIENT (call) or PRODUCER (cast) span from the publish to the reply or confirm.

    ``with`` gives the headers to send with the message (None when there are none); an
    exception leaving the block is recorded on the span (status ERROR).
    """

    __slots__ = ("_otel", "_span", "headers")

    # otel: an _OTel, span: an opentelemetry Span (Any: neither is in the docs' reach).
    def __init__(self, otel: Any, span: Any, headers: dict[str, str] | None) -> None:
        self._otel: _OTel | None = otel
        self._span: Span | None = span
        self.headers = headers

    def __enter__(self) -> dict[str, str] | None:
        return self.headers

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None or self._otel is None:
            return
        if isinstance(exc, Exception):
            _fail(self._otel, span, exc)
        span.end()


class Active:
    """A span that is the current one for a block: a message's handling, a periodic run,
    an HTTP request.

    An exception leaving the block is recorded on the span (status ERROR); :meth:`fail`
    records one that the block handled itself (a handler's error, sent back to the caller).
    """

    __slots__ = ("_otel", "_parent", "_span", "_token")

    def __init__(self, otel: Any, span: Any, parent: Any = None) -> None:
        self._otel: _OTel | None = otel
        self._span: Span | None = span
        self._parent = parent
        self._token: Any = None

    def __enter__(self) -> Active:
        otel = self._otel
        if otel is not None:
            current = self._parent
            if self._span is not None:
                current = otel.trace.set_span_in_context(self._span, current)
            self._token = otel.context.attach(current)
        return self

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` on the span and set its status to ERROR."""
        if self._otel is not None and self._span is not None:
            _fail(self._otel, self._span, exc)

    def set(self, key: str, value: str | int | bool, *, error: str | None = None) -> None:
        """Set one attribute on the span; with ``error``, also its status to ERROR."""
        if self._otel is not None and self._span is not None:
            self._span.set_attribute(key, value)
            if error is not None:
                self._span.set_status(self._otel.status(self._otel.error, error))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel, span = self._otel, self._span
        if otel is None:
            return
        otel.context.detach(self._token)
        if span is None:
            return
        if isinstance(exc, Exception):
            _fail(otel, span, exc)
        span.end()


# What the functions below return when tracing is off: stateless, so shared.
_NOT_SENDING: Final = Sending(None, None, None)
_NOT_ACTIVE: Final = Active(None, None)


def messaging_system(transport_url: str) -> str:
    """``messaging.system`` for a transport URL: ``rabbitmq`` or ``memory``."""
    scheme = transport_url.partition("://")[0]
    return _SYSTEMS.get(scheme, scheme)


def sending(
    enabled: bool,
    *,
    call: bool,
    wire: str,
    transport_url: str,
    topic: str,
    method: str,
    ctx: Context,
    message_id: str,
    server: str | None = None,
    fanout: bool = False,
) -> Sending:
    """The span of a call (``call=True``) or a cast being sent, and its headers.

    Args:
        enabled: the ``tracing`` setting.
        wire: the ``rpc_wire`` setting (``rpc.system``).
        transport_url: gives ``messaging.system``.
        ctx: the request's context (``aiosvc.request_id``).
    """
    otel = _otel_for(enabled)
    if otel is None:
        return _NOT_SENDING
    if otel.idle():
        if not otel.context.get_current():
            return _NOT_SENDING  # no trace context, no baggage: nothing to send
        carried: dict[str, str] = {}
        otel.propagate.inject(carried)
        return Sending(None, None, carried or None)
    attributes: dict[str, Any] = {
        "rpc.system": wire,
        "rpc.service": topic,
        "rpc.method": method,
        "messaging.system": messaging_system(transport_url),
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.message.id": message_id,
    }
    if server is not None:
        attributes["aiosvc.server"] = server
    if fanout:
        attributes["aiosvc.fanout"] = True
    span = otel.tracer.start_span(
        f"{topic}/{method}",
        kind=otel.kind.CLIENT if call else otel.kind.PRODUCER,
        attributes=_request_attributes(attributes, ctx),
    )
    headers: dict[str, str] = {}
    otel.propagate.inject(headers, otel.trace.set_span_in_context(span))
    return Sending(otel, span, headers or None)


def handling(
    enabled: bool,
    *,
    call: bool,
    wire: str,
    transport_url: str,
    topic: str,
    method: str,
    ctx: Context,
    message_id: str,
    headers: Mapping[str, str],
) -> Active:
    """The span of a service handling a call (``call=True``, SERVER) or a cast (CONSUMER).

    Its parent is the trace context in ``headers`` (a new trace when there is none), never
    whatever was current where the message was delivered.
    """
    otel = _otel_for(enabled)
    if otel is None:
        return _NOT_ACTIVE
    parent = otel.propagate.extract(headers, otel.root) if headers else otel.root
    if otel.idle():
        # No span to make, but the handler's calls carry the caller's trace on.
        return Active(otel, None, parent) if headers else _NOT_ACTIVE
    attributes: dict[str, Any] = {
        "rpc.system": wire,
        "rpc.service": topic,
        "rpc.method": method,
        "messaging.system": messaging_system(transport_url),
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.message.id": message_id,
    }
    span = otel.tracer.start_span(
        f"{topic}/{method}",
        parent,
        kind=otel.kind.SERVER if call else otel.kind.CONSUMER,
        attributes=_request_attributes(attributes, ctx),
    )
    return Active(otel, span, parent)


def periodic_run(enabled: bool, name: str, ctx: Context) -> Active:
    """The span of one run of periodic task ``name`` (INTERNAL), a trace of its own."""
    otel = _otel_for(enabled)
    if otel is None or otel.idle():
        return _NOT_ACTIVE
    attributes = _request_attributes({"aiosvc.periodic_task": name}, ctx)
    span = otel.tracer.start_span(
        f"periodic {name}", otel.root, kind=otel.kind.INTERNAL, attributes=attributes
    )
    return Active(otel, span, otel.root)


def http_request(
    enabled: bool, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]
) -> Active:
    """The span of an HTTP request to an API service (SERVER), child of its ``traceparent``.

    Args:
        headers: the ASGI scope's ``headers`` (lower-case names, latin-1 bytes).
    """
    otel = _otel_for(enabled)
    if otel is None:
        return _NOT_ACTIVE
    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
    parent = otel.propagate.extract(carrier, otel.root)
    if otel.idle():
        return Active(otel, None, parent)
    span = otel.tracer.start_span(
        method,
        parent,
        kind=otel.kind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    )
    return Active(otel, span, parent)
