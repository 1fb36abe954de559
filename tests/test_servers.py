"""The test servers and fixtures of ``conftest.py`` work against real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest

from tests.servers import PostgresCluster, RabbitNode

Server = TypeVar("Server", RabbitNode, PostgresCluster)


def _own(server: Server | None) -> Server:
    """The server the session started; the fixtures give None for an external one."""
    if server is None:
        pytest.skip("controls the server, but an external one was given by AIOSVC_TEST_*_URL")
    return server


async def _round_trip(url: str, body: bytes) -> bytes:
    """Publish one message to a fresh queue and consume it back."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
        async with asyncio.timeout(10), queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    return message.body
    raise AssertionError("no message")


@pytest.mark.amqp
async def test_rabbitmq_publish_and_consume(amqp_url: str) -> None:
    assert await _round_trip(amqp_url, b"hello") == b"hello"


@pytest.mark.amqp
async def test_rabbitmq_stop_app_and_start_app(rabbitmq: RabbitNode | None) -> None:
    rabbitmq = _own(rabbitmq)
    connection = await aio_pika.connect(rabbitmq.url)
    closed_by_broker = asyncio.Event()
    connection.close_callbacks.add(lambda *_: closed_by_broker.set())
    channel = await connection.channel()
    await channel.declare_queue("aiosvc-test-servers", durable=True)

    await asyncio.to_thread(rabbitmq.stop_app)
    async with asyncio.timeout(10):
        await closed_by_broker.wait()
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
        await aio_pika.connect(rabbitmq.url)

    await asyncio.to_thread(rabbitmq.start_app)
    assert await _round_trip(rabbitmq.url, b"again") == b"again"
    listed = rabbitmq.rabbitmqctl("list_queues", "name", "messages", "--no-table-headers")
    assert "aiosvc-test-servers\t0" in listed.splitlines()  # durable: the node kept its state
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        await channel.queue_delete("aiosvc-test-servers")


@pytest.mark.amqp
async def test_rabbitmq_kill_and_start_keep_the_node(rabbitmq: RabbitNode | None) -> None:
    """kill -9 drops clients at once; start() boots the same node, with its durable state."""
    rabbitmq = _own(rabbitmq)
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue("aiosvc-test-kill", durable=True)
        message = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key="aiosvc-test-kill")

    directory, port = rabbitmq.directory, rabbitmq.port
    await asyncio.to_thread(rabbitmq.kill)
    assert not rabbitmq.running
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
        await aio_pika.connect(rabbitmq.url)

    await asyncio.to_thread(rabbitmq.start)
    assert (rabbitmq.directory, rabbitmq.port) == (directory, port)
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue("aiosvc-test-kill")
        kept = await queue.get(timeout=10)
        assert kept is not None
        assert kept.body == b"kept"  # confirmed and persistent: it was on disk
        await kept.ack()
        await queue.delete()


@pytest.mark.postgres
async def test_postgres_select_one(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("select 1") == 1
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_postgres_refuses_a_bad_password(postgres: PostgresCluster | None) -> None:
    postgres = _own(postgres)
    bad = postgres.url.replace(":aiosvc@", ":wrong@")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(bad)


@pytest.mark.postgres
async def test_postgres_stop_and_start_keep_the_data(postgres: PostgresCluster | None) -> None:
    postgres = _own(postgres)
    url = postgres.create_database("aiosvc_restart")
    connection = await asyncpg.connect(url)
    await connection.execute("create table kept (n int); insert into kept values (42)")
    await connection.close()

    postgres.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(url)
    postgres.start()

    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("select n from kept") == 42
    finally:
        await connection.close()
    postgres.drop_database("aiosvc_restart")
    assert postgres.psql("select 1 from pg_database where datname = 'aiosvc_restart'") == ""


@pytest.mark.postgres
async def test_fresh_database_is_new_and_empty(fresh_database_url: str, database_url: str) -> None:
    assert urlsplit(fresh_database_url).path != urlsplit(database_url).path
    connection = await asyncpg.connect(fresh_database_url)
    try:
        tables = await connection.fetchval(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        )
        assert tables == 0
        await connection.execute("create table mine (n int)")  # owned by the test's role
    finally:
        await connection.close()


@pytest.mark.postgres
def test_script_serves_until_sigterm_and_cleans_up(postgres: PostgresCluster | None) -> None:
    """``python -m tests.servers postgres`` prints a working URL and cleans up on SIGTERM."""
    _own(postgres)  # the binaries are there
    with subprocess.Popen(
        [sys.executable, "-m", "tests.servers", "postgres"],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            url = process.stdout.readline().strip()
            # "<PostgresCluster 127.0.0.1:PORT DIRECTORY> is ready; ..."
            ready = process.stderr.readline()
            assert url.startswith("postgresql://aiosvc:aiosvc@127.0.0.1:"), ready
            directory = Path(ready.split()[2].rstrip(">"))
            assert (directory / "data").is_dir()
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, errors
    assert not directory.exists()
