"""The RPC server: a dispatcher bound to a service's consumers.

Each delivered message is handled in a task the server owns; at most
``rpc_max_concurrency`` handlers run at once (the transport's prefetch also bounds how many
messages each queue delivers ahead). A message is acknowledged
only after its handler finished and the reply (for a call) was sent: at least once.
A handler's exception goes back to the caller and the message is acknowledged, never
requeued in a loop. A malformed message is logged and dead-lettered.

On oslo.messaging's wire (``rpc_wire = "oslo"``, :mod:`aiosvc.rpc.oslo`) the server does
what an oslo server does: it acknowledges a request before dispatching it (at most once;
as its handler starts, so that those waiting for one of the ``rpc_max_concurrency`` slots
stay unacknowledged and the prefetch bounds them),
drops a repeated ``_unique_id`` among the last 16, sends the reply to the queue the request
names, and sends call-monitor heartbeats every half of the caller's ``_timeout`` while the
method runs.

Graceful stop: stop consuming, let handlers in flight finish within the timeout, cancel
the rest and close the consumer, so the broker redelivers what did not finish.

Nova: ``oslo_messaging.rpc.server`` (stop, then wait) and nova's graceful shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from time import perf_counter

import anyio
from anyio.abc import TaskStatus

from .. import tracing
from ..context import use_context
from ..exceptions import InvalidArguments, MalformedMessage, NoSuchMethod, UnsupportedVersion
from ..log import current_service
from ..metrics import ServiceMetrics
from ..settings import Settings
from ..transport.base import Consumer, IncomingMessage, Transport
from . import oslo
from .dispatcher import Dispatcher
from .protocol import Request, brief, decode_request, encode_failure, encode_result

__all__ = ["RPCServer"]

log = logging.getLogger(__name__)

_REFUSALS = (InvalidArguments, NoSuchMethod, UnsupportedVersion)
_DUPLICATES_KEPT = 16  # oslo's _MsgIdCache.DUP_MSG_CHECK_SIZE


class RPCServer:
    """Serves one dispatcher on ``topic`` (shared), ``topic.host`` and the topic's fanout."""

    def __init__(
        self,
        transport: Transport,
        dispatcher: Dispatcher,
        topic: str,
        host: str,
        settings: Settings,
    ) -> None:
        self.transport = transport
        self.dispatcher = dispatcher
        self.topic = topic
        self.host = host
        self.settings = settings
        self.consumer: Consumer | None = None
        self.handled = 0
        self.metrics: ServiceMetrics | None = None  # set by the service when metrics are on
        self._label = f"{topic}@{host}"
        # Handler tasks are named "rpc <topic>.<method>" for the blocked-loop alarm.
        self._task_prefix = f"rpc {topic}." if settings.loop_block_warning > 0 else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = False
        self._done = anyio.Event()
        # The transport's prefetch applies per queue (three per service); this bounds the
        # handlers running at once across all of them, as rpc_max_concurrency promises.
        # asyncio's semaphore, not anyio's limiter: it does not yield when a slot is free,
        # which saves a trip through the event loop per message.
        self._limiter = asyncio.Semaphore(settings.rpc_max_concurrency)
        self._oslo = settings.rpc_wire == "oslo"
        self._decode = oslo.decode_request if self._oslo else decode_request
        self._recent: collections.deque[str] = collections.deque(maxlen=_DUPLICATES_KEPT)
        self._acked_running = 0  # oslo's wire: handlers whose message was acknowledged
        self._traced = settings.tracing and tracing.available()

    @property
    def in_flight(self) -> int:
        """Messages being handled now (delivered, not yet acknowledged)."""
        return len(self._tasks)

    @property
    def serving(self) -> bool:
        """Whether messages reach it now (running, its consumer attached to its queues)."""
        return self._accepting and self.consumer is not None and self.consumer.attached

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until :meth:`stop`; ``task_status.started()`` once queues are bound.

        Each message is handled in an asyncio task the server owns: it is tracked until it
        ends, drained by :meth:`stop`, and cancelled and awaited if this ``run`` is
        cancelled, so none outlives the server (what a task group would guarantee, at a
        third of the cost per message on the hot path).
        """
        # Accept before consuming: a broker delivers as soon as basic.consume is through,
        # before consume() returns, and a message dropped here would sit unacknowledged.
        self._accepting = True
        try:
            self.consumer = await self.transport.consume(
                self.topic, self.host, self._on_message, prefetch=self.settings.rpc_max_concurrency
            )
            task_status.started()
            await self._done.wait()
        finally:
            self._accepting = False
            with anyio.CancelScope(shield=True):
                await self._cancel_handlers()

    def _on_message(self, message: IncomingMessage) -> None:
        if not self._accepting:
            # Delivered after the server stopped, as its consumer closes: the message is
            # not acknowledged, so the broker gives it to another consumer.
            return
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def _cancel_handlers(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, message: IncomingMessage) -> None:
        # The transport's delivery task is not ours: name the service for log lines.
        current_service.set(self._label)
        try:
            try:
                request = self._decode(message.body)
            except MalformedMessage as exc:
                # One line each, however many come: the id is quoted (a sender's id may
                # hold a line break) and the reason names values briefly.
                log.error(
                    "Dead-lettering malformed message %s on topic %s: %s",
                    brief(message.message_id),
                    self.topic,
                    exc,
                )
                await message.reject()
                if self.metrics is not None:
                    self.metrics.dead_lettered()
                return
            # oslo's requests carry their ids in the body, not as AMQP properties.
            message_id = request.msg_id or request.unique_id or message.message_id
            if self._task_prefix is not None and (task := asyncio.current_task()) is not None:
                task.set_name(self._task_prefix + request.method)  # under 0.5 µs
            with use_context(request.context), self._span(request, message, message_id) as span:
                async with self._limiter:
                    # oslo's wire acknowledges as the handler starts, not on delivery: what
                    # waits for a slot stays unacknowledged, so the prefetch still bounds it.
                    if self._oslo and not await self._take(message, request):
                        return
                    heartbeats = self._heartbeats(message, request)
                    if self._oslo:
                        self._acked_running += 1
                    metrics = self.metrics
                    started = perf_counter() if metrics is not None else 0.0
                    try:
                        result = await self.dispatcher.dispatch(request)
                        reply = self._result(request, result)
                        if metrics is not None:
                            metrics.handled(request.method, perf_counter() - started, failed=False)
                    except _REFUSALS as exc:
                        if metrics is not None:
                            metrics.refused(request.method)
                        log.warning(
                            "Refused %s (message %s): %s",
                            brief(request.method),
                            brief(message_id),
                            exc,
                        )
                        span.fail(exc)
                        reply = self._failure(request, exc)
                    except Exception as exc:
                        log.exception("Error in %s (message %s)", request.method, message_id)
                        if metrics is not None:
                            metrics.handled(request.method, perf_counter() - started, failed=True)
                        span.fail(exc)
                        reply = self._failure(request, exc)
                    finally:
                        if self._oslo:
                            self._acked_running -= 1
                        if heartbeats is not None:
                            heartbeats.cancel()
                if request.reply_to is not None:
                    await message.reply(reply, to=request.reply_to)
                elif message.reply_expected:
                    await message.reply(reply)
                await message.ack()  # on oslo's wire it was, and this does nothing
                self.handled += 1
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            # A transport failure while replying or acknowledging: the message stays
            # unacknowledged and the broker redelivers it.
            log.exception("Could not finish message %s", message.message_id)

    def _span(self, request: Request, message: IncomingMessage, message_id: str) -> tracing.Active:
        """The SERVER (a call) or CONSUMER (a cast) span of handling ``message``, current
        while its method runs; its parent comes from the message's trace context headers."""
        return tracing.handling(
            self._traced,
            call=request.reply_to is not None or message.reply_expected,
            wire=self.settings.rpc_wire,
            transport_url=self.settings.transport_url,
            topic=self.topic,
            method=request.method,
            ctx=request.context,
            message_id=message_id,
            headers=message.headers if self._traced else {},
        )

    def _result(self, request: Request, result: object) -> bytes:
        if request.msg_id is not None:
            return oslo.encode_result(request.msg_id, result)
        return encode_result(result)

    def _failure(self, request: Request, exc: BaseException) -> bytes:
        if request.msg_id is not None:
            return oslo.encode_failure(request.msg_id, exc, request.method, request.version)
        return encode_failure(exc)

    async def _take(self, message: IncomingMessage, request: Request) -> bool:
        """oslo's listener: drop a duplicate, then acknowledge before dispatching."""
        unique_id = request.unique_id
        if unique_id is not None:
            if unique_id in self._recent:
                log.warning(
                    "Ignoring duplicate message %s (%s) on topic %s",
                    brief(unique_id),
                    brief(request.method),
                    self.topic,
                )
                await message.ack()
                return False
            self._recent.append(unique_id)
        await message.ack()
        return True

    def _heartbeats(self, message: IncomingMessage, request: Request) -> asyncio.Task[None] | None:
        """A task sending call-monitor heartbeats while the method runs, when asked for."""
        if request.reply_to is None or request.msg_id is None or not request.call_monitor_timeout:
            return None
        interval = int(request.call_monitor_timeout) / 2  # oslo's RPCDispatcher._watchdog
        if interval < 1:
            log.warning(
                "Call %s gave an invalid call-monitor timeout %r; sending no heartbeats",
                brief(request.msg_id),
                request.call_monitor_timeout,
            )
            return None
        return asyncio.get_running_loop().create_task(
            _beat(message, request.reply_to, request.msg_id, interval)
        )

    async def pause_shared(self) -> None:
        """Stop taking work from the shared queue (the service was disabled)."""
        if self.consumer is not None:
            await self.consumer.pause_shared()

    async def resume_shared(self) -> None:
        """Take work from the shared queue again (the service was enabled)."""
        if self.consumer is not None:
            await self.consumer.resume_shared()

    async def stop_accepting(self) -> None:
        """Take no new messages (cancel the consumers); those in flight go on. Idempotent;
        :meth:`stop` begins so."""
        if self.consumer is not None:
            await self.consumer.cancel()

    async def stop(self, timeout: float | None = None) -> int:
        """Stop consuming, drain, and close; return how many handlers were cancelled.

        Args:
            timeout: seconds to wait for handlers in flight; default
                ``graceful_shutdown_timeout`` (0 there means forever).
        """
        if timeout is None:
            timeout = self.settings.graceful_shutdown_timeout or math.inf
        cancelled = lost = 0
        await self.stop_accepting()
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        if self.in_flight:
            cancelled, lost = self.in_flight, self._acked_running
            log.warning(
                "Graceful shutdown timeout (%ss) passed: cancelling %d unfinished handler(s); %s",
                timeout,
                cancelled,
                "their messages go back to the queue"
                if not lost
                else f"{lost} of them acknowledged already (oslo's wire: at most once) are lost, "
                f"the other {cancelled - lost} go back to the queue",
            )
            await self._cancel_handlers()
        if self.consumer is not None:
            await self.consumer.close()
        self._done.set()
        log.info(
            "RPC server for %s stopped: handled %d message(s), requeued %d%s",
            self.topic,
            self.handled,
            cancelled - lost,
            f", lost {lost} acknowledged as they started (oslo's wire)" if lost else "",
        )
        return cancelled


async def _beat(message: IncomingMessage, reply_to: str, msg_id: str, interval: float) -> None:
    """Send call ``msg_id`` a heartbeat every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await message.reply(oslo.encode_heartbeat(msg_id), to=reply_to)
        except Exception as exc:  # the caller's monitor will say it; the method goes on
            log.warning("Could not send a heartbeat to call %s: %s", brief(msg_id), exc)
