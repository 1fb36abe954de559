"""The task helpers: telling a real cancellation from a stray one, unwrapping groups,
running a plain function off the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aiosvc.tasks import as_async, cancel_requested, unwrap_group


async def test_cancel_requested_tells_a_real_cancellation_from_a_stray_one() -> None:
    seen: list[bool] = []
    started = asyncio.Event()

    async def stray() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        try:
            await future  # raises CancelledError, yet nobody cancelled this task
        except asyncio.CancelledError:
            seen.append(cancel_requested())

    async def cancelled() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(cancel_requested())
            raise

    await stray()
    task = asyncio.create_task(cancelled())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [False, True]


def test_unwrap_group_finds_the_single_cause() -> None:
    cause = KeyError("k")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [cause])])
    assert unwrap_group(nested) is cause
    several = ExceptionGroup("two", [KeyError("a"), KeyError("b")])
    assert unwrap_group(several) is several
    assert unwrap_group(cause) is cause


async def test_as_async_runs_a_plain_function_in_a_worker_thread() -> None:
    def blocking(x: int, *, y: int) -> tuple[int, bool]:
        return x + y, threading.current_thread() is threading.main_thread()

    async def coroutine(x: int) -> int:
        return x

    assert await as_async(blocking)(1, y=2) == (3, False)
    assert as_async(coroutine) is coroutine
