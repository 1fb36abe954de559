"""RPC benchmark: aiosvc against plain aio-pika doing the same work, on the same broker.

    python benchmarks/rpc.py                       # starts a throwaway RabbitMQ node
    python benchmarks/rpc.py --amqp-url amqp://guest:guest@127.0.0.1:5672/ --runs 3
    python benchmarks/rpc.py --extra aiosvc-uvloop --extra aiosvc-observed
    python benchmarks/rpc.py --extra aiosvc-oslo-transient --extra raw-reply-queue

Each run measures every implementation (rotating which goes first), each with its server
and its client in processes of their own, so that each process runs on the event loop its
implementation chooses:

* sequential call latency: p50 / p99 over 2000 calls, one at a time;
* concurrent call throughput: 20000 calls, 64 in flight;
* cast throughput: 50000 casts, 256 in flight, timed until the server handled them all.

The raw baseline uses aiosvc's delivery settings: a durable topic exchange and durable
queue, requests with direct reply-to (``amq.rabbitmq.reply-to``), mandatory publishing
with publisher confirms, persistent casts, prefetch 64, acknowledgement after the work,
and JSON bodies, on the stock asyncio event loop. So the ratio (aiosvc / raw) is the
framework's cost. The report prints the median of the runs and the ratios, and, for the
implementations issue 11 set targets for, the median of the per-run ratios against them.

The implementations (:data:`IMPLS`): ``raw``; ``aiosvc`` (its own wire, on the stock
loop); ``aiosvc-oslo``, the same manager and client on oslo.messaging's wire
(``rpc_wire="oslo"``) with the baseline's durable queues (``amqp_durable_queues=True``),
so its ratio is the cost of the wire. ``--extra`` adds ``aiosvc-uvloop`` (client and
server on uvloop, ``event_loop="uvloop"``), ``aiosvc-observed`` and ``aiosvc-bare``
(metrics and tracing switched on, with no OpenTelemetry SDK: ``metrics_port=0``,
``tracing=True``; and both off: ``metrics_port=None``, ``tracing=False``),
``aiosvc-oslo-transient``, on oslo's default non-durable queues and exchange, or
``raw-reply-queue``, the raw client with a reply queue of its own, as oslo's wire has,
instead of direct reply-to. Every implementation gets a new topic per run.

The other benchmarks of issue 11 (``benchmarks/casts.py``, ``benchmarks/periodic.py``)
reuse this module's servers, clients and child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
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
RAW_TRANSIENT_EXCHANGE = "bench-raw-transient"
AIOSVC_EXCHANGE = "bench-aiosvc"
OSLO_EXCHANGE = "bench-oslo"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
PAYLOAD = {"volume_id": "v1", "size_gb": 1, "tags": ["a", "b"]}
START_TIMEOUT = 120.0  # seconds for a server process to consume (2 busy cores)
CHILD_TIMEOUT = 1200.0  # seconds for one client process's whole scenario
DRAIN_TIMEOUT = 300.0  # seconds for the server to handle the casts once they are sent


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation measured: raw aio-pika (``settings`` None) or aiosvc."""

    label: str
    settings: dict[str, Any] | None = None  # aiosvc's, on top of aiosvc_settings' own
    loop: str = "asyncio"  # the event loop of its server and client processes
    transient: bool = False  # raw: non-durable exchange and queue, casts without confirms
    reply_queue: bool = False  # raw: replies to a queue of the client's own

    @property
    def raw(self) -> bool:
        return self.settings is None


# Exchanges differ where they must: oslo's transient one cannot share a name with a durable one.
IMPLS: dict[str, Impl] = {
    "raw": Impl("raw aio-pika"),
    "raw-transient": Impl("raw aio-pika, transient, no confirms", transient=True),
    "raw-reply-queue": Impl("raw, reply queue", reply_queue=True),
    "aiosvc": Impl("aiosvc", {"control_exchange": AIOSVC_EXCHANGE}),
    "aiosvc-uvloop": Impl(
        "aiosvc on uvloop",
        {"control_exchange": AIOSVC_EXCHANGE, "event_loop": "uvloop"},
        loop="uvloop",
    ),
    "aiosvc-bare": Impl(
        "aiosvc, no metrics, no tracing",
        {"control_exchange": AIOSVC_EXCHANGE, "metrics_port": None, "tracing": False},
    ),
    "aiosvc-observed": Impl(
        "aiosvc, metrics + tracing",
        {"control_exchange": AIOSVC_EXCHANGE, "metrics_port": 0, "tracing": True},
    ),
    "aiosvc-oslo": Impl(
        "aiosvc, oslo wire",
        {
            "rpc_wire": "oslo",
            "control_exchange": OSLO_EXCHANGE,
            "amqp_durable_queues": True,  # as the baseline; oslo's default is False
        },
    ),
    "aiosvc-oslo-transient": Impl(
        "aiosvc, oslo wire, transient queues",
        {"rpc_wire": "oslo", "control_exchange": f"{OSLO_EXCHANGE}-transient"},
    ),
}
DEFAULTS = ("raw", "aiosvc", "aiosvc-oslo")
EXTRAS = (
    "aiosvc-uvloop",
    "aiosvc-bare",
    "aiosvc-observed",
    "aiosvc-oslo-transient",
    "raw-reply-queue",
)


def aiosvc_settings(impl: str, url: str, **extra: Any) -> aiosvc.Settings:
    """The settings of aiosvc implementation ``impl``: nothing read from the environment."""
    return aiosvc.Settings.load(
        isolated=True, transport_url=url, **(IMPLS[impl].settings or {}), **extra
    )


def loop_factory(impl: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop of ``impl``'s processes: None (the stock loop) unless it asks for
    uvloop, which it gets as a user does, from ``aiosvc.loop_factory(settings)``."""
    if IMPLS[impl].loop == "asyncio":
        return None
    factory = aiosvc.loop_factory(aiosvc_settings(impl, "memory://"))
    if factory is None:
        raise RuntimeError(f"{impl} needs uvloop: pip install 'aiosvc[uvloop]'")
    return factory


def loop_name() -> str:
    """The running loop's class, e.g. ``asyncio.unix_events._UnixSelectorEventLoop``."""
    loop = type(asyncio.get_running_loop())
    return f"{loop.__module__}.{loop.__qualname__}"


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
    url: str,
    topic: str,
    handle: Callable[[str, dict[str, Any]], Any] | None = None,
    *,
    transient: bool = False,
) -> None:
    """A plain aio-pika server of ``topic`` with aiosvc's delivery settings; ``handle(method,
    args)`` gives each request's result (default: :func:`counting`). ``transient``: on a
    non-durable exchange and queue instead."""
    import aio_pika

    handler = handle or counting()
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=PREFETCH)
    exchange = await channel.declare_exchange(
        RAW_TRANSIENT_EXCHANGE if transient else RAW_EXCHANGE,
        aio_pika.ExchangeType.TOPIC,
        durable=not transient,
    )
    queue = await channel.declare_queue(topic, durable=not transient)
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


class Bench(aiosvc.Manager):
    """The aiosvc server's manager: the raw server's methods."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handled = 0

    async def echo(self, ctx: aiosvc.Context, value: Any) -> Any:
        return value

    async def record(self, ctx: aiosvc.Context, item: Any) -> None:
        self.handled += 1

    async def count(self, ctx: aiosvc.Context) -> int:
        return self.handled


async def serve_aiosvc(
    url: str, topic: str, impl: str = "aiosvc", manager: type[aiosvc.Manager] = Bench, **extra: Any
) -> None:
    """The aiosvc server of ``topic``: ``manager`` (default :class:`Bench`) with the
    settings of ``impl`` and ``extra``, periodic tasks off unless ``extra`` says so."""
    settings = aiosvc_settings(
        impl,
        url,
        **{
            "database_url": "memory://",
            "rpc_max_concurrency": PREFETCH,
            "report_interval": 0,
            "periodic_enable": False,
            "log_level": "WARNING",
            **extra,
        },
    )
    service = aiosvc.Service.create(manager, topic=topic, host="bench", settings=settings)
    async with service:
        print("ready", flush=True)
        await asyncio.Event().wait()


# -- clients -------------------------------------------------------------------------------


class RawClient:
    """A direct reply-to RPC client on plain aio-pika; with ``reply_queue``, replies come to
    a queue of its own instead (``reply_<hex>``, declared as oslo.messaging declares it).
    With ``transient``, it talks to :func:`serve_raw`'s transient exchange, and casts are
    sent on a channel without publisher confirms, not persistent, not mandatory."""

    def __init__(
        self, url: str, topic: str, reply_queue: bool = False, transient: bool = False
    ) -> None:
        self.url, self.topic, self.transient = url, topic, transient
        self.reply_to = f"reply_{uuid.uuid4().hex}" if reply_queue else DIRECT_REPLY_TO
        self.futures: dict[str, asyncio.Future[Any]] = {}

    async def __aenter__(self) -> RawClient:
        import aio_pika

        self.aio_pika = aio_pika
        self.connection = await aio_pika.connect_robust(self.url)
        self.calls = await self.connection.channel(publisher_confirms=True)
        self.casts = await self.connection.channel(publisher_confirms=not self.transient)
        name = RAW_TRANSIENT_EXCHANGE if self.transient else RAW_EXCHANGE
        self.call_exchange = await self.calls.get_exchange(name)
        self.cast_exchange = await self.casts.get_exchange(name)
        if self.transient:
            self.delivery_mode = aio_pika.DeliveryMode.NOT_PERSISTENT
        else:
            self.delivery_mode = aio_pika.DeliveryMode.PERSISTENT
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
                delivery_mode=self.delivery_mode,
            ),
            routing_key=self.topic,
            mandatory=not self.transient,
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


def make_client(impl: str, url: str, topic: str) -> RawClient | AiosvcClient:
    """The client of implementation ``impl`` (not connected yet: ``async with`` it)."""
    spec = IMPLS[impl]
    if spec.raw:
        return RawClient(url, topic, reply_queue=spec.reply_queue, transient=spec.transient)
    return AiosvcClient(url, topic, impl)


# -- child processes: a server, or a client running one scenario -----------------------------

Scenario = Callable[..., Awaitable[dict[str, Any]]]


def child_command(*args: str) -> list[str]:
    """The command of a child process of the benchmarks (see :func:`child_main`)."""
    return [sys.executable, "-m", "benchmarks.rpc", *args]


@contextlib.asynccontextmanager
async def server(
    impl: str, url: str, topic: str, manager: str = "", **settings: Any
) -> AsyncIterator[None]:
    """Run ``impl``'s server of ``topic`` in a child process while the block runs: aiosvc's
    runs ``manager`` (``"pkg.mod:Class"``; default :class:`Bench`) with ``settings``."""
    process = subprocess.Popen(
        child_command("serve", impl, url, topic, manager, json.dumps(settings)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), START_TIMEOUT)
        if line.strip() != "ready":
            raise RuntimeError(f"{impl} server did not start (exit {process.poll()})")
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scenario_name(scenario: Scenario) -> str:
    """``scenario``'s import path, for the child process to load it by."""
    module = scenario.__module__
    if module == "__main__":  # a benchmark run as a script: benchmarks/<name>.py
        module = f"benchmarks.{Path(sys.modules['__main__'].__file__ or '').stem}"
    return f"{module}:{scenario.__qualname__}"


async def run_client(
    impl: str, url: str, topic: str, scenario: Scenario, **kwargs: Any
) -> dict[str, Any]:
    """Run ``await scenario(client, **kwargs)`` in a child process with ``impl``'s client
    on ``impl``'s event loop; its result, with the process's ``loop`` and peak RSS."""
    process = await asyncio.create_subprocess_exec(
        *child_command("client", impl, url, topic, scenario_name(scenario), json.dumps(kwargs)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), CHILD_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(
            f"{impl} client of {scenario_name(scenario)} exited {process.returncode}"
        )
    result: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return result


async def client_main(impl: str, url: str, topic: str, scenario: str, kwargs: str) -> None:
    """A client child process: run the scenario, print its result as one JSON line."""
    func = aiosvc.load_object(scenario)
    async with make_client(impl, url, topic) as client:
        result = await func(client, **json.loads(kwargs))
    result["loop"] = loop_name()
    result["client_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


def child_main(argv: Sequence[str]) -> None:
    """``serve IMPL URL TOPIC MANAGER SETTINGS`` or ``client IMPL URL TOPIC SCENARIO KWARGS``,
    each on ``impl``'s event loop."""
    command, impl, url, topic, name, options = argv
    main: Coroutine[Any, Any, None]
    if command == "client":
        main = client_main(impl, url, topic, name, options)
    elif IMPLS[impl].raw:
        main = serve_raw(url, topic, transient=IMPLS[impl].transient)
    else:
        manager = aiosvc.load_object(name, aiosvc.Manager) if name else Bench
        main = serve_aiosvc(url, topic, impl, manager, **json.loads(options))
    with asyncio.Runner(loop_factory=loop_factory(impl)) as runner:
        runner.run(main)


# -- scenarios -----------------------------------------------------------------------------


async def bounded(n: int, in_flight: int, op: Callable[[int], Awaitable[Any]]) -> None:
    """Run ``op(0) ... op(n - 1)`` with at most ``in_flight`` running at once."""
    counter = iter(range(n))

    async def lane() -> None:
        for i in counter:
            await op(i)

    await asyncio.gather(*(lane() for _ in range(in_flight)))


async def timed_casts(client: Any, n: int, send: Callable[[], Awaitable[None]]) -> dict[str, float]:
    """Time ``send()``, which casts ``n`` ``record``s, until the server handled them all."""
    before = await client.call("count")
    started = time.perf_counter()
    await send()
    sent = time.perf_counter() - started
    deadline = started + DRAIN_TIMEOUT
    while (count := await client.call("count")) < before + n:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{before + n - count} of {n} casts not handled after the send")
        await asyncio.sleep(0.005)
    handled = time.perf_counter() - started
    return {
        "casts": n,
        "casts_handled": count - before,
        "casts_per_s": n / handled,
        "casts_sent_per_s": n / sent,
    }


async def measure(client: Any, scale: float) -> dict[str, float]:
    """The RPC scenarios, with ``scale`` times the messages."""
    for _ in range(max(1, int(200 * scale))):  # warm up connections, code paths and caches
        await client.call("echo", value=PAYLOAD)
    latencies = []
    for _ in range(max(1, int(SEQUENTIAL * scale))):
        started = time.perf_counter()
        await client.call("echo", value=PAYLOAD)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    n = max(1, int(CONCURRENT * scale))
    started = time.perf_counter()
    await bounded(n, CONCURRENCY, lambda i: client.call("echo", value=PAYLOAD))
    calls_per_s = n / (time.perf_counter() - started)
    n = max(1, int(CASTS * scale))
    casts = await timed_casts(
        client, n, lambda: bounded(n, CASTS_IN_FLIGHT, lambda i: client.cast("record", item=i))
    )
    return {
        "call_p50_ms": statistics.median(latencies) * 1000,
        "call_p99_ms": percentile(latencies, 0.99) * 1000,
        "calls_per_s": calls_per_s,
        **casts,
    }


# -- runs, medians, ratios, targets -------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * fraction + 0.999999) - 1))]


@contextlib.contextmanager
def broker(url: str | None) -> Iterator[str]:
    """``url``, or ``AIOSVC_TEST_AMQP_URL``, or a throwaway RabbitMQ node's while it runs."""
    url = url or os.environ.get("AIOSVC_TEST_AMQP_URL")
    if url:
        yield url
        return
    from tests.servers import RabbitNode

    node = RabbitNode()
    node.start()
    try:
        yield node.url
    finally:
        node.close()


def rotated(names: Sequence[str], run: int) -> list[str]:
    """``names`` starting at the ``run``-th, so that each goes first in turn."""
    shift = run % len(names)
    return [*names[shift:], *names[:shift]]


Results = dict[str, list[dict[str, Any]]]


def median(results: Results, row: str, key: str) -> float:
    """The median of ``key`` over the runs of ``row``."""
    return statistics.median(float(r[key]) for r in results[row])


def paired_ratio(results: Results, row: str, baseline: str, key: str) -> float:
    """The median of the per-run ratios ``row / baseline`` of ``key``: each ratio from one
    run, so the machine's load mostly cancels out."""
    pairs = zip(results[row], results[baseline], strict=True)
    return statistics.median(float(a[key] / b[key]) for a, b in pairs)


@dataclasses.dataclass(frozen=True)
class Target:
    """A target of issue 11: ``row``'s ``key`` over ``baseline``'s, at least (``">="``)
    or at most (``"<="``) ``bound``."""

    name: str
    row: str
    baseline: str
    key: str
    op: str
    bound: float

    def check(self, results: Results) -> dict[str, Any]:
        """The paired ratio and whether it meets the target."""
        ratio = paired_ratio(results, self.row, self.baseline, self.key)
        met = ratio >= self.bound if self.op == ">=" else ratio <= self.bound
        return {"ratio": ratio, "target": f"{self.op} {self.bound}", "met": met}


def report_targets(results: Results, targets: Sequence[Target]) -> dict[str, dict[str, Any]]:
    """Print the targets whose rows were measured, as a table; return them."""
    checked = {t.name: t.check(results) for t in targets if {t.row, t.baseline} <= set(results)}
    if checked:
        print(f"\nTargets (median of the {len(next(iter(results.values())))} per-run ratios):\n")
        print("| target | ratio | met |")
        print("|---|---:|---|")
        for name, c in checked.items():
            print(f"| {name} {c['target']} | {c['ratio']:.2f}x | {'yes' if c['met'] else 'NO'} |")
    return checked


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark of this directory takes."""
    parser.add_argument("--amqp-url", help="broker to use (default: start a throwaway node)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the medians of")
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument(
        "--scale", type=float, help="this fraction of the messages (--quick is 0.1)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")


def scale_of(args: argparse.Namespace) -> float:
    """The fraction of the messages to send: ``--scale``, or 0.1 with ``--quick``."""
    return float(args.scale if args.scale is not None else 0.1 if args.quick else 1.0)


def write_json(path: Path | None, record: dict[str, Any]) -> None:
    """Write the benchmark's record to ``path`` if given."""
    if path is not None:
        path.write_text(json.dumps(record, indent=2) + "\n")


def benchmark_main(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    doc: str,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse the common options (and ``options``' own) and run ``run(args)`` on the stock
    loop; SIGTERM unwinds like Ctrl-C, so the throwaway broker is stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    common_arguments(parser)
    if options is not None:
        options(parser)
    asyncio.run(run(parser.parse_args()))


# -- this benchmark ---------------------------------------------------------------------------

METRICS = [
    ("call_p50_ms", "sequential call p50 (ms)"),
    ("call_p99_ms", "sequential call p99 (ms)"),
    ("calls_per_s", f"calls/s, {CONCURRENCY} in flight"),
    ("casts_per_s", f"casts/s handled, {CASTS_IN_FLIGHT} in flight"),
    ("casts_sent_per_s", "casts/s confirmed to the caller"),
]
TARGETS = [
    Target("aiosvc on uvloop / raw, calls/s", "aiosvc-uvloop", "raw", "calls_per_s", ">=", 1.25),
    Target("aiosvc on uvloop / raw, call p50", "aiosvc-uvloop", "raw", "call_p50_ms", "<=", 1.0),
    Target(
        "metrics + tracing on / off, calls/s",
        "aiosvc-observed",
        "aiosvc-bare",
        "calls_per_s",
        ">=",
        0.95,
    ),
]


async def main_async(args: argparse.Namespace) -> None:
    impls = [*DEFAULTS, *(extra for extra in EXTRAS if extra in (args.extra or ()))]
    results: Results = {impl: [] for impl in impls}
    with broker(args.amqp_url) as url:
        for run in range(args.runs):
            for impl in rotated(impls, run):
                topic = f"bench-{impl}-{uuid.uuid4().hex[:8]}"
                async with server(impl, url, topic):
                    result = await run_client(impl, url, topic, measure, scale=scale_of(args))
                results[impl].append(result)
                print(f"run {run + 1} {impl}: {result}", file=sys.stderr, flush=True)
    print(f"\nMedians of {args.runs} run(s); ratio = the column before it / raw.\n")
    ours = impls[1:]
    columns = " | ".join(f"{IMPLS[i].label} | ratio" for i in ours)
    print(f"| metric | raw aio-pika | {columns} |")
    print("|---|---:|" + "---:|---:|" * len(ours))
    for key, label in METRICS:
        raw = median(results, "raw", key)
        cells = [f"| {label} | {raw:,.2f} |"]
        for impl in ours:
            value = median(results, impl, key)
            cells.append(f" {value:,.2f} | {value / raw:.2f}x |")
        print("".join(cells))
    targets = report_targets(results, TARGETS)
    write_json(args.json, {"runs": args.runs, "results": results, "targets": targets})


def options(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own option: ``--extra``."""
    parser.add_argument(
        "--extra",
        action="append",
        choices=EXTRAS,
        help="also measure this implementation (repeatable): " + ", ".join(EXTRAS),
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "client"):
        child_main(sys.argv[1:])
        return
    benchmark_main(main_async, __doc__ or "", options)


if __name__ == "__main__":
    main()
