"""The example system as separate processes against RabbitMQ and PostgreSQL: two volume
hosts, a scheduler, a client. Disabling a host, and a scheduler restarted under load."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import aiosvc
from aiosvc.testing import isolated_settings, wait_until
from tests.procs import Proc, clean_env, run_cli

pytestmark = pytest.mark.slow

STEP = 30.0  # deadline for one step on a busy machine; the figures are printed


@pytest.fixture
def env(fresh_amqp_url: str, fresh_database_url: str) -> dict[str, str]:
    return clean_env(
        AIOSVC_TRANSPORT_URL=fresh_amqp_url,
        AIOSVC_DATABASE_URL=fresh_database_url,
        AIOSVC_PERIODIC_FUZZY_DELAY="0",
        AIOSVC_REPORT_INTERVAL="1",
        AIOSVC_GRACEFUL_SHUTDOWN_TIMEOUT="5",
        # How long a new scheduler waits for the hosts' answers: 1 s by default, more here
        # so that a loaded machine's slow answers are still waited for (the delay itself
        # is measured below, on the scheduler's clock).
        AIOSVC_CAPABILITIES_WAIT="20",
    )


def start(env: dict[str, str], *args: str) -> Proc:
    proc = Proc(["run", *args], env)
    proc.wait_for("Started aiosvc-", timeout=STEP)
    return proc


@pytest.fixture
def hosts(env: dict[str, str]) -> Iterator[None]:
    volume = ["--manager", "examples.volume:VolumeManager"]
    a = start(env, *volume, "--host", "host-a", "--set", "volume_capacity_gb=50")
    b = start(env, *volume, "--host", "host-b", "--set", "volume_capacity_gb=80")
    try:
        yield
    finally:
        for proc in (a, b):
            proc.signal(signal.SIGTERM)
            proc.wait(STEP)
            proc.stop()


def scheduler(env: dict[str, str], host: str) -> Proc:
    return start(env, "--manager", "examples.scheduler:VolumeScheduler", "--host", host)


def stop(proc: Proc) -> None:
    proc.signal(signal.SIGTERM)
    assert proc.wait(STEP) == 0, "\n".join(proc.lines[-20:])
    proc.stop()


async def call(env: dict[str, str], topic: str, method: str, **kwargs: Any) -> Any:
    settings = isolated_settings(transport_url=env["AIOSVC_TRANSPORT_URL"])
    async with aiosvc.connect(settings) as transport:
        server = kwargs.pop("server", None)
        version = "1.1" if topic == "volume" else "1.0"  # list_volumes came in 1.1
        client = aiosvc.RPCClient(transport, topic, version, timeout=STEP, server=server)
        return await client.call(None, method, **kwargs)


async def cast(env: dict[str, str], topic: str, method: str, **kwargs: Any) -> None:
    settings = isolated_settings(transport_url=env["AIOSVC_TRANSPORT_URL"])
    async with aiosvc.connect(settings) as transport:
        await aiosvc.RPCClient(transport, topic).cast(None, method, **kwargs)


async def volume_ids(env: dict[str, str], host: str) -> set[str]:
    return {v["id"] for v in await call(env, "volume", "list_volumes", server=host)}


@pytest.mark.usefixtures("hosts")
async def test_a_disabled_host_is_no_longer_chosen(env: dict[str, str]) -> None:
    sched = scheduler(env, "sched-1")
    try:
        placed = await call(env, "scheduler", "create_volume", volume_id="v1", size_gb=1)
        assert placed["host"] == "host-b"  # 80 GiB free against 50
        result = run_cli(["services", "disable", "host-b", "aiosvc-volume"], env)
        assert result.returncode == 0, result.stderr
        disabled_at = time.monotonic()
        placed = await call(env, "scheduler", "create_volume", volume_id="v2", size_gb=1)
        assert placed["host"] == "host-a"
        print(f"chosen elsewhere {time.monotonic() - disabled_at:.3f} s after the disable")
        await wait_until(lambda: _has(env, "host-a", "v2"), timeout=STEP)
    finally:
        stop(sched)


async def _has(env: dict[str, str], host: str, volume_id: str) -> bool:
    return volume_id in await volume_ids(env, host)


@pytest.mark.usefixtures("hosts")
async def test_a_request_sent_while_no_scheduler_runs_is_placed_by_the_next(
    env: dict[str, str],
) -> None:
    stop(scheduler(env, "sched-1"))  # declares the durable scheduler queue, then goes
    await cast(env, "scheduler", "create_volume", volume_id="queued", size_gb=1)
    sched = scheduler(env, "sched-2")
    try:

        async def placed() -> bool:
            return await _has(env, "host-a", "queued") or await _has(env, "host-b", "queued")

        await wait_until(placed, timeout=STEP)
        known = await call(env, "scheduler", "hosts")
        assert {h["host"] for h in known} == {"host-a", "host-b"}
        # Measured on the scheduler's own clock, from asking the hosts to hearing each:
        # about 0.02 s on an idle machine; the bound is generous for a loaded one.
        delays = [h["seconds_after_asking"] for h in known]
        print(f"new scheduler heard both hosts within {max(delays):.3f} s of asking")
        assert max(delays) < STEP
    finally:
        stop(sched)
