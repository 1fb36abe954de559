"""The test kit users get: FakeClock, wait_until, handled, run_periodic_tasks, isolated
settings, and the pytest plugin's fixtures, in every kind of pytest-asyncio or anyio suite.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import anyio
import pytest

import aiosvc
from aiosvc import Context, Manager, Settings, periodic_task
from aiosvc.testing import (
    ClientFactory,
    FakeClock,
    ServiceFactory,
    handled,
    isolated_settings,
    run_periodic_tasks,
    server_overrides,
    wait_until,
)
from aiosvc.testing.factories import TestCleanup
from examples.volume import VolumeManager, VolumeSettings

ROOT = Path(__file__).resolve().parent.parent


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 30)
        tg.start_soon(sleeper, "early", 10)
        await clock.advance(5)
        assert woke == []
        await clock.advance(30)
    assert woke == [("early", 10), ("late", 30)]
    assert clock.now() == 35


async def test_fake_clock_runs_what_a_woken_task_schedules_within_the_window() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def every_ten() -> None:
        while True:
            await clock.sleep(10)
            ticks.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(every_ten)
        await clock.advance(45)
        tg.cancel_scope.cancel()
    assert ticks == [10, 20, 30, 40]


async def test_fake_clock_cannot_go_back() -> None:
    with pytest.raises(ValueError, match="back"):
        await FakeClock().advance(-1)


async def test_wait_until_returns_once_true_and_times_out_otherwise() -> None:
    box: list[int] = []

    async def fill() -> None:
        await anyio.sleep(0.05)
        box.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(fill)
        await wait_until(lambda: bool(box), timeout=2)

    def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match="never"):
        await wait_until(never, timeout=0.05)


def test_plugin_fixtures_start_and_stop_services(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import aiosvc
        from aiosvc import Context, Manager, periodic_task

        started = []

        class Counter(Manager):
            topic = "counter"

            def __init__(self, **kw):
                super().__init__(**kw)
                self.ticks = 0

            async def add(self, ctx: Context, a: int, b: int) -> int:
                return a + b

            @periodic_task(spacing=10, run_immediately=True)
            async def _tick(self, ctx):
                self.ticks += 1

        async def test_service_answers(aiosvc_service, aiosvc_settings, aiosvc_clock):
            service = await aiosvc_service(Counter, clock=aiosvc_clock)
            started.append(service)
            await aiosvc_clock.advance(25)
            assert service.manager.ticks == 3
            async with aiosvc.connect(aiosvc_settings) as transport:
                client = aiosvc.RPCClient(transport, "counter")
                assert await client.call(None, "add", a=2, b=3) == 5

        def test_service_was_stopped_after_the_test():
            assert started and not started[0].started

        async def test_each_test_gets_its_own_broker(aiosvc_settings):
            async with aiosvc.connect(aiosvc_settings) as transport:
                client = aiosvc.RPCClient(transport, "counter")
                try:
                    await client.call(None, "add", a=1, b=1)
                except aiosvc.MessageUndeliverable:
                    return
                raise AssertionError("saw another test's queue")
        """
    )
    result = pytester.runpytest(
        "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=3)


# -- the README's example, and the plugin in every kind of async suite


def readme_test_file() -> str:
    """The test file of README.md's "Testing your services" section (its first python block)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Testing your services\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "README's testing section has no python block"
    return str(blocks[0])


README_MARK = "pytestmark = pytest.mark.asyncio"
README_TESTS = 3

# Watches every test of a pytester run: each service the test started was stopped
# gracefully (its record marked stopped) by the time the fixtures are torn down.
STOPPED_CHECK = """
import pytest

@pytest.fixture(autouse=True)
def _every_service_stopped_gracefully(request):
    yield
    factory = request.node.funcargs.get("aiosvc_service")
    for service in getattr(factory, "services", ()):
        assert not service.started, f"{service!r} still runs after its test"
        assert service.record.stopped, f"{service!r} was not stopped gracefully"
"""

ANYIO_MARK = """pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""

LEAKS = re.compile(r"Task was destroyed|was never awaited|Unclosed|ResourceWarning|Unraisable")


def _mode(code: str, mode: str) -> tuple[str, list[str]]:
    """``code`` (marked with README_MARK) rewritten for ``mode``, and the options to run it."""
    assert README_MARK in code
    if mode == "strict, pytestmark":  # the README as written
        return code, []
    if mode == "strict, @pytest.mark.asyncio":
        unmarked = code.replace(README_MARK, "")
        return unmarked.replace("async def test_", "@pytest.mark.asyncio\nasync def test_"), []
    if mode == "auto":
        return code.replace(README_MARK, ""), ["-o", "asyncio_mode=auto"]
    assert mode == "anyio"
    return code.replace(README_MARK, ANYIO_MARK), []


MODES = ["strict, pytestmark", "strict, @pytest.mark.asyncio", "auto", "anyio"]


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A process of its own, as a new project would run it: no configuration of this repo,
    # no pytest-asyncio or anyio state shared with this session.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    output = result.stdout.str() + result.stderr.str()
    assert not LEAKS.search(output), output
    return result


def test_readme_example_passes_in_an_empty_project(pytester: pytest.Pytester) -> None:
    # Nothing but the file: no conftest.py, no pytest.ini, pytest-asyncio's strict default.
    pytester.makepyfile(test_volume=readme_test_file())
    result = _run(pytester)
    result.assert_outcomes(passed=README_TESTS)


@pytest.mark.parametrize("mode", MODES)
def test_plugin_works_in_every_async_mode(pytester: pytest.Pytester, mode: str) -> None:
    code, options = _mode(readme_test_file(), mode)
    pytester.makeconftest(STOPPED_CHECK)
    pytester.makepyfile(test_volume=code)
    result = _run(pytester, *options)
    result.assert_outcomes(passed=README_TESTS)


def test_strict_mode_needs_the_readmes_mark(pytester: pytest.Pytester) -> None:
    # Why the README's file carries `pytestmark`: without it strict mode runs no async test.
    pytester.makepyfile(test_volume=readme_test_file().replace(README_MARK, ""))
    result = _run(pytester)
    result.assert_outcomes(failed=README_TESTS)
    result.stdout.fnmatch_lines(["*async def functions are not natively supported*"])


FAILING_TEST = """
import pytest

from aiosvc import Context, Manager

pytestmark = pytest.mark.asyncio


class Echo(Manager):
    topic = "echo"

    async def echo(self, ctx: Context, text: str) -> str:
        return text


async def test_fails_with_a_service_running(aiosvc_service, aiosvc_client):
    await aiosvc_service(Echo)
    echo = await aiosvc_client("echo")
    assert await echo.call(None, "echo", text="hi") == "bye"
"""


@pytest.mark.parametrize("mode", ["strict, pytestmark", "auto", "anyio"])
def test_a_failing_test_still_stops_its_services(pytester: pytest.Pytester, mode: str) -> None:
    code, options = _mode(FAILING_TEST, mode)
    pytester.makeconftest(STOPPED_CHECK)
    pytester.makepyfile(test_echo=code)
    result = _run(pytester, *options)
    result.assert_outcomes(failed=1)  # and no error: the services were stopped gracefully
    result.stdout.fnmatch_lines(["*assert 'hi' == 'bye'*"])


FROM_FIXTURES = """
import pytest
import pytest_asyncio

from aiosvc import Context, Manager


class Echo(Manager):
    topic = "echo"

    async def echo(self, ctx: Context, text: str) -> str:
        return text


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest_asyncio.fixture
async def asyncio_echo(aiosvc_service):
    service = await aiosvc_service(Echo)
    yield service
    assert not service.started  # stopped when the test function ended


@pytest.fixture
async def anyio_echo(aiosvc_service):
    return await aiosvc_service(Echo)


@pytest.mark.asyncio
async def test_from_a_pytest_asyncio_fixture(asyncio_echo, aiosvc_client):
    assert await (await aiosvc_client("echo")).call(None, "echo", text="a") == "a"


@pytest.mark.anyio
async def test_from_an_anyio_fixture(anyio_echo, aiosvc_client):
    assert await (await aiosvc_client("echo")).call(None, "echo", text="b") == "b"


@pytest.mark.asyncio(loop_scope="module")
async def test_on_a_module_scoped_loop(aiosvc_service, aiosvc_client):
    await aiosvc_service(Echo)
    assert await (await aiosvc_client("echo")).call(None, "echo", text="c") == "c"
"""


def test_factories_work_from_async_fixtures_and_on_any_loop_scope(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(STOPPED_CHECK)
    pytester.makepyfile(test_echo=FROM_FIXTURES)
    result = _run(pytester)
    result.assert_outcomes(passed=3)


REAL_SERVERS_CHECK = """
import os

import pytest

from aiosvc import Context, Manager

pytestmark = pytest.mark.asyncio
SEEN = []


class Echo(Manager):
    topic = "echo"

    async def echo(self, ctx: Context, text: str) -> str:
        return text


@pytest.mark.parametrize("run", [1, 2])
async def test_fixtures_use_the_real_servers(run, aiosvc_settings, aiosvc_service, aiosvc_client):
    assert aiosvc_settings.transport_url == os.environ["AIOSVC_TEST_AMQP_URL"]
    assert aiosvc_settings.database_url == os.environ["AIOSVC_TEST_DATABASE_URL"]
    service = await aiosvc_service(Echo)
    assert type(service.transport).__module__.startswith("aiosvc.transport.amqp")
    assert type(service.store).__name__ == "PostgresStore"
    echo = await aiosvc_client("echo")
    assert await echo.call(None, "echo", text="hi") == "hi"
    record = await service.store.get(service.host, service.binary)
    assert record.host == aiosvc_settings.host
    SEEN.append(aiosvc_settings.host)
    assert len(set(SEEN)) == len(SEEN), "two tests shared a host"
"""


def test_plugin_runs_on_real_servers_when_told(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, amqp_url: str, database_url: str
) -> None:
    monkeypatch.setenv("AIOSVC_TEST_AMQP_URL", amqp_url)
    monkeypatch.setenv("AIOSVC_TEST_DATABASE_URL", database_url)
    pytester.makeconftest(STOPPED_CHECK)
    pytester.makepyfile(test_volume=readme_test_file(), test_servers=REAL_SERVERS_CHECK)
    result = _run(pytester, "-v")
    result.assert_outcomes(passed=README_TESTS + 2)


# -- settings that never read the user's environment


def test_isolated_settings_ignore_the_environment_and_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AIOSVC_PERIODIC_INTERVAL=7\n")
    monkeypatch.setenv("AIOSVC_REPORT_INTERVAL", "3")
    monkeypatch.setenv("AIOSVC_VOLUME_CAPACITY_GB", "9")
    # Settings.load() reads them, as it should...
    assert (Settings.load().report_interval, Settings.load().periodic_interval) == (3, 7)
    assert VolumeSettings.load().volume_capacity_gb == 9
    # ...the test settings do not, nor does their upgrade to a manager's settings class.
    settings = isolated_settings()
    assert (settings.report_interval, settings.periodic_interval) == (10, 60)
    manager = aiosvc.Service.create(VolumeManager, settings=settings).manager
    assert isinstance(manager.settings, VolumeSettings)
    assert (manager.settings.report_interval, manager.settings.volume_capacity_gb) == (10, 100)
    assert manager.settings.transport_url == settings.transport_url
    own = isolated_settings(VolumeSettings, volume_capacity_gb=5)
    assert isinstance(own, VolumeSettings)
    assert (own.volume_capacity_gb, own.report_interval) == (5, 10)
    with pytest.raises(aiosvc.ConfigError, match="report_interval"):
        isolated_settings(report_interval="soon")


@pytest.fixture
def exported_report_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOSVC_REPORT_INTERVAL", "3")


async def test_fixture_settings_ignore_an_exported_variable(
    exported_report_interval: None, aiosvc_settings: Settings, aiosvc_service: ServiceFactory
) -> None:
    assert aiosvc_settings.report_interval == 10
    service = await aiosvc_service(VolumeManager)
    assert service.manager.settings.report_interval == 10


def test_server_overrides_name_real_servers_and_a_host_per_test() -> None:
    assert server_overrides({}) == {}
    env = {"AIOSVC_TEST_AMQP_URL": "amqp://a/", "AIOSVC_TEST_DATABASE_URL": "postgresql://d/x"}
    first, second = server_overrides(env), server_overrides(env)
    assert (first["transport_url"], first["database_url"]) == ("amqp://a/", "postgresql://d/x")
    assert first["host"] != second["host"]
    assert "control_exchange" not in first  # a queue's dead-letter exchange is fixed for life
    only_db = server_overrides({"AIOSVC_TEST_DATABASE_URL": "postgresql://d/x"})
    assert "transport_url" not in only_db
    assert isolated_settings(**only_db).transport_url.startswith("memory://")


# -- the factories, driven by this suite's own fixtures


class Journal(Manager):
    topic = "journal"

    async def init_host(self) -> None:
        self.driver: list[str] = []
        self.driver_at_pre_start: object = None

    async def pre_start_hook(self) -> None:
        self.driver_at_pre_start = self.driver

    async def write(self, ctx: Context, line: str) -> int:
        await anyio.sleep(0.05)  # a cast returns long before this is done
        self.driver.append(line)
        return len(self.driver)

    @periodic_task(spacing=3600)
    async def _rotate(self, ctx: Context) -> None:
        self.driver.append("rotated")

    @periodic_task(spacing=3600, name="audit")
    async def _check(self, ctx: Context) -> None:
        if "bad" in self.driver:
            raise ValueError("bad line")
        self.driver.append("audited")


async def test_handled_waits_until_a_cast_has_run(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    service = await aiosvc_service(Journal)
    journal = await aiosvc_client("journal")
    async with handled(service):
        await journal.cast(None, "write", line="a")
        assert service.manager.driver == []  # the cast returned before the service ran it
    assert service.manager.driver == ["a"]
    async with handled(service, count=2):
        await journal.cast(None, "write", line="b")
        await wait_until(lambda: "b" in service.manager.driver)  # handled before the wait
        await journal.cast(None, "write", line="c")
    assert service.manager.driver == ["a", "b", "c"]


async def test_handled_says_how_many_were_handled_in_time(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    service = await aiosvc_service(Journal)
    journal = await aiosvc_client("journal")
    with pytest.raises(TimeoutError, match=r"aiosvc-journal handled 1 of 2 message\(s\)"):
        async with handled(service, count=2, timeout=0.5):
            await journal.cast(None, "write", line="a")
    with pytest.raises(TypeError):
        async with handled():
            pass
    with pytest.raises(aiosvc.ServiceError, match="not started"):
        async with handled(aiosvc.Service.create(Journal, settings=isolated_settings())):
            pass


async def test_a_fanout_cast_is_handled_by_each_service(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    a = await aiosvc_service(Journal, host="a")
    b = await aiosvc_service(Journal, host="b")
    journal = await aiosvc_client("journal", fanout=True)
    async with handled(a, b, count=2):
        await journal.cast(None, "write", line="all")
    assert a.manager.driver == b.manager.driver == ["all"]
    only_b = await aiosvc_client("journal", server="b")
    assert await only_b.call(None, "write", line="b") == 2


async def test_run_periodic_tasks_runs_them_now_whatever_their_schedule(
    aiosvc_service: ServiceFactory, aiosvc_clock: FakeClock
) -> None:
    service = await aiosvc_service(Journal, clock=aiosvc_clock)  # not due for an hour
    manager = service.manager
    assert await run_periodic_tasks(service) == ["Journal._rotate", "Journal.audit"]
    assert manager.driver == ["rotated", "audited"]
    assert await run_periodic_tasks(manager, "audit", "Journal._rotate") == [
        "Journal._rotate",
        "Journal.audit",
    ]
    assert await run_periodic_tasks(manager, "_rotate") == ["Journal._rotate"]
    with pytest.raises(LookupError, match=r"no periodic task '_audit'.*'_rotate', 'audit'"):
        await run_periodic_tasks(manager, "_audit")
    manager.driver.append("bad")
    with pytest.raises(ValueError, match="bad line"):
        await run_periodic_tasks(manager, "audit")
    assert await run_periodic_tasks(manager, "audit", raise_on_error=False) == ["Journal.audit"]
    assert [t.next_run for t in manager.periodic.tasks] == [3600, 3600]  # schedule kept


async def test_replace_swaps_an_attribute_after_init_host_before_any_message(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    fake: list[str] = ["from the fake"]
    service = await aiosvc_service(Journal, replace={"driver": fake})
    assert service.manager.driver is fake
    assert service.manager.driver_at_pre_start is fake
    assert "init_host" not in vars(service.manager)
    journal = await aiosvc_client("journal")
    assert await journal.call(None, "write", line="x") == 2
    assert fake == ["from the fake", "x"]
    with pytest.raises(AttributeError, match="no attribute 'drivr' after init_host"):
        await aiosvc_service(Journal, host="other", replace={"drivr": fake})


async def test_settings_overrides_for_one_service(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory, aiosvc_settings: Settings
) -> None:
    service = await aiosvc_service(
        VolumeManager, settings={"volume_capacity_gb": 7, "periodic_enable": False}
    )
    settings = service.manager.settings
    assert isinstance(settings, VolumeSettings)
    assert (settings.volume_capacity_gb, settings.periodic_enable) == (7, False)
    assert settings.transport_url == aiosvc_settings.transport_url  # the test's broker still
    volume = await aiosvc_client("volume", version="1.1")
    assert await volume.call(None, "list_volumes") == []


def test_fixtures_refuse_a_second_event_loop_or_none() -> None:
    cleanup = TestCleanup()
    with pytest.raises(RuntimeError, match="runs on asyncio"):
        cleanup.bind()

    async def bind() -> None:
        cleanup.bind()

    asyncio.run(bind())
    with pytest.raises(RuntimeError, match="two event loops"):
        asyncio.run(bind())


def test_what_a_test_did_not_close_is_closed_at_teardown_on_its_loop() -> None:
    # A service started outside the test function (in an async fixture whose test never
    # ran, say) is stopped by the fixture's teardown, on its own loop if still open.
    cleanup = TestCleanup()
    factory = ServiceFactory(cleanup, isolated_settings())
    loop = asyncio.new_event_loop()
    try:
        service = loop.run_until_complete(factory(Journal))
        assert service.started
        assert cleanup.pending
        cleanup.close_left_over()
        assert not service.started
        assert service.record is not None
        assert service.record.stopped
        assert not cleanup.pending
    finally:
        loop.close()
    cleanup.close_left_over()  # nothing left, loop closed: nothing to do
