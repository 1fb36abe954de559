"""A three-node RabbitMQ cluster loses, to ``kill -9``, the node that leads the topic's queue.

Promise checked, with real nodes and real ``python -m aiosvc run`` processes: with
``amqp_quorum_queues=true`` and a transport URL that lists all three nodes, the services and
clients fail over to another node during a steady stream of casts and calls; calls succeed again
within 10 s of the kill, and every cast the broker confirmed before, during and after the failure
is handled at least once (duplicates are counted, not failed).
"""

from __future__ import annotations

import asyncio
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
    rss_mb,
    wait_handled,
)
from tests.servers import RabbitCluster

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

HOSTS = ["host-a", "host-b"]


def queue_leader(cluster: RabbitCluster, queue: str) -> str:
    """The node that leads the quorum queue ``queue``."""
    rows = cluster.rabbitmqctl("list_queues", "name", "type", "leader", "--no-table-headers")
    for row in rows.splitlines():
        name, kind, leader = row.split("\t")
        if name == queue:
            assert kind == "quorum", row  # amqp_quorum_queues=true took effect
            return leader
    raise AssertionError(f"no queue {queue!r} in:\n{rows}")


async def test_services_fail_over_when_the_queue_leader_is_killed(
    rabbit_cluster: RabbitCluster, topic: str, control_exchange: str, tmp_path: Path
) -> None:
    journal_path = tmp_path / "journal.jsonl"
    url = rabbit_cluster.url
    settings = client_settings(
        url, control_exchange, rpc_response_timeout=5, amqp_quorum_queues=True
    )
    with journaling_services(
        url, control_exchange, topic, journal_path, HOSTS, AIOSVC_AMQP_QUORUM_QUEUES="true"
    ) as services:
        async with aiosvc.connect(settings) as transport:
            client = aiosvc.RPCClient(transport, topic)
            casts = Casts(client)
            probe = CallProbe(client.prepare(timeout=2))
            casts.start()
            try:
                await casts.confirmed_after(200, timeout=30)
                probe.start()
                await probe.recovered(time.monotonic(), timeout=30)  # calls flow before
                leader = rabbit_cluster.node(queue_leader(rabbit_cluster, topic))
                await asyncio.to_thread(leader.kill)
                killed = time.monotonic()
                answered = await probe.recovered(killed, timeout=30)
                await casts.confirmed_after(200, timeout=30)  # the stream flows again
            finally:
                await casts.stop()
                await probe.stop()
        await wait_handled(journal_path, casts.confirmed, timeout=60)
        memory = max(rss_mb(proc) for proc in services.values())
        new_leader = queue_leader(rabbit_cluster, topic)

    figures = Figures.of("cluster, kill -9 of the queue leader", casts, journal_path)
    figures.recovery = {"calls_again": answered}
    figures.extra = {
        "failed_calls": dict(probe.failures),
        "leader": f"{leader.nodename}->{new_leader}",
        "service_rss_mb": f"{memory:.0f}",
    }
    print(figures.line())
    assert new_leader != leader.nodename
    assert not figures.lost, f"confirmed casts never handled: {sorted(figures.lost)[:20]}"
    assert answered <= 10
