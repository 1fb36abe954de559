"""Prometheus metrics (``metrics_port``, :mod:`aiosvc.metrics`): what a scrape finds.

The acceptance test runs ``python -m aiosvc run`` against the suite's RabbitMQ and scrapes
its endpoint over HTTP; the rest run services in this process on the in-memory broker,
each with a topic of its own (the metrics live in prometheus-client's default registry,
one per process, as in a real deployment), and read what the endpoint serves.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import aiosvc
from aiosvc import (
    Context,
    InvalidArguments,
    Manager,
    NoSuchMethod,
    RemoteError,
    Service,
    ServiceError,
    Settings,
    periodic_task,
)
from aiosvc.metrics import UNKNOWN_METHOD
from aiosvc.testing import ClientFactory, FakeClock, ServiceFactory, wait_until
from tests.procs import ROOT, aiosvc_proc, clean_env, run_cli

DASHBOARD = ROOT / "examples" / "grafana" / "aiosvc-dashboard.json"
OBSERVABILITY = ROOT / "docs" / "observability.md"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str) -> str:
    """The body of a GET of ``url``, which must answer 200."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def scrape(url: str) -> Samples:
    """Every sample ``url`` serves, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(fetch(url))
        for sample in family.samples
    }


async def ascrape(url: str) -> Samples:
    return await anyio.to_thread.run_sync(scrape, url)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def topic() -> str:
    return f"metrics-{uuid.uuid4().hex[:8]}"


# -- the acceptance test: a real service, a real broker, a real scrape


@pytest.mark.slow
async def test_a_running_service_serves_the_counts_of_the_calls_it_handled(
    fresh_amqp_url: str,
) -> None:
    calls = 20
    env = clean_env(
        AIOSVC_TRANSPORT_URL=fresh_amqp_url,
        AIOSVC_METRICS_PORT="0",
        AIOSVC_HOST="metrics-host",
        AIOSVC_VOLUME_DRIVER="examples.volume.drivers:MemoryVolumeDriver",
    )
    with aiosvc_proc(["run", "--manager", "examples.volume:VolumeManager"], env) as proc:
        served = proc.wait_for("Metrics served on ", timeout=60)
        url = served.rpartition("Metrics served on ")[2].strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url), served
        proc.wait_for("Started aiosvc-volume", timeout=60)
        settings = Settings.load(isolated=True, transport_url=fresh_amqp_url)
        async with aiosvc.connect(settings) as transport:
            volume = aiosvc.RPCClient(transport, topic="volume", timeout=30)
            for i in range(calls):
                await volume.call(None, "create_volume", volume_id=f"v{i}", size_gb=1)
            with pytest.raises(RemoteError, match="size_gb must be positive"):
                await volume.call(None, "create_volume", volume_id="bad", size_gb=0)
            with pytest.raises(aiosvc.NoSuchMethod):
                await volume.call(None, "resize_volume", volume_id="v1")

        def counted(name: str, **labels: str) -> Callable[[Samples], float | None]:
            return lambda samples: value(samples, name, topic="volume", **labels)

        ok = counted("aiosvc_rpc_requests_total", method="create_volume", outcome="ok")
        samples = await ascrape(url)
        assert ok(samples) == calls
        assert (
            counted("aiosvc_rpc_requests_total", method="create_volume", outcome="error")(samples)
            == 1
        )
        assert (
            counted("aiosvc_rpc_requests_total", method="create_volume", outcome="refused")(samples)
            == 0
        )
        assert (
            counted("aiosvc_rpc_requests_total", method=UNKNOWN_METHOD, outcome="refused")(samples)
            == 1
        )
        assert (
            counted("aiosvc_rpc_requests_total", method="delete_volume", outcome="ok")(samples) == 0
        )  # every method is there from the start, at zero
        assert not any("resize_volume" in str(labels) for _, labels in samples)
        duration = "aiosvc_rpc_request_duration_seconds"
        assert counted(f"{duration}_count", method="create_volume")(samples) == calls + 1
        assert counted(f"{duration}_bucket", method="create_volume", le="+Inf")(samples) == (
            calls + 1
        )
        assert counted(f"{duration}_sum", method="create_volume")(samples) > 0
        assert counted("aiosvc_rpc_requests_in_flight")(samples) == 0
        assert counted("aiosvc_state_reports_total", outcome="ok")(samples) >= 1
        assert value(samples, "aiosvc_transport_reconnects_total") == 0

        # The periodic task that runs at start, and the loop's lag, measured every 0.25 s.
        runs = counted(
            "aiosvc_periodic_task_runs_total", task="VolumeManager._publish_stats", outcome="ok"
        )
        deadline = anyio.current_time() + 30
        while not (
            (runs(samples) or 0) >= 1
            and (value(samples, "aiosvc_event_loop_lag_seconds_count") or 0) >= 2
        ):
            assert anyio.current_time() < deadline, sorted(k for k, _ in samples)
            await anyio.sleep(0.2)
            samples = await ascrape(url)

        proc.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(proc.wait, 60) == 0


# -- in this process, on the in-memory broker


class Counting(Manager):
    """Echoes; ``boom`` raises; ``tick`` fails every other run; ``wait`` waits for
    ``release``."""

    async def init_host(self) -> None:
        self.ticks = 0
        self.release = anyio.Event()

    async def echo(self, ctx: Context, value: int) -> int:
        return value

    async def boom(self, ctx: Context) -> None:
        raise RuntimeError("boom")

    async def wait(self, ctx: Context) -> None:
        await self.release.wait()

    @periodic_task(spacing=10, run_immediately=True)
    async def tick(self, ctx: Context) -> None:
        self.ticks += 1
        if self.ticks % 2 == 0:
            raise RuntimeError("every other tick fails")


Start = Callable[..., Awaitable[Service]]


@pytest.fixture
def start(aiosvc_service: ServiceFactory) -> Start:
    """Start a Counting service with metrics on a free port, on a topic of its own."""

    async def start(**options: object) -> Service:
        settings = {"metrics_port": 0, **options.pop("settings", {})}  # type: ignore[dict-item]
        return await aiosvc_service(Counting, topic=topic(), settings=settings, **options)

    return start


def metrics_url(service: Service) -> str:
    assert service.metrics is not None
    return service.metrics.url


async def test_periodic_runs_failures_duration_and_lateness_are_counted(
    start: Start, aiosvc_clock: FakeClock
) -> None:
    settings = {"periodic_enable": False, "report_interval": 0}  # run_due() drives the task
    service = await start(clock=aiosvc_clock, settings=settings)
    task = {"topic": service.topic, "task": "Counting.tick"}
    runner = service.manager.periodic
    await runner.run_due()  # the first run, at once: ok
    await aiosvc_clock.advance(15)
    await runner.run_due()  # the slot at 10 runs at 15, 5 s late: fails
    await aiosvc_clock.advance(5)
    await runner.run_due()  # the slot at 20, on time: ok
    samples = await ascrape(metrics_url(service))
    assert value(samples, "aiosvc_periodic_task_runs_total", outcome="ok", **task) == 2
    assert value(samples, "aiosvc_periodic_task_runs_total", outcome="error", **task) == 1
    assert value(samples, "aiosvc_periodic_task_duration_seconds_count", **task) == 3
    assert value(samples, "aiosvc_periodic_task_lag_seconds_count", **task) == 3
    assert value(samples, "aiosvc_periodic_task_lag_seconds_sum", **task) == 5
    assert value(samples, "aiosvc_periodic_task_lag_seconds_bucket", le="1.0", **task) == 2


async def test_state_reports_count_those_written_and_those_that_failed(
    start: Start, aiosvc_clock: FakeClock
) -> None:
    settings = {"report_interval": 10, "periodic_enable": False}
    service = await start(clock=aiosvc_clock, settings=settings)
    assert service.store is not None

    async def reports() -> tuple[float | None, float | None]:
        samples = await ascrape(metrics_url(service))
        return tuple(  # type: ignore[return-value]
            value(samples, "aiosvc_state_reports_total", topic=service.topic, outcome=outcome)
            for outcome in ("ok", "error")
        )

    await aiosvc_clock.advance(10)
    assert await reports() == (2, 0)  # at start, then 10 s later
    await service.store.delete(service.host, service.binary)  # an operator deleted its row
    await aiosvc_clock.advance(20)
    assert await reports() == (2, 2)


async def test_requests_by_method_and_outcome_and_dead_letters(
    start: Start, aiosvc_client: ClientFactory
) -> None:
    service = await start(settings={"periodic_enable": False})
    client = await aiosvc_client(service.topic)
    for i in range(5):
        assert await client.call(None, "echo", value=i) == i
    with pytest.raises(RemoteError):
        await client.call(None, "boom")
    with pytest.raises(InvalidArguments):
        await client.call(None, "echo", value="not a number")
    for method in ("nope", "tick", "_private"):  # a caller's names never become labels
        with pytest.raises(NoSuchMethod):
            await client.call(None, method)
    broker = client.transport.broker  # type: ignore[attr-defined]
    await client.transport.cast(service.topic, b"not json", message_id="bad-1")
    await wait_until(lambda: len(broker.dead_letters) == 1)

    samples = await ascrape(metrics_url(service))
    t, requests = service.topic, "aiosvc_rpc_requests_total"
    assert value(samples, requests, topic=t, method="echo", outcome="ok") == 5
    assert value(samples, requests, topic=t, method="echo", outcome="refused") == 1
    assert value(samples, requests, topic=t, method="boom", outcome="error") == 1
    assert value(samples, requests, topic=t, method="boom", outcome="ok") == 0
    assert value(samples, requests, topic=t, method=UNKNOWN_METHOD, outcome="refused") == 3
    assert {dict(labels).get("method") for name, labels in samples if name == requests} >= {
        "echo",
        "boom",
        "wait",
        UNKNOWN_METHOD,
    }
    assert not any(dict(labels).get("method") in ("nope", "_private") for _, labels in samples)
    duration = "aiosvc_rpc_request_duration_seconds_count"
    assert value(samples, duration, topic=t, method="echo") == 5  # refused ones never ran
    assert value(samples, duration, topic=t, method="boom") == 1
    assert value(samples, "aiosvc_rpc_messages_dead_lettered_total", topic=t) == 1


async def test_in_flight_counts_the_requests_being_handled(
    start: Start, aiosvc_client: ClientFactory
) -> None:
    service = await start()
    server = service.rpc_server
    assert server is not None
    client = await aiosvc_client(service.topic)
    for _ in range(3):
        await client.cast(None, "wait")
    await wait_until(lambda: server.in_flight == 3)
    in_flight = ("aiosvc_rpc_requests_in_flight", frozenset({("topic", service.topic)}))
    assert (await ascrape(metrics_url(service)))[in_flight] == 3
    service.manager.release.set()  # type: ignore[attr-defined]
    await wait_until(lambda: server.in_flight == 0)
    assert (await ascrape(metrics_url(service)))[in_flight] == 0


async def test_a_broker_reconnect_is_counted_once_all_connections_are_back(start: Start) -> None:
    from yarl import URL

    from aiosvc.transport.amqp.connection import BrokerWatch

    url = metrics_url(await start())
    reconnects = "aiosvc_transport_reconnects_total"
    before = value(await ascrape(url), reconnects)
    assert before is not None
    watch = BrokerWatch("amqp://127.0.0.1:5672/")  # what an AMQP transport's connections tell
    watch.lost("consuming", None)
    watch.lost("publishing", None)
    watch.back("consuming", URL("amqp://127.0.0.1:5672/"))
    assert value(await ascrape(url), reconnects) == before  # one connection is still down
    watch.back("publishing", URL("amqp://127.0.0.1:5672/"))
    assert value(await ascrape(url), reconnects) == before + 1


async def test_services_of_one_process_share_one_endpoint_until_the_last_stops(
    start: Start,
) -> None:
    first, second = await start(), await start()
    assert metrics_url(first) == metrics_url(second)
    samples = await ascrape(metrics_url(first))
    for service in (first, second):
        labels = {"topic": service.topic, "method": "echo", "outcome": "ok"}
        assert value(samples, "aiosvc_rpc_requests_total", **labels) == 0
    await first.stop()
    labels = {"topic": second.topic, "method": "echo", "outcome": "ok"}
    assert value(await ascrape(metrics_url(second)), "aiosvc_rpc_requests_total", **labels) == 0
    await second.stop()
    with pytest.raises(urllib.error.URLError, match="Connection refused"):  # closed with it
        await ascrape(metrics_url(second))


async def test_a_metrics_port_in_use_fails_the_start_naming_it(
    aiosvc_settings: Settings,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = aiosvc_settings.model_copy(update={"metrics_port": port})
        service = Service.create(Counting, topic=topic(), settings=settings)
        with pytest.raises(ServiceError) as caught:
            await service.start()
    assert str(caught.value) == (
        f"metrics_port {port}: cannot listen on 127.0.0.1:{port}: address already in use"
    )


def test_a_metrics_port_in_use_is_one_line_and_exit_status_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = ["run", "--manager", "examples.volume:VolumeManager"]
        result = run_cli(args, clean_env(AIOSVC_METRICS_PORT=str(port)), timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("aiosvc: error:")]
    assert errors == [
        f"aiosvc: error: ServiceError: metrics_port {port}: cannot listen on "
        f"127.0.0.1:{port}: address already in use"
    ]
    assert "Started aiosvc-volume" not in result.stderr


def test_worker_processes_cannot_share_one_metrics_port() -> None:
    env = clean_env(AIOSVC_TRANSPORT_URL="amqp://127.0.0.1:1/", AIOSVC_METRICS_PORT="9100")
    args = ["run", "--workers", "2", "--manager", "examples.volume:VolumeManager"]
    result = run_cli(args, env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "aiosvc: error: UsageError: --workers 2: each worker process serves its own metrics, "
        "and cannot share metrics_port 9100: set metrics_port=0 (each worker logs its port) "
        "or run one process per port"
    ]


async def test_an_api_service_answers_metrics_from_its_app_too(aiosvc_settings: Settings) -> None:
    from aiosvc.api import APIService

    settings = aiosvc_settings.model_copy(
        update={"metrics_port": 0, "api_port": 0, "api_listen": "127.0.0.1"}
    )
    async with APIService.create(app="tests.webapp:app", settings=settings) as api:
        from_app = await ascrape(f"{api.url}/metrics")
        from_port = await ascrape(metrics_url(api))
    reports = ("aiosvc_state_reports_total", frozenset({("topic", "api"), ("outcome", "ok")}))
    assert from_app[reports] >= 1
    assert {name for name, _ in from_app} == {name for name, _ in from_port}


# -- without prometheus-client


BLOCKED = (
    "import sys; sys.modules['prometheus_client'] = None; "
    "from aiosvc.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_without_prometheus(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, *args],
        cwd=ROOT,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_prometheus_client_a_metrics_port_names_the_extra() -> None:
    result = run_without_prometheus(
        "run", "--manager", "examples.volume:VolumeManager", AIOSVC_METRICS_PORT="9100"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1:] == [
        "aiosvc: error: ConfigError: metrics_port needs prometheus-client: "
        "pip install 'aiosvc[metrics]'"
    ]
    assert "Traceback" not in result.stderr


def test_without_prometheus_client_and_no_metrics_port_a_service_runs() -> None:
    code = (
        "import sys, asyncio; sys.modules['prometheus_client'] = None\n"
        "import aiosvc\n"
        "from examples.volume import VolumeManager\n"
        "async def main():\n"
        "    settings = aiosvc.Settings.load(isolated=True)\n"
        "    async with aiosvc.Service.create(VolumeManager, settings=settings) as service:\n"
        "        async with aiosvc.connect(settings) as transport:\n"
        "            pass\n"
        "        print('metrics', service.metrics)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "metrics None\n"


# -- the dashboard and the docs name metrics that exist


async def served(start: Start) -> str:
    """What the endpoint of a service that has handled a call and a periodic run serves."""
    service = await start()
    await wait_until(lambda: service.manager.ticks >= 1)  # type: ignore[attr-defined]
    return await anyio.to_thread.run_sync(fetch, metrics_url(service))


async def test_every_metric_the_dashboard_queries_is_served(start: Start) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in re.findall(r"\baiosvc_\w+", expr)}
    text = await served(start)
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert used - samples == set()
    assert dashboard["templating"]["list"][0]["type"] == "datasource"


async def test_the_docs_list_every_metric_served(start: Start) -> None:
    documented = set(re.findall(r"^\| `(aiosvc_\w+)`", OBSERVABILITY.read_text(), re.M))
    families = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(await served(start))
        if f.name.startswith("aiosvc_") and not f.name.endswith("_created")
    }
    assert documented == families
