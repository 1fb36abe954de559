"""The RPC, cast and periodic benchmarks run, briefly, on the session's RabbitMQ.

``benchmarks/rpc.py``, ``benchmarks/casts.py`` and ``benchmarks/periodic.py`` give issue
11's figures (docs/performance.md). Each is run once here with a few hundred messages (or
seconds of load), and its ``--json`` record is checked for what the figures rely on: every
cast sent was handled, exactly once; every row ran on the event loop it claims (raw
aio-pika always on asyncio's own); each target's ratio was computed; the periodic task's
lateness was measured under load. No figure is asserted: timing belongs in the benchmarks'
output, not in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ROOT, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.load]  # a smoke run of each benchmark; not in nox

SCALE = "0.005"  # of the benchmarks' messages: 250 casts a row, 100 concurrent calls
TIMEOUT = 240.0  # seconds for one benchmark: a server and a client process per row, 2 busy cores
ASYNCIO = "asyncio.unix_events._UnixSelectorEventLoop"


def run_benchmark(name: str, amqp_url: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py`` once (it must exit 0); its ``--json`` record."""
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [
            sys.executable,
            f"benchmarks/{name}.py",
            "--runs=1",
            f"--amqp-url={amqp_url}",
            f"--json={out}",
            *args,
        ],
        cwd=ROOT,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "| target" in done.stdout or "Target:" in done.stdout  # the readable report
    record: dict[str, Any] = json.loads(out.read_text())
    return record


def test_rpc_measures_every_implementation_on_its_own_loop(amqp_url: str, tmp_path: Path) -> None:
    extras = ["aiosvc-uvloop", "aiosvc-bare", "aiosvc-observed"]
    record = run_benchmark(
        "rpc", amqp_url, tmp_path, f"--scale={SCALE}", *(f"--extra={e}" for e in extras)
    )
    results = record["results"]
    assert set(results) == {"raw", "aiosvc", "aiosvc-oslo", *extras}
    for impl, (result,) in results.items():
        assert result["casts_handled"] == result["casts"] == 250, impl
        assert result["calls_per_s"] > 0
        assert 0 < result["call_p50_ms"] <= result["call_p99_ms"]
    assert results["raw"][0]["loop"] == ASYNCIO
    assert results["aiosvc"][0]["loop"] == ASYNCIO
    assert results["aiosvc-uvloop"][0]["loop"].startswith("uvloop.")
    assert set(record["targets"]) == {
        "aiosvc on uvloop / raw, calls/s",
        "aiosvc on uvloop / raw, call p50",
        "metrics + tracing on / off, calls/s",
    }
    assert all(t["ratio"] > 0 for t in record["targets"].values())


def test_casts_handles_every_cast_of_every_row(amqp_url: str, tmp_path: Path) -> None:
    record = run_benchmark("casts", amqp_url, tmp_path, f"--scale={SCALE}", "--loop=uvloop")
    results = record["results"]
    assert set(results) == {
        "raw-transient-1",
        "raw-1",
        "raw-64",
        "aiosvc-1",
        "aiosvc-64",
        "aiosvc-batch",
    }
    for row, (result,) in results.items():
        # Fewer would be a lost cast (the benchmark would time out), more a duplicate.
        assert result["casts_handled"] == result["casts"] == 250, row
        assert result["casts_sent_per_s"] > 0
        assert result["client_peak_rss_mib"] > 10
        assert result["loop"] == (ASYNCIO if row.startswith("raw") else "uvloop.Loop"), row
    assert set(record["targets"]) == {
        "batch 1 task / raw durable 64 tasks",
        "batch 1 task / raw transient 1 task",
        "aiosvc 64 tasks / raw durable 64 tasks",
    }


def test_periodic_measures_lateness_idle_and_under_calls(amqp_url: str, tmp_path: Path) -> None:
    record = run_benchmark("periodic", amqp_url, tmp_path, "--seconds=1.5")
    results = record["results"]
    assert set(results) == {"asyncio-idle", "asyncio-loaded", "uvloop-idle", "uvloop-loaded"}
    for row, (result,) in results.items():
        assert result["loop"] == (ASYNCIO if row.startswith("asyncio") else "uvloop.Loop")
        # 0.5 s idle or 1.5 s loaded at one tick per 100 ms; generous for a busy machine.
        assert 2 <= result["ticks"] == len(result["lateness_ms"]) <= 20, row
        # A run never starts before its slot: the lateness is never negative.
        assert min(result["lateness_ms"]) >= 0, row
        assert (result["calls_per_s"] > 0) == row.endswith("loaded"), row
    assert set(record["met"]) == {"asyncio-loaded", "uvloop-loaded"}
