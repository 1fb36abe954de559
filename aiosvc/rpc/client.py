"""``RPCClient``: call (wait for the result) or cast (fire and forget) a manager's methods.

Nova: ``oslo_messaging.RPCClient`` with ``prepare(server=, fanout=, version=, timeout=,
call_monitor_timeout=)`` and ``can_send_version``. With ``rpc_wire = "oslo"`` it writes and
reads oslo.messaging's messages (:mod:`aiosvc.rpc.oslo`).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any, Final

from .. import tracing
from ..context import Context, current_context
from ..exceptions import CastFailure, CastsFailed, InvalidTarget, UnsupportedVersion
from ..transport.base import Transport
from . import oslo
from .protocol import decode_reply, encode_request, parse_version, rebuild_exception

__all__ = ["CastBatch", "RPCClient"]


class _Unset:
    pass


_UNSET: Final = _Unset()


class RPCClient:
    """Calls the methods of the services consuming ``topic``.

    Many calls from one client run concurrently; nothing serialises them.

    Args:
        transport: a connected transport (see :func:`aiosvc.connect`).
        topic: the services' topic, e.g. ``"volume"``.
        version: the API version the caller needs; the server must implement the same
            major and at least this minor.
        timeout: seconds a call waits; default ``settings.rpc_response_timeout``.
        namespace: the server's namespace (``None``: the default one).
        server: send to the service on this host only (queue ``topic.host``).
        fanout: cast to every running service of the topic.
        version_cap: the highest version this client may send (rolling upgrades).
        call_monitor_timeout: on oslo.messaging's wire only: ask the server for a heartbeat
            every half of this many seconds while the method runs, and fail a call that
            goes that long without one (a server that died), well before ``timeout``.

    Raises:
        ValueError: a bad timeout, or ``call_monitor_timeout`` on aiosvc's wire.
    """

    def __init__(
        self,
        transport: Transport,
        topic: str,
        version: str = "1.0",
        timeout: float | None = None,
        namespace: str | None = None,
        *,
        server: str | None = None,
        fanout: bool = False,
        version_cap: str | None = None,
        call_monitor_timeout: float | None = None,
    ) -> None:
        if not topic:
            raise InvalidTarget("an RPC client needs a topic")
        parse_version(version)
        if version_cap is not None:
            parse_version(version_cap)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._oslo = transport.settings.rpc_wire == "oslo"
        if call_monitor_timeout is not None:
            if not self._oslo:
                raise ValueError(
                    "call_monitor_timeout needs rpc_wire='oslo': aiosvc's wire has no heartbeats"
                )
            if call_monitor_timeout <= 0:
                raise ValueError(
                    f"call_monitor_timeout must be positive, got {call_monitor_timeout!r}"
                )
        self.transport = transport
        self.topic = topic
        self.version = version
        self.timeout = timeout
        self.namespace = namespace
        self.server = server
        self.fanout = fanout
        self.version_cap = version_cap
        self.call_monitor_timeout = call_monitor_timeout

    def prepare(
        self,
        *,
        server: str | _Unset | None = _UNSET,
        fanout: bool | _Unset = _UNSET,
        version: str | _Unset = _UNSET,
        timeout: float | _Unset | None = _UNSET,
        namespace: str | _Unset | None = _UNSET,
        version_cap: str | _Unset | None = _UNSET,
        call_monitor_timeout: float | _Unset | None = _UNSET,
    ) -> RPCClient:
        """A copy of this client with some options changed."""

        def pick(new: Any, old: Any) -> Any:
            return old if isinstance(new, _Unset) else new

        return RPCClient(
            self.transport,
            self.topic,
            pick(version, self.version),
            pick(timeout, self.timeout),
            pick(namespace, self.namespace),
            server=pick(server, self.server),
            fanout=pick(fanout, self.fanout),
            version_cap=pick(version_cap, self.version_cap),
            call_monitor_timeout=pick(call_monitor_timeout, self.call_monitor_timeout),
        )

    def can_send_version(self, version: str) -> bool:
        """True when ``version`` does not exceed ``version_cap`` (always, without a cap)."""
        if self.version_cap is None:
            return True
        return parse_version(version) <= parse_version(self.version_cap)

    async def call(self, ctx: Context | None, method: str, /, **kwargs: Any) -> Any:
        """Invoke ``method`` on one service and return its result.

        Raises:
            MessagingTimeout: no reply within the timeout, or no heartbeat within
                ``call_monitor_timeout`` (it is then unknown whether the method ran).
            MessageUndeliverable: no service has ever consumed the topic (or host).
            NoSuchMethod, InvalidArguments, UnsupportedVersion: the service refused.
            RemoteError: the method raised (or the original exception, when allowed
                by ``allowed_remote_exceptions``).
            InvalidTarget: the client was prepared with ``fanout=True``.
            TypeError: an argument has no JSON form.
        """
        if self.fanout:
            raise InvalidTarget("a call cannot be used with fanout=True; use cast")
        message_id = uuid.uuid4().hex
        ctx = self._context(ctx)
        body = self._encode(ctx, method, kwargs, message_id)
        settings = self.transport.settings
        timeout = self.timeout or settings.rpc_response_timeout
        with self._span(True, method, ctx, message_id) as headers:
            reply = await self.transport.call(
                self.topic,
                body,
                message_id=message_id,
                timeout=timeout,
                server=self.server,
                call_monitor_timeout=self.call_monitor_timeout,
                headers=headers,
            )
            allowed = settings.allowed_remote_exceptions
            if self._oslo:
                answer = oslo.decode_reply(reply)
                if answer.failure is not None:
                    raise oslo.rebuild_failure(answer.failure, allowed)
                return answer.result
            ok, value = decode_reply(reply)
            if ok:
                return value
            raise rebuild_exception(value, allowed)

    async def cast(self, ctx: Context | None, method: str, /, **kwargs: Any) -> None:
        """Send ``method`` to one service (or all, with ``fanout=True``) without waiting.

        Returns once the broker has confirmed the message. The service acknowledges it
        only after the method finished, so a cast survives a crashed service
        (at least once: make cast handlers idempotent).

        Raises:
            MessageUndeliverable: no service has ever consumed the topic (or host).
            TypeError: an argument has no JSON form.
        """
        ctx = self._context(ctx)
        await self._publish_cast(self._encode(ctx, method, kwargs), uuid.uuid4().hex, method, ctx)

    def batch(self, *, max_in_flight: int = 1000) -> CastBatch:
        """Many casts with their confirms pipelined: ``async with client.batch() as batch``.

        ``await batch.cast(ctx, method, **kwargs)`` hands a message to the broker and
        returns without waiting for its confirm; leaving the block waits for every
        confirm. The promise is :meth:`cast`'s, for the whole batch: when the block exits
        normally the broker has confirmed every message. At most ``max_in_flight``
        messages wait for their confirm at once; ``batch.cast`` waits for a free slot,
        so memory stays flat however many are sent.

        Raises (when the block exits):
            CastsFailed: some messages were refused, unroutable or not confirmed; it names
                each (position, method, message id, reason). The others were confirmed.
        """
        return CastBatch(self, max_in_flight)

    async def _publish_cast(self, body: bytes, message_id: str, method: str, ctx: Context) -> None:
        """Publish one encoded cast to this client's target; returns once confirmed."""
        with self._span(False, method, ctx, message_id) as headers:
            await self.transport.cast(
                self.topic,
                body,
                message_id=message_id,
                server=self.server,
                fanout=self.fanout,
                headers=headers,
            )

    def _span(self, call: bool, method: str, ctx: Context, message_id: str) -> tracing.Sending:
        """The CLIENT (call) or PRODUCER (cast) span of a message, with its headers."""
        settings = self.transport.settings
        return tracing.sending(
            settings.tracing,
            call=call,
            wire=settings.rpc_wire,
            transport_url=settings.transport_url,
            topic=self.topic,
            method=method,
            ctx=ctx,
            message_id=message_id,
            server=self.server,
            fanout=self.fanout,
        )

    @staticmethod
    def _context(ctx: Context | None) -> Context:
        """``ctx``, or inside a handler a child of its context (the caller's chain goes
        on), or a new one."""
        if ctx is not None:
            return ctx
        parent = current_context.get()
        return parent.child() if parent is not None else Context()

    def _encode(
        self, ctx: Context | None, method: str, kwargs: dict[str, Any], call_id: str | None = None
    ) -> bytes:
        if not self.can_send_version(self.version):
            raise UnsupportedVersion(
                f"{method}: version {self.version} exceeds the version cap {self.version_cap}"
            )
        ctx = self._context(ctx)
        if self._oslo:
            return oslo.encode_request(
                ctx,
                method,
                kwargs,
                self.version,
                self.namespace,
                msg_id=call_id,
                reply_q=self.transport.reply_queue,
                call_monitor_timeout=self.call_monitor_timeout,
            )
        return encode_request(ctx, method, kwargs, self.version, self.namespace)

    def __repr__(self) -> str:
        target = f"{self.topic}.{self.server}" if self.server else self.topic
        return f"<RPCClient {target} v{self.version}{' fanout' if self.fanout else ''}>"


class CastBatch:
    """Casts sent without waiting for each confirm; made by :meth:`RPCClient.batch`.

    Kafka's and Pulsar's producers work this way: publish without waiting, then learn of
    every confirm, or of each message that failed, together. Each message is published by
    a task of the batch's own; the batch bounds how many are unconfirmed at once.

    Attributes:
        sent: messages handed to the broker so far.
        confirmed: messages the broker confirmed so far.
        failures: the messages that failed so far, in the order they failed.
    """

    def __init__(self, client: RPCClient, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight!r}")
        self.client = client
        self.max_in_flight = max_in_flight
        self.sent = 0
        self.confirmed = 0
        self.failures: list[CastFailure] = []
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: set[asyncio.Task[None]] = set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._open = False
        self._closed = False

    async def cast(self, ctx: Context | None, method: str, /, **kwargs: Any) -> str:
        """Encode and publish ``method`` to the client's target; return the message id.

        Returns once the message is on its way, without waiting for its confirm: at once,
        unless ``max_in_flight`` messages are unconfirmed, then when one is.

        Raises:
            TypeError: an argument has no JSON form (the message is not sent).
            RuntimeError: the batch is not open (use ``async with client.batch()``).
        """
        if not self._open:
            raise RuntimeError(
                "a batch sends only inside its block: async with client.batch() as batch"
            )
        client = self.client
        ctx = client._context(ctx)
        body = client._encode(ctx, method, kwargs)
        message_id = uuid.uuid4().hex
        await self._slots.acquire()
        position = self.sent
        self.sent += 1
        task = asyncio.get_running_loop().create_task(
            client._publish_cast(body, message_id, method, ctx)
        )
        self._pending.add(task)
        self._drained.clear()
        task.add_done_callback(functools.partial(self._settled, position, method, message_id))
        return message_id

    def _settled(
        self, position: int, method: str, message_id: str, task: asyncio.Task[None]
    ) -> None:
        self._pending.discard(task)
        self._slots.release()
        if task.cancelled():
            error: BaseException = asyncio.CancelledError("cancelled before the broker confirmed")
            self.failures.append(CastFailure(position, method, message_id, error))
        elif (error_or_none := task.exception()) is not None:
            self.failures.append(CastFailure(position, method, message_id, error_or_none))
        else:
            self.confirmed += 1
        if not self._pending:
            self._drained.set()

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet confirmed (nor failed)."""
        return len(self._pending)

    async def wait(self) -> None:
        """Wait until every message sent so far is confirmed or failed (the block's exit
        does this); raises nothing."""
        await self._drained.wait()

    async def __aenter__(self) -> CastBatch:
        if self._open or self._closed:
            raise RuntimeError("a batch is used for one block only; make a new one")
        self._open = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._open, self._closed = False, True
        try:
            await self.wait()
        except BaseException:
            # Cancelled while waiting: the broker may still confirm what it has, but
            # nobody waits to hear of it.
            for task in self._pending:
                task.cancel()
            raise
        if exc_type is None and self.failures:
            raise CastsFailed.of(self.failures, sent=self.sent)

    def __repr__(self) -> str:
        return (
            f"<CastBatch {self.client!r} sent={self.sent} confirmed={self.confirmed} "
            f"failed={len(self.failures)}>"
        )
