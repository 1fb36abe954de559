"""Connections to the broker: several hosts, failover, and what is logged about them.

* :func:`broker_urls`: a transport URL may list several brokers, as oslo.messaging's does:
  ``amqp://user:pass@host1:5672,host2:5672,host3:5672/vhost``. A host without credentials of
  its own takes those of the first that has them.
* :class:`FailoverConnection`: aio-pika's robust connection, moving on to the next broker of
  the list at every connection attempt (round robin, like oslo's ``kombu_failover_strategy``),
  so losing the node it was connected to sends it to another one.
* :class:`BrokerWatch`: logs the loss of the broker once, a reminder at most every
  :data:`REMIND_EVERY` seconds, and the recovery once, for all the connections of one
  transport together.
* :func:`relay_library_logs`: aio-pika and aiormq log every failed attempt of every
  connection (several lines a second during an outage, an ERROR line before aiosvc's own
  one-line error); their records are passed on at DEBUG level, with passwords masked, as
  the logger ``aiosvc.transport.amqp.library``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import aio_pika
from yarl import URL

from ...exceptions import TransportError
from ...log import one_line
from ...metrics import transport_reconnected

__all__ = [
    "REMIND_EVERY",
    "BrokerWatch",
    "FailoverConnection",
    "broker_urls",
    "relay_library_logs",
    "shown",
]

log = logging.getLogger(__name__)

#: Seconds between two reminders that the broker is still unreachable.
REMIND_EVERY = 60.0

_LIBRARIES = ("aio_pika", "aiormq")
_LIBRARY_LOGGER = "aiosvc.transport.amqp.library"


def broker_urls(url: str) -> list[URL]:
    """The brokers a transport URL names, each as a URL of its own.

    Raises:
        TransportError: a host of the list is empty or not ``host[:port]``.
    """
    scheme, sep, rest = url.partition("://")
    if scheme == "rabbit":  # oslo.messaging's name for the same thing
        scheme = "amqp"
        url = f"{scheme}{sep}{rest}"
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    netloc, tail = rest[:end], rest[end:]
    if not sep or "," not in netloc:
        return [URL(url)]
    userinfo = ""
    urls = []
    for item in netloc.split(","):
        credentials, at, hostport = item.rpartition("@")
        if at:
            userinfo = credentials
        if not hostport:
            raise TransportError(f"an empty host in the broker list of {scheme}://...")
        prefix = f"{userinfo}@" if userinfo else ""
        try:
            one = URL(f"{scheme}://{prefix}{hostport}{tail}")
            one.port  # noqa: B018  (parses the port now, so a bad one fails here)
        except ValueError as exc:
            raise TransportError(f"bad broker {hostport!r} in the transport URL: {exc}") from None
        urls.append(one)
    return urls


def shown(url: URL) -> str:
    """``url`` without its password and query, for logs."""
    return str(url.with_password("***" if url.password else None).with_query(None))


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that tries the next broker of ``urls`` at each attempt.

    aio-pika reconnects to one URL; this moves ``url`` along the list just before each
    attempt (aio-pika's ``RobustConnection.__connect_transport``, which every attempt goes
    through), so a dead node is left for the next one.
    """

    def __init__(self, urls: list[URL], **kwargs: Any) -> None:
        if not hasattr(aio_pika.RobustConnection, "_RobustConnection__connect_transport"):
            raise TransportError(  # pragma: no cover - a future aio-pika
                "this aio-pika version cannot fail over between brokers: list one host only"
            )
        super().__init__(urls[0], **kwargs)
        self.urls = urls
        self._attempts = 0

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self.urls[self._attempts % len(self.urls)]
        self._attempts += 1
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


class BrokerWatch:
    """The broker's state as one transport's connections see it, logged on changes only.

    Args:
        where: the broker (or list of brokers), without password, for the log lines.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.down_since: float | None = None
        self._down: set[str] = set()
        self._reminder: asyncio.Task[None] | None = None

    def watch(self, name: str, connection: aio_pika.RobustConnection) -> None:
        """Follow ``connection`` (one of the transport's, called ``name``)."""

        def lost(_: object, exc: BaseException | None = None) -> None:
            if not connection.is_closed and not getattr(connection, "_close_called", False):
                self.lost(name, exc)

        def back(_: object) -> None:
            self.back(name, connection.url)

        connection.close_callbacks.add(lost)
        connection.reconnect_callbacks.add(back)

    def lost(self, name: str, exc: BaseException | None) -> None:
        """Connection ``name`` is gone: the first one to go is logged, with why."""
        first = not self._down
        self._down.add(name)
        if not first:
            return
        self.down_since = time.monotonic()
        why = f" ({one_line(exc)})" if exc is not None and str(exc) else ""
        log.warning("lost the AMQP broker %s%s; reconnecting", self.where, why)
        self._reminder = asyncio.get_running_loop().create_task(
            self._remind(), name="aiosvc-amqp-broker-reminder"
        )

    def back(self, name: str, url: URL) -> None:
        """Connection ``name`` is up again: once all are, the recovery is logged."""
        self._down.discard(name)
        if self._down or self.down_since is None:
            return
        took = time.monotonic() - self.down_since
        self.down_since = None
        self.close()
        log.info("reconnected to the AMQP broker %s after %.1f s", shown(url), took)
        transport_reconnected()

    async def _remind(self) -> None:
        while self.down_since is not None:
            await asyncio.sleep(REMIND_EVERY)
            if self.down_since is not None:
                log.warning(
                    "still no AMQP broker %s after %.0f s; reconnecting",
                    self.where,
                    time.monotonic() - self.down_since,
                )

    def close(self) -> None:
        """Stop reminding."""
        if self._reminder is not None:
            self._reminder.cancel()
            self._reminder = None


class _Relay(logging.Handler):
    """Passes a library's records on at DEBUG level under one logger, passwords masked."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(_LIBRARY_LOGGER)
        if not target.isEnabledFor(logging.DEBUG):
            return
        message = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({one_line(record.exc_info[1])})"
        for secret in self.secrets:
            message = message.replace(secret, "***")
        target.handle(
            target.makeRecord(
                target.name, logging.DEBUG, record.pathname, record.lineno, message, (), None
            )
        )


_relay = _Relay()


def relay_library_logs(secrets: Iterable[str | None]) -> None:
    """Pass aio-pika's and aiormq's records on at DEBUG level, ``secrets`` masked.

    Process-wide, as logging is: their loggers stop propagating to the root logger and
    go through the logger ``aiosvc.transport.amqp.library`` instead. Idempotent; each
    call adds its secrets.
    """
    _relay.secrets.update(s for s in secrets if s)
    for name in _LIBRARIES:
        library = logging.getLogger(name)
        if _relay not in library.handlers:
            library.addHandler(_relay)
        library.propagate = False
