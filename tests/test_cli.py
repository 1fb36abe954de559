"""``python -m aiosvc``, run as an operator runs it: a real process, real signals.

Every process is bounded by timeouts and killed in a ``finally``. Lines are read from
its stderr as they come, with deadlines instead of sleeps.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

import aiosvc

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0  # interpreter start and imports on a loaded CI machine
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")

MANAGERS = """
import asyncio
import logging

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
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


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


# -- running services


def test_run_example_publishes_capabilities_then_sigterm_stops_cleanly(
    spawn: Spawn,
) -> None:
    process = spawn("run", "--manager", "examples.volume:VolumeManager")
    started = process.expect("Started aiosvc-volume", START_TIMEOUT)
    published = process.expect("Published capabilities", 1.0)
    assert (log_time(published) - log_time(started)).total_seconds() < 1.0
    assert "cli-test-host" in started

    process.signal(signal.SIGTERM)
    assert process.wait(timeout=2) == 0
    assert "Stopped volume node aiosvc-volume" in process.stderr
    assert "Traceback" not in process.stderr


def test_sigint_stops_gracefully(spawn: Spawn) -> None:
    process = spawn("run", "--manager", "examples.volume:VolumeManager")
    process.expect("Started aiosvc-volume", START_TIMEOUT)
    process.signal(signal.SIGINT)
    assert process.wait(timeout=2) == 0
    assert "stopping gracefully" in process.stderr
    assert "Stopped volume node aiosvc-volume" in process.stderr
    assert "KeyboardInterrupt" not in process.stderr


def test_second_sigint_forces_the_stop_of_an_in_flight_periodic_task(
    spawn: Spawn,
) -> None:
    process = spawn("run", "--manager", "climanagers:BlockingTask")
    process.expect("periodic task in flight", START_TIMEOUT)
    process.signal(signal.SIGINT)
    process.expect("stopping gracefully", 2)
    process.expect("RPC server for blocking stopped", 2)
    assert process.proc.poll() is None  # waiting for the task, as a graceful stop should

    process.signal(signal.SIGINT)
    assert process.wait(timeout=3) == 1  # forced: not a clean stop
    assert "forcing the stop" in process.stderr
    assert "Stopped blocking node" in process.stderr  # cleanup still ran


def test_second_sigint_forces_the_stop_of_a_blocking_cleanup_host(
    spawn: Spawn,
) -> None:
    process = spawn("run", "--manager", "climanagers:BlockingCleanup")
    process.expect("Started aiosvc-cleanup", START_TIMEOUT)
    process.signal(signal.SIGINT)
    process.expect("cleanup_host blocking", 2)
    process.signal(signal.SIGINT)
    process.expect("forcing the stop", 2)
    assert process.wait(timeout=3) == 1


def test_sighup_calls_reset_and_keeps_running(spawn: Spawn) -> None:
    process = spawn("run", "--manager", "climanagers:Resettable")
    process.expect("Started aiosvc-resettable", START_TIMEOUT)
    process.signal(signal.SIGHUP)
    process.expect("reset() called on cli-test-host", 2)
    process.signal(signal.SIGHUP)
    process.expect("reset() called on cli-test-host", 2)
    assert process.proc.poll() is None

    process.signal(signal.SIGTERM)
    assert process.wait(timeout=2) == 0
    assert "Traceback" not in process.stderr


def test_two_managers_in_one_process_both_start(spawn: Spawn) -> None:
    process = spawn(
        "run", "--manager", "examples.volume:VolumeManager", "--manager", "climanagers:Other"
    )
    process.expect("Started aiosvc-volume", START_TIMEOUT)
    process.expect("Started aiosvc-other", 2)
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=2) == 0
    assert "Stopped volume node aiosvc-volume" in process.stderr
    assert "Stopped other node aiosvc-other" in process.stderr
