"""Fixtures of the fault suite: every test here breaks a real server or process on purpose.

The broker tests get brokers of their own (never the session's ``rabbitmq``, which the rest of
the suite shares): ``rabbit_node``, one node per module, and ``rabbit_cluster``, three clustered
nodes. Traffic runs from the test process with aiosvc's own client, and every cast carries an
id, so what the services journaled can be compared with what the broker confirmed:

- :class:`Casts`: casts ``record(item=id)`` without a pause between them from a few senders, until
  told to stop, and keeps the ids the broker confirmed apart from those whose cast raised;
- :class:`CallProbe`: calls ``echo`` over and over and says when calls succeed again;
- :func:`journaling_services`: ``python -m aiosvc run --manager tests.apps:Journaling``
  processes sharing one journal file;
- :class:`Figures`: the counts a scenario prints (and the lead copies to docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import aiosvc
from aiosvc.testing import isolated_settings
from tests.conftest import IN_CI
from tests.procs import Proc, aiosvc_proc, clean_env, journal
from tests.servers import RabbitCluster, RabbitNode, find_rabbitmq

_HERE = Path(__file__).parent

#: The errors a cast or call may end with while the broker is away or failing over.
BROKER_ERRORS = (aiosvc.TransportError, aiosvc.MessagingTimeout, aiosvc.MessageUndeliverable)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.faults)


def _need_rabbitmq() -> None:
    """Skip without RabbitMQ, or fail under CI, where every fault test must run."""
    if find_rabbitmq() is None:
        reason = "RabbitMQ is not installed (apt-get install rabbitmq-server)"
        if IN_CI:
            pytest.fail(f"{reason} (CI is set: a missing server is a failure)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def rabbit_node() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this module's own, to kill; see :func:`running_node`."""
    _need_rabbitmq()
    with RabbitNode() as node:
        yield node


@pytest.fixture
def running_node(rabbit_node: RabbitNode) -> RabbitNode:
    """The module's node, booted again first if an earlier test left it killed."""
    if not rabbit_node.running:
        rabbit_node.start()
    return rabbit_node


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """Three clustered RabbitMQ nodes of this module's own (``.url`` lists all three)."""
    _need_rabbitmq()
    with RabbitCluster() as cluster:
        yield cluster


@pytest.fixture
def topic() -> str:
    """A topic (and queue name) no other test uses."""
    return f"faults-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def control_exchange() -> str:
    """An exchange no other test uses."""
    return f"faults-{uuid.uuid4().hex[:8]}"


def client_settings(url: str, control_exchange: str, **overrides: object) -> aiosvc.Settings:
    """Settings of the test process's client: only ``url``, never the user's environment."""
    return isolated_settings(transport_url=url, control_exchange=control_exchange, **overrides)


@contextlib.contextmanager
def journaling_services(
    url: str, control_exchange: str, topic: str, journal_path: Path, hosts: list[str], **env: str
) -> Iterator[dict[str, Proc]]:
    """``Journaling`` services on ``topic``, one process per host, all journaling to one file.

    Yields once every one logged "Started"; ``env`` adds ``AIOSVC_*`` settings.
    """
    environ = clean_env(
        AIOSVC_TRANSPORT_URL=url,
        AIOSVC_CONTROL_EXCHANGE=control_exchange,
        AIOSVC_JOURNAL=str(journal_path),
        AIOSVC_GRACEFUL_SHUTDOWN_TIMEOUT="5",
        **env,
    )
    run = ["run", "--manager", "tests.apps:Journaling", "--topic", topic]
    with contextlib.ExitStack() as stack:
        procs = {
            host: stack.enter_context(aiosvc_proc([*run, "--host", host], environ))
            for host in hosts
        }
        for proc in procs.values():
            proc.wait_for("Started", timeout=60)
        yield procs


def rss_mb(proc: Proc) -> float:
    """The resident memory of a running service process, in MiB."""
    status = Path(f"/proc/{proc.process.pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib / 1024


def handled(journal_path: Path) -> collections.Counter[int]:
    """How many times the services handled each cast id (``record`` events in the journal)."""
    return collections.Counter(e["item"] for e in journal(journal_path) if e["event"] == "record")


@dataclass
class Casts:
    """Casts ``record(item=id)`` with ids 0, 1, 2... from ``senders`` concurrent senders.

    A cast is *confirmed* when ``cast()`` returned: the broker has it. One that raised one of
    :data:`BROKER_ERRORS` is *failed*: it may or may not be handled. Anything else raised fails
    the test. Sending stops at :meth:`stop` or after ``limit`` casts, whichever comes first.
    """

    client: aiosvc.RPCClient
    senders: int = 4
    limit: int = 20_000
    confirmed: set[int] = field(default_factory=set)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_ids: set[int] = field(default_factory=set)
    last_failure: str = ""
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def sent(self) -> int:
        """Casts attempted so far."""
        return len(self.confirmed) + len(self.failed_ids)

    def start(self) -> None:
        """Start the senders on the running loop."""
        self._tasks = [asyncio.create_task(self._send()) for _ in range(self.senders)]

    async def _send(self) -> None:
        while not self._stopping.is_set():
            item = next(self._ids)
            if item >= self.limit:
                return
            try:
                await self.client.cast(None, "record", item=item)
            except BROKER_ERRORS as exc:
                self.failed[type(exc).__name__] += 1
                self.failed_ids.add(item)
                self.last_failure = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.05)  # do not spin while the broker refuses at once
            else:
                self.confirmed.add(item)

    async def confirmed_after(self, count: int, *, timeout: float) -> None:
        """Wait until ``count`` more casts are confirmed than now (a real stream is flowing)."""
        wanted = len(self.confirmed) + count
        deadline = time.monotonic() + timeout
        while len(self.confirmed) < wanted:
            if all(task.done() for task in self._tasks):
                raise AssertionError(f"the senders stopped at {self.sent} casts")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count} more casts not confirmed within {timeout:.0f} s (failures: "
                    f"{dict(self.failed)}, the last: {self.last_failure})"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop sending; return once every cast in flight has ended."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)


@dataclass
class CallProbe:
    """Calls ``method`` (without arguments) over and over and records which calls succeeded.

    Give the client a short timeout: a call lost in the failure then ends soon.
    """

    client: aiosvc.RPCClient
    method: str = "whoami"
    successes: list[tuple[float, float]] = field(default_factory=list)
    """(started, answered) of each call that succeeded, in ``time.monotonic()`` seconds."""
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    last_failure: str = ""
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start calling on the running loop."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.client.call(None, self.method)
            except BROKER_ERRORS as exc:
                self.failures[type(exc).__name__] += 1
                self.last_failure = f"{type(exc).__name__}: {exc}"
            else:
                self.successes.append((started, time.monotonic()))
            await asyncio.sleep(0.05)

    async def recovered(self, since: float, *, timeout: float) -> float:
        """Seconds from ``since`` until a call started after it was answered.

        Waits up to ``timeout`` seconds for one, then fails.
        """
        deadline = time.monotonic() + timeout
        while True:
            answered = [end for start, end in self.successes if start >= since]
            if answered:
                return answered[0] - since
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {self.method} call succeeded within {timeout:.0f} s "
                    f"(failures: {dict(self.failures)}, the last: {self.last_failure})"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop calling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Figures:
    """The outcome of one scenario: counts by cast id, and recovery times."""

    scenario: str
    sent: int
    confirmed: set[int]
    failed: collections.Counter[str]
    failed_ids: set[int]
    handled: collections.Counter[int]
    recovery: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, scenario: str, casts: Casts, journal_path: Path) -> Figures:
        """The figures of ``casts`` against what the services journaled."""
        return cls(
            scenario,
            casts.sent,
            set(casts.confirmed),
            casts.failed.copy(),
            set(casts.failed_ids),
            handled(journal_path),
        )

    @property
    def lost(self) -> set[int]:
        """Confirmed casts never handled."""
        return self.confirmed - set(self.handled)

    @property
    def duplicated(self) -> int:
        """Casts handled more than once."""
        return sum(1 for n in self.handled.values() if n > 1)

    @property
    def failed_handled(self) -> int:
        """Casts that raised, yet were handled."""
        return len(self.failed_ids & set(self.handled))

    def line(self) -> str:
        """One line: ``FIGURES <scenario>: sent=... confirmed=... ...``."""
        parts = [
            f"sent={self.sent}",
            f"confirmed={len(self.confirmed)}",
            f"failed={len(self.failed_ids)} {dict(self.failed) or ''}".rstrip(),
            f"failed_but_handled={self.failed_handled}",
            f"handled={len(self.handled)}",
            f"lost={len(self.lost)}",
            f"duplicated={self.duplicated}",
            *(f"{name}={seconds:.2f}s" for name, seconds in self.recovery.items()),
            *(f"{name}={value}" for name, value in self.extra.items()),
        ]
        return f"FIGURES {self.scenario}: " + " ".join(parts)


async def wait_handled(journal_path: Path, ids: set[int], *, timeout: float) -> None:
    """Wait until every id of ``ids`` is in the journal; on timeout, return (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ids <= set(handled(journal_path)):
            return
        await asyncio.sleep(0.2)
