"""Acceptance of RPC over a real RabbitMQ, with services as real ``python -m aiosvc`` processes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aiosvc
from aiosvc.testing import isolated_settings
from tests.procs import aiosvc_proc, clean_env, run_cli, wait_journal

pytestmark = [pytest.mark.amqp, pytest.mark.slow]


@pytest.fixture
def env(amqp_url: str, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        AIOSVC_TRANSPORT_URL=amqp_url,
        AIOSVC_CONTROL_EXCHANGE=f"acc-{uuid.uuid4().hex[:8]}",
        AIOSVC_PERIODIC_FUZZY_DELAY="0",
        AIOSVC_GRACEFUL_SHUTDOWN_TIMEOUT="5",
        AIOSVC_JOURNAL=str(tmp_path / "journal.jsonl"),
    )


@pytest.fixture
def topic() -> str:
    return f"journal-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def journal_path(env: dict[str, str]) -> Path:
    return Path(env["AIOSVC_JOURNAL"])


def settings_for(env: dict[str, str], **overrides: Any) -> aiosvc.Settings:
    return isolated_settings(
        transport_url=env["AIOSVC_TRANSPORT_URL"],
        control_exchange=env["AIOSVC_CONTROL_EXCHANGE"],
        **overrides,
    )


async def calls(settings: aiosvc.Settings, topic: str, method: str, n: int, **kw: Any) -> list[Any]:
    async with aiosvc.connect(settings) as transport:
        client = aiosvc.RPCClient(transport, topic)
        return [await client.call(None, method, **kw) for _ in range(n)]


@pytest.fixture
def two_services(env: dict[str, str], topic: str) -> Iterator[None]:
    run = ["run", "--manager", "tests.apps:Journaling", "--topic", topic]
    with (
        aiosvc_proc([*run, "--host", "host-a"], env) as a,
        aiosvc_proc([*run, "--host", "host-b"], env) as b,
    ):
        a.wait_for("Started")
        b.wait_for("Started")
        yield


@pytest.mark.usefixtures("two_services")
def test_two_processes_share_the_topic_queue(env: dict[str, str], topic: str) -> None:
    hosts = asyncio.run(calls(settings_for(env), topic, "whoami", 40))
    assert set(hosts) == {"host-a", "host-b"}


@pytest.mark.usefixtures("two_services")
def test_call_server_reaches_the_named_host(env: dict[str, str], topic: str) -> None:
    for host in ("host-a", "host-b"):
        done = run_cli(["call", topic, "whoami", "--server", host, "--json"], env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f'"{host}"'


@pytest.mark.usefixtures("two_services")
def test_fanout_cast_reaches_both(env: dict[str, str], topic: str, journal_path: Path) -> None:
    done = run_cli(["cast", topic, "record", "item=everyone", "--fanout"], env)
    assert done.returncode == 0, done.stderr
    entries = wait_journal(
        journal_path,
        lambda es: {e["host"] for e in es if e["event"] == "record"} >= {"host-a", "host-b"},
    )
    assert sorted(e["host"] for e in entries if e["event"] == "record") == ["host-a", "host-b"]


@pytest.mark.usefixtures("two_services")
def test_cast_cli_sends_many_casts_with_pipelined_confirms(
    env: dict[str, str], topic: str, journal_path: Path, tmp_path: Path
) -> None:
    lines = tmp_path / "casts.jsonl"
    lines.write_text("".join(json.dumps({"item": i}) + "\n" for i in range(200)) + "\n")
    done = run_cli(["cast", topic, "record", "--jsonl", str(lines)], env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("200 cast(s) of record confirmed in "), done.stderr
    done = run_cli(["cast", topic, "record", "item:=-1", "--repeat", "30"], env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("30 cast(s) of record confirmed in "), done.stderr

    def recorded(entries: list[dict[str, Any]]) -> list[int]:
        return [e["item"] for e in entries if e["event"] == "record"]

    entries = wait_journal(journal_path, lambda es: len(recorded(es)) >= 230)
    assert sorted(recorded(entries)) == [-1] * 30 + list(range(200))


def test_cast_cli_stops_at_a_bad_jsonl_line_naming_it(
    env: dict[str, str], topic: str, tmp_path: Path
) -> None:
    lines = tmp_path / "casts.jsonl"
    lines.write_text('{"item": 1}\n[2]\n{"item": 3}\n')
    with aiosvc_proc(["run", "--manager", "tests.apps:Journaling", "--topic", topic], env) as proc:
        proc.wait_for("Started")
        done = run_cli(["cast", topic, "record", "--jsonl", str(lines)], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"aiosvc: error: UsageError: --jsonl {lines} line 2: a JSON list, not an object of "
        "arguments; stopped there; the 1 cast(s) before it were sent"
    ]


def test_call_cli_reports_invalid_arguments_and_service_keeps_serving(env: dict[str, str]) -> None:
    # The acceptance's own command, on the default exchange: queue names are per vhost, so
    # the `volume` queue must keep the dead-letter exchange every other test declares it with.
    env = {k: v for k, v in env.items() if k != "AIOSVC_CONTROL_EXCHANGE"}
    with aiosvc_proc(["run", "--manager", "examples.volume:VolumeManager"], env) as service:
        service.wait_for("Started")
        bad = run_cli(["call", "volume", "create_volume", "volume_id=v1", "size_gb=oops"], env)
        assert bad.returncode == 1
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1, bad.stderr
        assert "InvalidArguments" in lines[0]
        assert "size_gb" in lines[0]
        assert "Traceback" not in bad.stderr
        # name=value is a string; the service converts it for an int parameter (lax mode).
        good = run_cli(
            ["call", "volume", "create_volume", "volume_id=v1", "size_gb=2", "--json"], env
        )
        assert good.returncode == 0, good.stderr
        assert '"size_gb":2' in good.stdout
        # A str parameter takes a value that looks like a number; name:=json is raw JSON.
        numeric = run_cli(
            ["call", "volume", "create_volume", "volume_id=5", "size_gb:=3", "--json"], env
        )
        assert numeric.returncode == 0, numeric.stderr
        assert json.loads(numeric.stdout) == {"id": "5", "size_gb": 3, "driver": "memory"}


@pytest.mark.usefixtures("two_services")
def test_call_cli_sends_strings_and_json_values(env: dict[str, str], topic: str) -> None:
    # HTTPie's convention: name=value is always a string, name:=json a JSON value.
    cases: list[tuple[str, Any]] = [
        ("value=5", "5"),
        ("value:=5", 5),
        ("value=true", "true"),
        ("value:=true", True),
        ('value:=["a", 1]', ["a", 1]),
        ('value:={"k": null}', {"k": None}),
        ("value=a=b", "a=b"),
        ("value=", ""),
    ]
    for arg, received in cases:
        done = run_cli(["call", topic, "echo", arg, "--json"], env)
        assert done.returncode == 0, (arg, done.stderr)
        assert json.loads(done.stdout) == received, arg


def test_call_cli_to_a_topic_nobody_consumes(env: dict[str, str]) -> None:
    done = run_cli(["call", "nobody-here", "echo", "value=1"], env)
    assert done.returncode == 1
    assert "MessageUndeliverable" in done.stderr


def test_cast_survives_sigkill_of_the_service(
    env: dict[str, str], topic: str, journal_path: Path
) -> None:
    run = ["run", "--manager", "tests.apps:Journaling", "--topic", topic]
    with aiosvc_proc([*run, "--host", "doomed"], env) as doomed:
        doomed.wait_for("Started")
        done = run_cli(["cast", topic, "hang", "name=job", "seconds=3"], env)
        assert done.returncode == 0, done.stderr
        wait_journal(journal_path, lambda es: any(e["event"] == "hang-start" for e in es))
        doomed.signal(signal.SIGKILL)
        assert doomed.wait() == -signal.SIGKILL
    with aiosvc_proc([*run, "--host", "survivor"], env) as survivor:
        survivor.wait_for("Started")
        entries = wait_journal(
            journal_path, lambda es: any(e["event"] == "hang-done" for e in es), timeout=20
        )
    starts = [e["host"] for e in entries if e["event"] == "hang-start"]
    dones = [e["host"] for e in entries if e["event"] == "hang-done"]
    assert starts == ["doomed", "survivor"]
    assert dones == ["survivor"]


def test_service_recovers_from_a_broker_restart(
    env: dict[str, str], topic: str, journal_path: Path, rabbitmq: Any
) -> None:
    if rabbitmq is None:
        pytest.skip("needs a RabbitMQ node of the test session's own to restart")
    settings = settings_for(env, rpc_response_timeout=2)
    env = {**env, "AIOSVC_RPC_MAX_CONCURRENCY": "1"}
    run = ["run", "--manager", "tests.apps:Journaling", "--topic", topic, "--host", "h"]
    with aiosvc_proc(run, env) as service:
        service.wait_for("Started")

        async def before_outage() -> None:
            async with aiosvc.connect(settings) as transport:
                client = aiosvc.RPCClient(transport, topic)
                await client.cast(None, "hang", name="busy", seconds=1)
                await asyncio.gather(*(client.cast(None, "record", item=i) for i in range(50)))

        asyncio.run(before_outage())  # confirmed: the broker has them all
        rabbitmq.stop_app()
        time.sleep(5)  # the outage itself, as the acceptance describes it
        rabbitmq.start_app()
        back = time.monotonic()

        async def answered_again() -> float:
            async with aiosvc.connect(settings) as transport:
                client = aiosvc.RPCClient(transport, topic, timeout=1)
                while True:
                    try:
                        assert await client.call(None, "echo", value="up") == "up"
                        return time.monotonic() - back
                    except (aiosvc.MessagingTimeout, aiosvc.TransportError):
                        if time.monotonic() - back > 10:
                            raise

        took = asyncio.run(answered_again())
        print(f"answered again {took:.2f} s after start_app")  # shown with -rP
        assert took <= 10
        entries = wait_journal(
            journal_path,
            lambda es: len({e["item"] for e in es if e["event"] == "record"}) == 50,
            timeout=20,
        )
    assert {e["item"] for e in entries if e["event"] == "record"} == set(range(50))
    # The outage reads as two lines, whatever the number of connections and channels.
    [lost] = [line for line in service.lines if "lost the AMQP broker" in line]
    assert re.search(r"lost the AMQP broker .*CONNECTION_FORCED.*; reconnecting$", lost), lost
    [again] = [line for line in service.lines if "reconnected to the AMQP broker" in line]
    assert re.search(r"reconnected to the AMQP broker \S+ after \d+\.\d s$", again), again
