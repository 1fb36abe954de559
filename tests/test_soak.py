"""A malformed-message soak: 10,000 bad messages straight into a real service's queue.

A ``python -m aiosvc run`` service on a real RabbitMQ (a fresh vhost) gets 10,000 malformed
messages published into its shared queue with raw aio-pika (not JSON, JSON of the wrong
shape, the wrong envelope version, wrong field types, 1 MB bodies, empty bodies),
interleaved with real calls, which must keep being answered. Then: every malformed message
is in the dead-letter queue ``<control_exchange>.dlx``; the service's resident memory grew
by less than 20 MB from after warm-up to the end; and it logged one line per malformed
message, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pytest

import aiosvc
from aiosvc.testing import isolated_settings
from tests.procs import Proc, aiosvc_proc, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.load]

MALFORMED = 10_000
BATCH = 500  # published with confirms, then one real call
MAX_RSS_GROWTH_KB = 20 * 1024
TOPIC = "soak"
EXCHANGE = "soak-exchange"
DEAD_LETTERS = f"{EXCHANGE}.dlx"


def malformed(i: int) -> bytes:
    """The ``i``-th bad body: every kind the decoder must refuse, in turn."""
    kinds: list[Callable[[], bytes]] = [
        lambda: b"",
        lambda: b"not json %d" % i,
        lambda: b"\xff\xfe\x00%d" % i,  # not UTF-8
        lambda: json.dumps([i, "create_volume"]).encode(),
        lambda: json.dumps(f"echo {i}").encode(),
        lambda: json.dumps({"aiosvc": 2, "method": "echo", "args": {"value": i}}).encode(),
        lambda: json.dumps({"aiosvc": True, "method": "echo", "args": {}}).encode(),
        lambda: json.dumps({"aiosvc": 1, "method": i, "args": {}}).encode(),
        lambda: json.dumps({"aiosvc": 1, "method": "echo", "args": [i]}).encode(),
        lambda: json.dumps({"aiosvc": 1, "method": "echo", "version": f"v{i}"}).encode(),
        lambda: json.dumps({"aiosvc": 1, "method": "echo", "context": {"roles": i}}).encode(),
        lambda: b'{"aiosvc": 1, "method": "echo", "args": {"value": ' + b"[" * 1000,
    ]
    if i % 1000 == 999:  # ten huge ones: 1 MB, a reason must not repeat it in the log
        return json.dumps({"aiosvc": "x" * 1_000_000, "method": "echo"}).encode()
    return kinds[i % len(kinds)]()


def rss_kb(pid: int) -> int:
    """The process's resident set size, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def dead_letter_count(connection: aio_pika.abc.AbstractConnection) -> int:
    # A passive declare reads the count without changing the queue (works on any broker).
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(DEAD_LETTERS, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def soak(url: str, service: Proc) -> dict[str, int]:
    settings = isolated_settings(
        transport_url=url, control_exchange=EXCHANGE, rpc_response_timeout=30
    )
    async with (
        aiosvc.connect(settings) as transport,
        await aio_pika.connect(url) as connection,
    ):
        client = aiosvc.RPCClient(transport, TOPIC)
        for n in range(200):  # warm-up: the call path, connections, caches
            assert await client.call(None, "echo", value=n) == n
        pid = service.process.pid
        before = rss_kb(pid)
        started = time.monotonic()
        channel = await connection.channel(publisher_confirms=True)
        answered = 0
        for first in range(0, MALFORMED, BATCH):
            # Straight into the service's shared queue (the default exchange routes by
            # queue name), as a buggy or hostile publisher would.
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(malformed(i), message_id=f"bad-{i}"), routing_key=TOPIC
                    )
                    for i in range(first, first + BATCH)
                )
            )
            value = f"still serving after {first + BATCH}"
            assert await client.call(None, "echo", value=value) == value
            answered += 1
        published = time.monotonic()
        deadline = published + 60
        while (count := await dead_letter_count(connection)) < MALFORMED:
            assert time.monotonic() < deadline, f"{count} of {MALFORMED} dead-lettered in 60 s"
            await asyncio.sleep(0.2)
        assert await client.call(None, "echo", value="after") == "after"
        return {
            "dead_lettered": count,
            "calls_answered": answered + 1,
            "publish_seconds": round(published - started),
            "drain_seconds": round(time.monotonic() - published),
            "rss_before_kb": before,
            "rss_after_kb": rss_kb(pid),
        }


def test_ten_thousand_malformed_messages_are_dead_lettered_and_the_service_keeps_serving(
    fresh_amqp_url: str,
) -> None:
    # The dead-letter queue keeps a bounded number of messages: room for all of ours.
    limit = {"dead_letter_max_length": 2 * MALFORMED}
    sets = [f"--set={k}={v}" for k, v in limit.items() if k in aiosvc.Settings.model_fields]
    env = clean_env(AIOSVC_TRANSPORT_URL=fresh_amqp_url, AIOSVC_CONTROL_EXCHANGE=EXCHANGE)
    run = ["run", "--manager", "tests.apps:Journaling", "--topic", TOPIC, "--host", "soak", *sets]
    with aiosvc_proc(run, env) as service:
        service.wait_for("Started", timeout=30)
        figures = asyncio.run(soak(fresh_amqp_url, service))
        assert service.process.poll() is None, "the service died"
        lines = list(service.lines)
    rejected = [line for line in lines if "Dead-lettering malformed message 'bad-" in line]
    figures["log_lines_per_rejection"] = len(rejected) // MALFORMED
    figures["log_bytes_for_rejections"] = sum(len(line) + 1 for line in rejected)
    print(f"soak figures: {figures}")  # for the record (pytest -s)
    assert figures["dead_lettered"] == MALFORMED
    growth = figures["rss_after_kb"] - figures["rss_before_kb"]
    assert growth < MAX_RSS_GROWTH_KB, f"RSS grew by {growth} kB"
    assert len(rejected) == MALFORMED  # one line each, and each message once
    assert max(len(line) for line in rejected) < 500  # a 1 MB body does not make a 1 MB line
    assert not [line for line in lines if "Traceback" in line]
