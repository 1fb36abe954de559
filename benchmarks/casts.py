"""Cast benchmark: aiosvc's casts, awaited and pipelined, against raw aio-pika's, on one broker.

    python benchmarks/casts.py                     # starts a throwaway RabbitMQ node
    python benchmarks/casts.py --amqp-url amqp://guest:guest@127.0.0.1:5672/ --runs 3
    python benchmarks/casts.py --loop asyncio      # aiosvc on the stock loop too

Each run measures every row (rotating which goes first): 50000 casts of ``record``, each
row with a server and a client process of its own and a new topic, timed from the first
cast until the server has handled them all (``count``, polled by a call):

* ``raw-transient-1``: raw aio-pika at its fastest, from one task, ``await
  exchange.publish`` each: a channel without publisher confirms, a non-durable exchange and
  queue, delivery mode 1 (not persistent), not mandatory;
* ``raw-1`` and ``raw-64``: raw aio-pika with aiosvc's delivery settings (durable exchange
  and queue, persistent, mandatory, publisher confirms), ``await`` each, from one task and
  from 64;
* ``aiosvc-1`` and ``aiosvc-64``: ``await client.cast(...)``, from one task and from 64;
* ``aiosvc-batch``: pipelined casts from one task, ``async with client.batch() as batch``
  and ``await batch.cast(...)`` each, with the batch's default in-flight bound; the time
  includes leaving the block, that is every confirm.

Raw rows run on the stock asyncio loop; aiosvc's on ``--loop``: ``auto`` (the default, what
``event_loop="auto"`` gives: uvloop when it is installed), ``asyncio`` or ``uvloop``. The
servers are ``benchmarks/rpc.py``'s (prefetch 64, acknowledgement after the work). The
report gives each row's median casts/s handled and confirmed to the caller, the client
process's peak RSS, and issue 11's ratios: the median of the per-run ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rpc import (
    CASTS,
    Results,
    Target,
    benchmark_main,
    bounded,
    broker,
    median,
    report_targets,
    rotated,
    run_client,
    scale_of,
    server,
    timed_casts,
    write_json,
)

# row: (implementation, scenario, its keyword arguments, label)
ROWS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "raw-transient-1": (
        "raw-transient",
        "awaited",
        {"tasks": 1},
        "raw, transient, no confirms, 1 task",
    ),
    "raw-1": ("raw", "awaited", {"tasks": 1}, "raw, durable + confirms, 1 task"),
    "raw-64": ("raw", "awaited", {"tasks": 64}, "raw, durable + confirms, 64 tasks"),
    "aiosvc-1": ("aiosvc", "awaited", {"tasks": 1}, "aiosvc cast(), 1 task"),
    "aiosvc-64": ("aiosvc", "awaited", {"tasks": 64}, "aiosvc cast(), 64 tasks"),
    "aiosvc-batch": ("aiosvc", "pipelined", {}, "aiosvc batch(), 1 task"),
}
TARGETS = [
    Target(
        "batch 1 task / raw durable 64 tasks", "aiosvc-batch", "raw-64", "casts_per_s", ">=", 1.0
    ),
    Target(
        "batch 1 task / raw transient 1 task",
        "aiosvc-batch",
        "raw-transient-1",
        "casts_per_s",
        ">=",
        0.75,
    ),
    Target(
        "aiosvc 64 tasks / raw durable 64 tasks", "aiosvc-64", "raw-64", "casts_per_s", ">=", 1.0
    ),
]


async def awaited(client: Any, n: int, tasks: int) -> dict[str, float]:
    """``n`` casts from ``tasks`` tasks, each awaiting its casts one after the other."""
    return await timed_casts(
        client, n, lambda: bounded(n, tasks, lambda i: client.cast("record", item=i))
    )


async def pipelined(client: Any, n: int) -> dict[str, float]:
    """``n`` casts in one aiosvc batch, from one task."""

    async def send() -> None:
        async with client.client.batch() as batch:
            for i in range(n):
                await batch.cast(None, "record", item=i)

    return await timed_casts(client, n, send)


def aiosvc_impl(loop: str) -> str:
    """The aiosvc implementation of ``--loop``."""
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return "aiosvc-uvloop" if loop == "uvloop" else "aiosvc"


async def main_async(args: argparse.Namespace) -> None:
    n = max(1, int(CASTS * scale_of(args)))
    ours = aiosvc_impl(args.loop)
    results: Results = {row: [] for row in ROWS}
    with broker(args.amqp_url) as url:
        for run in range(args.runs):
            for row in rotated(list(ROWS), run):
                impl, scenario, kwargs, _label = ROWS[row]
                impl = ours if impl == "aiosvc" else impl
                topic = f"bench-casts-{row}-{uuid.uuid4().hex[:8]}"
                async with server(impl, url, topic):
                    result = await run_client(impl, url, topic, globals()[scenario], n=n, **kwargs)
                results[row].append(result)
                print(f"run {run + 1} {row}: {result}", file=sys.stderr, flush=True)
    loops = {row: results[row][0]["loop"] for row in ROWS}
    print(f"\n{n:,} casts per row; medians of {args.runs} run(s); aiosvc on {loops['aiosvc-1']}.\n")
    print("| casts | casts/s handled | casts/s confirmed | client peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    for row, (_impl, _scenario, _kwargs, label) in ROWS.items():
        print(
            f"| {label} | {median(results, row, 'casts_per_s'):,.0f} "
            f"| {median(results, row, 'casts_sent_per_s'):,.0f} "
            f"| {median(results, row, 'client_peak_rss_mib'):.1f} |"
        )
    targets = report_targets(results, TARGETS)
    write_json(
        args.json,
        {"runs": args.runs, "casts": n, "loops": loops, "results": results, "targets": targets},
    )


def options(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own option: ``--loop``."""
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the event loop of aiosvc's processes (raw rows always run on asyncio's)",
    )


if __name__ == "__main__":
    benchmark_main(main_async, __doc__ or "", options)
