"""aiosvc and oslo.messaging services on one topic, and messages of the wrong wire.

- An aiosvc service (``rpc_wire="oslo"``) and an oslo.messaging server consume the shared
  queue ``topic`` as competing consumers: the one service moved to aiosvc takes its share
  of the work, each message is handled once, whichever side declared the queues first and
  with durable queues as well as oslo's default transient ones (no ``PRECONDITION_FAILED``).
- Acknowledgement timing: on oslo's wire a request whose service dies while running it is
  not redelivered (oslo.messaging's at most once); on aiosvc's it is (at least once).
- Bad input is dead-lettered with one log line naming what it was, and the service goes on:
  an oslo envelope of a version other than 2.0, an aiosvc-wire message on oslo's wire, and
  an oslo.messaging message on aiosvc's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from urllib.parse import unquote, urlsplit

import aio_pika
import anyio
import pytest

from aiosvc import Context, Service, Settings
from aiosvc.rpc import oslo as oslo_wire
from aiosvc.rpc import protocol
from aiosvc.testing import wait_until
from aiosvc.transport.amqp.deadletters import DeadLetter, list_dead_letters
from tests.broker import queue_length
from tests.interop.conftest import (
    TOPIC,
    AiosvcClient,
    Compute,
    Oslo,
    ServeAiosvc,
    compute,
    consumers,
    oslo_settings,
)
from tests.servers import RabbitNode

pytestmark = pytest.mark.interop

CASTS = 40


def _queue_durability(node: RabbitNode, url: str) -> dict[str, tuple[bool, list[str]]]:
    """Each queue of ``url``'s vhost: whether it is durable, and its argument names."""
    vhost = unquote(urlsplit(url).path[1:])
    listed = node.rabbitmqctl(
        "list_queues", "-p", vhost, "name", "durable", "arguments", "--formatter", "json"
    )
    return {
        queue["name"]: (queue["durable"], sorted(name for name, *_ in queue["arguments"]))
        for queue in json.loads(listed)
    }


@pytest.mark.parametrize("durable", [False, True], ids=["transient", "durable"])
@pytest.mark.parametrize("first", ["aiosvc-first", "oslo-first"])
async def test_aiosvc_and_oslo_services_compete_for_one_topic(
    *,
    oslo: Oslo,
    serve_aiosvc: ServeAiosvc,
    aiosvc_client: AiosvcClient,
    fresh_amqp_url: str,
    rabbitmq: RabbitNode,
    caplog: pytest.LogCaptureFixture,
    first: str,
    durable: bool,
) -> None:
    caplog.set_level(logging.WARNING)
    options = {"amqp_durable_queues": True} if durable else {}
    oslo.configure(**options)
    if first == "aiosvc-first":
        service = await serve_aiosvc("aiosvc-a", **options)
        endpoint = await oslo.serve("oslo-a")
    else:
        endpoint = await oslo.serve("oslo-a")
        service = await serve_aiosvc("aiosvc-a", **options)
    manager = compute(service)

    async def both_consume() -> bool:
        return await consumers(fresh_amqp_url, TOPIC) == 2

    await wait_until(both_consume, timeout=30, interval=0.1)
    client = await aiosvc_client(**options)
    for item in range(CASTS):
        await client.cast(None, "record", item=item)
    await wait_until(lambda: len(manager.records) + len(endpoint.records) >= CASTS, timeout=30)

    split = f"aiosvc handled {len(manager.records)}, oslo.messaging {len(endpoint.records)}"
    assert sorted(manager.records + endpoint.records) == list(range(CASTS)), split
    # The broker shares the work out between the two kinds of consumer.
    assert manager.records, split
    assert endpoint.records, split
    assert await queue_length(fresh_amqp_url, TOPIC) == 0
    # Both declared the same queues, as the setting says, and neither complained.
    queues = _queue_durability(rabbitmq, fresh_amqp_url)
    for name in (TOPIC, f"{TOPIC}.aiosvc-a", f"{TOPIC}.oslo-a"):
        assert queues[name] == (durable, []), name
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_service_whose_settings_differ_uses_what_oslo_declared(
    *,
    oslo: Oslo,
    serve_aiosvc: ServeAiosvc,
    aiosvc_client: AiosvcClient,
    fresh_amqp_url: str,
    rabbitmq: RabbitNode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # oslo's defaults declared the exchange and queues non-durable; this service asks for
    # durable ones: it starts anyway, on what exists, and says so once per name.
    caplog.set_level(logging.WARNING, "aiosvc.transport.amqp.declare")
    endpoint = await oslo.serve("oslo-a")
    service = await serve_aiosvc("aiosvc-a", amqp_durable_queues=True)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "Exchange 'openstack' exists with other arguments" in warned
    assert f"Queue {TOPIC!r} exists with other arguments" in warned
    # It serves its share of the topic, beside the oslo server, on the transient queues.
    client = await aiosvc_client()
    for item in range(CASTS):
        await client.cast(None, "record", item=item)
    manager = compute(service)
    await wait_until(lambda: len(manager.records) + len(endpoint.records) >= CASTS, timeout=30)
    assert sorted(manager.records + endpoint.records) == list(range(CASTS))
    assert manager.records, "the aiosvc service took none of the topic's casts"
    assert _queue_durability(rabbitmq, fresh_amqp_url)[TOPIC] == (False, [])


@pytest.mark.parametrize(("wire", "requeued"), [("oslo", 0), ("aiosvc", 1)])
async def test_a_request_in_flight_when_its_service_dies_is_redelivered_per_wire(
    aiosvc_client: AiosvcClient, fresh_amqp_url: str, wire: str, requeued: int
) -> None:
    """oslo's wire acknowledges a request before its method runs (at most once, as
    oslo.messaging's servers do); aiosvc's once it ran (at least once)."""
    dying = Service.create(
        Compute, topic=TOPIC, host="aiosvc-a", settings=oslo_settings(fresh_amqp_url, rpc_wire=wire)
    )
    await dying.start()
    server = dying.rpc_server
    assert server is not None
    client = await aiosvc_client(rpc_wire=wire)
    await client.cast(None, "hold")
    await wait_until(lambda: server.in_flight == 1, timeout=30)
    dying.force_stop()  # as a crash: the held method never returns
    with pytest.raises(asyncio.CancelledError), anyio.fail_after(30):
        await dying.wait()

    async def consumer_gone() -> bool:  # the broker has closed its channel, and requeued
        return await consumers(fresh_amqp_url, TOPIC) == 0

    await wait_until(consumer_gone, timeout=30, interval=0.1)
    assert await queue_length(fresh_amqp_url, TOPIC) == requeued


def _aiosvc_request() -> bytes:
    return protocol.encode_request(Context(), "record", {"item": "x"}, "1.0", None)


def _oslo_request() -> bytes:
    return oslo_wire.encode_request(Context(), "record", {"item": "x"}, "1.0", None)


def _future_envelope() -> bytes:
    return json.dumps({"oslo.version": "3.0", "oslo.message": "{}"}).encode()


@pytest.mark.parametrize(
    ("wire", "body", "named"),
    [
        ("oslo", _future_envelope(), "unsupported oslo.messaging envelope version '3.0'"),
        ("oslo", _aiosvc_request(), "an aiosvc-wire request"),
        ("aiosvc", _oslo_request(), "an oslo.messaging request"),
    ],
    ids=["oslo-envelope-3.0", "aiosvc-wire-on-oslo", "oslo-wire-on-aiosvc"],
)
async def test_bad_input_is_named_dead_lettered_and_the_service_goes_on(
    *,
    serve_aiosvc: ServeAiosvc,
    aiosvc_client: AiosvcClient,
    caplog: pytest.LogCaptureFixture,
    wire: str,
    body: bytes,
    named: str,
) -> None:
    caplog.set_level(logging.INFO, logger="aiosvc.rpc.server")
    service = await serve_aiosvc("aiosvc-a", rpc_wire=wire)
    settings = service.settings
    message_id = f"bad-{uuid.uuid4().hex[:8]}"
    await _publish(settings, body, message_id)

    async def dead_letters() -> list[DeadLetter]:
        _, letters = await list_dead_letters(settings, 10)
        return letters

    await wait_until(dead_letters, timeout=30, interval=0.2)
    [letter] = await dead_letters()
    assert (letter.message_id, letter.reason, letter.queue) == (message_id, "rejected", TOPIC)
    assert (letter.exchange, letter.body) == (settings.control_exchange, body)
    lines = [r.getMessage() for r in caplog.records if r.name == "aiosvc.rpc.server"]
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert message_id in lines[0]
    assert "\n" not in lines[0]

    client = await aiosvc_client(rpc_wire=wire)
    assert await client.call(None, "echo", value="still serving") == "still serving"
    assert compute(service).records == []


async def _publish(settings: Settings, body: bytes, message_id: str) -> None:
    """Publish ``body`` as a cast to ``TOPIC`` with raw aio-pika, as another program would."""
    connection = await aio_pika.connect(settings.transport_url)
    async with connection, connection.channel() as channel:
        exchange = await channel.get_exchange(settings.control_exchange, ensure=True)
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            content_encoding="utf-8",
        )
        await exchange.publish(message, routing_key=TOPIC, mandatory=True)
