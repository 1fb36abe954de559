"""``python -m benchmarks.load`` runs, briefly, as issue 9's load acceptance asks.

20 real ``python -m aiosvc run`` processes of one topic, on the session's RabbitMQ, under a
mixed call and cast load for 10 s (and the raw aio-pika baseline for a third of that). The
benchmark's own record (``--json``) is checked for what a user relies on: every call
answered, every confirmed cast handled exactly once, no service lost, every service's
memory measured, and nothing it started left running. Latency is not asserted: timing
belongs in the benchmark's figures (docs/performance.md), not in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ROOT, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.load]

SERVICES = 20
DURATION = 10
#: Bound of the whole benchmark: two phases of 20 process starts each on 2 busy cores.
TIMEOUT = 240.0


def running_command(pid: int) -> str:
    """The command line of process ``pid``, or "" when there is none."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.fixture(scope="module")
def record(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``--json`` record of one short run (which must exit 0), shared by the tests."""
    out = tmp_path_factory.mktemp("load") / "load.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            f"--services={SERVICES}",
            f"--duration={DURATION}",
            f"--amqp-url={amqp_url}",
            f"--json={out}",
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
    assert "casts lost" in done.stdout  # the readable table
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.parametrize("impl", ["raw", "aiosvc"])
def test_every_operation_succeeds_and_no_confirmed_cast_is_lost(
    record: dict[str, Any], impl: str
) -> None:
    phase = record["phases"][impl]
    assert phase["calls_sent"] > 0
    assert phase["casts_sent"] > 0
    # An unloaded broker and 20 healthy services: no call may fail or time out (60 s).
    assert phase["errors"] == {}
    assert phase["error_rate"] == 0
    assert phase["calls_ok"] == phase["calls_sent"]
    assert phase["casts_confirmed"] == phase["casts_sent"]
    assert phase["casts_lost"] == 0
    assert phase["casts_handled"] == phase["casts_confirmed"]
    # Nothing failed, so nothing was delivered twice.
    assert phase["casts_duplicated"] == 0
    assert phase["casts_handled_unconfirmed"] == 0


def test_all_services_share_the_topic_and_stop_cleanly(record: dict[str, Any]) -> None:
    phase = record["phases"]["aiosvc"]
    assert phase["services"] == SERVICES
    assert phase["casts_per_service"]["min"] > 0, "a service of the topic took no cast"
    assert phase["exit_codes"] == {}, "services died during the load"
    assert phase["stop_codes"] == {f"load-{i:02d}": 0 for i in range(1, SERVICES + 1)}


def test_every_services_memory_is_reported(record: dict[str, Any]) -> None:
    processes = record["phases"]["aiosvc"]["processes"]
    assert len({p["pid"] for p in processes}) == SERVICES
    for p in processes:
        for key in ("rss_start_kib", "rss_end_kib", "hwm_end_kib"):
            assert p[key] > 1024, f"{p['host']}: {key} = {p[key]}"
        assert p["hwm_end_kib"] >= p["rss_end_kib"]
    memory = record["phases"]["aiosvc"]["memory_kib"]
    assert memory["rss_end_kib"]["min"] <= memory["rss_end_kib"]["median"]


def test_nothing_it_started_still_runs(record: dict[str, Any]) -> None:
    for phase in record["phases"].values():
        for p in phase["processes"]:
            command = running_command(p["pid"])
            assert "aiosvc run" not in command
            assert "_serve-raw" not in command


def test_aiosvc_is_reported_as_ratios_to_the_baseline(record: dict[str, Any]) -> None:
    assert set(record["ratios"]) >= {"call_p99", "ops_per_s"}
    assert all(value > 0 for value in record["ratios"].values())
