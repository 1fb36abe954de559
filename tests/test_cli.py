"""``python -m aiosvc``, run as an operator runs it: a real process, real signals.

Every process is bounded by timeouts and killed in a ``finally``. Lines are read from
its stderr as they come, with deadlines instead of sleeps.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import aiosvc
import aiosvc.cli
from aiosvc.cli import _call_args
from aiosvc.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0  # interpreter start and imports on a loaded CI machine
#: One step of a running service (a signal handled, a stop) on a loaded CI machine; only a
#: deadline, a healthy run takes milliseconds.
STEP_TIMEOUT = 10.0
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")

MANAGERS = """
import asyncio
import logging
import os

from aiosvc import Context, Manager, periodic_task

log = logging.getLogger("climanagers")


class Resettable(Manager):
    topic = "resettable"

    async def reset(self) -> None:
        log.info("reset() called on %s", self.host)


class FailingInit(Manager):
    topic = "failing"

    async def init_host(self) -> None:
        raise RuntimeError("no hypervisor at /dev/kvm")


class BlockingTask(Manager):
    topic = "blocking"

    @periodic_task(spacing=60, run_immediately=True)
    async def _block(self, ctx: Context) -> None:
        log.info("periodic task in flight")
        await asyncio.sleep(3600)


class BlockingCleanup(Manager):
    topic = "cleanup"

    async def cleanup_host(self) -> None:
        log.info("cleanup_host blocking")
        await asyncio.sleep(3600)


class GatedCleanup(Manager):
    # Its cleanup_host waits until the file $CLEANUP_GATE exists.

    topic = "gated"

    async def cleanup_host(self) -> None:
        log.info("cleanup_host waiting")
        while not os.path.exists(os.environ["CLEANUP_GATE"]):
            await asyncio.sleep(0.02)


class Other(Manager):
    topic = "other"
"""


class Process:
    """A running ``python -m aiosvc``, its output read line by line in the background."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiosvc", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: object, is_stderr: bool) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            line = raw.rstrip("\n")
            if is_stderr:
                self.stderr_lines.append(line)
                self._queue.put(line)
            else:
                self.stdout_lines.append(line)
        if is_stderr:
            self._queue.put(None)

    def expect(self, pattern: str, timeout: float) -> str:
        """The next stderr line containing ``pattern``, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if pattern in line:
                return line
        pytest.fail(f"no stderr line with {pattern!r} within {timeout}s:\n{self.stderr}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout}s later:\n{self.stderr}")
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without AIOSVC_* settings, plus the test managers."""
    (tmp_path / "climanagers.py").write_text(textwrap.dedent(MANAGERS))
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("AIOSVC_")}
    clean["PYTHONUNBUFFERED"] = "1"
    clean["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    clean["AIOSVC_HOST"] = "cli-test-host"
    return clean


Spawn = Callable[..., Process]


@pytest.fixture
def spawn(env: dict[str, str]) -> Iterator[Spawn]:
    made: list[Process] = []

    def start(*args: str, extra_env: dict[str, str] | None = None) -> Process:
        process = Process(list(args), {**env, **(extra_env or {})})
        made.append(process)
        return process

    try:
        yield start
    finally:
        for process in made:
            process.kill()


def run(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiosvc", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def log_time(line: str) -> datetime:
    match = LOG_TIME.match(line)
    assert match, f"no timestamp in {line!r}"
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("aiosvc: error:")]


# -- one-shot commands


def test_version(env: dict[str, str]) -> None:
    result = run(env, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"aiosvc {aiosvc.__version__}"


def test_no_command_is_a_usage_error(env: dict[str, str]) -> None:
    result = run(env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()  # one line, pointing at the help
    assert "COMMAND" in line
    assert "python -m aiosvc --help" in line


def test_unknown_manager_is_one_line(env: dict[str, str]) -> None:
    result = run(env, "run", "--manager", "no.such:Thing")
    assert result.returncode != 0
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "no.such" in lines[0]
    assert "not found" in lines[0]


def test_manager_path_naming_something_else_is_one_line(env: dict[str, str]) -> None:
    result = run(env, "run", "--manager", "examples.volume:VolumeSettings")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "not a subclass of Manager" in result.stderr


def test_invalid_setting_in_env_is_one_line_naming_it(env: dict[str, str]) -> None:
    env = {**env, "AIOSVC_REPORT_INTERVAL": "-5"}
    result = run(env, "run", "--manager", "examples.volume:VolumeManager")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "report_interval" in lines[0]
    assert "AIOSVC_REPORT_INTERVAL=-5" in lines[0]


def test_unknown_set_option_is_one_line(env: dict[str, str]) -> None:
    result = run(env, "run", "--manager", "examples.volume:VolumeManager", "--set", "colour=red")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "colour" in result.stderr


def test_init_host_failure_is_one_error_line_without_traceback(env: dict[str, str]) -> None:
    result = run(env, "run", "--manager", "climanagers:FailingInit")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "aiosvc-failing" in line
    assert "RuntimeError: no hypervisor at /dev/kvm" in line


def test_bad_driver_option_of_the_example_is_one_line(env: dict[str, str]) -> None:
    result = run(
        env,
        "run",
        "--manager",
        "examples.volume:VolumeManager",
        "--set",
        "volume_driver=examples.volume.drivers:NoSuchDriver",
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "NoSuchDriver" in line


def test_manager_named_by_its_module_says_which_form_is_wanted(env: dict[str, str]) -> None:
    # A fresh process: examples.volume is not imported yet, so `examples` has no such
    # attribute; the error must still say that it is a module, and what to write instead.
    result = run(env, "run", "--manager", "examples.volume")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "'examples.volume' is a module" in line
    assert "'pkg.module:Class'" in line
    assert "has no attribute" not in line


def test_bad_timeout_is_one_line_from_a_real_process(env: dict[str, str]) -> None:
    result = run(env, "call", "volume", "list_volumes", "--timeout", "0")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "argument --timeout: must be a positive number of seconds, got '0'" in line


@pytest.mark.parametrize(
    ("flag", "value"), [("--topic", ""), ("--topic", "volume.#"), ("--host", "a b")]
)
def test_run_refuses_a_topic_or_host_that_cannot_name_queues(
    cli: CLI, flag: str, value: str
) -> None:
    code, err = cli("run", "--manager", "examples.volume:VolumeManager", flag, value)
    assert code == 2
    assert f"argument {flag}: bad {flag[2:]} {value!r}: it names queues" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_transport_url_flag_is_named_as_the_flag(env: dict[str, str]) -> None:
    result = run(env, "call", "volume", "list_volumes", "--transport-url", "notaurl")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "--transport-url 'notaurl'" in line
    assert "'notaurl' is not a URL (no scheme)" in line
    assert "AIOSVC_TRANSPORT_URL" not in line


# -- bad input, in-process (aiosvc.cli.main): one line on stderr, exit status 2


CLI = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CLI:
    """``aiosvc.cli.main(argv)`` with no AIOSVC_* variable and no .env: (exit status, stderr)."""
    for name in list(os.environ):
        if name.upper().startswith("AIOSVC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def call(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = cli_main(list(argv))
        return code, capsys.readouterr().err

    return call


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_call_timeout_must_be_positive(cli: CLI, timeout: str) -> None:
    code, err = cli("call", "volume", "list_volumes", "--timeout", timeout)
    assert code == 2
    line = one_line(err)
    assert f"argument --timeout: must be a positive number of seconds, got {timeout!r}" in line
    assert "python -m aiosvc call --help" in line


def test_call_argument_with_bad_json_names_the_argument(cli: CLI) -> None:
    code, err = cli("call", "volume", "create_volume", "volume_id=v1", "size_gb:=three")
    assert code == 2
    line = one_line(err)
    assert "argument size_gb: 'three' is not valid JSON" in line
    assert "size_gb=VALUE" in line  # how to pass a string instead


@pytest.mark.parametrize("command", ["call", "cast"])
@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("volume_id", "argument 'volume_id' must look like NAME=VALUE (a string) or NAME:=JSON"),
        ("=v1", "argument '=v1' must look like"),
        ("volume id=v1", "argument 'volume id=v1' must look like"),
        ("tags:=[1,", "argument tags: '[1,' is not valid JSON"),
    ],
)
def test_malformed_call_and_cast_arguments(cli: CLI, command: str, arg: str, says: str) -> None:
    code, err = cli(command, "volume", "create_volume", arg)
    assert code == 2
    assert says in one_line(err)


def test_an_argument_given_twice_is_refused(cli: CLI) -> None:
    code, err = cli("cast", "volume", "delete_volume", "volume_id=a", "volume_id:=1")
    assert code == 2
    assert "argument volume_id is given twice" in one_line(err)


@pytest.mark.parametrize("command", ["call", "cast"])
@pytest.mark.parametrize("version", ["1.x", "", "1", "1.\u0661"])
def test_a_bad_api_version_is_refused_before_connecting(
    cli: CLI, command: str, version: str
) -> None:
    # The broker is unreachable: a connection attempt would be exit status 1.
    code, err = cli(
        command, "volume", "m", "--version", version, "--transport-url", "amqp://127.0.0.1:1/"
    )
    assert code == 2
    assert f"argument --version: invalid API version {version!r}" in one_line(err)


@pytest.mark.parametrize(
    "command",
    [
        ["call", "volume", "m"],
        ["cast", "volume", "m"],
        ["services", "list"],
        ["services", "delete", "h", "b"],
        ["db", "version"],
    ],
)
def test_every_command_refuses_an_unknown_set_option(cli: CLI, command: list[str]) -> None:
    code, err = cli(*command, "--set", "colour=red", "--set", "transport_url=amqp://127.0.0.1:1/")
    assert code == 2
    assert "unknown setting(s): --set colour" in one_line(err)


def test_an_error_with_a_line_break_is_still_one_line(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(args: Any) -> int:
        raise aiosvc.ConfigError("first part\nsecond part")

    monkeypatch.setattr(aiosvc.cli, "_cmd_db", fails)
    code, err = cli("db", "version")
    assert code == 2
    assert one_line(err) == "aiosvc: error: ConfigError: first part second part"


def test_a_failed_connection_is_one_line_without_library_log_lines(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a fresh process: no logging handler, so Python prints what libraries log.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    for name in ("aio_pika", "aiormq"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    # dead-letters connects with plain aio-pika, whose aiormq logs the refused connection.
    code, err = cli("dead-letters", "list", "--transport-url", "amqp://127.0.0.1:1/")
    assert code == 1
    assert one_line(err).startswith("aiosvc: error: TransportError: cannot connect")


def test_call_arguments_are_strings_unless_given_as_json() -> None:
    args = _call_args(
        [
            "volume_id=5",
            "size_gb:=3",
            'tags:=["a","b"]',
            "force:=true",
            "spec:={}",
            "none:=null",
            "note=a=b:=c",
            "empty=",
            'quoted="3"',
        ]
    )
    assert args == {
        "volume_id": "5",
        "size_gb": 3,
        "tags": ["a", "b"],
        "force": True,
        "spec": {},
        "none": None,
        "note": "a=b:=c",
        "empty": "",
        "quoted": '"3"',
    }


@pytest.mark.parametrize(
    ("argv", "origin", "reason"),
    [
        (
            ["--transport-url", "notaurl"],
            "transport_url (--transport-url 'notaurl')",
            "'notaurl' is not a URL (no scheme): the URL scheme must be one of",
        ),
        (
            ["--transport-url", "http://u:hunter2@rabbit/"],
            "transport_url (--transport-url 'http://u:***@rabbit/')",
            "URL scheme must be one of memory, amqp, amqps, rabbit, got 'http'",
        ),
        (
            ["--database-url", "mysql://db/nova"],
            "database_url (--database-url 'mysql://db/nova')",
            "got 'mysql'",
        ),
        (["--log-level", "loud"], "log_level (--log-level 'loud')", "'DEBUG'"),
        (["--set", "report_interval=-5"], "report_interval (--set report_interval=-5)", ">= 0"),
        (["--set", "report_interval=often"], "(--set report_interval=often)", "valid number"),
    ],
)
@pytest.mark.parametrize(
    "command", [["run", "--manager", "examples.volume:VolumeManager"], ["call", "volume", "m"]]
)
def test_a_bad_flag_value_names_the_flag(
    cli: CLI, command: list[str], argv: list[str], origin: str, reason: str
) -> None:
    code, err = cli(*command, *argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith("aiosvc: error: ConfigError: invalid setting ")
    assert origin in line
    assert reason.replace(">= 0", "greater than or equal to 0") in line
    assert "AIOSVC_" not in line  # the value did not come from the environment
    assert "hunter2" not in line


def test_a_bad_environment_value_names_the_variable(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOSVC_TRANSPORT_URL", "rabbit")
    code, err = cli("call", "volume", "list_volumes")
    assert code == 2
    line = one_line(err)
    assert "transport_url (AIOSVC_TRANSPORT_URL=rabbit): 'rabbit' is not a URL" in line


def test_a_flag_beats_the_environment_and_is_the_one_named(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOSVC_REPORT_INTERVAL", "5")
    code, err = cli(
        "run", "--manager", "examples.volume:VolumeManager", "--set", "report_interval=-1"
    )
    assert code == 2
    assert "report_interval (--set report_interval=-1)" in one_line(err)


@pytest.mark.parametrize(
    ("name", "text", "origin"),
    [
        ("svc.toml", "rpc_response_timeout = -1\n", "svc.toml: rpc_response_timeout = -1)"),
        (
            "svc.conf",
            "AIOSVC_RPC_RESPONSE_TIMEOUT=-1\n",
            "svc.conf: AIOSVC_RPC_RESPONSE_TIMEOUT=-1)",
        ),
    ],
)
def test_a_bad_config_file_value_names_the_file(
    cli: CLI, tmp_path: Path, name: str, text: str, origin: str
) -> None:
    config = tmp_path / "etc" / name
    config.parent.mkdir()
    config.write_text(text)
    code, err = cli("run", "--manager", "examples.volume:VolumeManager", "--config", str(config))
    assert code == 2
    line = one_line(err)
    assert f"rpc_response_timeout ({config.parent}/{origin}" in line
    assert "greater than 0" in line


def test_a_bad_dotenv_value_names_the_file(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AIOSVC_PERIODIC_INTERVAL=soon\n")  # the fixture's cwd
    code, err = cli("run", "--manager", "examples.volume:VolumeManager")
    assert code == 2
    assert "periodic_interval (.env: AIOSVC_PERIODIC_INTERVAL=soon)" in one_line(err)


@pytest.mark.parametrize("value", ["report_interval", "=5", "report interval=5"])
def test_malformed_set_is_one_usage_line(cli: CLI, value: str) -> None:
    code, err = cli("run", "--manager", "examples.volume:VolumeManager", "--set", value)
    assert code == 2
    line = one_line(err)
    assert f"argument --set: must look like NAME=VALUE, got {value!r}" in line


def test_unknown_set_option_is_named_as_given(cli: CLI) -> None:
    code, err = cli("run", "--manager", "examples.volume:VolumeManager", "--set", "colour=red")
    assert code == 2
    assert "unknown setting(s): --set colour" in one_line(err)


def test_set_values_are_parsed_once_then_validated_as_settings(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JSON where it parses, else the string; pydantic converts (and checks) both.
    loaded: list[aiosvc.Settings] = []

    def fake_launch(*services: aiosvc.Service, **options: Any) -> Any:
        loaded.extend(s.settings for s in services)

        async def done() -> int:
            return 0

        return done()

    monkeypatch.setattr(aiosvc.cli, "launch", fake_launch)
    # Not the root logger's handlers: they would keep this test's captured stderr.
    monkeypatch.setattr(aiosvc.cli, "setup_logging", lambda level: None)
    code, err = cli(
        "run",
        "--manager",
        "examples.volume:VolumeManager",
        "--set",
        "report_interval=7",
        "--set",
        "volume_capacity_gb=12",
        "--set",
        "periodic_enable=false",
        "--set",
        'allowed_remote_exceptions=["a.b"]',
    )
    assert (code, err) == (0, "")
    [settings] = loaded
    assert settings.report_interval == 7
    assert settings.periodic_enable is False
    assert settings.allowed_remote_exceptions == ["a.b"]
    assert settings.volume_capacity_gb == 12  # type: ignore[attr-defined]


# -- running services


def test_run_example_publishes_capabilities_then_sigterm_stops_cleanly(
    spawn: Spawn,
) -> None:
    process = spawn("run", "--manager", "examples.volume:VolumeManager")
    started = process.expect("Started aiosvc-volume", START_TIMEOUT)
    published = process.expect("Published capabilities", STEP_TIMEOUT)
    # At start (run_immediately), not one spacing (30 s) later.
    assert (log_time(published) - log_time(started)).total_seconds() < STEP_TIMEOUT
    assert "cli-test-host" in started

    process.signal(signal.SIGTERM)
    assert process.wait(timeout=STEP_TIMEOUT) == 0
    assert "Stopped volume node aiosvc-volume" in process.stderr
    assert "Traceback" not in process.stderr


def test_sigint_stops_gracefully(spawn: Spawn) -> None:
    process = spawn("run", "--manager", "examples.volume:VolumeManager")
    process.expect("Started aiosvc-volume", START_TIMEOUT)
    process.signal(signal.SIGINT)
    assert process.wait(timeout=STEP_TIMEOUT) == 0
    assert "stopping gracefully" in process.stderr
    assert "Stopped volume node aiosvc-volume" in process.stderr
    assert "KeyboardInterrupt" not in process.stderr


def test_second_sigint_forces_the_stop_of_an_in_flight_periodic_task(
    spawn: Spawn,
) -> None:
    process = spawn("run", "--manager", "climanagers:BlockingTask")
    process.expect("periodic task in flight", START_TIMEOUT)
    process.signal(signal.SIGINT)
    process.expect("stopping gracefully", STEP_TIMEOUT)
    process.expect("RPC server for blocking stopped", STEP_TIMEOUT)
    assert process.proc.poll() is None  # waiting for the task, as a graceful stop should

    process.signal(signal.SIGINT)
    assert process.wait(timeout=STEP_TIMEOUT) == 1  # forced: not a clean stop
    assert "forcing the stop" in process.stderr
    assert "Stopped blocking node" in process.stderr  # cleanup still ran


def test_second_sigint_forces_the_stop_of_a_blocking_cleanup_host(
    spawn: Spawn,
) -> None:
    process = spawn("run", "--manager", "climanagers:BlockingCleanup")
    process.expect("Started aiosvc-cleanup", START_TIMEOUT)
    process.signal(signal.SIGINT)
    process.expect("cleanup_host blocking", STEP_TIMEOUT)
    process.signal(signal.SIGINT)
    process.expect("forcing the stop", STEP_TIMEOUT)
    assert process.wait(timeout=STEP_TIMEOUT) == 1


def test_repeated_sigterm_does_not_force_the_stop(spawn: Spawn, tmp_path: Path) -> None:
    """Supervisors and process groups deliver one SIGTERM twice within milliseconds."""
    gate = tmp_path / "gate"
    process = spawn(
        "run", "--manager", "climanagers:GatedCleanup", extra_env={"CLEANUP_GATE": str(gate)}
    )
    process.expect("Started aiosvc-gated", START_TIMEOUT)
    process.signal(signal.SIGTERM)
    process.expect("cleanup_host waiting", STEP_TIMEOUT)
    process.signal(signal.SIGTERM)  # while stopping, for sure (the kernel may merge two at once)
    process.expect("already stopping gracefully", STEP_TIMEOUT)
    gate.touch()
    assert process.wait(timeout=STEP_TIMEOUT) == 0
    assert "forcing" not in process.stderr
    assert "Stopped gated node aiosvc-gated" in process.stderr


def test_sigint_after_sigterm_forces_the_stop(spawn: Spawn) -> None:
    """A person pressing Ctrl-C while a supervisor's stop drags on still gets out."""
    process = spawn("run", "--manager", "climanagers:BlockingCleanup")
    process.expect("Started aiosvc-cleanup", START_TIMEOUT)
    process.signal(signal.SIGTERM)
    process.expect("cleanup_host blocking", STEP_TIMEOUT)
    process.signal(signal.SIGTERM)
    process.expect("already stopping gracefully", STEP_TIMEOUT)
    assert process.proc.poll() is None
    process.signal(signal.SIGINT)
    process.expect("forcing the stop", STEP_TIMEOUT)
    assert process.wait(timeout=STEP_TIMEOUT) == 1


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_under_coreutils_timeout_the_service_stops_cleanly(env: dict[str, str]) -> None:
    """``timeout 5 python -m aiosvc run``: timeout's 124, and the service's own clean stop.

    ``timeout`` sends its SIGTERM to the service and again to the process group: the second
    one must neither force the stop nor meet a process whose handlers are gone.
    """
    result = subprocess.run(
        [
            "timeout",
            "5",
            sys.executable,
            "-m",
            "aiosvc",
            "run",
            "--manager",
            "examples.volume:VolumeManager",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=5 + START_TIMEOUT,
        check=False,
    )
    assert result.returncode == 124, result.stderr  # timeout's own: it had to stop the command
    assert "Started aiosvc-volume" in result.stderr
    assert "Caught SIGTERM: stopping gracefully" in result.stderr
    assert "Stopped volume node aiosvc-volume" in result.stderr
    assert "forcing" not in result.stderr
    assert "Traceback" not in result.stderr


EXITING = """
import asyncio, os, signal

import aiosvc


class Quick(aiosvc.Manager):
    topic = "quick"


async def main() -> None:
    service = aiosvc.Service.create(manager=Quick, settings=aiosvc.Settings.load())
    code = await aiosvc.launch(
        service,
        restore_signals=False,
        on_started=lambda: os.kill(os.getpid(), signal.SIGTERM),
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # while the process exits
        os.kill(os.getpid(), sig)
    await asyncio.sleep(0)  # a signal handler, if any, would run here
    print("exit status", code)


asyncio.run(main())
"""


def test_signals_that_arrive_while_exiting_change_nothing(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXITING],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT + STEP_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "exit status 0\n"), result.stderr


def test_sighup_calls_reset_and_keeps_running(spawn: Spawn) -> None:
    process = spawn("run", "--manager", "climanagers:Resettable")
    process.expect("Started aiosvc-resettable", START_TIMEOUT)
    process.signal(signal.SIGHUP)
    process.expect("reset() called on cli-test-host", STEP_TIMEOUT)
    process.signal(signal.SIGHUP)
    process.expect("reset() called on cli-test-host", STEP_TIMEOUT)
    assert process.proc.poll() is None

    process.signal(signal.SIGTERM)
    assert process.wait(timeout=STEP_TIMEOUT) == 0
    assert "Traceback" not in process.stderr


def test_two_managers_in_one_process_both_start(spawn: Spawn) -> None:
    process = spawn(
        "run", "--manager", "examples.volume:VolumeManager", "--manager", "climanagers:Other"
    )
    process.expect("Started aiosvc-volume", START_TIMEOUT)
    process.expect("Started aiosvc-other", STEP_TIMEOUT)
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=STEP_TIMEOUT) == 0
    assert "Stopped volume node aiosvc-volume" in process.stderr
    assert "Stopped other node aiosvc-other" in process.stderr
