"""The API service: an ASGI application served over HTTP with a row like any service.

Embedded (one process, ``memory://``), then ``python -m aiosvc run --api`` as a real process.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

import aiosvc
from aiosvc.api import APIService, load_app
from aiosvc.connections import Connections
from aiosvc.exceptions import ConfigError, LoadError, ServiceError
from aiosvc.testing import isolated_settings, wait_until
from tests.procs import aiosvc_proc, clean_env, run_cli
from tests.webapp import Message, Receive, Scope, Send, get_json, request

STEP = 10.0  # a deadline for one step on a loaded machine; a healthy one takes milliseconds


class Volumes(aiosvc.Manager):
    topic = "volumes"

    async def create_volume(self, ctx: aiosvc.Context, volume_id: str) -> dict[str, str]:
        return {"id": volume_id, "host": self.host}


class App:
    """An ASGI app that calls the ``volumes`` manager, and can hold a request in flight."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.lifespan_state: dict[str, Any] = {}
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                self.lifespan_state = dict(scope["state"])
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.scopes.append(scope)
        connections: Connections = scope["state"]["aiosvc"]
        if scope["path"].startswith("/volumes/"):
            volumes = connections.rpc_client("volumes")
            body = await volumes.call(None, "create_volume", volume_id=scope["path"][9:])
        elif scope["path"] == "/hold":
            self.held.set()
            await self.release.wait()
            body = "released"
        else:
            body = "ok"
        await _respond(send, 200, body)


async def _respond(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    start: Message = {"type": "http.response.start", "status": status, "headers": []}
    await send(start)
    await send({"type": "http.response.body", "body": payload})


def settings(**overrides: Any) -> aiosvc.Settings:
    return isolated_settings(**{"api_listen": "127.0.0.1", "api_port": 0, **overrides})


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


# -- embedded


async def test_serves_on_a_free_port_and_reaches_a_manager_on_its_own_connections() -> None:
    config = settings()
    app = App()
    volumes = aiosvc.Service.create(Volumes, settings=config)
    api = APIService.create(app=app, settings=config)
    async with volumes, api:
        assert api.port is not None
        assert api.port > 0  # the real port, not 0
        assert api.url == f"http://127.0.0.1:{api.port}"
        assert (api.binary, api.topic) == ("aiosvc-api", "api")
        assert api.record is not None  # written
        assert api.record.binary == "aiosvc-api"
        status, body = await request(api.port, "/volumes/v1")
        assert (status, json.loads(body)) == (200, {"id": "v1", "host": "test-host"})
        # Every scope, the lifespan's too, holds the service's own connections: nothing else.
        assert app.scopes[0]["state"]["aiosvc"] is api.connections
        assert app.lifespan_state["aiosvc"] is api.connections
        assert api.connections is not None
        assert api.connections.transport is api.transport
        rows = {(r.binary, r.topic, r.state) for r in await api.connections.servicegroup.list()}
        assert rows == {("aiosvc-volumes", "volumes", "up"), ("aiosvc-api", "api", "up")}
    assert api.record.stopped  # a graceful stop marks its row, as for any service
    assert await refused(api.port)


async def test_stop_lets_a_request_in_flight_finish_and_accepts_no_more() -> None:
    app = App()
    api = APIService.create(app=app, settings=settings())
    await api.start()
    assert api.port is not None
    held = asyncio.ensure_future(request(api.port, "/hold"))
    await asyncio.wait_for(app.held.wait(), STEP)
    stopping = asyncio.ensure_future(api.stop())
    # Marked stopped once it stopped accepting: a new connection is refused from then on.
    await wait_until(lambda: api.record is not None and api.record.stopped, timeout=STEP)
    assert await refused(api.port)
    assert not held.done()
    assert not stopping.done()  # the request in flight holds the stop
    app.release.set()
    assert await asyncio.wait_for(held, STEP) == (200, b'"released"')
    await asyncio.wait_for(stopping, STEP)


async def test_stop_cuts_what_outlasts_the_graceful_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App()
    api = APIService.create(app=app, settings=settings(graceful_shutdown_timeout=0.5))
    await api.start()
    assert api.port is not None
    held = asyncio.ensure_future(request(api.port, "/hold"))
    await asyncio.wait_for(app.held.wait(), STEP)
    began = time.monotonic()
    await asyncio.wait_for(api.stop(), STEP)
    assert time.monotonic() - began >= 0.5
    assert "timeout graceful shutdown exceeded" in caplog.text
    status, _ = await asyncio.wait_for(held, STEP)
    assert status == 500  # cancelled: uvicorn answers for the app


async def test_a_port_in_use_fails_the_start_before_anything_is_connected() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        api = APIService.create(app=App(), settings=settings(api_port=port))
        with pytest.raises(ServiceError) as caught:
            await api.start()
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
    assert api.transport is None  # nothing was connected
    assert api.store is None
    assert api.record is None


async def test_a_failed_lifespan_startup_is_one_error_and_nothing_is_left() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no config"})

    api = APIService.create(app=failing, settings=settings())
    with pytest.raises(ServiceError, match="failed its lifespan startup"):
        await api.start()
    assert api.port is not None
    assert await refused(api.port)


def test_the_app_must_load_and_be_callable() -> None:
    with pytest.raises(LoadError, match=r"no\.such"):
        APIService.create(app="no.such:app")
    with pytest.raises(LoadError, match="is not callable"):
        load_app("aiosvc:__version__")
    with pytest.raises(ConfigError, match="needs app="):
        APIService.create()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("api_listen", "localhost", "'localhost' is not an IP address"),
        ("api_port", 70000, "less than or equal to 65535"),
        ("api_port", -1, "greater than or equal to 0"),
    ],
)
def test_api_settings_are_validated(name: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=name) as caught:
        isolated_settings(**{name: value})
    assert says in str(caught.value)


def test_ipv6_listen_addresses_are_accepted() -> None:
    assert isolated_settings(api_listen="::1").api_listen == "::1"
    assert isolated_settings(api_listen="[::]").api_listen == "::"


def test_without_uvicorn_the_api_service_says_which_extra_to_install() -> None:
    code = "import sys; sys.modules['uvicorn'] = None; import aiosvc.api"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "aiosvc.exceptions.LoadError: aiosvc's API service needs uvicorn, an optional extra: "
        "pip install 'aiosvc[api]'"
    )


def test_run_api_without_uvicorn_is_one_line_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from aiosvc.cli import main;"
        "sys.exit(main(['run', '--api', 'tests.webapp:app']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "aiosvc: error: LoadError: aiosvc's API service needs uvicorn, an optional extra: "
        "pip install 'aiosvc[api]'"
    ]


# -- python -m aiosvc run --api


@pytest.fixture
def env() -> dict[str, str]:
    return clean_env(
        AIOSVC_API_LISTEN="127.0.0.1",
        AIOSVC_API_PORT="0",
        AIOSVC_GRACEFUL_SHUTDOWN_TIMEOUT="5",
        AIOSVC_HOST="api-test-host",
    )


LISTENING = re.compile(r"API listening on http://127\.0\.0\.1:(\d+)")


def port_of(line: str) -> int:
    match = LISTENING.search(line)
    assert match, line
    return int(match[1])


def test_run_api_with_a_manager_serves_requests_that_call_it(env: dict[str, str]) -> None:
    args = ["run", "--api", "tests.webapp:app", "--manager", "tests.apps:Journaling"]
    with aiosvc_proc(args, env) as proc:
        port = port_of(proc.wait_for("API listening on"))
        proc.wait_for("Started aiosvc-api: serving HTTP on http://127.0.0.1:")
        base = f"http://127.0.0.1:{port}"
        answer = get_json(f"{base}/echo?topic=journal&value=hello")
        assert answer == {"pid": proc.process.pid, "echo": "hello"}
        assert get_json(f"{base}/lifespan")["connections"] is True
        proc.signal(signal.SIGTERM)
        assert proc.wait(STEP) == 0
    text = "\n".join(proc.lines)
    assert "Traceback" not in text
    # The API service, started last, stops first: the manager still answers its requests.
    assert text.index("Stopped api node aiosvc-api") < text.index("Stopping aiosvc-journal")


def test_run_api_alone_has_a_row_and_stops_cleanly(env: dict[str, str]) -> None:
    with aiosvc_proc(["run", "--api", "tests.webapp:app"], env) as proc:
        port = port_of(proc.wait_for("API listening on"))
        assert get_json(f"http://127.0.0.1:{port}/pid") == {"pid": proc.process.pid}
        proc.signal(signal.SIGTERM)
        assert proc.wait(STEP) == 0
    assert any("Marked aiosvc-api stopped" in line for line in proc.lines)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--api", "no.such:app"], "no.such"),
        (["--api", "aiosvc:__version__"], "is not callable"),
        ([], "run needs --manager PATH, --api PATH, or both"),
        (["--api", "tests.webapp:app", "--set", "api_listen=localhost"], "api_listen (--set"),
        (["--api", "tests.webapp:app", "--workers", "0"], "argument --workers: must be a whole"),
        (["--api", "tests.webapp:app", "--workers", "-2"], "got '-2'"),
        (
            ["--api", "tests.webapp:app", "--workers", "2"],
            "--workers 2: worker processes cannot share an in-process broker, and memory:// "
            "lives in one process only",
        ),
    ],
)
def test_bad_run_input_is_one_line_and_exit_status_2(
    env: dict[str, str], args: list[str], says: str
) -> None:
    result = run_cli(["run", *args], env)
    assert result.returncode == 2
    assert says in one_line(result)


def test_a_port_in_use_is_one_line_and_exit_status_1(env: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = ["run", "--api", "tests.webapp:app", "--manager", "tests.apps:Journaling"]
        result = run_cli(args, {**env, "AIOSVC_API_PORT": str(port)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("aiosvc: error:")]
    assert errors == [
        f"aiosvc: error: ServiceError: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert "Started aiosvc-api" not in result.stderr


def test_the_run_help_shows_api_and_workers_but_not_the_workers_own_options(
    env: dict[str, str],
) -> None:
    result = run_cli(["run", "--help"], env)
    assert result.returncode == 0
    assert "--api PATH" in result.stdout
    assert "--workers N" in result.stdout
    assert "--listen-fd" not in result.stdout
    assert "--parent-fd" not in result.stdout
