"""The dead-letter queue ``<control_exchange>.dlx``: bounded, without expired calls, and
``python -m aiosvc dead-letters list|replay|purge`` on a real RabbitMQ.

Each test runs on a virtual host of its own (``fresh_amqp_url``), so its ``aiosvc.dlx``
meets no other test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

import aiosvc
from aiosvc.testing import isolated_settings
from aiosvc.transport.amqp import deadletters
from aiosvc.transport.base import IncomingMessage
from tests.broker import queue_length
from tests.procs import aiosvc_proc, clean_env, run_cli, wait_journal

pytestmark = pytest.mark.amqp

DLQ = "aiosvc.dlx"  # the default control_exchange's


def _uid() -> str:
    return uuid.uuid4().hex[:8]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.1)


async def declare_topic(settings: aiosvc.Settings, topic: str, host: str = "gone") -> None:
    """Declare the queues of ``topic`` as a service does, and leave no consumer on them."""
    async with aiosvc.connect(settings) as transport:
        consumer = await transport.consume(topic, host, lambda m: None, prefetch=1)
        await consumer.close()


def rejecter() -> Callable[[IncomingMessage], None]:
    """A consumer's callback that rejects (dead-letters) whatever it is given."""
    tasks: set[asyncio.Task[None]] = set()

    def reject(message: IncomingMessage) -> None:
        task = asyncio.get_running_loop().create_task(message.reject())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return reject


@pytest.fixture
async def rejecting(fresh_amqp_url: str) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """Start a consumer of a topic, with these settings, that rejects whatever it is given."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(topic: str, **settings: Any) -> None:
            transport = await stack.enter_async_context(
                aiosvc.connect(isolated_settings(transport_url=fresh_amqp_url, **settings))
            )
            await transport.consume(topic, "rejecting", rejecter(), prefetch=50)

        yield start


async def publish(url: str, routing_key: str, bodies: list[bytes], **properties: Any) -> None:
    """Publish ``bodies`` to the default exchange as fast as the broker takes them (raw
    aiormq, without confirms), message ids ``m0``, ``m1``...; returns once the broker has
    routed them all (a synchronous method on the same channel is answered after them)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        for start in range(0, len(bodies), 5000):
            await asyncio.gather(
                *(
                    channel.basic_publish(
                        body,
                        routing_key=routing_key,
                        properties=aiormq.spec.Basic.Properties(
                            **{"message_id": f"m{start + i}", **properties}
                        ),
                    )
                    for i, body in enumerate(bodies[start : start + 5000])
                )
            )
        await channel.queue_declare(routing_key, passive=True)
    finally:
        await connection.close()


@pytest.mark.slow
async def test_100k_expired_calls_leave_the_dead_letter_queue_within_its_bound(
    fresh_amqp_url: str,
) -> None:
    # Call requests to a topic whose services are all down: each expires in the queue
    # after its caller's timeout (a few ms here), as the transport publishes them.
    settings = isolated_settings(transport_url=fresh_amqp_url, dead_letter_max_length=1000)
    topic = f"down-{_uid()}"
    await declare_topic(settings, topic)
    count = 100_000
    started = time.monotonic()
    await publish(
        fresh_amqp_url,
        topic,
        [b'{"method": "echo"}'] * count,
        expiration="5",  # ms, as the transport sets a call's timeout
        reply_to="amq.rabbitmq.reply-to.gone",
    )
    published = time.monotonic() - started

    async def expired() -> bool:
        return await queue_length(fresh_amqp_url, topic) == 0

    await eventually(expired, 60, f"the {count} call requests expire from {topic}")
    # And one malformed message, dead-lettered after them: once it is in the queue, any
    # expired call routed there would be too (dead-lettering keeps the queue's order).
    async with aiosvc.connect(settings) as transport:
        await publish(fresh_amqp_url, topic, [b"not json"])
        await transport.consume(topic, "h", rejecter(), prefetch=1)

        async def rejected() -> bool:
            return await queue_length(fresh_amqp_url, DLQ) >= 1

        await eventually(rejected, 30, "the malformed message is dead-lettered")
    total, letters = await deadletters.list_dead_letters(settings, 10)
    print(f"{count} expired calls published in {published:.1f}s; dead letters: {total}")
    assert total == 1 <= settings.dead_letter_max_length
    assert [(d.reason, d.queue) for d in letters] == [("rejected", topic)]


async def test_the_dead_letter_queue_keeps_the_newest_within_its_length(
    fresh_amqp_url: str, rejecting: Callable[..., Awaitable[None]]
) -> None:
    topic = f"bound-{_uid()}"
    await rejecting(topic, dead_letter_max_length=5)
    await publish(fresh_amqp_url, topic, [b"bad %d" % i for i in range(12)])

    async def all_rejected() -> bool:
        return await queue_length(fresh_amqp_url, topic) == 0

    await eventually(all_rejected, 30, "the service rejects all 12")
    settings = isolated_settings(transport_url=fresh_amqp_url)

    async def newest_five() -> bool:
        _, letters = await deadletters.list_dead_letters(settings, 100)
        return [d.message_id for d in letters] == [f"m{i}" for i in range(7, 12)]

    await eventually(newest_five, 30, "the dead-letter queue holds the newest 5 (m7..m11)")


async def test_a_dead_letter_goes_after_dead_letter_ttl(
    fresh_amqp_url: str, rejecting: Callable[..., Awaitable[None]]
) -> None:
    topic = f"ttl-{_uid()}"
    await rejecting(topic, dead_letter_ttl=1)
    await publish(fresh_amqp_url, topic, [b"bad"])

    async def dead() -> bool:
        return await queue_length(fresh_amqp_url, DLQ) == 1

    await eventually(dead, 30, "the message is dead-lettered")

    async def gone() -> bool:
        return await queue_length(fresh_amqp_url, DLQ) == 0

    await eventually(gone, 30, "the dead letter expires after dead_letter_ttl (1 s)")


@pytest.mark.slow
def test_list_replay_and_purge_with_a_running_service(fresh_amqp_url: str, tmp_path: Path) -> None:
    topic = f"journal-{_uid()}"
    journal_path = tmp_path / "journal.jsonl"
    env = clean_env(AIOSVC_TRANSPORT_URL=fresh_amqp_url, AIOSVC_JOURNAL=str(journal_path))
    settings = isolated_settings(transport_url=fresh_amqp_url)
    cast_id = asyncio.run(_a_rejected_cast(settings, topic))
    asyncio.run(publish(fresh_amqp_url, topic, [b"\x00 not an envelope"], message_id="bad-1"))

    with aiosvc_proc(["run", "--manager", "tests.apps:Journaling", "--topic", topic], env) as svc:
        svc.wait_for("Started")
        svc.wait_for("Dead-lettering malformed message")
        listed = run_cli(["dead-letters", "list", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        letters = {d["message_id"]: d for d in json.loads(listed.stdout)}
        assert set(letters) == {cast_id, "bad-1"}
        assert letters[cast_id]["reason"] == letters["bad-1"]["reason"] == "rejected"
        assert letters[cast_id]["queue"] == letters["bad-1"]["queue"] == topic
        assert letters[cast_id]["method"] == "record"
        assert letters["bad-1"]["method"] == "(malformed)"
        table = run_cli(["dead-letters", "list"], env)
        assert f"{DLQ}: 2 dead letter(s), 2 shown" in table.stdout, table.stdout
        print(table.stdout)

        replayed = run_cli(["dead-letters", "replay", "--message-id", cast_id], env)
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed {cast_id} to queue {topic}" in replayed.stdout
        handled = wait_journal(journal_path, lambda es: any(e["event"] == "record" for e in es))
        assert [e["item"] for e in handled if e["event"] == "record"] == ["dead, then replayed"]

        missing = run_cli(["dead-letters", "replay", "--message-id", cast_id], env)
        assert missing.returncode == 1
        assert f"no dead letter {cast_id}" in missing.stderr
        left = json.loads(run_cli(["dead-letters", "list", "--json"], env).stdout)
        assert [d["message_id"] for d in left] == ["bad-1"]

        purged = run_cli(["dead-letters", "purge"], env)
        assert purged.returncode == 0, purged.stderr
        assert purged.stdout.strip() == f"purged 1 dead letter(s) from {DLQ}"
        assert json.loads(run_cli(["dead-letters", "list", "--json"], env).stdout) == []


async def _a_rejected_cast(settings: aiosvc.Settings, topic: str) -> str:
    """A valid cast to ``topic`` that a consumer rejected (as an older service whose
    callback failed would): dead-lettered with the reason ``rejected``. Its message id."""
    await declare_topic(settings, topic)
    async with aiosvc.connect(settings) as transport:
        await aiosvc.RPCClient(transport, topic).cast(None, "record", item="dead, then replayed")
    connection = await aio_pika.connect(settings.transport_url)
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(topic, passive=True)
        message = await queue.get(fail=True)
        assert message is not None
        await message.reject(requeue=False)
        assert message.message_id is not None
        return message.message_id


def test_dead_letters_needs_rabbitmq() -> None:
    done = run_cli(["dead-letters", "list"], clean_env(AIOSVC_TRANSPORT_URL="memory://"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "is not RabbitMQ" in done.stderr
    assert "amqp://" in done.stderr


@pytest.mark.parametrize(
    ("setting", "value"),
    [("dead_letter_max_length", "0"), ("dead_letter_ttl", "-1"), ("dead_letter_ttl", "1e9")],
)
def test_bad_dead_letter_bounds_are_refused_naming_the_setting(setting: str, value: str) -> None:
    with pytest.raises(aiosvc.ConfigError, match=f"{setting} \\(--set {setting}={value}\\)"):
        aiosvc.Settings.load(isolated=True, _origins={setting: "--set"}, **{setting: value})
