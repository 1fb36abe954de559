"""RPC benchmark: aiosvc against plain aio-pika doing the same work, on the same broker.

    python benchmarks/rpc.py                       # starts a throwaway RabbitMQ node
    python benchmarks/rpc.py --amqp-url amqp://guest:guest@127.0.0.1:5672/ --runs 3
    python benchmarks/rpc.py --extra aiosvc-oslo-transient --extra raw-reply-queue

Each run measures every implementation (rotating which goes first), each with its server
in a separate process:

* sequential call latency: p50 / p99 over 2000 calls, one at a time;
* concurrent call throughput: 20000 calls, 64 in flight;
* cast throughput: 50000 casts, 256 in flight, timed until the server handled them all.

The raw baseline uses aiosvc's delivery settings: a durable topic exchange and durable
queue, requests with direct reply-to (``amq.rabbitmq.reply-to``), mandatory publishing
with publisher confirms, persistent casts, prefetch 64, acknowledgement after the work,
and JSON bodies. So the ratio (aiosvc / raw) is the framework's cost. The report prints
the median of the runs and the ratios.

The implementations: ``raw``; ``aiosvc`` (its own wire, ``rpc_wire="aiosvc"``);
``aiosvc-oslo``, the same manager and client on oslo.messaging's wire (``rpc_wire="oslo"``)
with the baseline's durable queues (``amqp_durable_queues=True``), so its ratio is the cost
of the wire. ``--extra`` adds ``aiosvc-oslo-transient``, on oslo's default non-durable
queues and exchange, or ``raw-reply-queue``, the raw client with a reply queue of its own,
as oslo's wire has, instead of direct reply-to. Each aiosvc implementation has an exchange
of its own, and every implementation a new topic per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosvc  # noqa: E402 - after the path is set, for running from a checkout

PREFETCH = 64
SEQUENTIAL = 2000
CONCURRENT = 20000
CONCURRENCY = 64
CASTS = 50000
CASTS_IN_FLIGHT = 256
RAW_EXCHANGE = "bench-raw"
AIOSVC_EXCHANGE = "bench-aiosvc"
OSLO_EXCHANGE = "bench-oslo"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# The settings of each aiosvc implementation, on top of the common ones (aiosvc_settings).
# Exchanges differ: oslo's transient one cannot share a name with a durable one.
AIOSVC_IMPLS: dict[str, dict[str, Any]] = {
    "aiosvc": {"control_exchange": AIOSVC_EXCHANGE},
    "aiosvc-oslo": {
        "rpc_wire": "oslo",
        "control_exchange": OSLO_EXCHANGE,
        "amqp_durable_queues": True,  # as the baseline; oslo's default is False
    },
    "aiosvc-oslo-transient": {"rpc_wire": "oslo", "control_exchange": f"{OSLO_EXCHANGE}-transient"},
}
EXTRAS = ("aiosvc-oslo-transient", "raw-reply-queue")
LABELS = {
    "raw": "raw aio-pika",
    "raw-reply-queue": "raw, reply queue",
    "aiosvc": "aiosvc",
    "aiosvc-oslo": "aiosvc, oslo wire",
    "aiosvc-oslo-transient": "aiosvc, oslo wire, transient queues",
}


def aiosvc_settings(impl: str, url: str, **extra: Any) -> aiosvc.Settings:
    """The settings of aiosvc implementation ``impl``: nothing read from the environment."""
    return aiosvc.Settings.load(isolated=True, transport_url=url, **AIOSVC_IMPLS[impl], **extra)


# -- servers (run in a child process) ----------------------------------------------------


def counting() -> Callable[[str, dict[str, Any]], Any]:
    """The raw server's methods: ``echo``, ``record`` (counted) and ``count``."""
    count = 0

    def handle(method: str, args: dict[str, Any]) -> Any:
        nonlocal count
        if method == "echo":
            return args["value"]
        if method == "record":
            count += 1
        elif method == "count":
            return count
        return None

    return handle


async def serve_raw(
    url: str, topic: str, handle: Callable[[str, dict[str, Any]], Any] | None = None
) -> None:
    """A plain aio-pika server of ``topic`` with aiosvc's delivery settings; ``handle(method,
    args)`` gives each request's result (default: :func:`counting`)."""
    import aio_pika

    handler = handle or counting()
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=PREFETCH)
    exchange = await channel.declare_exchange(
        RAW_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(topic, durable=True)
    await queue.bind(exchange, topic)
    replies = await connection.channel(publisher_confirms=False)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        request = json.loads(message.body)
        result = handler(request["method"], request["args"])
        if message.reply_to:
            await replies.default_exchange.publish(
                aio_pika.Message(
                    json.dumps({"result": result}).encode(), correlation_id=message.correlation_id
                ),
                routing_key=message.reply_to,
                mandatory=False,  # as aiosvc: RabbitMQ 3.10 returns direct replies spuriously
            )
        await message.ack()

    await queue.consume(on_message)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_aiosvc(url: str, topic: str, impl: str = "aiosvc") -> None:
    """The aiosvc server of ``topic``: a manager with the raw server's methods."""

    class Bench(aiosvc.Manager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.handled = 0

        async def echo(self, ctx: aiosvc.Context, value: Any) -> Any:
            return value

        async def record(self, ctx: aiosvc.Context, item: Any) -> None:
            self.handled += 1

        async def count(self, ctx: aiosvc.Context) -> int:
            return self.handled

    settings = aiosvc_settings(
        impl,
        url,
        database_url="memory://",
        rpc_max_concurrency=PREFETCH,
        report_interval=0,
        periodic_enable=False,
        log_level="WARNING",
    )
    service = aiosvc.Service.create(Bench, topic=topic, host="bench", settings=settings)
    async with service:
        print("ready", flush=True)
        await asyncio.Event().wait()


# -- clients -------------------------------------------------------------------------------


class RawClient:
    """A direct reply-to RPC client on plain aio-pika; with ``reply_queue``, replies come to
    a queue of its own instead (``reply_<hex>``, declared as oslo.messaging declares it)."""

    def __init__(self, url: str, topic: str, reply_queue: bool = False) -> None:
        self.url, self.topic = url, topic
        self.reply_to = f"reply_{uuid.uuid4().hex}" if reply_queue else DIRECT_REPLY_TO
        self.futures: dict[str, asyncio.Future[Any]] = {}

    async def __aenter__(self) -> RawClient:
        import aio_pika

        self.aio_pika = aio_pika
        self.connection = await aio_pika.connect_robust(self.url)
        self.calls = await self.connection.channel(publisher_confirms=True)
        self.casts = await self.connection.channel(publisher_confirms=True)
        self.call_exchange = await self.calls.get_exchange(RAW_EXCHANGE)
        self.cast_exchange = await self.casts.get_exchange(RAW_EXCHANGE)
        if self.reply_to == DIRECT_REPLY_TO:
            reply_queue = await self.calls.declare_queue(self.reply_to, passive=True)
        else:
            reply_queue = await self.calls.declare_queue(
                self.reply_to, arguments={"x-expires": 1_800_000}
            )
        await reply_queue.consume(self._on_reply, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.reply_to != DIRECT_REPLY_TO:
            await self.calls.queue_delete(self.reply_to)
        await self.connection.close()

    async def _on_reply(self, message: Any) -> None:
        future = self.futures.pop(message.correlation_id, None)
        if future is not None and not future.done():
            future.set_result(json.loads(message.body)["result"])

    async def call(self, method: str, **args: Any) -> Any:
        cid = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.futures[cid] = future
        await self.call_exchange.publish(
            self.aio_pika.Message(
                json.dumps({"method": method, "args": args}).encode(),
                correlation_id=cid,
                message_id=cid,
                reply_to=self.reply_to,
                expiration=60,
            ),
            routing_key=self.topic,
            mandatory=True,
        )
        return await asyncio.wait_for(future, 60)

    async def cast(self, method: str, **args: Any) -> None:
        await self.cast_exchange.publish(
            self.aio_pika.Message(
                json.dumps({"method": method, "args": args}).encode(),
                message_id=uuid.uuid4().hex,
                delivery_mode=self.aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self.topic,
            mandatory=True,
        )


class AiosvcClient:
    """An aiosvc ``RPCClient`` with the settings of implementation ``impl``."""

    def __init__(self, url: str, topic: str, impl: str = "aiosvc") -> None:
        self.url, self.topic, self.impl = url, topic, impl

    async def __aenter__(self) -> AiosvcClient:
        settings = aiosvc_settings(self.impl, self.url, rpc_response_timeout=60)
        self._cm = aiosvc.connect(settings)
        transport = await self._cm.__aenter__()
        self.client = aiosvc.RPCClient(transport, self.topic)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def call(self, method: str, **args: Any) -> Any:
        return await self.client.call(None, method, **args)

    async def cast(self, method: str, **args: Any) -> None:
        await self.client.cast(None, method, **args)


# -- scenarios -----------------------------------------------------------------------------


async def bounded(n: int, in_flight: int, op: Callable[[int], Awaitable[Any]]) -> None:
    counter = iter(range(n))

    async def lane() -> None:
        for i in counter:
            await op(i)

    await asyncio.gather(*(lane() for _ in range(in_flight)))


async def measure(client: Any, quick: bool) -> dict[str, float]:
    scale = 10 if quick else 1
    payload = {"volume_id": "v1", "size_gb": 1, "tags": ["a", "b"]}
    for _ in range(200 // scale):  # warm up connections, JIT-free code paths and caches
        await client.call("echo", value=payload)
    latencies = []
    for _ in range(SEQUENTIAL // scale):
        started = time.perf_counter()
        await client.call("echo", value=payload)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    n = CONCURRENT // scale
    started = time.perf_counter()
    await bounded(n, CONCURRENCY, lambda i: client.call("echo", value=payload))
    calls_per_s = n / (time.perf_counter() - started)
    n = CASTS // scale
    before = await client.call("count")
    started = time.perf_counter()
    await bounded(n, CASTS_IN_FLIGHT, lambda i: client.cast("record", item=i))
    sent = time.perf_counter() - started
    while await client.call("count") < before + n:
        await asyncio.sleep(0.005)
    handled = time.perf_counter() - started
    return {
        "call_p50_ms": statistics.median(latencies) * 1000,
        "call_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "calls_per_s": calls_per_s,
        "casts_per_s": n / handled,
        "casts_sent_per_s": n / sent,
    }


async def run_one(impl: str, url: str, quick: bool) -> dict[str, float]:
    topic = f"bench-{impl}-{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", impl, url, topic],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.to_thread(server.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"{impl} server did not start (exit {server.poll()})")
        client: RawClient | AiosvcClient
        if impl.startswith("raw"):
            client = RawClient(url, topic, reply_queue=impl == "raw-reply-queue")
        else:
            client = AiosvcClient(url, topic, impl)
        async with client:
            return await measure(client, quick)
    finally:
        server.terminate()
        server.wait(10)


METRICS = [
    ("call_p50_ms", "sequential call p50 (ms)", "lower"),
    ("call_p99_ms", "sequential call p99 (ms)", "lower"),
    ("calls_per_s", f"calls/s, {CONCURRENCY} in flight", "higher"),
    ("casts_per_s", f"casts/s handled, {CASTS_IN_FLIGHT} in flight", "higher"),
    ("casts_sent_per_s", "casts/s confirmed to the caller", "higher"),
]


async def main_async(args: argparse.Namespace) -> None:
    node = None
    url = args.amqp_url or os.environ.get("AIOSVC_TEST_AMQP_URL")
    if not url:
        from tests.servers import RabbitNode

        node = RabbitNode()
        node.start()
        url = node.url
    try:
        impls = ["raw", "aiosvc", "aiosvc-oslo"]
        impls += [extra for extra in EXTRAS if extra in (args.extra or ())]
        results: dict[str, list[dict[str, float]]] = {impl: [] for impl in impls}
        for run in range(args.runs):
            shift = run % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                results[impl].append(await run_one(impl, url, args.quick))
                print(f"run {run + 1} {impl}: {results[impl][-1]}", file=sys.stderr, flush=True)
    finally:
        if node is not None:
            node.close()
    print(f"\nMedians of {args.runs} run(s); ratio = the column before it / raw.\n")
    ours = impls[1:]
    print("| metric | raw aio-pika | " + " | ".join(f"{LABELS[i]} | ratio" for i in ours) + " |")
    print("|---|---:|" + "---:|---:|" * len(ours))
    for key, label, _better in METRICS:
        raw = statistics.median(r[key] for r in results["raw"])
        cells = [f"| {label} | {raw:,.2f} |"]
        for impl in ours:
            value = statistics.median(r[key] for r in results[impl])
            cells.append(f" {value:,.2f} | {value / raw:.2f}x |")
        print("".join(cells))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        impl, url, topic = sys.argv[2:5]
        raw = impl.startswith("raw")
        asyncio.run(serve_raw(url, topic) if raw else serve_aiosvc(url, topic, impl))
        return
    # SIGTERM unwinds like Ctrl-C, so the throwaway broker is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amqp-url", help="broker to use (default: start a throwaway node)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument(
        "--extra",
        action="append",
        choices=EXTRAS,
        help="also measure this implementation: the oslo wire on oslo's default non-durable "
        "queues, or the raw client with a reply queue instead of direct reply-to (repeatable)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
