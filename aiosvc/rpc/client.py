"""``RPCClient``: call (wait for the result) or cast (fire and forget) a manager's methods.

Nova: ``oslo_messaging.RPCClient`` with ``prepare(server=, fanout=, version=, timeout=,
call_monitor_timeout=)`` and ``can_send_version``. With ``rpc_wire = "oslo"`` it writes and
reads oslo.messaging's messages (:mod:`aiosvc.rpc.oslo`).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from ..context import Context, current_context
from ..exceptions import InvalidTarget, UnsupportedVersion
from ..transport.base import Transport
from . import oslo
from .protocol import decode_reply, encode_request, parse_version, rebuild_exception

__all__ = ["RPCClient"]


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
        body = self._encode(ctx, method, kwargs, message_id)
        timeout = self.timeout or self.transport.settings.rpc_response_timeout
        reply = await self.transport.call(
            self.topic,
            body,
            message_id=message_id,
            timeout=timeout,
            server=self.server,
            call_monitor_timeout=self.call_monitor_timeout,
        )
        allowed = self.transport.settings.allowed_remote_exceptions
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
        body = self._encode(ctx, method, kwargs)
        await self.transport.cast(
            self.topic, body, message_id=uuid.uuid4().hex, server=self.server, fanout=self.fanout
        )

    def _encode(
        self, ctx: Context | None, method: str, kwargs: dict[str, Any], call_id: str | None = None
    ) -> bytes:
        if not self.can_send_version(self.version):
            raise UnsupportedVersion(
                f"{method}: version {self.version} exceeds the version cap {self.version_cap}"
            )
        if ctx is None:
            # Inside a handler, a call without a context continues the caller's chain.
            parent = current_context.get()
            ctx = parent.child() if parent is not None else Context()
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
