"""``python -m aiosvc services ...`` and ``db ...`` against a real PostgreSQL.

Most tests run the command line in-process (``aiosvc.cli.main`` in a worker thread, as it
runs its own event loop); the ones about what an operator sees on a terminal, and the
issue's acceptance with ``python -m aiosvc run``, run real processes.

Reference: ``nova service-list`` (Id, Binary, Host, Zone, Status, State, Updated At,
Disabled Reason), ``service-disable --reason``, ``service-enable``, ``service-force-down``,
``service-delete``; ``nova-manage db sync`` / ``db version``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from anyio.abc import Process

from aiosvc.cli import main as cli_main
from aiosvc.settings import Settings
from aiosvc.store import ServiceRecord, ServiceStore, get_store
from aiosvc.store import postgres as pg_store
from aiosvc.testing import wait_until
from tests.servers import free_ports

REPO = Path(__file__).resolve().parent.parent
COLUMNS = [
    "Id",
    "Binary",
    "Host",
    "Topic",
    "Status",
    "State",
    "Updated At",
    "Disabled Reason",
    "Working",
]
VOLUME = "aiosvc-volume"
#: Bound of one command-line process (a cold start of the interpreter takes ~1 s).
CLI_TIMEOUT = 60.0


@dataclass
class Result:
    code: int
    out: str
    err: str


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """Run ``python -m aiosvc ARGV`` in-process; its exit status and captured output."""

    def run() -> int:
        try:
            return cli_main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            return int(exc.code or 0)

    capsys.readouterr()
    code = await anyio.to_thread.run_sync(run)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any AIOSVC_ setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOSVC_")}
    env.update(values)
    return env


async def aiosvc_process(*argv: str, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m aiosvc ARGV`` as a real process, bounded by ``CLI_TIMEOUT``."""
    with anyio.fail_after(CLI_TIMEOUT):
        done = await anyio.run_process(
            [sys.executable, "-m", "aiosvc", *argv],
            check=False,
            env=env if env is not None else clean_env(),
            cwd=REPO,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a ``services list`` table."""
    lines = text.splitlines()
    assert lines, "no output"
    assert len({len(line) for line in lines}) == 1, f"ragged table:\n{text}"
    assert all(line.startswith(("+", "|")) for line in lines), text
    cells = [[c.strip() for c in line[1:-1].split("|")] for line in lines if line[0] == "|"]
    return cells[0], cells[1:]


# --- fixtures ----------------------------------------------------------------------------------


@dataclass
class Seeded:
    url: str
    store: ServiceStore
    up: ServiceRecord  # host-a aiosvc-volume: reporting, enabled
    dead: ServiceRecord  # host-b aiosvc-volume: last report an hour ago
    disabled: ServiceRecord  # host-a aiosvc-backup: disabled with a reason
    forced: ServiceRecord  # host-c aiosvc-volume: forced down


@pytest.fixture
async def seeded(fresh_database_url: str) -> AsyncIterator[Seeded]:
    """Four records in states an operator meets, as services and admins left them."""
    store = get_store(Settings.load(database_url=fresh_database_url, service_down_time=60))
    await store.connect()
    try:
        up = await store.report((await store.register("host-a", VOLUME, "volume", 1)).id)
        dead = await store.register("host-b", VOLUME, "volume", 1)
        await store.report(dead.id)
        await _sql(
            fresh_database_url,
            "UPDATE services SET last_seen_up = now() - interval '1 hour' WHERE id = $1",
            dead.id,
        )
        dead = await store.get("host-b", VOLUME)
        backup = await store.register("host-a", "aiosvc-backup", "backup", 2)
        await store.report(backup.id)
        disabled = await store.update(
            "host-a", "aiosvc-backup", disabled=True, disabled_reason="disk replacement"
        )
        await store.register("host-c", VOLUME, "volume", 1)
        forced = await store.update("host-c", VOLUME, forced_down=True)
        yield Seeded(fresh_database_url, store, up, dead, disabled, forced)
    finally:
        await store.close()


async def _sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    con = await asyncpg.connect(url)
    try:
        return await con.fetch(query, *args)
    finally:
        await con.close()


# --- services list -----------------------------------------------------------------------------


async def test_list_prints_a_table_like_nova_service_list(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await cli(capsys, "services", "list", "--database-url", seeded.url)
    assert (result.code, result.err) == (0, "")
    header, rows = parse_table(result.out)
    assert header == COLUMNS
    by_id = {int(row[0]): row for row in rows}
    assert list(by_id) == sorted(by_id)  # ordered by id
    assert by_id[seeded.up.id][1:6] == [VOLUME, "host-a", "volume", "enabled", "up"]
    assert by_id[seeded.up.id][7] == "-"
    assert by_id[seeded.dead.id][1:6] == [VOLUME, "host-b", "volume", "enabled", "down"]
    assert by_id[seeded.disabled.id][1:8] == [
        "aiosvc-backup",
        "host-a",
        "backup",
        "disabled",
        "up",
        by_id[seeded.disabled.id][6],
        "disk replacement",
    ]
    assert by_id[seeded.forced.id][4:6] == ["enabled", "down (forced)"]
    # Updated At is the last heartbeat (what up/down is judged by), to the second, in UTC.
    shown = datetime.fromisoformat(by_id[seeded.dead.id][6])
    assert seeded.dead.last_seen_up is not None
    assert shown == seeded.dead.last_seen_up.replace(microsecond=0)
    assert shown.utcoffset() is not None
    assert shown.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


async def test_list_json_and_filters(seeded: Seeded, capsys: pytest.CaptureFixture[str]) -> None:
    async def listed(*filters: str) -> list[dict[str, Any]]:
        result = await cli(
            capsys, "services", "list", "--json", *filters, "--database-url", seeded.url
        )
        assert (result.code, result.err) == (0, "")
        rows: list[dict[str, Any]] = json.loads(result.out)
        return rows

    everything = await listed()
    assert [r["id"] for r in everything] == sorted(
        r.id for r in (seeded.up, seeded.dead, seeded.disabled, seeded.forced)
    )
    first = everything[0]
    assert first == seeded.up.to_dict() | {
        "report_count": 1,
        "state": "up",
        "status": "enabled",
        "updated_at": first["updated_at"],
        "last_seen_up": first["last_seen_up"],
    }
    assert set(first) >= {"id", "uuid", "host", "binary", "topic", "status", "state"}
    assert set(first) >= {"disabled_reason", "forced_down", "last_seen_up", "report_count"}
    states = {(r["host"], r["binary"]): (r["status"], r["state"]) for r in everything}
    assert states == {
        ("host-a", VOLUME): ("enabled", "up"),
        ("host-b", VOLUME): ("enabled", "down"),
        ("host-a", "aiosvc-backup"): ("disabled", "up"),
        ("host-c", VOLUME): ("enabled", "down"),
    }

    def pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(r["host"], r["binary"]) for r in rows]

    assert pairs(await listed("--topic", "backup")) == [("host-a", "aiosvc-backup")]
    assert pairs(await listed("--host", "host-a")) == [
        ("host-a", VOLUME),
        ("host-a", "aiosvc-backup"),
    ]
    assert pairs(await listed("--binary", VOLUME, "--host", "host-c")) == [("host-c", VOLUME)]
    assert await listed("--host", "nowhere") == []

    result = await cli(
        capsys, "services", "list", "--host", "nowhere", "--database-url", seeded.url
    )
    assert parse_table(result.out) == (COLUMNS, [])


async def test_list_judges_up_with_its_own_service_down_time(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like nova-api, the CLI judges with *its* service_down_time: give it the deployment's."""
    result = await cli(
        capsys,
        "services",
        "list",
        "--json",
        "--set",
        "service_down_time=7200",
        "--database-url",
        seeded.url,
    )
    states = {r["host"]: r["state"] for r in json.loads(result.out) if r["binary"] == VOLUME}
    assert states == {"host-a": "up", "host-b": "up", "host-c": "down"}


# --- admin actions -----------------------------------------------------------------------------


async def test_disable_with_reason_then_enable_clears_it(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--database-url", seeded.url]
    result = await cli(
        capsys, "services", "disable", "host-a", VOLUME, "--reason", "kernel upgrade", *url
    )
    assert (result.code, result.err) == (0, "")
    # It says what happened, why, and what it means for the running service.
    assert result.out.count("\n") == 1
    assert "aiosvc-volume on host-a" in result.out
    assert "disabled" in result.out
    assert "kernel upgrade" in result.out
    assert "shared queue" in result.out
    assert "volume" in result.out
    record = await seeded.store.get("host-a", VOLUME)
    assert (record.disabled, record.disabled_reason) == (True, "kernel upgrade")
    _, rows = parse_table((await cli(capsys, "services", "list", "--host", "host-a", *url)).out)
    assert [row[4:] for row in rows if row[1] == VOLUME] == [
        ["disabled", "up", rows[0][6], "kernel upgrade", "-"]
    ]

    result = await cli(capsys, "services", "enable", "host-a", VOLUME, *url)
    assert (result.code, result.err) == (0, "")
    assert "enabled" in result.out
    record = await seeded.store.get("host-a", VOLUME)
    assert (record.disabled, record.disabled_reason) == (False, None)

    # No reason given: none shown.
    result = await cli(capsys, "services", "disable", "host-a", VOLUME, *url)
    assert result.code == 0
    result = await cli(capsys, "services", "list", "--json", "--host", "host-a", *url)
    (row,) = [r for r in json.loads(result.out) if r["binary"] == VOLUME]
    assert (row["status"], row["disabled_reason"]) == ("disabled", None)


async def test_disabling_a_dead_service_says_it_is_down(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await cli(
        capsys, "services", "disable", "host-b", VOLUME, "--database-url", seeded.url
    )
    assert result.code == 0
    assert "down" in result.out
    assert not (await seeded.store.get("host-b", VOLUME)).is_up


async def test_enable_takes_no_reason(seeded: Seeded, capsys: pytest.CaptureFixture[str]) -> None:
    result = await cli(
        capsys,
        "services",
        "enable",
        "host-a",
        VOLUME,
        "--reason",
        "x",
        "--database-url",
        seeded.url,
    )
    assert result.code == 2
    assert "unrecognized arguments: --reason x" in result.err
    assert result.out == ""


async def test_force_down_and_unset(seeded: Seeded, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--database-url", seeded.url]
    result = await cli(capsys, "services", "force-down", "host-a", VOLUME, *url)
    assert (result.code, result.err) == (0, "")
    assert "down" in result.out
    assert "forced" in result.out
    record = await seeded.store.get("host-a", VOLUME)
    assert (record.forced_down, record.is_up) == (True, False)
    _, rows = parse_table((await cli(capsys, "services", "list", *url)).out)
    assert [row[5] for row in rows if row[0] == str(seeded.up.id)] == ["down (forced)"]

    result = await cli(capsys, "services", "force-down", "--unset", "host-a", VOLUME, *url)
    assert (result.code, result.err) == (0, "")
    assert "up" in result.out
    assert "forced" not in result.out
    assert (await seeded.store.get("host-a", VOLUME)).is_up


async def test_delete_removes_the_record(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--database-url", seeded.url]
    result = await cli(capsys, "services", "delete", "host-b", VOLUME, *url)
    assert (result.code, result.err) == (0, "")
    assert "deleted" in result.out
    assert "host-b" in result.out
    listed = json.loads((await cli(capsys, "services", "list", "--json", *url)).out)
    assert ("host-b", VOLUME) not in {(r["host"], r["binary"]) for r in listed}
    assert len(listed) == 3


async def test_deleting_a_service_that_is_up_warns(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await cli(capsys, "services", "delete", "host-a", VOLUME, "--database-url", seeded.url)
    assert result.code == 0
    assert "deleted" in result.out
    assert "restart" in result.out  # a running service does not re-create its record


@pytest.mark.parametrize(
    "argv",
    [
        ["delete", "nowhere", VOLUME],
        ["disable", "nowhere", VOLUME, "--reason", "x"],
        ["enable", "host-a", "aiosvc-nothing"],
        ["force-down", "nowhere", VOLUME],
        ["force-down", "--unset", "nowhere", VOLUME],
    ],
)
async def test_unknown_service_is_one_line_and_exit_1(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    result = await cli(capsys, "services", *argv, "--database-url", seeded.url)
    assert result.code == 1
    assert result.out == ""
    host, binary = [a for a in argv if not a.startswith("-") and a != "x"][1:3]
    assert result.err == (
        f"aiosvc: error: ServiceNotFound: no service record for host {host!r} "
        f"and binary {binary!r}\n"
    )


async def test_deleting_twice_fails_the_second_time(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["services", "delete", "host-b", VOLUME, "--database-url", seeded.url]
    assert (await cli(capsys, *argv)).code == 0
    result = await cli(capsys, *argv)
    assert result.code == 1
    assert result.err.startswith("aiosvc: error: ServiceNotFound: ")


@pytest.mark.parametrize(
    "argv", [["list"], ["list", "--json"], ["disable", "h", VOLUME], ["delete", "h", VOLUME]]
)
async def test_services_need_a_shared_database(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """The default memory:// store is private to the CLI's process: refuse, do not list nothing."""
    result = await cli(capsys, "services", *argv, "--database-url", "memory://")
    assert result.code == 2
    assert result.out == ""
    assert result.err.count("\n") == 1
    assert result.err.startswith("aiosvc: error: UsageError: services commands need the database")
    assert "AIOSVC_DATABASE_URL" in result.err


# --- db ----------------------------------------------------------------------------------------


async def test_db_upgrade_on_an_empty_database_then_version(
    fresh_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--database-url", fresh_database_url]
    latest = pg_store.latest_version()
    assert latest >= 1

    result = await cli(capsys, "db", "version", *url)
    assert (result.code, result.err) == (0, "")
    assert f"schema version 0 (latest {latest})" in result.out
    assert "db upgrade" in result.out  # says what to do about it

    result = await cli(capsys, "db", "upgrade", *url)
    assert (result.code, result.err) == (0, "")
    assert f"applied migrations {[m.version for m in pg_store.migrations()]}" in result.out
    rows = await _sql(fresh_database_url, "SELECT to_regclass('services') IS NOT NULL AS ok")
    assert rows[0]["ok"]

    result = await cli(capsys, "db", "version", *url)
    assert result.out == f"schema version {latest} (latest {latest})\n"
    result = await cli(capsys, "db", "upgrade", *url)
    assert result.code == 0
    assert "already up to date" in result.out


async def test_services_commands_never_change_the_schema(
    fresh_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await cli(capsys, "services", "list", "--database-url", fresh_database_url)
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert "schema version 0" in result.err
    assert "db upgrade" in result.err
    rows = await _sql(fresh_database_url, "SELECT to_regclass('services') IS NULL AS absent")
    assert rows[0]["absent"]


async def test_db_needs_a_shared_database(capsys: pytest.CaptureFixture[str]) -> None:
    result = await cli(capsys, "db", "version", "--database-url", "memory://")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert result.err.startswith("aiosvc: error: UsageError: db commands need the database")


# --- unreachable database, bad credentials -----------------------------------------------------

PASSWORD = "s3cret-Pa55"


def _with(url: str, *, password: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or "aiosvc"
    netloc = f"{user}:{password or parts.password}@{parts.hostname}:{port or parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def bad_urls(database_url: str) -> dict[str, str]:
    (closed,) = free_ports(1)
    return {
        "password": _with(database_url, password=PASSWORD),
        "unreachable": _with(database_url, password=PASSWORD, port=closed),
    }


COMMANDS = [
    ["services", "list"],
    ["services", "list", "--json"],
    ["services", "disable", "host-a", VOLUME, "--reason", "x"],
    ["services", "enable", "host-a", VOLUME],
    ["services", "force-down", "host-a", VOLUME],
    ["services", "delete", "host-a", VOLUME],
    ["db", "upgrade"],
    ["db", "version"],
]


def _assert_one_line_store_error(result: Result, url: str, cause: str) -> None:
    assert result.code == 1
    assert result.out == ""
    assert result.err.count("\n") == 1, result.err
    shown = url.replace(f":{PASSWORD}@", ":***@")
    assert result.err.startswith(f"aiosvc: error: StoreError: cannot connect to database {shown}: ")
    assert cause in result.err
    assert PASSWORD not in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]) + "".join(a[4:5]))
@pytest.mark.parametrize(
    ("which", "cause"),
    [("password", "password authentication failed"), ("unreachable", "Connect call failed")],
)
async def test_bad_database_is_one_redacted_line(
    bad_urls: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    which: str,
    cause: str,
) -> None:
    url = bad_urls[which]
    result = await cli(capsys, *argv, "--database-url", url)
    _assert_one_line_store_error(result, url, cause)


async def test_bad_database_from_the_environment_in_a_real_process(
    bad_urls: dict[str, str],
) -> None:
    """What an operator's terminal shows: no traceback, no password, exit status 1."""
    for which, argv, cause in (
        ("password", ["services", "list"], "password authentication failed"),
        ("unreachable", ["db", "upgrade"], "Connect call failed"),
    ):
        url = bad_urls[which]
        result = await aiosvc_process(*argv, env=clean_env(AIOSVC_DATABASE_URL=url))
        _assert_one_line_store_error(result, url, cause)


# --- acceptance: a real service process --------------------------------------------------------


class VolumeProcess:
    """A running ``python -m aiosvc run --manager examples.volume:VolumeManager``."""

    def __init__(self, process: Process, log_path: Path, env: dict[str, str]):
        self.process = process
        self.log_path = log_path
        self.env = env  # the service's settings, for CLI calls that must judge like it

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        """SIGKILL: no clean stop, the record is left to age."""
        self.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            await self.process.wait()


@contextlib.asynccontextmanager
async def volume_service(
    tmp_path: Path,
    host: str,
    *,
    database_url: str,
    transport_url: str = "memory://",
    report_interval: float = 1,
    service_down_time: float = 3,
    start_timeout: float = 30,
) -> AsyncIterator[VolumeProcess]:
    """Run the example volume service; yield once it logged that it started; kill it after."""
    env = clean_env(
        AIOSVC_DATABASE_URL=database_url,
        AIOSVC_TRANSPORT_URL=transport_url,
        AIOSVC_REPORT_INTERVAL=str(report_interval),
        AIOSVC_SERVICE_DOWN_TIME=str(service_down_time),
        AIOSVC_PERIODIC_FUZZY_DELAY="0",
        AIOSVC_HOST=host,
    )
    log_path = tmp_path / f"{host}.log"
    with log_path.open("wb") as out:
        process = await anyio.open_process(
            [sys.executable, "-m", "aiosvc", "run", "--manager", "examples.volume:VolumeManager"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    proc = VolumeProcess(process, log_path, env)
    try:
        await wait_until(
            lambda: process.returncode is not None or f"Started {VOLUME}" in proc.log(),
            timeout=start_timeout,
            interval=0.02,
        )
        if process.returncode is not None:
            pytest.fail(f"the service exited with {process.returncode}:\n{proc.log()}")
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            with anyio.fail_after(10):
                await process.wait()


async def _state(store: ServiceStore, host: str) -> ServiceRecord | None:
    records = await store.list(host=host, binary=VOLUME)
    return records[0] if records else None


@pytest.mark.slow
async def test_service_process_up_forced_down_and_down_after_sigkill(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """The issue's acceptance: ``services list --json`` follows a real service process."""
    host = f"accept-{uuid.uuid4().hex[:8]}"
    interval, down_time = 1.0, 3.0
    # How late, beyond what the timings above allow, a loaded CI machine (two cores shared
    # with RabbitMQ and PostgreSQL) may see something; only ever an upper bound.
    slack = 5.0
    # The operator's view, with the deployment's timings (the CLI judges with its own).
    settings = Settings.load(
        database_url=fresh_database_url, report_interval=interval, service_down_time=down_time
    )
    store = get_store(settings)

    async def listed(proc: VolumeProcess) -> dict[str, Any]:
        result = await aiosvc_process("services", "list", "--json", "--host", host, env=proc.env)
        assert (result.code, result.err) == (0, "")
        (row,) = json.loads(result.out)
        assert row["binary"] == VOLUME
        return row  # type: ignore[no-any-return]

    async def action(proc: VolumeProcess, *argv: str) -> str:
        result = await aiosvc_process("services", *argv, host, VOLUME, env=proc.env)
        assert (result.code, result.err) == (0, "")
        return result.out

    spawned = time.monotonic()
    async with volume_service(
        tmp_path,
        host,
        database_url=fresh_database_url,
        report_interval=interval,
        service_down_time=down_time,
    ) as proc:
        started = time.monotonic()
        await store.connect()
        try:
            # Registered before "Started" is logged, so it is up at once.
            first = await _state(store, host)
            assert first is not None
            assert first.is_up
            up_after = time.monotonic() - started
            row = await listed(proc)
            assert (row["state"], row["status"], row["topic"]) == ("up", "enabled", "volume")
            cli_up_after = time.monotonic() - started
            assert up_after <= interval + slack

            # Reports keep coming, one per interval.
            count = first.report_count
            await wait_until(
                lambda: _reports_above(store, host, count + 2), timeout=2 * interval + 2
            )

            out = await action(proc, "force-down")
            assert "forced" in out
            row = await listed(proc)
            assert (row["state"], row["forced_down"]) == ("down", True)
            count = (await _state(store, host)).report_count  # type: ignore[union-attr]
            await wait_until(lambda: _reports_above(store, host, count), timeout=interval + 2)
            assert (await listed(proc))["state"] == "down"  # reports do not lift it

            out = await action(proc, "force-down", "--unset")
            assert "up" in out
            row = await listed(proc)
            assert (row["state"], row["forced_down"]) == ("up", False)

            last = await _state(store, host)
            assert last is not None
            await proc.kill()
            killed = time.monotonic()
            seen_up = (await _state(store, host)).is_up  # type: ignore[union-attr]
            killed_in_db = await _db_now(fresh_database_url)
            await wait_until(
                lambda: _is_down(store, host), timeout=down_time + slack, interval=0.05
            )
            down_after = time.monotonic() - killed
            judged_by = await _db_now(fresh_database_url)  # at or after the query that said so
            gone = await _state(store, host)
            assert seen_up
            # It reported until it was killed; down once service_down_time passed since that
            # last report, not before: on the database's clock, which stamps the reports and
            # judges them (from the kill it is less, by however late the last report was).
            assert gone is not None
            assert gone.last_seen_up is not None
            assert gone.last_seen_up <= killed_in_db
            assert (killed_in_db - gone.last_seen_up).total_seconds() <= interval + slack
            assert (judged_by - gone.last_seen_up).total_seconds() > down_time
            assert down_after <= down_time + slack
            row = await listed(proc)
            # Down, but neither forced nor stopped: it crashed.
            assert (row["state"], row["forced_down"], row["stopped"]) == ("down", False, False)
        finally:
            await store.close()
    log = proc.log()
    assert " ERROR " not in log, log
    print(
        f"spawn to Started {started - spawned:.3f} s; Started to up {up_after:.3f} s "
        f"(via the CLI {cli_up_after:.3f} s); SIGKILL to down {down_after:.3f} s"
    )


async def test_sigterm_shows_the_service_down_as_stopped_at_once(
    fresh_database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cleanly stopped service is down (stopped) in the first listing after it exited,
    not ``service_down_time`` later as a crashed one (above)."""
    host = f"stop-{uuid.uuid4().hex[:8]}"
    # Far longer than the test: only the stop can make the listing show it down.
    down_time = 600.0
    judge = ["--set", f"service_down_time={down_time}", "--database-url", fresh_database_url]

    async def listed() -> dict[str, Any]:
        result = await cli(capsys, "services", "list", "--json", "--host", host, *judge)
        assert (result.code, result.err) == (0, "")
        (row,) = json.loads(result.out)
        return row  # type: ignore[no-any-return]

    async with volume_service(
        tmp_path,
        host,
        database_url=fresh_database_url,
        report_interval=1,
        service_down_time=down_time,
    ) as proc:
        row = await listed()
        assert (row["state"], row["stopped"], row["stopped_at"]) == ("up", False, None)

        proc.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await proc.process.wait()
        exited = time.monotonic()
        row = await listed()  # right away: no waiting, no retries
        listed_after = time.monotonic() - exited

        assert code == 0, proc.log()
        assert (row["state"], row["stopped"], row["forced_down"]) == ("down", True, False)
        assert row["stopped_at"] is not None
        # The record was marked before the process exited, so the first listing after the
        # exit shows it (the acceptance asks for within 1 s; this is stronger). The delay is
        # printed, not bounded tightly: a loaded machine may be slow to run the listing.
        assert listed_after <= 30.0
        # What an operator's terminal shows.
        result = await aiosvc_process("services", "list", "--host", host, env=proc.env)
        assert (result.code, result.err) == (0, "")
        _, rows = parse_table(result.out)
        assert [r[5] for r in rows] == ["down (stopped)"]
    log = proc.log()
    assert f"Marked {VOLUME} stopped in the service store" in log, log
    assert " ERROR " not in log, log
    print(f"exit to a listing showing it down (stopped): {listed_after:.3f} s")


async def _reports_above(store: ServiceStore, host: str, count: int) -> bool:
    record = await _state(store, host)
    return record is not None and record.report_count > count


async def _db_now(url: str) -> datetime:
    con = await asyncpg.connect(url)
    try:
        now: datetime = await con.fetchval("SELECT now()")
    finally:
        await con.close()
    return now


async def _is_down(store: ServiceStore, host: str) -> bool:
    record = await _state(store, host)
    return record is not None and not record.is_up
