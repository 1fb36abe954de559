"""A single RabbitMQ node crashed under load, and a broker that is down.

Promises checked, against a real node and real ``python -m aiosvc run`` processes:

- after ``kill -9`` of the only node and its start on the same state and ports, running services
  consume again within 10 s of the broker's return, without being restarted, and no cast the
  broker confirmed is lost (with durable queues, the default); duplicates are counted, not failed;
- the services log the outage a handful of times, not once per reconnection attempt;
- while the broker is down, ``cast`` raises ``TransportError`` after ``rpc_response_timeout`` and
  ``call`` raises ``MessagingTimeout`` at its timeout: a clear error within a bound, never a
  hang; ``python -m aiosvc call``/``cast`` print one line, without traceback or password, and
  exit non-zero.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

import aiosvc
from tests.faults.conftest import (
    CallProbe,
    Casts,
    Figures,
    client_settings,
    journaling_services,
    wait_handled,
)
from tests.procs import clean_env, run_cli
from tests.servers import RabbitNode

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

HOSTS = ["host-a", "host-b"]
#: How long the broker stays down: the scenario itself, not a wait for something to happen.
OUTAGE = 5.0
#: What a line about the broker connection mentions (aiosvc's own, aio-pika's and aiormq's).
BROKER_LINE = re.compile(r"amqp|broker|connect|channel", re.IGNORECASE)


async def test_services_consume_again_after_kill_9_and_restart(
    running_node: RabbitNode, topic: str, control_exchange: str, tmp_path: Path
) -> None:
    journal_path = tmp_path / "journal.jsonl"
    url = running_node.url
    settings = client_settings(url, control_exchange, rpc_response_timeout=3)
    with journaling_services(url, control_exchange, topic, journal_path, HOSTS) as services:
        async with aiosvc.connect(settings) as transport:
            client = aiosvc.RPCClient(transport, topic)
            casts = Casts(client)
            # One probe per service, through its own queue: each must consume again.
            probes = {
                host: CallProbe(client.prepare(server=host, timeout=1), "whoami") for host in HOSTS
            }
            casts.start()
            try:
                await casts.confirmed_after(200, timeout=30)
                for probe in probes.values():
                    probe.start()
                logged = {host: len(proc.lines) for host, proc in services.items()}
                await asyncio.to_thread(running_node.kill)
                killed = time.monotonic()
                await asyncio.sleep(OUTAGE)
                await asyncio.to_thread(running_node.start)
                back = time.monotonic()
                recovery = {
                    host: await probe.recovered(back, timeout=30) for host, probe in probes.items()
                }
                await casts.confirmed_after(200, timeout=30)  # the stream flows again
            finally:
                await casts.stop()
                for probe in probes.values():
                    await probe.stop()
        await wait_handled(journal_path, casts.confirmed, timeout=60)
        outage_lines = {
            host: [line for line in proc.lines[logged[host] :] if BROKER_LINE.search(line)]
            for host, proc in services.items()
        }

    figures = Figures.of("single node kill -9 and restart", casts, journal_path)
    figures.recovery = {f"consuming_again_{host}": took for host, took in recovery.items()}
    figures.extra = {
        "down_s": f"{back - killed:.1f}",
        "broker_log_lines": max(len(lines) for lines in outage_lines.values()),
    }
    print(figures.line())
    assert not figures.lost, f"confirmed casts never handled: {sorted(figures.lost)[:20]}"
    assert max(recovery.values()) <= 10, recovery
    for host, lines in outage_lines.items():
        # Once on loss, a reminder at most every minute, once on recovery: not dozens.
        assert 1 <= len(lines) <= 10, f"{host} logged {len(lines)} lines:\n" + "\n".join(lines)


async def test_cast_and_call_while_the_broker_is_down_fail_in_time(
    running_node: RabbitNode, topic: str, control_exchange: str
) -> None:
    timeout = 2.0
    settings = client_settings(running_node.url, control_exchange, rpc_response_timeout=timeout)
    async with aiosvc.connect(settings) as transport:
        client = aiosvc.RPCClient(transport, topic)
        await asyncio.to_thread(running_node.kill)

        started = time.monotonic()
        with pytest.raises(aiosvc.TransportError) as cast_error:
            await client.cast(None, "record", item=1)
        cast_took = time.monotonic() - started

        started = time.monotonic()
        with pytest.raises(aiosvc.MessagingTimeout) as call_error:
            await client.call(None, "echo", value=1)
        call_took = time.monotonic() - started

    print(
        f"FIGURES broker down: cast raised {type(cast_error.value).__name__} after "
        f"{cast_took:.2f}s, call raised {type(call_error.value).__name__} after {call_took:.2f}s "
        f"(rpc_response_timeout={timeout:.0f}s)"
    )
    generous = timeout + 5  # a busy machine; a hang would take for ever
    assert cast_took <= generous
    assert timeout - 0.1 <= call_took <= generous
    for error in (cast_error.value, call_error.value):
        message = str(error)
        assert "\n" not in message
        assert "guest:guest" not in message
    assert f"127.0.0.1:{running_node.port}" in str(cast_error.value)  # names the broker
    assert "unreachable" in str(call_error.value)


def test_cli_against_a_killed_broker_says_so_in_one_line(
    rabbit_node: RabbitNode, topic: str
) -> None:
    rabbit_node.kill()  # unless an earlier test left it killed
    password = "s3cret-Pa55"
    broker = f"127.0.0.1:{rabbit_node.port}"
    env = clean_env(AIOSVC_TRANSPORT_URL=f"amqp://aiosvc:{password}@{broker}/")
    for command in (["call", "--timeout", "5"], ["cast"]):
        started = time.monotonic()
        done = run_cli([*command, topic, "echo", "value=1"], env, timeout=60)
        took = time.monotonic() - started
        print(f"FIGURES killed broker, CLI {command[0]}: exit {done.returncode} after {took:.2f}s")
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert password not in done.stdout + done.stderr
        assert broker in lines[0]
        assert took <= 30
