"""Heartbeat load on one PostgresStore: N services reporting every report_interval.

Each simulated service registers, then reports on its own drift-free schedule
(``report_interval``, start phases spread evenly over one interval) through ONE
``PostgresStore`` (one small pool), for ``--duration`` seconds per N. Prints a
markdown table: sustained reports/s against the target N / report_interval,
p50/p99/max report latency (pool wait included), errors, the p99 lag of the event
loop (the share of latency that is the client's own CPU), and the time of one
``list()`` over the N live rows.

    python benchmarks/heartbeat.py --database-url postgresql://u:p@127.0.0.1:5433/bench

Without ``--database-url`` (or ``AIOSVC_TEST_DATABASE_URL``) it starts a throwaway
cluster with ``tests/servers.py``'s ``PostgresCluster``. Use a throwaway database:
the rows it makes are soft-deleted at the end, not removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from aiosvc.exceptions import StoreError
from aiosvc.settings import Settings
from aiosvc.store import ServiceStore, get_store

BINARY = "aiosvc-bench"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    services: int
    pool: int
    duration: float
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    errors: int = 0
    register_s: float = 0.0
    list_s: float = 0.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _reporter(
    store: ServiceStore, service_id: int, *, phase: float, interval: float, end: float, run: Run
) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + phase
    while due < end:
        await asyncio.sleep(max(0.0, due - loop.time()))
        started = time.perf_counter()
        try:
            await store.report(service_id)
        except StoreError:
            run.errors += 1
        else:
            run.latencies.append(time.perf_counter() - started)
        # Drift-free: a slow report delays this beat, not the ones after it.
        due += interval


async def _lag_probe(end: float, run: Run) -> None:
    """How late the event loop wakes a 10 ms sleeper: latency the client adds, not the DB."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        asked = loop.time() + 0.01
        await asyncio.sleep(0.01)
        run.lags.append(loop.time() - asked)


async def bench(url: str, services: int, duration: float, interval: float, pool: int) -> Run:
    """One measurement: ``services`` report loops over one store for ``duration`` seconds."""
    run = Run(services, pool, duration)
    settings = Settings.load(
        database_url=url, report_interval=interval, service_down_time=interval * 6
    )
    tag = uuid.uuid4().hex[:8]
    async with get_store(settings) as store:
        started = time.perf_counter()
        records = []
        for first in range(0, services, 500):  # batches keep the pool queue short
            batch = range(first, min(first + 500, services))
            records += await asyncio.gather(
                *(store.register(f"bench-{tag}-{i}", BINARY, "bench", 1) for i in batch)
            )
        run.register_s = time.perf_counter() - started

        end = asyncio.get_running_loop().time() + duration
        await asyncio.gather(
            _lag_probe(end, run),
            *(
                _reporter(
                    store, r.id, phase=interval * i / services, interval=interval, end=end, run=run
                )
                for i, r in enumerate(records)
            ),
        )

        timings = []
        for _ in range(5):
            started = time.perf_counter()
            listed = await store.list(binary=BINARY)
            timings.append(time.perf_counter() - started)
        assert len([r for r in listed if r.host.startswith(f"bench-{tag}-")]) == services
        run.list_s = statistics.median(timings)

        for first in range(0, services, 500):
            done = records[first : first + 500]
            await asyncio.gather(*(store.delete(r.host, r.binary) for r in done))
    return run


def _table(runs: list[Run], interval: float) -> Iterator[str]:
    yield (
        "| services | pool | target reports/s | sustained reports/s | p50 ms | p99 ms "
        "| max ms | errors | loop lag p99 ms | register all s | list() ms |"
    )
    yield "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for run in runs:
        lat = run.latencies or [float("nan")]
        yield (
            f"| {run.services} | {run.pool} | {run.services / interval:.0f} "
            f"| {len(run.latencies) / run.duration:.1f} "
            f"| {_percentile(lat, 0.50) * 1e3:.2f} | {_percentile(lat, 0.99) * 1e3:.2f} "
            f"| {max(lat) * 1e3:.2f} | {run.errors} "
            f"| {_percentile(run.lags or [float('nan')], 0.99) * 1e3:.2f} | {run.register_s:.2f} "
            f"| {run.list_s * 1e3:.1f} |"
        )


def _with_pool(url: str, pool: int) -> str:
    if any(k == "pool_max_size" for k, _ in parse_qsl(urlsplit(url).query)):
        return url
    return f"{url}{'&' if urlsplit(url).query else '?'}pool_max_size={pool}"


async def run_all(url: str, args: argparse.Namespace) -> list[Run]:
    runs = []
    for n in (int(x) for x in args.services.split(",")):
        print(f"{n} services for {args.duration:.0f} s ...", file=sys.stderr, flush=True)
        url_n = _with_pool(url, args.pool)
        runs.append(await bench(url_n, n, args.duration, args.report_interval, args.pool))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("AIOSVC_TEST_DATABASE_URL"))
    parser.add_argument("--services", default="100,1000,5000", help="comma-separated Ns")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per N")
    parser.add_argument("--report-interval", type=float, default=10.0)
    parser.add_argument("--pool", type=int, default=4, help="pool_max_size of the one store")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="with the throwaway cluster: turn fsync and synchronous_commit back on "
        "(the test cluster runs without them), as a production database would",
    )
    args = parser.parse_args(argv)

    if args.database_url:
        runs = asyncio.run(run_all(args.database_url, args))
    else:
        sys.path.insert(0, str(REPO))
        from tests.servers import PostgresCluster  # the test session's throwaway servers

        with PostgresCluster() as cluster:
            if args.durable:
                cluster.psql(
                    "ALTER SYSTEM SET fsync = on",
                    "ALTER SYSTEM SET synchronous_commit = on",
                    "ALTER SYSTEM SET full_page_writes = on",
                    "SELECT pg_reload_conf()",
                )
            settings = cluster.psql(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
            )
            print(
                f"throwaway cluster: fsync, synchronous_commit = {settings.strip()}",
                file=sys.stderr,
            )
            runs = asyncio.run(run_all(cluster.url, args))
    print()
    print("\n".join(_table(runs, args.report_interval)))


if __name__ == "__main__":
    main()
