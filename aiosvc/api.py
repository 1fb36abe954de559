"""``APIService``: a service that serves an ASGI application over HTTP (uvicorn).

It is a :class:`~aiosvc.service.Service` in every other way: it connects the transport
and the store, writes its row in the services table (binary ``aiosvc-api``, topic
``api``), reports state, runs under :func:`~aiosvc.launch`, and is marked stopped on a
graceful stop. What it serves is HTTP on ``api_listen``:``api_port`` instead of an RPC
topic. ``api_port`` 0 picks a free port; :attr:`APIService.port` is the real one once
started.

The application reaches the managers through the service's own connections, handed to
it in every scope (requests and lifespan): ``scope["state"]["aiosvc"]`` is the running
service's :class:`~aiosvc.connections.Connections` (``request.state.aiosvc`` in
Starlette), so ``.rpc_client("volume")`` gives an RPC client on the service's transport.
No global state, and no connection of the application's own. With metrics on
(``metrics_port`` set, :mod:`aiosvc.metrics`), ``/metrics`` is answered with the
process's metrics, before the application sees it. With tracing on (:mod:`aiosvc.tracing`),
each HTTP request is a span, the child of its ``traceparent`` header, and the parent of the
calls the application makes while answering it.

Readiness: the socket is bound first, before anything is connected (a port in use fails
at once, in one line), and ``start()`` returns once the record is written and the server
accepts requests. Stop: stop accepting, let the requests in flight finish within
``graceful_shutdown_timeout`` (the rest are cancelled), run the application's lifespan
shutdown, then close.

uvicorn is an optional extra: ``pip install 'aiosvc[api]'``; ``import aiosvc`` never
imports this module.

Nova: ``nova.service.WSGIService``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Self, cast

import anyio
from anyio.abc import TaskStatus

from . import tracing
from .clock import Clock
from .connections import Connections
from .exceptions import ConfigError, LoadError, ServiceError
from .loading import load_object
from .manager import Manager
from .metrics import asgi_app
from .service import Server, Service
from .settings import Settings
from .store import ServiceStore
from .transport import Transport

try:
    import uvicorn
except ImportError:  # pragma: no cover - the extra is installed wherever tests run
    raise LoadError(
        "aiosvc's API service needs uvicorn, an optional extra: pip install 'aiosvc[api]'"
    ) from None

__all__ = ["API_TOPIC", "APIManager", "APIService", "ASGIApp", "HTTPServer", "listen", "load_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application, ``async def app(scope, receive, send)``."""

API_TOPIC = "api"
"""The topic of an API service's row (its binary is ``aiosvc-api``)."""

BACKLOG = 2048
"""Connections the kernel queues for the listening socket (uvicorn's default)."""


def load_app(app: str | ASGIApp) -> ASGIApp:
    """The ASGI application ``app`` names (``"pkg.mod:app"``), or ``app`` itself.

    Raises:
        LoadError: the path does not resolve, or names something that is not callable.
    """
    loaded = load_object(app) if isinstance(app, str) else app
    if not callable(loaded):
        raise LoadError(
            f"cannot load {app!r} as an ASGI application: {type(loaded).__name__} "
            "is not callable (give an `async def app(scope, receive, send)`)"
        )
    return cast(ASGIApp, loaded)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (0: a free port), for HTTP.

    Raises:
        ServiceError: it cannot listen there, in one line
            (``cannot listen on 127.0.0.1:8080: address already in use``).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ServiceError(f"cannot listen on {_address(host, port)}: {reason}") from None


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{_address(host, port)}"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _WithConnections:
    """Hands ``connections`` to the application in every scope: ``scope["state"]["aiosvc"]``.

    uvicorn gives each request a copy of the lifespan's state, so the lifespan sees them
    too (and a Starlette app reads ``request.state.aiosvc``). With ``metrics`` (an ASGI
    app), ``/metrics`` is answered by it, not by the application.
    """

    def __init__(
        self, app: ASGIApp, connections: Connections, metrics: ASGIApp | None = None
    ) -> None:
        self.app = app
        self.connections = connections
        self.metrics = metrics
        self.traced = connections.settings.tracing and tracing.available()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.metrics is not None and scope["type"] == "http" and scope["path"] == "/metrics":
            await self.metrics(scope, receive, send)
            return
        scope.setdefault("state", {})["aiosvc"] = self.connections
        if self.traced and scope["type"] == "http":
            await _traced(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _traced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one HTTP request in its span (:func:`aiosvc.tracing.http_request`), with the
    response's status: calls the application makes are children of the request's trace."""
    method = scope.get("method", "GET")
    with tracing.http_request(True, method, scope.get("path", ""), scope["headers"]) as span:

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                error = f"HTTP {status}" if status >= 500 else None
                span.set("http.response.status_code", status, error=error)
            await send(message)

        await app(scope, receive, send_status)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, minus its signal handlers (the launcher owns the signals)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class HTTPServer:
    """Serves an ASGI application on a listening socket with uvicorn: an APIService's
    :class:`~aiosvc.service.Server`.

    It takes the socket over (and closes it when it stops).
    """

    def __init__(self, app: ASGIApp, sock: socket.socket, settings: Settings) -> None:
        self.sock = sock
        self.settings = settings
        self.url = url_of(sock)
        self._config = uvicorn.Config(
            app,
            lifespan="auto",
            log_config=None,  # aiosvc's logging (setup_logging, or the embedder's)
            timeout_graceful_shutdown=_timeout(settings.graceful_shutdown_timeout or math.inf),
        )
        self._server = _Uvicorn(self._config)
        self._done = anyio.Event()

    @property
    def in_flight(self) -> int:
        """Requests being handled now."""
        return len(self._server.server_state.tasks)

    @property
    def serving(self) -> bool:
        """Whether requests are served now (started, and not stopping)."""
        return self._server.started and not self._server.should_exit and not self._done.is_set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`; ``task_status.started()`` once requests are served."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._serve, name=f"HTTP server on {self.url}")
            await self._server.ready.wait()
            log.info("API listening on %s", self.url)
            task_status.started()

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self.sock])
        except SystemExit:
            # uvicorn's way to say the lifespan startup failed; never let it reach the loop.
            raise ServiceError(
                "the ASGI application failed its lifespan startup (see the error above)"
            ) from None
        finally:
            self.sock.close()
            self._done.set()
        if not self._server.started:
            raise ServiceError(f"the HTTP server on {self.url} ended before it started")

    async def stop_accepting(self) -> None:
        """Close the listening socket: new connections are refused (or, with worker
        processes, taken by the other workers); requests in flight go on."""
        for server in getattr(self._server, "servers", ()):
            server.close()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let requests in flight finish within ``timeout`` seconds
        (default ``graceful_shutdown_timeout``; 0 there means forever), cancel the rest,
        run the application's lifespan shutdown, and close."""
        if timeout is None:
            timeout = self.settings.graceful_shutdown_timeout or math.inf
        await self.stop_accepting()
        self._config.timeout_graceful_shutdown = _timeout(timeout)
        self._server.should_exit = True
        await self._done.wait()
        log.info("HTTP server on %s stopped: served %d request(s)", self.url, self.served)

    @property
    def served(self) -> int:
        """Requests served so far."""
        return self._server.server_state.total_requests


def _timeout(seconds: float) -> int | None:
    # uvicorn annotates an int but hands it to asyncio.wait_for, where any float works.
    return None if math.isinf(seconds) else cast(int, seconds)


class APIManager(Manager):
    """The manager of an API service given none: no RPC methods, hooks or periodic tasks."""

    topic = API_TOPIC


class APIService(Service):
    """A service that serves an ASGI application over HTTP instead of consuming RPC.

    Build one with :meth:`create`::

        service = APIService.create(app="pkg.mod:app", settings=settings)
        async with service:  # listening, record written, reporting
            print(service.url)

    Its row is ``aiosvc-api`` on topic ``api`` by default. A manager may be given for its
    hooks and periodic tasks (Nova's ``WSGIService`` manager); its RPC methods are not
    served. Stop and kill as any :class:`~aiosvc.Service`; see the module docstring.

    Args:
        app: the ASGI application.
        listen_socket: a listening socket to serve (a worker process is given its
            parent's); the service takes it over. By default it binds ``api_listen``:
            ``api_port`` when it starts.
    """

    serving_check = ("http", "not serving HTTP")

    def __init__(
        self,
        manager: Manager,
        *,
        topic: str,
        host: str,
        binary: str,
        settings: Settings | None = None,
        transport: Transport | None = None,
        store: ServiceStore | None = None,
        app: ASGIApp | None = None,
        listen_socket: socket.socket | None = None,
    ) -> None:
        super().__init__(
            manager,
            topic=topic,
            host=host,
            binary=binary,
            settings=settings,
            transport=transport,
            store=store,
        )
        self.app = app
        self.port: int | None = None
        """The port it listens on, once started (the real one when ``api_port`` is 0)."""
        self.url: str | None = None
        """``http://host:port``, once started."""
        self.http_server: HTTPServer | None = None
        self._socket = listen_socket
        self._serving_once = False

    @classmethod
    def create(
        cls,
        manager: str | type[Manager] | None = None,
        topic: str | None = None,
        host: str | None = None,
        binary: str | None = None,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        store: ServiceStore | None = None,
        clock: Clock | None = None,
        app: str | ASGIApp | None = None,
        listen_socket: socket.socket | None = None,
    ) -> Self:
        """Build an API service serving ``app``.

        Args:
            app: the ASGI application, or its import path (``"pkg.mod:app"``); required.
            manager: an optional manager for hooks and periodic tasks
                (default :class:`APIManager`: none).
            topic: defaults to ``api``; ``binary`` to ``aiosvc-<topic>``.
            listen_socket: see the class.
            host, settings, transport, store, clock: as for :meth:`Service.create`.

        Raises:
            LoadError: ``app`` does not load, or is not callable.
            ConfigError: no ``app``, or a bad setting.
        """
        if app is None:
            raise ConfigError("an APIService needs app=: an ASGI application or its import path")
        asgi = load_app(app)
        service = super().create(
            manager or APIManager,
            topic or API_TOPIC,
            host,
            binary,
            settings,
            transport=transport,
            store=store,
            clock=clock,
        )
        service.app = asgi
        service._socket = listen_socket
        return service

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """As :meth:`Service.serve`, binding the socket first: a port in use fails at once,
        before anything is connected (``ServiceError``: ``cannot listen on ...``)."""
        if self._serving_once or self.app is None:
            what = "was already started" if self._serving_once else "has no ASGI app"
            raise ServiceError(f"{self!r} {what}; create a new APIService")
        self._serving_once = True
        if self._socket is None:
            self._socket = listen(self.settings.api_listen, self.settings.api_port)
        try:
            self.port = self._socket.getsockname()[1]
            self.url = url_of(self._socket)
            await super().serve(task_status=task_status)
        finally:
            self._socket.close()

    def _make_server(self) -> Server:
        assert self.app is not None and self._socket is not None
        assert self.connections is not None
        metrics = cast(ASGIApp, asgi_app()) if self.metrics is not None else None
        app = _WithConnections(self.app, self.connections, metrics)
        self.http_server = HTTPServer(app, self._socket, self.settings)
        return self.http_server

    def _serving(self) -> str:
        return f"serving HTTP on {self.url}"

    def __repr__(self) -> str:
        return f"<APIService {self.binary} host={self.host!r} url={self.url or '-'}>"
