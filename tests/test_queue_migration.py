"""Changing a setting that shapes a queue never bricks a restart, and ``python -m aiosvc
queues migrate`` re-creates the queues with the new arguments without losing a message.

On a real RabbitMQ, each test on a virtual host of its own (``fresh_amqp_url``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest

import aiosvc
from aiosvc.testing import isolated_settings
from aiosvc.transport.amqp.migrate import MIGRATING_SUFFIX, migrate_queues
from tests.broker import queue_length
from tests.procs import aiosvc_proc, clean_env, run_cli, wait_journal
from tests.servers import RabbitNode

pytestmark = pytest.mark.amqp

FALLBACK = "exists with other arguments than the settings ask"


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def queue_table(node: RabbitNode, url: str) -> dict[str, tuple[str, str]]:
    """``name -> (type, arguments)`` of every queue of ``url``'s vhost."""
    vhost = unquote(urlsplit(url).path[1:])
    out = node.rabbitmqctl(
        "list_queues",
        "-q",
        "--no-table-headers",
        "-p",
        vhost,
        "name",
        "type",
        "arguments",
    )
    table = {}
    for line in out.splitlines():
        name, kind, arguments = line.split("\t")
        table[name] = (kind, arguments)
    return table


async def cast_records(settings: aiosvc.Settings, topic: str, items: list[Any]) -> None:
    async with aiosvc.connect(settings) as transport:
        client = aiosvc.RPCClient(transport, topic)
        for item in items:
            await client.cast(None, "record", item=item)


def recorded(journal_path: Path, count: int) -> list[Any]:
    entries = wait_journal(
        journal_path, lambda es: sum(e["event"] == "record" for e in es) >= count, timeout=60
    )
    return [e["item"] for e in entries if e["event"] == "record"]


@pytest.mark.slow
def test_restart_after_changing_quorum_and_exchange_then_migrate(
    fresh_amqp_url: str, rabbitmq: RabbitNode | None, tmp_path: Path
) -> None:
    assert rabbitmq is not None
    topic, host = f"journal-{_uid()}", "host-a"
    journal_path = tmp_path / "journal.jsonl"
    old = {"AIOSVC_TRANSPORT_URL": fresh_amqp_url, "AIOSVC_JOURNAL": str(journal_path)}
    new = {**old, "AIOSVC_AMQP_QUORUM_QUEUES": "true", "AIOSVC_CONTROL_EXCHANGE": "renamed"}
    run = ["run", "--manager", "tests.apps:Journaling", "--topic", topic, "--host", host]

    def serve(env: dict[str, str], count: int) -> list[str]:
        """Run the service until it has recorded ``count`` casts; its log lines."""
        with aiosvc_proc(run, clean_env(**env)) as service:
            service.wait_for("Started", timeout=60)
            recorded(journal_path, count)
            service.signal(signal.SIGTERM)
            assert service.wait(30) == 0
            return service.lines

    # Old settings: the queues are declared classic, dead-lettering into aiosvc.dlx.
    with aiosvc_proc(run, clean_env(**old)) as service:
        service.wait_for("Started", timeout=60)
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0
    new_settings = isolated_settings(
        transport_url=fresh_amqp_url, amqp_quorum_queues=True, control_exchange="renamed"
    )
    old_settings = isolated_settings(transport_url=fresh_amqp_url)
    asyncio.run(cast_records(old_settings, topic, [f"waiting-{i}" for i in range(30)]))

    # A restart with both settings changed: it starts, warns once per queue, and handles
    # the casts that waited in the old queue.
    lines = serve(new, 30)
    warnings = [line for line in lines if FALLBACK in line]
    assert len(warnings) == 2, "\n".join(lines)  # journal-..., journal-....host-a
    assert all("queues migrate --topic" in w and "x-queue-type=quorum" in w for w in warnings)
    assert f"Queue {topic!r}" in warnings[0] + warnings[1]

    # Casts sent while the service is stopped wait in the (old) queue through the migration.
    asyncio.run(cast_records(new_settings, topic, [f"migrated-{i}" for i in range(20)]))
    migrated = run_cli(["queues", "migrate", "--topic", topic, "--host", host], clean_env(**new))
    assert migrated.returncode == 0, migrated.stderr
    print(migrated.stdout)
    assert f"queue {topic}: re-created, 20 message(s) moved and back" in migrated.stdout
    assert f"queue {topic}.{host}: re-created" in migrated.stdout
    assert "queue renamed.dlx: as the settings ask" in migrated.stdout  # made by the restart
    table = queue_table(rabbitmq, fresh_amqp_url)
    assert table[topic][0] == table[f"{topic}.{host}"][0] == "quorum"
    assert "renamed.dlx" in table[topic][1]
    assert asyncio.run(queue_length(fresh_amqp_url, topic)) == 20
    assert not any(name.endswith(MIGRATING_SUFFIX) for name in table)

    # The next restart uses the new queues as they are: no warning, nothing lost.
    lines = serve(new, 50)
    assert not [line for line in lines if FALLBACK in line]
    items = recorded(journal_path, 50)
    expected = [f"waiting-{i}" for i in range(30)] + [f"migrated-{i}" for i in range(20)]
    assert sorted(items) == sorted(expected)  # every one, once


async def test_migrate_finishes_an_interrupted_run(fresh_amqp_url: str) -> None:
    topic = f"t-{_uid()}"
    old = isolated_settings(transport_url=fresh_amqp_url)
    new = isolated_settings(transport_url=fresh_amqp_url, dead_letter_max_length=7)
    connection = await aio_pika.connect(fresh_amqp_url)
    async with connection, connection.channel(publisher_confirms=True) as channel:
        async with aiosvc.connect(old) as transport:
            await (await transport.consume(topic, "h", lambda m: None, prefetch=1)).close()
        await cast_records(old, topic, [1, 2, 3])
        # A migration that stopped after moving two messages to the temporary queue.
        temporary = await channel.declare_queue(topic + MIGRATING_SUFFIX, durable=True)
        for body in (b"left-1", b"left-2"):
            await channel.default_exchange.publish(aio_pika.Message(body), temporary.name)

        new_quorum = isolated_settings(transport_url=fresh_amqp_url, amqp_quorum_queues=True)
        done = {
            m.name: m
            for m in await migrate_queues(new_quorum, [(topic, ["h"])])
            if m.kind == "queue"
        }
        assert done[topic].outcome == "re-created"
        assert done[topic].moved == 5
        assert done[f"{topic}.h"].moved == 0
        queue = await channel.declare_queue(topic, passive=True)
        assert queue.declaration_result.message_count == 5
        bodies = []
        for _ in range(5):
            message = await queue.get(no_ack=True)
            bodies.append(message.body)
        assert bodies[:2] == [b"left-1", b"left-2"]  # the leftovers first, in their order
        # Run again: nothing to do.
        again = {
            m.name: m.outcome
            for m in await migrate_queues(new_quorum, [(topic, ["h"])])
            if m.kind == "queue"
        }
        assert again[topic] == "as the settings ask"
        # The dead-letter queue's bounds are arguments too.
        assert [(m.kind, m.name, m.outcome) for m in await migrate_queues(new, [])] == [
            ("exchange", "aiosvc.dlx", "as the settings ask"),
            ("queue", "aiosvc.dlx", "re-created"),
        ]


async def test_an_old_fanout_dead_letter_exchange_falls_back_then_migrates(
    fresh_amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What an older aiosvc declared: a fanout aiosvc.dlx and an unbounded queue, with
    # dead letters in it.
    settings = isolated_settings(transport_url=fresh_amqp_url)
    connection = await aio_pika.connect(fresh_amqp_url)
    async with connection, connection.channel(publisher_confirms=True) as channel:
        exchange = await channel.declare_exchange("aiosvc.dlx", "fanout", durable=True)
        queue = await channel.declare_queue("aiosvc.dlx", durable=True)
        await queue.bind(exchange)
        for i in range(3):
            await exchange.publish(aio_pika.Message(b"old %d" % i), routing_key="")
        topic = f"t-{_uid()}"
        with caplog.at_level(logging.WARNING, "aiosvc.transport.amqp.declare"):
            async with aiosvc.connect(settings) as transport:
                consumer = await transport.consume(topic, "h", lambda m: None, prefetch=1)
                await consumer.close()
        fallbacks = [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]
        assert len(fallbacks) == 2, fallbacks
        assert fallbacks[0].startswith("Exchange 'aiosvc.dlx'")
        assert "inequivalent arg 'type'" in fallbacks[0]
        assert fallbacks[1].startswith("Queue 'aiosvc.dlx'")

        done = [
            (m.kind, m.name, m.outcome) for m in await migrate_queues(settings, [(topic, ["h"])])
        ]
        assert done == [
            ("exchange", "aiosvc.dlx", "re-created"),
            ("queue", "aiosvc.dlx", "re-created"),
            ("queue", topic, "as the settings ask"),
            ("queue", f"{topic}.h", "as the settings ask"),
        ]
        # The old dead letters are kept, and expired calls are now dropped.
        queue = await channel.declare_queue("aiosvc.dlx", passive=True)
        assert queue.declaration_result.message_count == 3
        await channel.default_exchange.publish(
            aio_pika.Message(b"call", expiration=0.001), routing_key=topic
        )
        for _ in range(300):  # up to 30 s for it to expire
            if (
                await channel.declare_queue(topic, passive=True)
            ).declaration_result.message_count == 0:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the call request did not expire")
        queue = await channel.declare_queue("aiosvc.dlx", passive=True)
        assert queue.declaration_result.message_count == 3
        caplog.clear()
        async with aiosvc.connect(settings) as transport:
            consumer = await transport.consume(topic, "h", lambda m: None, prefetch=1)
            await consumer.close()
        assert not [r for r in caplog.records if FALLBACK in r.getMessage()]


def test_migrate_refuses_a_queue_in_use(fresh_amqp_url: str, tmp_path: Path) -> None:
    topic = f"journal-{_uid()}"
    env = clean_env(AIOSVC_TRANSPORT_URL=fresh_amqp_url)
    with aiosvc_proc(["run", "--manager", "tests.apps:Journaling", "--topic", topic], env) as svc:
        svc.wait_for("Started", timeout=60)
        quorum = clean_env(AIOSVC_TRANSPORT_URL=fresh_amqp_url, AIOSVC_AMQP_QUORUM_QUEUES="1")
        done = run_cli(["queues", "migrate", "--topic", topic], quorum)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"queue {topic!r} has 1 consumer(s): stop the services of {topic!r}" in done.stderr


def test_migrate_needs_topics_without_a_shared_database(fresh_amqp_url: str) -> None:
    done = run_cli(["queues", "migrate"], clean_env(AIOSVC_TRANSPORT_URL=fresh_amqp_url))
    assert done.returncode == 2
    assert "queues migrate needs --topic" in done.stderr
