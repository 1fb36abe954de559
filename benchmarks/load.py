"""Load benchmark: 20 services of one topic on one broker under a mixed call and cast load.

    python -m benchmarks.load                          # starts a throwaway RabbitMQ node
    python -m benchmarks.load --duration 10 --json load.json
    python -m benchmarks.load --amqp-url amqp://guest:guest@127.0.0.1:5672/ --rate 200

Two phases, each against ``--services`` server processes consuming ONE topic's shared queue:

1. the baseline: plain aio-pika consumers (``python -m benchmarks.load _serve-raw``), for
   ``--baseline-duration`` seconds (default a third of ``--duration``, so the baseline does
   not double the run time);
2. aiosvc: real ``python -m aiosvc run --manager tests.apps:Journaling`` processes, for
   ``--duration`` seconds (their service store is the default ``memory://``: this measures
   the broker and RPC, not PostgreSQL).

Both do the same work per message: ``echo`` returns its argument, ``record`` appends one
JSON line naming the cast to the process's own journal file, as ``tests.apps.Journaling``
does, and is acknowledged after that. Both get the same load from this process: ``--clients``
connections, each an open-loop scheduler that starts its share of the operations at fixed
times (``--rate`` operations per second in all, ``--call-ratio`` of them calls, the same
sequence in both phases), whether or not earlier ones have finished. Latency is measured
from the time an operation was due, so a stalled system shows as latency instead of as a
lower send rate (no coordinated omission). The raw clients are ``benchmarks/rpc.py``'s.
Each phase's load is preceded by 3 s of the same load that is not measured (a broker's
first seconds after its boot are slow, and connections and caches warm up).

After the load it waits (``--drain-timeout``) until every cast the broker confirmed is in
a journal, then reports calls and casts sent and succeeded, errors by type, call latency
p50/p90/p99/max, casts confirmed / handled / lost / duplicated, each service process's
memory (VmRSS at the start and the end, VmHWM) and CPU time from ``/proc``, the broker's
memory (``rabbitmqctl status``, only for a node it started itself), and aiosvc's figures as
ratios to the baseline's. It exits with status 1 if a confirmed cast was lost, a server
died during the load, or an aiosvc service did not exit 0 on SIGTERM at the end. It stops
every process it started (also on Ctrl-C or SIGTERM), by pid, and deletes the queues it
declared on a broker given by ``--amqp-url``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0  # seconds for all the servers of a phase to be ready (2 busy cores)
STOP_TIMEOUT = 15.0  # seconds a server gets to exit after SIGTERM before it is killed
STRAGGLERS_TIMEOUT = 90.0  # seconds the operations still in flight get after the load
MAX_IN_FLIGHT = 5000  # operations started and not finished; more means the system stalled
WARM_UP_S = 3.0  # seconds of the same load before each phase's, not measured
WARM_UP_IDS = -(10**9)  # the warm-up's casts are numbered from here: negative, left out
PAYLOAD = {"volume_id": "v1", "size_gb": 1, "tags": ["a", "b"]}
SEED = 9
WINDOW = 5.0  # seconds: the report's latency timeline
# operations/s: 2 quiet cores sustain ~1000 with 20 services (docs/performance.md); 400
# leaves room for the other work that shares them
DEFAULT_RATE = 400.0


# -- the raw baseline's server (a child process) ----------------------------------------------


def _journal_line(path: str, host: str, item: Any) -> None:
    """What ``tests.apps.Journaling.record`` does for each cast."""
    line = json.dumps({"event": "record", "host": host, "pid": os.getpid(), "item": item})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


async def serve_raw(url: str, topic: str, host: str, journal: str) -> None:
    """One plain aio-pika consumer of ``topic``: aiosvc's delivery settings, no framework."""
    from benchmarks.rpc import serve_raw as serve

    def handle(method: str, args: dict[str, Any]) -> Any:
        if method == "echo":
            return args["value"]
        if method == "record":
            _journal_line(journal, host, args["item"])
        return None

    await serve(url, topic, handle)


# -- the server processes of a phase -------------------------------------------------------------


@dataclass
class Server:
    """One server process of a phase: its host name, journal and ``Popen``."""

    host: str
    journal: Path
    process: subprocess.Popen[str]
    proc: Any = None  # the tests.procs.Proc of an aiosvc service
    stop_code: int | None = None  # exit status after SIGTERM; None: killed, or not stopped yet

    @property
    def pid(self) -> int:
        return self.process.pid


def start_server(impl: str, url: str, topic: str, host: str, journal: Path) -> Server:
    """Start one server of ``impl`` ("raw" or "aiosvc") on ``topic``; do not wait for it."""
    from benchmarks.rpc import AIOSVC_EXCHANGE
    from tests.procs import Proc, clean_env

    if impl == "raw":
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.load", "_serve-raw", url, topic, host, journal],
            cwd=ROOT,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        return Server(host, journal, process)
    env = clean_env(
        AIOSVC_TRANSPORT_URL=url,
        AIOSVC_CONTROL_EXCHANGE=AIOSVC_EXCHANGE,
        AIOSVC_JOURNAL=str(journal),
    )
    proc = Proc(
        ["run", "--manager", "tests.apps:Journaling", "--topic", topic, "--host", host], env
    )
    return Server(host, journal, proc.process, proc)


async def wait_ready(servers: Sequence[Server]) -> None:
    """Return once every server consumes; raise if one exits or ``START_TIMEOUT`` passes."""

    def ready(server: Server) -> None:
        if server.proc is not None:
            server.proc.wait_for("Started", timeout=START_TIMEOUT)
            return
        assert server.process.stdout is not None
        line = server.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"raw server {server.host} exited ({server.process.poll()})")

    async with asyncio.timeout(START_TIMEOUT):
        await asyncio.gather(*(asyncio.to_thread(ready, s) for s in servers))


def stop_servers(servers: Sequence[Server]) -> None:
    """SIGTERM each server, by pid; kill those still running after ``STOP_TIMEOUT``.

    Sets each server's ``stop_code`` (None: it had to be killed).
    """
    for server in servers:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for server in servers:
        try:
            server.stop_code = server.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        if server.proc is not None:
            server.proc.stop()  # joins its stderr reader, closes the pipes
        elif server.process.stdout is not None:
            server.process.stdout.close()


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (KiB) from ``/proc/<pid>/status``, CPU seconds from ``/proc/<pid>/stat``.

    Empty if the process is gone.
    """
    fields = {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = float(value.split()[0])
    # utime and stime are fields 14 and 15; the command name before them may hold spaces.
    times = stat.rpartition(")")[2].split()[11:13]
    fields["cpu_s"] = sum(int(t) for t in times) / os.sysconf("SC_CLK_TCK")
    return fields


def broker_memory_mib(node: Any) -> float | None:
    """The broker's total memory (``rabbitmqctl status``), when this process started it."""
    if node is None:
        return None
    try:
        status = json.loads(node.rabbitmqctl("status", "--formatter", "json"))
        total = status["memory"]["total"]
        return float(max(total.values())) / 2**20  # erlang, rss, allocated: the largest
    except (ValueError, KeyError, RuntimeError) as exc:
        print(f"broker memory not read: {exc}", file=sys.stderr)
        return None


# -- the load ------------------------------------------------------------------------------------


class Client(Protocol):
    async def call(self, method: str, **args: Any) -> Any: ...
    async def cast(self, method: str, **args: Any) -> None: ...


class WrongReply(Exception):
    """An echo call returned something else than it sent."""


@dataclass
class Load:
    """What the clients saw during one phase."""

    calls_sent: int = 0
    calls_ok: int = 0
    casts_sent: int = 0
    confirmed: set[int] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    call_latencies: list[float] = field(default_factory=list)
    call_dues: list[float] = field(default_factory=list)  # seconds into the load, per latency
    start: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time during the load (all its threads)
    last_done: float = 0.0  # loop time the last successful operation finished
    cast_latencies: list[float] = field(default_factory=list)  # due -> confirmed
    loop_lags: list[float] = field(default_factory=list)
    backlog_peak: int = 0


async def operation(client: Client, kind: str, k: int, due: float, load: Load) -> None:
    """Operation ``k`` (a cast's id) of the plan, due at ``due`` (loop time)."""
    loop = asyncio.get_running_loop()
    try:
        if kind == "call":
            value = {"k": k, **PAYLOAD}
            reply = await client.call("echo", value=value)
            if reply != value:
                raise WrongReply(f"sent {value!r}, got {reply!r}")
            load.call_latencies.append(loop.time() - due)
            load.call_dues.append(due - load.start)
            load.calls_ok += 1
            load.last_done = max(load.last_done, loop.time())
        else:
            await client.cast("record", item=k)
            load.cast_latencies.append(loop.time() - due)
            load.confirmed.add(k)
            load.last_done = max(load.last_done, loop.time())
    except Exception as exc:
        load.errors[f"{kind} {type(exc).__name__}"] += 1


async def schedule(
    client: Client,
    lane: int,
    *,
    lanes: int,
    plan: Sequence[str],
    start: float,
    rate: float,
    load: Load,
    first_id: int,
) -> set[asyncio.Task[None]]:
    """Open loop: start operations ``lane``, ``lane + lanes``, ... at their due times."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    for k in range(lane, len(plan), lanes):
        due = start + k / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        kind = plan[k]
        if kind == "call":
            load.calls_sent += 1
        else:
            load.casts_sent += 1
        if len(in_flight) >= MAX_IN_FLIGHT // lanes:
            load.errors[f"{kind} not sent: {MAX_IN_FLIGHT} in flight"] += 1
            continue
        task = asyncio.create_task(operation(client, kind, first_id + k, due, load))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        load.backlog_peak = max(load.backlog_peak, len(in_flight) * lanes)
    return in_flight


async def probe_loop_lag(end: float, load: Load) -> None:
    """How late this process's event loop wakes a 10 ms sleeper: the client's own CPU share."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        asked = loop.time() + 0.01
        await asyncio.sleep(0.01)
        load.loop_lags.append(loop.time() - asked)


async def drive(
    clients: Sequence[Client], plan: Sequence[str], rate: float, first_id: int = 0
) -> Load:
    """Run ``plan`` at ``rate`` operations/s over ``clients``; wait for the stragglers.

    Operation ``k`` is numbered ``first_id + k``.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    load = Load(start=start)
    end = start + len(plan) / rate
    cpu = time.process_time()
    lag = asyncio.create_task(probe_loop_lag(end, load))
    lanes = await asyncio.gather(
        *(
            schedule(
                c,
                i,
                lanes=len(clients),
                plan=plan,
                start=start,
                rate=rate,
                load=load,
                first_id=first_id,
            )
            for i, c in enumerate(clients)
        ),
    )
    await lag
    load.cpu_s = time.process_time() - cpu
    stragglers: set[asyncio.Task[None]] = set().union(*lanes)
    if stragglers:  # calls time out after 60 s; a cast waits for its confirm, so bound it
        _, pending = await asyncio.wait(stragglers, timeout=STRAGGLERS_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            load.errors[f"unfinished {STRAGGLERS_TIMEOUT:.0f} s after the load"] += len(pending)
    return load


# -- journals ------------------------------------------------------------------------------------


class Journals:
    """Reads the servers' journals as they grow: which casts each server handled."""

    def __init__(self, servers: Sequence[Server]) -> None:
        self.offsets = {s.journal: 0 for s in servers}
        self.handled: Counter[int] = Counter()
        self.per_server: Counter[str] = Counter()

    def read(self) -> None:
        for path, offset in self.offsets.items():
            if not path.exists():
                continue
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits
            self.offsets[path] = offset + len(complete)
            for line in complete.splitlines():
                entry = json.loads(line)
                if entry["event"] == "record" and entry["item"] >= 0:  # not the warm-up's
                    self.handled[entry["item"]] += 1
                    self.per_server[entry["host"]] += 1

    async def wait_for(self, confirmed: set[int], timeout: float) -> float:
        """Poll until every cast in ``confirmed`` was handled, or ``timeout``; seconds taken."""
        started = time.monotonic()
        while True:
            self.read()
            if confirmed <= self.handled.keys() or time.monotonic() - started > timeout:
                return time.monotonic() - started
            await asyncio.sleep(0.1)


# -- a phase ---------------------------------------------------------------------------------------


@dataclass
class Phase:
    """The record of one phase, as printed and as ``--json`` writes it."""

    impl: str
    services: int
    load_average: tuple[float, float, float]  # at the start of the phase, 1/5/15 min
    duration_s: float
    target_rate: float
    calls_sent: int
    calls_ok: int
    casts_sent: int
    casts_confirmed: int
    casts_handled: int  # confirmed casts found in a journal
    casts_lost: int  # confirmed, in no journal
    casts_duplicated: int  # handled more than once
    casts_handled_unconfirmed: int  # the cast raised at the caller, yet it ran
    errors: dict[str, int]
    error_rate: float
    # operations that succeeded, per second from the first one due until the last one done:
    # the target rate while the system keeps up, less once operations queue up
    ops_per_s: float
    call_latency_ms: dict[str, float]
    cast_confirm_ms: dict[str, float]
    call_p99_ms_by_window: list[float]  # call latency p99 of each WINDOW seconds of the load
    # call latency of the calls due in the first --baseline-duration seconds: the same span
    # of load as the baseline's, for ratios that do not compare 20 s with 60 s
    call_latency_head_ms: dict[str, float]
    client_loop_lag_p99_ms: float
    client_cpu_s: float  # the benchmark process's CPU during the load: is the client the limit?
    client_backlog_peak: int
    drain_s: float
    casts_per_service: dict[str, float]
    memory_kib: dict[str, dict[str, float]]  # rss_start / rss_end / hwm_end: min, median, max
    services_cpu_s: float
    broker_memory_mib: dict[str, float | None]  # start (servers connected, idle) and end
    exit_codes: dict[str, int | None]  # of servers that exited during the run (none should)
    stop_codes: dict[str, int | None]  # exit status after SIGTERM at the end; None: killed
    processes: list[dict[str, Any]]  # per server: host, pid, rss_start, rss_end, hwm_end, cpu_s


def note(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def by_window(load: Load, duration: float) -> list[float]:
    """The call latency p99 (ms) of each ``WINDOW`` seconds of the load, in order."""
    windows: list[list[float]] = [[] for _ in range(max(1, round(duration / WINDOW)))]
    for due, latency in zip(load.call_dues, load.call_latencies, strict=True):
        windows[min(len(windows) - 1, int(due / WINDOW))].append(latency)
    return [round(percentile(w, 0.99) * 1e3, 2) for w in windows]


def latency_ms(values: Sequence[float]) -> dict[str, float]:
    points = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "max": 1.0}
    return {name: percentile(values, f) * 1e3 for name, f in points.items()}


@contextlib.contextmanager
def phase_servers(impl: str, url: str, topic: str, count: int) -> Iterator[list[Server]]:
    """The servers of a phase, in a scratch directory; stopped and removed whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix=f"aiosvc-load-{impl}-"))
    servers: list[Server] = []
    try:
        for i in range(1, count + 1):
            host = f"load-{i:02d}"
            servers.append(start_server(impl, url, topic, host, workdir / f"{host}.jsonl"))
        yield servers
    finally:
        stop_servers(servers)
        shutil.rmtree(workdir, ignore_errors=True)


async def delete_queues(url: str, impl: str, topic: str, servers: Sequence[Server]) -> None:
    """Remove the phase's durable queues, so a broker given by ``--amqp-url`` keeps none."""
    import aio_pika

    names = [topic] + ([f"{topic}.{s.host}" for s in servers] if impl == "aiosvc" else [])
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


async def connect_clients(impl: str, url: str, topic: str, count: int) -> Any:
    from benchmarks.rpc import AiosvcClient, RawClient

    stack = contextlib.AsyncExitStack()
    kind = RawClient if impl == "raw" else AiosvcClient
    clients = [await stack.enter_async_context(kind(url, topic)) for _ in range(count)]
    return stack, clients


async def run_phase(
    impl: str, url: str, node: Any, args: argparse.Namespace, plan: Sequence[str]
) -> Phase:
    """Start the servers, warm up, drive ``plan``, wait for the casts, measure; stop all."""
    topic = f"load-{impl}-{uuid.uuid4().hex[:8]}"
    rate = args.rate
    duration = len(plan) / rate
    head = min(duration, args.baseline_duration or duration)  # seconds, see call_latency_head_ms
    note(f"{impl}: {args.services} servers, {rate:.0f} ops/s for {duration:.0f} s ...")
    loadavg = os.getloadavg()
    began = time.monotonic()
    with phase_servers(impl, url, topic, args.services) as servers:
        await wait_ready(servers)
        note(f"{impl}: {len(servers)} servers ready in {time.monotonic() - began:.1f} s")
        broker_start = await asyncio.to_thread(broker_memory_mib, node)
        stack, clients = await connect_clients(impl, url, topic, args.clients)
        async with stack:
            # Warm up the broker (its first seconds after a boot are slow), connections, caches.
            await drive(clients, plan[: round(rate * WARM_UP_S)], rate, first_id=WARM_UP_IDS)
            before = {s.host: proc_status(s.pid) for s in servers}
            load = await drive(clients, plan, rate)
        journals = Journals(servers)
        drain_s = await journals.wait_for(load.confirmed, args.drain_timeout)
        note(f"{impl}: load done; every confirmed cast handled {drain_s:.1f} s later")
        after = {s.host: proc_status(s.pid) for s in servers}
        broker_end = await asyncio.to_thread(broker_memory_mib, node)
        codes = {s.host: s.process.poll() for s in servers if s.process.poll() is not None}
        began = time.monotonic()
    note(f"{impl}: servers stopped in {time.monotonic() - began:.1f} s")
    await delete_queues(url, impl, topic, servers)
    processes: list[dict[str, Any]] = []
    for s in servers:
        start, end = before[s.host], after.get(s.host, {})
        cpu = end["cpu_s"] - start["cpu_s"] if start and end else None
        processes.append(
            {
                "host": s.host,
                "pid": s.pid,
                "rss_start_kib": start.get("VmRSS"),
                "rss_end_kib": end.get("VmRSS"),
                "hwm_end_kib": end.get("VmHWM"),
                "cpu_s": cpu,
            }
        )
    handled = load.confirmed & journals.handled.keys()
    attempted = load.calls_sent + load.casts_sent
    return Phase(
        impl=impl,
        services=args.services,
        load_average=loadavg,
        duration_s=duration,
        target_rate=rate,
        calls_sent=load.calls_sent,
        calls_ok=load.calls_ok,
        casts_sent=load.casts_sent,
        casts_confirmed=len(load.confirmed),
        casts_handled=len(handled),
        casts_lost=len(load.confirmed - handled),
        casts_duplicated=sum(1 for n in journals.handled.values() if n > 1),
        casts_handled_unconfirmed=len(journals.handled.keys() - load.confirmed),
        errors=dict(load.errors),
        error_rate=sum(load.errors.values()) / attempted if attempted else 0.0,
        ops_per_s=(load.calls_ok + len(load.confirmed))
        / max(duration, load.last_done - load.start),
        call_latency_ms=latency_ms(load.call_latencies),
        cast_confirm_ms=latency_ms(load.cast_latencies),
        call_p99_ms_by_window=by_window(load, duration),
        call_latency_head_ms=latency_ms(
            [x for x, due in zip(load.call_latencies, load.call_dues, strict=True) if due < head]
        ),
        client_loop_lag_p99_ms=percentile(load.loop_lags, 0.99) * 1e3,
        client_cpu_s=load.cpu_s,
        client_backlog_peak=load.backlog_peak,
        drain_s=drain_s,
        casts_per_service=spread([journals.per_server[s.host] for s in servers]),
        memory_kib={
            key: spread([p[key] for p in processes if p[key] is not None] or [float("nan")])
            for key in ("rss_start_kib", "rss_end_kib", "hwm_end_kib")
        },
        services_cpu_s=sum(p["cpu_s"] or 0.0 for p in processes),
        broker_memory_mib={"start": broker_start, "end": broker_end},
        exit_codes=codes,
        stop_codes={s.host: s.stop_code for s in servers},
        processes=processes,
    )


# -- the report ------------------------------------------------------------------------------------


def make_plan(rate: float, duration: float, call_ratio: float) -> list[str]:
    """The kinds of the operations, in order: the same sequence for both phases."""
    rng = random.Random(SEED)
    return ["call" if rng.random() < call_ratio else "cast" for _ in range(round(rate * duration))]


def ratios(raw: Phase, ours: Phase) -> dict[str, float]:
    """aiosvc / raw for the figures the guide compares."""

    def over(a: float, b: float) -> float:
        return a / b if b else float("nan")

    def cpu_per_op(p: Phase) -> float:
        return over(p.services_cpu_s, p.ops_per_s * p.duration_s)

    rss = "rss_end_kib"
    return {
        "call_p50": over(ours.call_latency_ms["p50"], raw.call_latency_ms["p50"]),
        "call_p99": over(ours.call_latency_ms["p99"], raw.call_latency_ms["p99"]),
        "call_p99_same_span": over(
            ours.call_latency_head_ms["p99"], raw.call_latency_head_ms["p99"]
        ),
        "call_p99_windows_median": over(
            statistics.median(ours.call_p99_ms_by_window),
            statistics.median(raw.call_p99_ms_by_window),
        ),
        "ops_per_s": over(ours.ops_per_s, raw.ops_per_s),
        "cpu_per_op": over(cpu_per_op(ours), cpu_per_op(raw)),
        "rss_end_median": over(ours.memory_kib[rss]["median"], raw.memory_kib[rss]["median"]),
    }


def table(phases: Sequence[Phase], ratio: dict[str, float] | None) -> Iterator[str]:
    def row(label: str, values: Sequence[str], r: float | None = None) -> str:
        last = (f" | {r:.2f}x |" if r is not None else " | |") if ratio else " |"
        return f"| {label} | " + " | ".join(values) + last

    def fmt(value: float | None, spec: str = ",.1f") -> str:
        return "n/a" if value is None else format(value, spec)

    names = [
        f"{'raw aio-pika' if p.impl == 'raw' else 'aiosvc'} ({p.duration_s:.0f} s)" for p in phases
    ]
    yield "| | " + " | ".join(names) + (" | ratio |" if ratio else " |")
    yield "|---|" + "---:|" * (len(phases) + (1 if ratio else 0))
    r = ratio or {}
    yield row("target ops/s", [f"{p.target_rate:,.0f}" for p in phases], 1.0 if ratio else None)
    yield row(
        "ops/s done (until the last one)", [fmt(p.ops_per_s) for p in phases], r.get("ops_per_s")
    )
    yield row("calls sent / ok", [f"{p.calls_sent:,} / {p.calls_ok:,}" for p in phases])
    for point in ("p50", "p90", "p99", "max"):
        yield row(
            f"call latency {point} (ms)",
            [fmt(p.call_latency_ms[point], ".2f") for p in phases],
            r.get(f"call_{point}"),
        )
    head = min(p.duration_s for p in phases)
    yield row(
        f"call p99 (ms), first {head:.0f} s of the load",
        [fmt(p.call_latency_head_ms["p99"], ".2f") for p in phases],
        r.get("call_p99_same_span"),
    )
    yield row(
        f"call p99 (ms), median of {WINDOW:.0f} s windows",
        [fmt(statistics.median(p.call_p99_ms_by_window), ".2f") for p in phases],
        r.get("call_p99_windows_median"),
    )
    yield row("cast confirm p99 (ms)", [fmt(p.cast_confirm_ms["p99"], ".2f") for p in phases])
    yield row(
        "casts sent / confirmed / handled",
        [f"{p.casts_sent:,} / {p.casts_confirmed:,} / {p.casts_handled:,}" for p in phases],
    )
    yield row(
        "**casts lost** / duplicated",
        [f"**{p.casts_lost}** / {p.casts_duplicated}" for p in phases],
    )
    yield row(
        "casts per service min / max",
        [f"{p.casts_per_service['min']:.0f} / {p.casts_per_service['max']:.0f}" for p in phases],
    )
    yield row(
        "errors (rate)",
        [f"{sum(p.errors.values())} ({p.error_rate:.2%})" for p in phases],
    )
    yield row("drain after the load (s)", [f"{p.drain_s:.2f}" for p in phases])
    for key, label in (
        ("rss_start_kib", "RSS at start"),
        ("rss_end_kib", "RSS at end"),
        ("hwm_end_kib", "peak RSS (VmHWM)"),
    ):
        yield row(
            f"{label}, MiB min / median / max",
            [
                " / ".join(fmt(p.memory_kib[key][s] / 1024) for s in ("min", "median", "max"))
                for p in phases
            ],
            r.get("rss_end_median") if key == "rss_end_kib" else None,
        )
    yield row(
        "services' CPU (s, all)",
        [fmt(p.services_cpu_s) for p in phases],
        r.get("cpu_per_op"),
    )
    yield row(
        "broker memory at start / end (MiB)",
        [
            f"{fmt(p.broker_memory_mib['start'])} / {fmt(p.broker_memory_mib['end'])}"
            for p in phases
        ],
    )
    yield row("client CPU during the load (s)", [fmt(p.client_cpu_s) for p in phases])
    yield row("load average at start (1 min)", [f"{p.load_average[0]:.2f}" for p in phases])
    yield row("client loop lag p99 (ms)", [fmt(p.client_loop_lag_p99_ms, ".2f") for p in phases])


def report(
    phases: Sequence[Phase], ratio: dict[str, float] | None, loadavg: Sequence[float]
) -> None:
    print()
    print(
        f"{phases[-1].services} services of one topic, one broker; load average "
        f"{' '.join(f'{x:.2f}' for x in loadavg)} (1/5/15 min) before the run."
    )
    if ratio:
        print(
            "ratio = aiosvc / raw aio-pika (CPU: per operation; RSS: median at end). A "
            f"window's p99 is that of the calls due in those {WINDOW:.0f} s: their median "
            "shrugs off a stall of the shared machine, which the overall p99 keeps."
        )
    print()
    print("\n".join(table(phases, ratio)))
    for phase in phases:
        for kind, count in sorted(phase.errors.items()):
            print(f"{phase.impl} error: {kind}: {count}")
        timeline = " ".join(f"{x:.0f}" for x in phase.call_p99_ms_by_window)
        print(f"{phase.impl}: call p99 (ms) per {WINDOW:.0f} s of load: {timeline}")
        if phase.exit_codes:
            print(f"{phase.impl}: servers exited during the run: {phase.exit_codes}")
        unclean = {h: c for h, c in phase.stop_codes.items() if c != 0}
        if unclean and phase.impl == "aiosvc":
            print(f"aiosvc: services that did not exit 0 on SIGTERM (None: killed): {unclean}")


class UsageError(Exception):
    """What the user gave cannot work: one line on stderr, no traceback."""


async def check_broker(url: str) -> None:
    """Fail early, in one line, when the broker cannot be reached."""
    import aio_pika

    quiet = logging.getLogger("aiormq.connection")  # it logs the error we report, too
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        connection = await aio_pika.connect(url, timeout=30)
    except Exception as exc:
        raise UsageError(f"cannot connect to the broker {url}: {exc}") from None
    finally:
        quiet.setLevel(level)
    await connection.close()


async def run_phases(args: argparse.Namespace) -> list[Phase]:
    """The baseline phase (unless ``--baseline-duration 0``), then aiosvc's.

    SIGTERM cancels it, as Ctrl-C does: the servers and the broker are stopped on the way
    out. Both are stopped synchronously, so a second signal cannot interrupt that.
    """
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    node = None
    url = args.amqp_url
    phases: list[Phase] = []
    try:
        if not url:
            from tests.servers import RabbitNode, ServerError

            try:
                node = RabbitNode()
                node.start()
            except ServerError as exc:
                raise UsageError(f"cannot start a RabbitMQ node: {exc}") from None
            url = node.url
        await check_broker(url)
        if args.baseline_duration > 0:
            plan = make_plan(args.rate, args.baseline_duration, args.call_ratio)
            phases.append(await run_phase("raw", url, node, args, plan))
        plan = make_plan(args.rate, args.duration, args.call_ratio)
        phases.append(await run_phase("aiosvc", url, node, args, plan))
    finally:
        if node is not None:
            node.close()
    return phases


def conclude(args: argparse.Namespace, phases: Sequence[Phase], loadavg: Sequence[float]) -> int:
    """Print the report, write ``--json``; 1 if a confirmed cast was lost or a server died.

    A service that does not exit 0 on SIGTERM at the end is a failure too (aiosvc's only:
    the raw servers have no SIGTERM handler).
    """
    ratio = ratios(phases[0], phases[1]) if len(phases) == 2 else None
    report(phases, ratio, loadavg)
    if args.json:
        record = {
            "command": ["python", "-m", "benchmarks.load", *args.argv],
            "cpus": os.cpu_count(),
            "load_average_before": loadavg,
            "load_average_after": os.getloadavg(),
            "phases": {p.impl: asdict(p) for p in phases},
            "ratios": ratio,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    failed = False
    for phase in phases:
        unclean = [h for h, c in phase.stop_codes.items() if c != 0 and phase.impl == "aiosvc"]
        if phase.casts_lost or phase.exit_codes or unclean:
            failed = True
            print(
                f"FAILED: {phase.impl}: {phase.casts_lost} confirmed cast(s) lost; "
                f"servers that died during the run: {sorted(phase.exit_codes) or 'none'}; "
                f"that did not exit 0 on SIGTERM: {unclean or 'none'}",
                file=sys.stderr,
            )
    return 1 if failed else 0


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve-raw"]:
        url, topic, host, journal = argv[1:5]
        asyncio.run(serve_raw(url, topic, host, journal))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--services", type=int, default=20, help="server processes per phase")
    parser.add_argument("--duration", type=positive, default=60.0, help="seconds of aiosvc load")
    parser.add_argument(
        "--baseline-duration",
        type=float,
        help="seconds of raw aio-pika load; 0: no baseline (default: a third of --duration)",
    )
    parser.add_argument("--rate", type=positive, default=DEFAULT_RATE, help="operations/s in all")
    parser.add_argument("--call-ratio", type=float, default=0.5, help="share of calls, 0 to 1")
    parser.add_argument("--clients", type=int, default=4, help="client connections")
    parser.add_argument(
        "--drain-timeout", type=positive, default=60.0, help="seconds to wait for the casts"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the record as JSON")
    parser.add_argument("--amqp-url", help="broker to use (default: start a throwaway node)")
    args = parser.parse_args(argv)
    if args.baseline_duration is None:
        args.baseline_duration = args.duration / 3
    if not 0 <= args.call_ratio <= 1 or args.services < 1 or args.clients < 1:
        parser.error("--call-ratio must be within 0..1, --services and --clients at least 1")
    if (
        args.baseline_duration < 0
        or args.rate * min(args.duration, args.baseline_duration or 1) < 1
    ):
        parser.error("--baseline-duration must be 0 or more, and each phase at least 1 operation")
    args.argv = argv
    loadavg = os.getloadavg()
    try:
        phases = asyncio.run(run_phases(args))
    except KeyboardInterrupt:
        note("interrupted; every process it started is stopped")
        return 130
    except asyncio.CancelledError:
        note("terminated; every process it started is stopped")
        return 143
    except UsageError as exc:
        note(f"error: {exc}")
        return 2
    return conclude(args, phases, loadavg)


if __name__ == "__main__":
    sys.exit(main())
