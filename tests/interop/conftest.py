"""Fixtures of tests/interop: aiosvc on oslo.messaging's wire, facing the real oslo.messaging.

Every test here is marked ``interop`` and runs on a virtual host of its own
(``fresh_amqp_url``) with both sides' defaults as they are (control exchange ``openstack``,
non-durable queues and exchanges): that proves the defaults compatible.

- ``oslo``: an :class:`Oslo`, the oslo.messaging side, unmodified: transports from a
  ``rabbit://`` URL, ``get_rpc_client``, and ``get_rpc_server`` with the threading executor,
  all stopped and cleaned up after the test. oslo.messaging is imported only when a test
  asks for it, so the suite collects without it (nox sessions deselect ``-m "not interop"``);
  without it such a test is skipped, or fails under CI.
- ``serve_aiosvc`` and ``aiosvc_client``: aiosvc services (manager :class:`Compute`) and
  clients with ``rpc_wire="oslo"`` on the same vhost, closed after the test.
- :class:`Endpoint`: the oslo.messaging endpoint that mirrors :class:`Compute`.

oslo.messaging's client calls block, so the tests run them in worker threads
(``anyio.to_thread.run_sync``), and aiosvc's services in the test's event loop serve meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import anyio
import pytest

import aiosvc
from aiosvc import Context, Manager, RPCClient, Service
from aiosvc.testing import isolated_settings
from tests.conftest import _unavailable
from tests.interop import QuotaExceeded

_HERE = Path(__file__).parent

TOPIC = "compute"
#: The API version both sides implement.
API_VERSION = "1.3"
#: The module whose exceptions the callers here allow (``allowed_remote_exmods``).
ALLOWED_MODULE = QuotaExceeded.__module__
#: How long a held method waits at most for its test to release it: a bound, never reached.
HOLD_LIMIT = 60.0

_RABBIT = "oslo_messaging_rabbit"
#: An oslo server retries a reply to a reply queue that is gone for this many seconds
#: (default 60) and its ``wait()`` blocks meanwhile: a test whose aiosvc client closed
#: first would wait that long when stopping the server.
_RABBIT_OVERRIDES = {"kombu_missing_consumer_retry_timeout": 1}


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.interop)


class Unlisted(Exception):
    """An application error of a module no caller allows: it arrives as a RemoteError."""


def rabbit_url(url: str) -> str:
    """``url`` (amqp://) as oslo.messaging's operators write it: ``rabbit://``."""
    return urlunsplit(urlsplit(url)._replace(scheme="rabbit"))


def failure(kind: str) -> Exception:
    """The exception ``fail(kind)`` raises, on either side."""
    if kind == "value":
        return ValueError("size must be positive")
    if kind == "quota":
        return QuotaExceeded("quota exceeded for volumes", resource="volumes", limit=10)
    return Unlisted("the disk is on fire")


def _import_oslo() -> ModuleType:
    """oslo_messaging, with the global ``cfg.CONF`` set up (once per process)."""
    try:
        import oslo_messaging  # its import warnings are filtered in pyproject.toml
    except ImportError as exc:
        _unavailable(f"oslo.messaging is not installed ({exc}): pip install -e '.[interop-test]'")
    _configure_oslo()
    return oslo_messaging


@functools.cache
def _configure_oslo() -> None:
    """Parse the global ``cfg.CONF`` (reading no file) and register the rabbit options.

    oslo.messaging 18.3 registers some options (its tracing) on ``cfg.CONF`` only, so every
    transport here uses it. The rabbit driver registers its options when a transport is
    made, and reads them then: registered here, they can be overridden before.
    """
    from oslo_config import cfg
    from oslo_messaging import opts

    cfg.CONF([], project="aiosvc-interop", default_config_files=[], default_config_dirs=[])
    for group, options in opts.list_opts():
        if group == _RABBIT:
            cfg.CONF.register_opts(options, group=group)


class Endpoint:
    """The oslo.messaging endpoint aiosvc's clients call: :class:`Compute`, on oslo's side.

    Its methods run in the oslo server's threads; what they record is read from the test's
    event loop by polling (``wait_until``).
    """

    def __init__(self, messaging: ModuleType, name: str) -> None:
        self.target = messaging.Target(version=API_VERSION)
        self.name = name
        self.records: list[Any] = []
        self.contexts: list[dict[str, Any]] = []
        self.release = threading.Event()

    def echo(self, ctxt: dict[str, Any], value: Any) -> Any:
        return value

    def whoami(self, ctxt: dict[str, Any]) -> str:
        return self.name

    def record(self, ctxt: dict[str, Any], item: Any) -> None:
        self.contexts.append(ctxt)
        self.records.append(item)

    def fail(self, ctxt: dict[str, Any], kind: str) -> None:
        raise failure(kind)

    def hold(self, ctxt: dict[str, Any]) -> str:
        return "released" if self.release.wait(HOLD_LIMIT) else "never released"

    def work(self, ctxt: dict[str, Any], seconds: float) -> str:
        time.sleep(seconds)  # the method's work: it takes this long
        return "done"


class Compute(Manager):
    """The aiosvc manager oslo.messaging's clients call: :class:`Endpoint`, on aiosvc's side."""

    topic = TOPIC
    RPC_API_VERSION = API_VERSION

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.records: list[Any] = []
        self.contexts: list[Context] = []
        self.release = anyio.Event()

    async def echo(self, ctx: Context, value: Any) -> Any:
        return value

    async def whoami(self, ctx: Context) -> str:
        return self.host

    async def record(self, ctx: Context, item: Any) -> None:
        self.contexts.append(ctx)
        self.records.append(item)

    async def fail(self, ctx: Context, kind: str) -> None:
        raise failure(kind)

    async def hold(self, ctx: Context) -> str:
        with anyio.move_on_after(HOLD_LIMIT):
            await self.release.wait()
            return "released"
        return "never released"

    async def work(self, ctx: Context, seconds: float) -> str:
        await anyio.sleep(seconds)  # the method's work: it takes this long
        return "done"


@dataclass
class Oslo:
    """The oslo.messaging side of a test: transports, clients and servers on one vhost."""

    messaging: ModuleType
    url: str
    _transports: list[Any] = field(default_factory=list)
    _servers: list[tuple[Any, Endpoint]] = field(default_factory=list)
    _overridden: list[str] = field(default_factory=list)

    def configure(self, **rabbit_options: Any) -> None:
        """Override ``[oslo_messaging_rabbit]`` options, before the test makes a transport."""
        from oslo_config import cfg

        assert not self._transports, "configure() must come before the first transport"
        for name, value in rabbit_options.items():
            cfg.CONF.set_override(name, value, group=_RABBIT)
            self._overridden.append(name)

    def transport(self, allowed_remote_exmods: tuple[str, ...] = ()) -> Any:
        """A new RPC transport on ``cfg.CONF``, cleaned up after the test."""
        from oslo_config import cfg

        transport = self.messaging.get_rpc_transport(
            cfg.CONF, url=self.url, allowed_remote_exmods=list(allowed_remote_exmods)
        )
        self._transports.append(transport)
        return transport

    def client(
        self,
        topic: str = TOPIC,
        version: str = "1.0",
        *,
        timeout: float = 30,
        allowed_remote_exmods: tuple[str, ...] = (),
    ) -> Any:
        """An ``RPCClient`` on a transport of its own (calls block: run them in a thread)."""
        return self.messaging.get_rpc_client(
            self.transport(allowed_remote_exmods),
            self.messaging.Target(topic=topic, version=version),
            timeout=timeout,
        )

    async def serve(self, server: str, topic: str = TOPIC) -> Endpoint:
        """Start an RPC server named ``server`` (threading executor) with a new Endpoint.

        Its queues are declared when this returns; it may start consuming a moment later.
        """
        endpoint = Endpoint(self.messaging, server)
        # No executor= (deprecated in 18.3, a DeprecationWarning): the default, when
        # nothing is monkey-patched, is the threading executor.
        rpc_server = self.messaging.get_rpc_server(
            self.transport(), self.messaging.Target(topic=topic, server=server), [endpoint]
        )
        assert rpc_server.executor_type == "threading"
        await anyio.to_thread.run_sync(rpc_server.start)
        self._servers.append((rpc_server, endpoint))
        return endpoint

    async def stop(self, endpoint: Endpoint) -> None:
        """Stop the server of ``endpoint`` (its held method released); its queues stay."""
        for entry in [entry for entry in self._servers if entry[1] is endpoint]:
            self._servers.remove(entry)
            endpoint.release.set()
            await anyio.to_thread.run_sync(_stop_server, entry[0])

    async def close(self) -> None:
        """Stop the servers, clean up the transports and the overrides."""
        from oslo_config import cfg

        try:
            for _, endpoint in list(self._servers):
                await self.stop(endpoint)
            for transport in self._transports:
                await anyio.to_thread.run_sync(transport.cleanup)
        finally:
            for name in self._overridden:
                cfg.CONF.clear_override(name, group=_RABBIT)


def _stop_server(rpc_server: Any) -> None:
    rpc_server.stop()
    rpc_server.wait()  # until its methods in flight have returned


@pytest.fixture
async def oslo(fresh_amqp_url: str) -> AsyncIterator[Oslo]:
    """The oslo.messaging side, on the test's vhost through a ``rabbit://`` URL."""
    side = Oslo(_import_oslo(), rabbit_url(fresh_amqp_url))
    side.configure(**_RABBIT_OVERRIDES)
    try:
        yield side
    finally:
        await side.close()


def oslo_settings(url: str, **overrides: Any) -> aiosvc.Settings:
    """aiosvc's settings on oslo.messaging's wire at ``url`` (unless ``rpc_wire`` is given)."""
    return isolated_settings(**{"transport_url": url, "rpc_wire": "oslo", **overrides})


ServeAiosvc = Callable[..., Awaitable[Service]]


@pytest.fixture
async def serve_aiosvc(fresh_amqp_url: str) -> AsyncIterator[ServeAiosvc]:
    """Start a :class:`Compute` service on oslo's wire: ``await serve_aiosvc(host, **settings)``.

    ``url=`` picks the URL form (the test's amqp:// URL by default); the services stop
    after the test (a held method is released first).
    """
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            host: str = "aiosvc-a", url: str = fresh_amqp_url, **overrides: Any
        ) -> Service:
            settings = oslo_settings(url, **overrides)
            service = Service.create(Compute, topic=TOPIC, host=host, settings=settings)
            await stack.enter_async_context(service)
            stack.callback(compute(service).release.set)
            return service

        yield start


AiosvcClient = Callable[..., Awaitable[RPCClient]]


@pytest.fixture
async def aiosvc_client(fresh_amqp_url: str) -> AsyncIterator[AiosvcClient]:
    """An aiosvc ``RPCClient`` on oslo's wire: ``await aiosvc_client(version, **settings)``."""
    async with contextlib.AsyncExitStack() as stack:

        async def connect(version: str = "1.0", **overrides: Any) -> RPCClient:
            transport = await stack.enter_async_context(
                aiosvc.connect(oslo_settings(fresh_amqp_url, **overrides))
            )
            return RPCClient(transport, TOPIC, version=version)

        yield connect


def compute(service: Service) -> Compute:
    """The :class:`Compute` manager of ``service``."""
    assert isinstance(service.manager, Compute)
    return service.manager


async def consumers(url: str, queue: str) -> int:
    """How many consumers queue ``queue`` has (0 when it does not exist yet)."""
    connection = await aio_pika.connect(url)
    async with connection:  # closes the channel too, even one the broker closed
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        return declared.declaration_result.consumer_count or 0
