"""Throwaway RabbitMQ and PostgreSQL servers for the integration tests.

Each server runs from the locally installed binaries, in a temporary directory, on free ports
of 127.0.0.1 only, so it never meets a developer's own broker or database (5672, 5432, the
default epmd on 4369). ``start()`` returns only once the server really serves; every wait polls a
real readiness condition against a deadline, and a failure carries the tail of the server's log.

The pytest fixtures in ``conftest.py`` start these lazily. From a shell::

    python -m tests.servers rabbit      # or: rabbit-cluster (three nodes), postgres

starts one, prints its URL on stdout and runs until Ctrl-C or SIGTERM, then cleans up.
"""

from __future__ import annotations

import abc
import argparse
import atexit
import concurrent.futures
import contextlib
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

__all__ = [
    "PostgresCluster",
    "RabbitCluster",
    "RabbitNode",
    "ServerError",
    "find_postgres_bin",
    "find_rabbitmq",
]

#: Upper bound for a server to become ready. A cold RabbitMQ boot takes ~7 s on 2 cores.
START_TIMEOUT = 90.0
#: Upper bound for one administrative command (rabbitmqctl, psql, pg_ctl stop).
COMMAND_TIMEOUT = 60.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40


class ServerError(RuntimeError):
    """Raised when a test server cannot be started, commanded or stopped."""


# --- discovery ----------------------------------------------------------------------------------


def _find_epmd() -> Path | None:
    found = shutil.which("epmd")
    if found:
        return Path(found)
    for root in ("/usr/lib/erlang", "/usr/local/lib/erlang"):
        for candidate in sorted(Path(root).glob("erts-*/bin/epmd"), reverse=True):
            return candidate
    return None


def find_rabbitmq() -> Path | None:
    """Return the directory holding the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts.

    Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that switches to the ``rabbitmq`` user and
    resets ``HOME``; the scripts it wraps live in ``/usr/lib/rabbitmq/bin``. Returns None when
    RabbitMQ (or Erlang's ``epmd``) is not installed.
    """
    candidates = [Path("/usr/lib/rabbitmq/bin/rabbitmq-server")]
    on_path = shutil.which("rabbitmq-server")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        script = candidate.resolve()
        if (
            script.name == "rabbitmq-server"
            and os.access(script, os.X_OK)
            and (script.parent / "rabbitmqctl").is_file()
        ):
            return script.parent if _find_epmd() else None
    return None


def find_postgres_bin() -> Path | None:
    """Return the directory holding ``initdb``, ``pg_ctl``, ``postgres`` and ``psql``.

    Looks at ``pg_ctl`` on PATH (following symlinks), then Debian's ``/usr/lib/postgresql/<v>/bin``,
    newest first. Returns None when PostgreSQL is not installed.
    """
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(
        debian, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True
    )
    for directory in candidates:
        if all(os.access(directory / n, os.X_OK) for n in ("initdb", "pg_ctl", "postgres", "psql")):
            return directory
    return None


# --- helpers ------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _log_tail(logs: Sequence[Path]) -> str:
    parts = []
    for log in logs:
        with contextlib.suppress(OSError):
            lines = log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            if lines:
                parts.append(f"\n--- last lines of {log} ---\n" + "\n".join(lines))
    return "".join(parts)


def _wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    deadline: float,
    process: subprocess.Popen[bytes] | None,
    logs: Sequence[Path],
) -> None:
    """Poll ``ready()`` until it holds; fail early if ``process`` exits, or at ``deadline``."""
    while not ready():
        if process is not None and process.poll() is not None:
            msg = f"{what}: the server exited with code {process.returncode} before it was ready"
            raise ServerError(msg + _log_tail(logs))
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: not ready within the start timeout" + _log_tail(logs))
        time.sleep(_POLL_INTERVAL)


def _spawn(
    args: Sequence[str | Path], *, log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C in the terminal reaches pytest, which then tears the server
    # down, and the whole process group (shell wrapper, beam, helpers) can be killed at once.
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=COMMAND_TIMEOUT)


def _run(
    args: Sequence[str | Path],
    *,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT,
    logs: Sequence[Path] = (),
) -> str:
    """Run a command to completion and return its stdout; raise ServerError on failure."""
    try:
        result = subprocess.run(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what}: no answer after {timeout:.0f} s" + _log_tail(logs)) from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        msg = f"{what}: exit code {result.returncode}\n{output}"
        raise ServerError(msg + _log_tail(logs))
    return result.stdout


class _Server(abc.ABC):
    """Context-manager and clean-up-at-exit plumbing shared by both servers."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL clients connect to."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server; return once it serves."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the server and remove everything it wrote."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _register_cleanup(self) -> None:
        # A last resort for an interpreter that exits without running the fixtures' teardown.
        atexit.register(self.close)

    def _unregister_cleanup(self) -> None:
        atexit.unregister(self.close)


# --- RabbitMQ -----------------------------------------------------------------------------------


class RabbitNode(_Server):
    """A throwaway RabbitMQ node: own name, own ports, own epmd, state in a temporary directory.

    The node gets a private epmd on a free port (``ERL_EPMD_PORT``), so nodes of parallel test
    sessions never share, and never need, the system epmd on 4369. Plugins are off and listeners
    bind 127.0.0.1 only (``guest`` may log in from loopback, which is all the tests need).

    Nodes meant to form a cluster (see :class:`RabbitCluster`) are given the epmd port of the
    node that runs it and one Erlang cookie: such a node starts no epmd of its own.

    Args:
        sbin: where ``rabbitmq-server`` and ``rabbitmqctl`` are (default: :func:`find_rabbitmq`).
        start_timeout: upper bound for a boot.
        epmd_port: an epmd another node runs; None starts the node's own on a free port.
        cookie: the Erlang cookie; None makes a random one.
    """

    _numbers = itertools.count(1)

    def __init__(
        self,
        sbin: Path | None = None,
        *,
        start_timeout: float = START_TIMEOUT,
        epmd_port: int | None = None,
        cookie: str | None = None,
    ) -> None:
        found = sbin or find_rabbitmq()
        epmd = _find_epmd()
        if found is None or epmd is None:
            raise ServerError("RabbitMQ is not installed (no rabbitmq-server and epmd found)")
        self.sbin = found
        self.epmd = epmd
        self.start_timeout = start_timeout
        self.nodename = f"aiosvc-test-{os.getpid()}-{next(self._numbers)}@localhost"
        self.port, self.dist_port, own_epmd_port = free_ports(3)
        self.own_epmd = epmd_port is None
        self.epmd_port = own_epmd_port if epmd_port is None else epmd_port
        self.cookie = cookie or secrets.token_hex(20)
        self.directory: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<RabbitNode {self.nodename} amqp=127.0.0.1:{self.port}>"

    @property
    def url(self) -> str:
        """The AMQP URL of the node (user ``guest``, from 127.0.0.1)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def _logs(self) -> list[Path]:
        if self.directory is None:
            return []
        return [self.directory / "server.log", self.directory / "log" / "rabbit.log"]

    def _env(self) -> dict[str, str]:
        assert self.directory is not None
        d = self.directory
        # Inherited RABBITMQ_* / ERL_* settings (a developer's own node) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # where both the node and rabbitmqctl read .erlang.cookie
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_CRASH_DUMP=str(d / "erl_crash.dump"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            # rabbitmqctl's own Erlang node defaults to the fixed range 35672-35682; port 0
            # lets the kernel pick, so parallel CLI calls never compete for it.
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_LOGS=str(d / "log" / "rabbit.log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
        )
        return env

    def _write_config(self) -> None:
        assert self.directory is not None
        d = self.directory
        cookie = d / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie file others can read
        (d / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nlog.console = false\n"
        )
        (d / "log").mkdir()

    def _registered_with_epmd(self) -> bool:
        # epmd's NAMES request: 2-byte length, b"n"; the answer lists "name <node> at port <n>".
        short_name = self.nodename.split("@", 1)[0]
        try:
            with socket.create_connection(("127.0.0.1", self.epmd_port), timeout=1) as sock:
                sock.sendall(b"\x00\x01n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
        except OSError:
            return False
        return f"name {short_name} at port ".encode() in answer

    @property
    def running(self) -> bool:
        """Whether the node's server process runs (it may still be booting)."""
        return self._server is not None and self._server.poll() is None

    def start(self) -> None:
        """Boot the node; return once ``rabbitmqctl await_startup`` succeeds and AMQP is served.

        The first start creates the node's directory (and its epmd, unless shared); a start
        after :meth:`kill` boots the same node again, on its state and ports.

        Raises:
            ServerError: the node failed to boot or was not ready within ``start_timeout``.
        """
        if self._server is not None:
            raise ServerError(f"{self!r} is already started")
        first = self.directory is None
        deadline = time.monotonic() + self.start_timeout
        try:
            if self.directory is None:
                self.directory = Path(tempfile.mkdtemp(prefix="aiosvc-rabbit-"))
                self._register_cleanup()
                self._write_config()
                if self.own_epmd:
                    self._start_epmd(deadline)
            self._boot(deadline)
        except BaseException:
            self.stop() if first else self.kill()
            raise

    def _start_epmd(self, deadline: float) -> None:
        assert self.directory is not None
        log = self.directory / "epmd.log"
        self._epmd = _spawn(
            [self.epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            log=log,
            env=self._env(),
        )
        _wait_until(
            lambda: _port_open(self.epmd_port),
            what=f"epmd for {self.nodename}",
            deadline=deadline,
            process=self._epmd,
            logs=[log],
        )

    def _boot(self, deadline: float) -> None:
        assert self.directory is not None
        self._server = _spawn(
            [self.sbin / "rabbitmq-server"], log=self.directory / "server.log", env=self._env()
        )
        # Once the Erlang node is registered, await_startup (an Erlang VM of its own, ~1 s
        # to boot) runs while RabbitMQ boots, instead of after it.
        _wait_until(
            self._registered_with_epmd,
            what=f"RabbitMQ node {self.nodename}",
            deadline=deadline,
            process=self._server,
            logs=self._logs,
        )
        remaining = max(1, int(deadline - time.monotonic()))
        self._ctl("await_startup", "--timeout", str(remaining))
        self._wait_for_amqp(deadline)

    def _wait_for_amqp(self, deadline: float) -> None:
        _wait_until(
            lambda: _port_open(self.port),
            what=f"AMQP listener of {self.nodename}",
            deadline=deadline,
            process=self._server,
            logs=self._logs,
        )

    def rabbitmqctl(self, *args: str) -> str:
        """Run ``rabbitmqctl --quiet -n NODE *args`` and return its stdout.

        ``--quiet`` drops the informational lines, so ``rabbitmqctl("list_queues", "name",
        "messages", "--no-table-headers")`` returns just tab-separated rows.

        Raises:
            ServerError: the command failed or did not answer in time.
        """
        return self._ctl(*args, with_logs=False)

    def _ctl(self, *args: str, with_logs: bool = True) -> str:
        if self.directory is None:
            raise ServerError(f"{self!r} is not started")
        return _run(
            [self.sbin / "rabbitmqctl", "--quiet", "-n", self.nodename, *args],
            what=f"rabbitmqctl {' '.join(args)}",
            env=self._env(),
            cwd=self.directory,
            timeout=max(COMMAND_TIMEOUT, self.start_timeout),
            logs=self._logs if with_logs else (),
        )

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the Erlang node stays up): clients are disconnected."""
        self._ctl("stop_app")

    def start_app(self) -> None:
        """Start the RabbitMQ application again; return once it accepts AMQP connections."""
        self._ctl("start_app")
        self._wait_for_amqp(time.monotonic() + self.start_timeout)

    def kill(self) -> None:
        """``kill -9`` the node (its whole process group), as a crash would; keep its state.

        Its directory, ports and epmd stay, so :meth:`start` boots the same node again.
        Returns once the node is gone from epmd. Safe to call when it is not running.
        """
        if self._server is not None:
            _kill_group(self._server)
            self._server = None
            _wait_until(
                lambda: not self._registered_with_epmd(),
                what=f"epmd forgetting the killed node {self.nodename}",
                deadline=time.monotonic() + COMMAND_TIMEOUT,
                process=None,
                logs=[],
            )

    def stop(self) -> None:
        """Kill the node and its epmd and remove the temporary directory. Safe to call twice.

        The node is throwaway, so it is killed rather than shut down gracefully (that takes ~3 s).
        """
        for process in (self._server, self._epmd):
            if process is not None:
                _kill_group(process)
        self._server = self._epmd = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        self._unregister_cleanup()

    def close(self) -> None:
        """Same as :meth:`stop`."""
        self.stop()


class RabbitCluster(_Server):
    """``size`` throwaway RabbitMQ nodes on this machine, clustered (three by default).

    The nodes share one epmd (the first node's) and one Erlang cookie, so they find each other;
    each has its own name, ports and directory. All boot at once, then every other node joins
    the first (``stop_app``, ``join_cluster``, ``start_app``), and :meth:`start` returns once
    ``cluster_status`` shows them all running. ``kill()`` and ``start()`` of a single node
    (``cluster.nodes[i]``) crash it and boot it again into the cluster.
    """

    def __init__(
        self, size: int = 3, sbin: Path | None = None, *, start_timeout: float = START_TIMEOUT
    ) -> None:
        if size < 2:
            raise ValueError(f"a cluster needs at least 2 nodes, not {size}")
        first = RabbitNode(sbin, start_timeout=start_timeout)
        self.nodes = [first] + [
            RabbitNode(
                first.sbin,
                start_timeout=start_timeout,
                epmd_port=first.epmd_port,
                cookie=first.cookie,
            )
            for _ in range(size - 1)
        ]
        self.start_timeout = start_timeout

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"<RabbitCluster {len(self.nodes)} nodes amqp=127.0.0.1:{ports}>"

    @property
    def url(self) -> str:
        """One AMQP URL listing every node: ``amqp://guest:guest@127.0.0.1:P1,127.0.0.1:P2,.../``."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/"

    def node(self, name: str) -> RabbitNode:
        """The node called ``name`` (``aiosvc-test-...@localhost``)."""
        for node in self.nodes:
            if node.nodename == name:
                return node
        raise ServerError(f"{name!r} is not a node of {self!r}")

    def rabbitmqctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` on the first node that runs; see :meth:`RabbitNode.rabbitmqctl`."""
        for node in self.nodes:
            if node.running:
                return node.rabbitmqctl(*args)
        raise ServerError(f"no node of {self!r} is running")

    def running_nodes(self) -> set[str]:
        """The names of the nodes ``cluster_status`` reports running."""
        status = json.loads(self.rabbitmqctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def start(self) -> None:
        """Boot the nodes, join them into one cluster; return once all run in it.

        Raises:
            ServerError: a node failed to boot or join, or the cluster did not form in time.
        """
        first, others = self.nodes[0], self.nodes[1:]
        deadline = time.monotonic() + self.start_timeout
        try:
            with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
                booting = [pool.submit(first.start)]
                # The others register with the first node's epmd: wait until it listens.
                _wait_until(
                    lambda: booting[0].done() or _port_open(first.epmd_port),
                    what=f"epmd of {self!r}",
                    deadline=deadline,
                    process=None,
                    logs=[],
                )
                booting += [pool.submit(node.start) for node in others]
                for future in booting:
                    future.result()
            for node in others:  # one at a time: concurrent joins may race in mnesia
                node.stop_app()
                node.rabbitmqctl("join_cluster", first.nodename)
                node.start_app()
            wanted = {node.nodename for node in self.nodes}
            _wait_until(
                lambda: self.running_nodes() >= wanted,
                what=f"cluster status of {self!r}",
                deadline=deadline + COMMAND_TIMEOUT,
                process=None,
                logs=[path for node in self.nodes for path in node._logs],
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every node and remove their directories (the first, which runs epmd, last)."""
        for node in reversed(self.nodes):
            node.stop()


# --- PostgreSQL ---------------------------------------------------------------------------------

USER = PASSWORD = DATABASE = "aiosvc"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresCluster(_Server):
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1.

    TCP connections need a password (scram-sha-256); the superuser ``postgres`` is reached only
    through the unix socket in the cluster's directory, with trust. Durability is switched off
    (``fsync = off`` and friends): the data only has to survive a clean stop/start.

    PostgreSQL refuses to run as root, so when we are root the server programs run as the
    ``postgres`` user and the cluster's directory belongs to it.
    """

    def __init__(
        self, bin_dir: Path | None = None, *, start_timeout: float = START_TIMEOUT
    ) -> None:
        found = bin_dir or find_postgres_bin()
        if found is None:
            raise ServerError("PostgreSQL is not installed (no initdb/pg_ctl/postgres/psql found)")
        self.bin = found
        self.start_timeout = start_timeout
        (self.port,) = free_ports(1)
        self.directory: Path | None = None
        self.running = False

    def __repr__(self) -> str:
        return f"<PostgresCluster 127.0.0.1:{self.port} {self.directory}>"

    @property
    def url(self) -> str:
        """URL of the ``aiosvc`` database, as the ``aiosvc`` role (password ``aiosvc``)."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        """URL of another database of this cluster, as the ``aiosvc`` role."""
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    @property
    def _data(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def _logs(self) -> list[Path]:
        if self.directory is None:
            return []
        return [self.directory / "initdb.log", self.directory / "server.log"]

    def _as_owner(self, *args: str | Path) -> list[str | Path]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _initdb(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="aiosvc-pg-"))
        self.directory = directory
        self._register_cleanup()
        (directory / "socket").mkdir()
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError(
                    "PostgreSQL refuses to run as root and there is no user 'postgres'"
                ) from None
            for path in (directory, directory / "socket"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            output = _run(
                self._as_owner(
                    self.bin / "initdb",
                    "--pgdata",
                    self._data,
                    "--username=postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ),
                what="initdb",
                cwd=directory,
            )
        except ServerError as exc:
            raise ServerError(f"{exc}\n(is {directory} reachable by the server's user?)") from None
        (directory / "initdb.log").write_text(output)
        with (self._data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# aiosvc test cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{directory / 'socket'}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
            )

    def start(self) -> None:
        """Create the cluster on first use, start it; return once it accepts connections.

        The first start also creates the role ``aiosvc`` (password ``aiosvc``, may create
        databases) and its database ``aiosvc``. A later start reuses the data.

        Raises:
            ServerError: initdb or the server failed, or it was not ready within ``start_timeout``.
        """
        if self.running:
            raise ServerError(f"{self!r} is already running")
        first = self.directory is None
        try:
            if first:
                self._initdb()
            timeout = int(self.start_timeout)
            log = self._data.parent / "server.log"
            # pg_ctl -w polls postmaster.pid until the server reports "ready", bounded by -t.
            _run(
                self._as_owner(
                    self.bin / "pg_ctl",
                    "start",
                    "--pgdata",
                    self._data,
                    "--log",
                    log,
                    "--wait",
                    "--timeout",
                    str(timeout),
                ),
                what="pg_ctl start",
                cwd=self.directory,
                timeout=timeout + COMMAND_TIMEOUT,
                logs=self._logs,
            )
            self.running = True
            if first:
                self.psql(
                    f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'",
                    f"CREATE DATABASE {DATABASE} OWNER {USER}",
                    database="postgres",
                )
        except BaseException:
            self.destroy() if first else self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected); the data stays, so ``start()`` works again."""
        if not self.running or self.directory is None:
            return
        stop: list[str | Path] = [self.bin / "pg_ctl", "stop", "--pgdata", self._data, "--wait"]
        try:
            _run(
                self._as_owner(*stop, "--mode=fast", "--timeout", str(int(COMMAND_TIMEOUT))),
                what="pg_ctl stop",
                timeout=2 * COMMAND_TIMEOUT,
                logs=self._logs,
            )
        except ServerError:
            _run(self._as_owner(*stop, "--mode=immediate"), what="pg_ctl stop", logs=self._logs)
        self.running = False

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; return once all its processes are gone.

        The data directory stays: ``start()`` starts the cluster again on the same directory
        and port, and PostgreSQL recovers from its write-ahead log (losing the commits of the
        last moment: the cluster runs with ``synchronous_commit = off``). Safe to call when it
        is not running. Linux only (it watches ``/proc``).

        Raises:
            ServerError: processes of the killed server still ran after ``COMMAND_TIMEOUT``.
        """
        if not self.running or self.directory is None:
            return
        lock_files = [
            self._data / "postmaster.pid",
            self.directory / "socket" / f".s.PGSQL.{self.port}.lock",
        ]
        pid = int(lock_files[0].read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGKILL)
        self.running = False
        # pg_ctl starts the postmaster in a session of its own; its backends and helper
        # processes, in its process group, notice its death and exit by themselves.
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while self._group_alive(pid):
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self!r}: processes of the killed postmaster {pid} still run after "
                    f"{COMMAND_TIMEOUT:.0f} s" + _log_tail(self._logs)
                )
            time.sleep(_POLL_INTERVAL)
        # An init that does not reap orphans (a container's) leaves the postmaster a zombie,
        # which the next start would take for a running server: its lock files go.
        for lock_file in lock_files:
            lock_file.unlink(missing_ok=True)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Whether a process of the process group ``pgid`` runs (zombies do not count)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
                state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, IndexError, ValueError):
                continue  # the process exited while we looked
            if pgrp == str(pgid) and state != "Z":
                return True
        return False

    def destroy(self) -> None:
        """Stop the cluster and remove its directory. Safe to call twice."""
        try:
            self.stop()
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None
            self._unregister_cleanup()

    def close(self) -> None:
        """Same as :meth:`destroy`."""
        self.destroy()

    def psql(self, *sql: str, database: str = DATABASE) -> str:
        """Run SQL statements as the superuser over the unix socket; return the bare rows.

        Each statement runs on its own (so ``CREATE DATABASE`` works); the output is unaligned,
        without headers: ``psql("select 1")`` returns ``"1\\n"``.

        Raises:
            ServerError: a statement failed.
        """
        if not self.running or self.directory is None:
            raise ServerError(f"{self!r} is not running")
        commands = [arg for statement in sql for arg in ("--command", statement)]
        return _run(
            [
                self.bin / "psql",
                "--no-psqlrc",
                "--quiet",
                "--no-align",
                "--tuples-only",
                "--set=ON_ERROR_STOP=1",
                f"--host={self.directory / 'socket'}",
                f"--port={self.port}",
                "--username=postgres",
                f"--dbname={database}",
                *commands,
            ],
            what="psql",
            cwd=self.directory,
        )

    def create_database(self, name: str) -> str:
        """Create an empty database owned by ``aiosvc``; return its URL."""
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain lower-case identifier: {name!r}")
        self.psql(f"CREATE DATABASE {name} OWNER {USER}", database="postgres")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients. A missing database is not an error."""
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain lower-case identifier: {name!r}")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", database="postgres")


# --- command line -------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.servers rabbit|rabbit-cluster|postgres``: run until Ctrl-C or SIGTERM."""
    kinds: dict[str, Callable[[], _Server]] = {
        "rabbit": RabbitNode,
        "rabbit-cluster": RabbitCluster,
        "postgres": PostgresCluster,
    }
    parser = argparse.ArgumentParser(prog="python -m tests.servers", description=main.__doc__)
    parser.add_argument("kind", choices=list(kinds))
    kind = parser.parse_args(argv).kind
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server = kinds[kind]()
        with server:
            print(server.url, flush=True)
            print(f"{server!r} is ready; Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
            while True:
                signal.pause()
    except ServerError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
