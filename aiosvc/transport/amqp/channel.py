"""Keeping one channel usable across reconnects: :class:`ChannelKeeper`.

aio-pika's robust connection reconnects and reopens its channels, but what was set up
on a channel (declarations, consumers, QoS) is redone here, not by aio-pika's registry
of objects: the keeper waits for the reopened channel, reruns its ``setup`` and retries
until that succeeds. It also reruns ``setup`` when the broker cancels a consumer (its
queue was deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiormq
import aiormq.abc
from aio_pika.abc import AbstractRobustConnection

from ...exceptions import TransportError
from ...log import one_line

__all__ = ["AMQP_ERRORS", "Channel", "ChannelKeeper", "Properties"]

log = logging.getLogger(__name__)

# What a lost or refused connection or channel raises from aiormq.
AMQP_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError)

Channel = aiormq.abc.AbstractChannel
Properties = aiormq.spec.Basic.Properties

_RESTORE_DELAY = 1.0
_REOPEN_GRACE = 5.0


class ChannelKeeper:
    """Keeps the channel of one concern (casts, calls, replies, a consumer) usable.

    Args:
        name: the concern, for logs.
        connection: the robust connection the channel belongs to.
        setup: run on the first channel and again on every reopened one.
        on_lost: called at once when a channel closes, with that channel.
        confirms: open the channel with publisher confirms.
    """

    def __init__(
        self,
        name: str,
        connection: AbstractRobustConnection,
        *,
        setup: Callable[[Channel], Awaitable[None]] | None = None,
        on_lost: Callable[[Channel], None] | None = None,
        confirms: bool = False,
    ) -> None:
        self.name = name
        self.robust = connection.channel(publisher_confirms=confirms)
        self.current: Channel | None = None
        self._connection = connection
        self._setup = setup
        self._on_lost = on_lost
        self._ready = asyncio.Event()
        self._kick = asyncio.Event()
        self._closed = False
        self._alone = False  # the last loss was of this channel alone
        self._renewing: Channel | None = None  # closed by renew(): said already
        self._closings: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the channel, set it up (errors propagate) and start watching it."""
        await self.robust
        channel = await self.robust.get_underlay_channel()
        if self._setup is not None:
            await self._setup(channel)
        self._attach(channel)
        self._task = asyncio.create_task(self._watch(), name=f"aiosvc-amqp-{self.name}")

    def _attach(self, channel: Channel) -> None:
        self.current = channel
        self._ready.set()
        channel.closing.add_done_callback(partial(self._on_close, channel))
        channel.on_consumer_cancel_callbacks.add(self._on_cancel)

    def _on_close(self, channel: Channel, closing: asyncio.Future[Any]) -> None:
        # Runs as soon as the channel closes, so no caller picks it up afterwards.
        if self.current is channel:
            self.current = None
            self._ready.clear()
            if not self._closed:
                # The broker closed this channel alone: worth a warning. A lost connection
                # closes every channel; the transport logs that once (BrokerWatch).
                exc = None if closing.cancelled() else closing.exception()
                alone = isinstance(exc, aiormq.exceptions.AMQPChannelError)
                alone = alone and channel is not self._renewing
                self._alone = alone
                log.log(
                    logging.WARNING if alone else logging.DEBUG,
                    "AMQP channel for %s lost (%s); restoring it",
                    self.name,
                    one_line(exc) if exc is not None else "closed",
                )
            self._kick.set()
        if self._on_lost is not None:
            self._on_lost(channel)

    def _on_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        log.warning(
            "broker cancelled consumer %s (%s); re-consuming", frame.consumer_tag, self.name
        )
        self._kick.set()

    def kick(self) -> None:
        """Rerun the setup on the current channel (or after it is restored)."""
        self._kick.set()

    async def _watch(self) -> None:
        while not self._closed:
            await self._kick.wait()
            self._kick.clear()
            if self._closed:
                return
            await self._restore()

    async def _reopened(self) -> Channel:
        """The reopened underlying channel, once aio-pika has reopened it."""
        while True:
            try:
                async with asyncio.timeout(_REOPEN_GRACE):
                    await self.robust.ready()
            except TimeoutError:
                if self._connection.connected.is_set():
                    # The connection is up, yet the channel is not back: aio-pika does
                    # not retry a failed reopen after a channel-level close. Ask again
                    # (its own lock and state checks make this safe).
                    async with asyncio.timeout(_REOPEN_GRACE):
                        await self.robust.restore()
                continue
            channel = await self.robust.get_underlay_channel()
            if not channel.is_closed:
                return channel
            await asyncio.sleep(0.05)  # closed just now; aio-pika has not noticed yet

    async def _restore(self) -> None:
        failures = 0
        while not self._closed:
            try:
                channel = await self._reopened()
                if self._setup is not None:
                    await self._setup(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                # Once at warning level, then quietly: aio-pika logs the reconnection.
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "restoring AMQP channel for %s failed (%s: %s); retrying",
                    self.name,
                    type(exc).__name__,
                    one_line(exc),
                )
                await asyncio.sleep(_RESTORE_DELAY)
                continue
            if channel is not self.current:
                self._attach(channel)
                log.log(
                    logging.INFO if self._alone else logging.DEBUG,
                    "AMQP channel for %s restored",
                    self.name,
                )
            return

    def renew(self, channel: Channel | None) -> None:
        """Replace ``channel`` by a new one, if it is still the current one.

        For a channel the broker nacked a publish on: RabbitMQ 3.10 can keep nacking every
        publish of a channel opened on a surviving node of a cluster before its quorum
        queue elected a new leader, while a new channel is acked at once.
        """
        if channel is None or channel is not self.current or channel.is_closed:
            return
        log.warning(
            "AMQP broker refused a message on the channel for %s: opening another", self.name
        )
        self._renewing = channel
        # In a task of its own: the close must neither delay the caller's error nor be
        # cancelled with it (nor cancel it, when the connection goes meanwhile).
        closing = asyncio.get_running_loop().create_task(_close_quietly(channel))
        self._closings.add(closing)
        closing.add_done_callback(self._closings.discard)

    def usable(self) -> Channel | None:
        """The channel if it is open now, else None (no waiting)."""
        channel = self.current
        return channel if channel is not None and not channel.is_closed else None

    async def get(self) -> Channel:
        """The usable channel, waiting for it while the broker is away (no timeout here).

        Raises:
            TransportError: the keeper was closed.
        """
        while True:
            channel = self.usable()
            if channel is not None:
                return channel
            if self._closed:
                raise TransportError(f"AMQP channel for {self.name} is closed")
            if self._ready.is_set():
                await asyncio.sleep(0)  # the close callback has not run yet
            else:
                await self._ready.wait()

    async def close(self) -> None:
        """Stop watching and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._kick.set()
        self._ready.set()  # wakes get() waiters, which then see _closed
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*AMQP_ERRORS, RuntimeError):
            await self.robust.close()


async def _close_quietly(channel: Channel) -> None:
    with contextlib.suppress(*AMQP_ERRORS, RuntimeError, asyncio.CancelledError):
        await channel.close()
