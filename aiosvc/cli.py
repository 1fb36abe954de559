"""``python -m aiosvc``: run services, call them, and look after their records.

Exit status: 0 on success (for ``run``, a clean stop); 1 when a service failed to start,
stopped by an error or was forced to stop (SIGINT while stopping), or a call failed; 2 for bad
usage, a bad setting or a bad import path. Errors are one line on stderr, naming what was
wrong and where it came from (``--log-level DEBUG`` adds the traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import anyio

from . import __version__, loops
from .exceptions import AiosvcError, ConfigError, MalformedMessage, ServiceError
from .launcher import launch
from .loading import load_object
from .log import one_line, setup_logging
from .manager import Manager
from .rpc.client import RPCClient
from .rpc.protocol import decode_request, parse_version
from .service import CLOSE_TIMEOUT, Service
from .settings import Settings, redact_url
from .store import ServiceRecord, ServiceStore, get_store, store_class
from .tasks import unwrap_group
from .transport import Transport, connect, get_transport, transport_class
from .transport.topology import check_name, dead_letter_exchange
from .workers import ParentLink, ProcessLauncher, stop_timeout

if TYPE_CHECKING:  # aiosvc.api needs uvicorn: imported only when --api is given
    from .api import ASGIApp
    from .transport.amqp.deadletters import DeadLetter

__all__ = ["main"]

log = logging.getLogger("aiosvc")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Raised for a command line that cannot work; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (exit status 2) like any error."""

    def error(self, message: str) -> NoReturn:
        # The message quotes arguments as given: a control character in one ("\r") would
        # break the line, so it is shown escaped.
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {shown} (see {self.prog} --help)\n")


def _setting(text: str) -> tuple[str, Any]:
    """A ``--set NAME=VALUE``: the value is JSON where it parses, else the string itself.

    Parsed once, by argparse; pydantic then validates (and converts) it like any setting.
    """
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"must look like NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return seconds


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return number


def _queue_name(kind: str) -> Callable[[str], str]:
    """The type of ``--topic`` / ``--host``: a name queues can be bound by."""

    def parse(text: str) -> str:
        try:
            return check_name(kind, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _api_version(text: str) -> str:
    """A ``--version`` of ``call``/``cast``: checked here, before anything connects."""
    try:
        parse_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return count


def _call_args(items: Sequence[str]) -> dict[str, Any]:
    """The arguments of ``call`` / ``cast``, HTTPie's way.

    ``name=value`` is always the string ``value``; ``name:=json`` is a raw JSON value
    (``size_gb:=3``, ``tags:='["a","b"]'``, ``force:=true``, ``spec:='{"k":1}'``). The
    service validates them against the method's type hints, in lax mode: ``size_gb=3``
    reaches an ``int`` parameter as 3 too.

    Raises:
        UsageError: an argument of neither form, one given twice, or a ``:=`` value
            that is not JSON; the message names the argument.
    """
    kwargs: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        raw = name.endswith(":")
        name = name.removesuffix(":")
        if not sep or not name.isidentifier():
            raise UsageError(
                f"argument {item!r} must look like NAME=VALUE (a string) or NAME:=JSON"
            )
        if name in kwargs:
            raise UsageError(f"argument {name} is given twice")
        if not raw:
            kwargs[name] = value
            continue
        try:
            kwargs[name] = json.loads(value)
        except ValueError as exc:
            detail = getattr(exc, "msg", str(exc))
            raise UsageError(
                f"argument {name}: {value!r} is not valid JSON ({detail}); "
                f"{name}:=VALUE takes JSON, {name}=VALUE a string"
            ) from None
    return kwargs


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m aiosvc",
        description="Nova-style services for asyncio: run managers, call them, list them.",
    )
    parser.add_argument("--version", action="version", version=f"aiosvc {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="a .toml or KEY=VALUE settings file")
    common.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR")
    common.add_argument(
        "--transport-url", metavar="URL", help="message broker (memory://, amqp://, rabbit://)"
    )
    common.add_argument(
        "--database-url", metavar="URL", help="service store (memory://, postgresql://)"
    )
    common.add_argument(
        "--set",
        metavar="NAME=VALUE",
        type=_setting,
        action="append",
        default=[],
        dest="overrides",
        help="any setting, including a manager's own (repeatable); VALUE is JSON where it "
        "parses, else a string, and is validated like the environment's",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", parents=[common], help="run managers as services, and an API service"
    )
    run.add_argument(
        "--manager",
        action="append",
        default=[],
        metavar="PATH",
        help="a Manager subclass, pkg.mod:Class (repeat to run several services)",
    )
    run.add_argument(
        "--api",
        metavar="PATH",
        help="an ASGI application, pkg.mod:app, served over HTTP on api_listen:api_port by "
        "an API service (needs pip install 'aiosvc[api]')",
    )
    run.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="run N worker processes, restarted when they die; with --api they share one port",
    )
    run.add_argument(
        "--topic", type=_queue_name("topic"), help="the RPC topic (default: the manager's topic)"
    )
    run.add_argument(
        "--host", type=_queue_name("host"), help="this host's name (default: the machine's name)"
    )
    run.add_argument(
        "--binary", help="the manager's service's binary name (default: aiosvc-<topic>)"
    )
    # Given by a --workers parent to each worker: the socket to serve, the link to it.
    run.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    run.set_defaults(func=_cmd_run)

    for name, helptext in (
        ("call", "call a method and print its result"),
        ("cast", "cast a method"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=helptext)
        cmd.add_argument("topic")
        cmd.add_argument("method")
        cmd.add_argument(
            "args",
            nargs="*",
            metavar="ARG",
            help="the method's arguments: NAME=VALUE passes the string VALUE, NAME:=JSON a JSON "
            "value (size_gb:=3, tags:='[\"a\"]', force:=true); the service converts a string "
            "to the parameter's type where it can (size_gb=3 reaches an int as 3)",
        )
        cmd.add_argument("--server", metavar="HOST", help="send to the service on this host only")
        cmd.add_argument(
            "--version",
            dest="api_version",
            type=_api_version,
            default="1.0",
            metavar="V",
            help="API version",
        )
        cmd.add_argument("--namespace", default=None)
        if name == "call":
            cmd.add_argument(
                "--timeout", type=_positive_seconds, metavar="S", help="seconds to wait (> 0)"
            )
            cmd.add_argument("--json", action="store_true", help="compact JSON output")
        else:
            cmd.add_argument(
                "--fanout", action="store_true", help="cast to every service of the topic"
            )
            many = cmd.add_mutually_exclusive_group()
            many.add_argument(
                "--repeat",
                type=_positive_int,
                metavar="N",
                help="send the cast N times, confirms pipelined (RPCClient.batch)",
            )
            many.add_argument(
                "--jsonl",
                metavar="FILE",
                help="one cast per line of FILE ('-': stdin), each a JSON object of arguments "
                "added to the ARGs; confirms pipelined (RPCClient.batch)",
            )
        cmd.set_defaults(func=_cmd_call if name == "call" else _cmd_cast)

    services = sub.add_parser("services", help="list services and change their admin state")
    ssub = services.add_subparsers(dest="action", metavar="ACTION", required=True)
    slist = ssub.add_parser("list", parents=[common], help="like nova service-list")
    slist.add_argument("--topic")
    slist.add_argument("--host")
    slist.add_argument("--binary")
    slist.add_argument("--json", action="store_true")
    slist.set_defaults(func=_cmd_services_list)
    for action, helptext in (
        ("disable", "stop a service taking work from its shared queue"),
        ("enable", "let a disabled service take work again"),
        ("force-down", "mark a service down at once (fencing)"),
        ("delete", "delete a service's record"),
    ):
        cmd = ssub.add_parser(action, parents=[common], help=helptext)
        cmd.add_argument("host")
        cmd.add_argument("binary")
        if action == "disable":
            cmd.add_argument("--reason")
        if action == "force-down":
            cmd.add_argument("--unset", action="store_true", help="clear forced_down")
        cmd.set_defaults(func=_cmd_services_action, action=action)

    db = sub.add_parser("db", help="the service store's schema")
    dsub = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, helptext in (
        ("upgrade", "apply pending migrations"),
        ("version", "print the schema version"),
    ):
        cmd = dsub.add_parser(action, parents=[common], help=helptext)
        cmd.set_defaults(func=_cmd_db, action=action)

    dead = sub.add_parser("dead-letters", help="look at dead letters, replay or purge them")
    dlsub = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    dlist = dlsub.add_parser("list", parents=[common], help="show dead letters (none is removed)")
    dlist.add_argument("--limit", type=_workers, default=100, metavar="N", help="show N at most")
    dlist.add_argument("--json", action="store_true")
    dlist.set_defaults(func=_cmd_dead_letters)
    replay = dlsub.add_parser(
        "replay", parents=[common], help="republish dead letters to the queues they died in"
    )
    replay.add_argument("--limit", type=_workers, metavar="N", help="replay N at most")
    replay.add_argument("--message-id", metavar="ID", help="replay this message only")
    replay.set_defaults(func=_cmd_dead_letters)
    purge = dlsub.add_parser("purge", parents=[common], help="delete every dead letter")
    purge.set_defaults(func=_cmd_dead_letters)

    queues = sub.add_parser("queues", help="the topics' queues on the broker")
    qsub = queues.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = qsub.add_parser(
        "migrate",
        parents=[common],
        help="re-create queues with the arguments of the current settings, keeping their "
        "messages (stop the services of those topics first)",
    )
    migrate.add_argument(
        "--topic",
        action="append",
        default=[],
        help="a topic whose queues to migrate (repeatable; default: every topic in the "
        "services table)",
    )
    migrate.add_argument(
        "--host",
        dest="hosts",
        action="append",
        default=[],
        metavar="HOST",
        help="also migrate topic.HOST (repeatable; the services table's hosts are added)",
    )
    migrate.set_defaults(func=_cmd_queues_migrate)
    return parser


def _load_settings(args: argparse.Namespace, settings_cls: type[Settings] = Settings) -> Settings:
    overrides: dict[str, Any] = dict(args.overrides)  # (name, value) pairs, parsed by argparse
    origins = dict.fromkeys(overrides, "--set")  # so an error names the flag, not a variable
    for flag in ("log_level", "transport_url", "database_url"):
        if getattr(args, flag, None) is not None:
            overrides[flag] = getattr(args, flag)
            origins[flag] = "--" + flag.replace("_", "-")
    if getattr(args, "host", None) and args.command == "run":
        overrides["host"] = args.host
        origins["host"] = "--host"
    unknown = set(overrides) - set(settings_cls.model_fields)
    if unknown and settings_cls is not Settings:
        raise ConfigError(
            f"unknown setting(s) for {settings_cls.__name__}: "
            + ", ".join(f"--set {name}" for name in sorted(unknown))
        )
    if unknown and args.command != "run":  # run checked them against its managers' settings
        raise ConfigError(
            "unknown setting(s): " + ", ".join(f"--set {name}" for name in sorted(unknown))
        )
    if unknown:
        overrides = {k: v for k, v in overrides.items() if k not in unknown}
    return settings_cls.load(args.config, _origins=origins, **overrides)


# -- run


def _cmd_run(args: argparse.Namespace) -> int:
    if not args.manager and args.api is None:
        raise UsageError("run needs --manager PATH, --api PATH, or both")
    if args.topic and len(args.manager) != 1:
        raise UsageError("--topic can only be given with a single --manager")
    classes: list[type[Manager]] = [load_object(path, Manager) for path in args.manager]
    app = _load_app(args.api) if args.api is not None else None
    known = set(Settings.model_fields).union(*(c.settings_class.model_fields for c in classes))
    unknown = {name for name, _ in args.overrides} - known
    if unknown:
        raise ConfigError(
            "unknown setting(s): " + ", ".join(f"--set {name}" for name in sorted(unknown))
        )
    base = _load_settings(args)
    setup_logging(base.log_level)
    if args.workers is not None:
        if transport_class(base.transport_url).in_process:
            raise UsageError(
                f"--workers {args.workers}: worker processes cannot share an in-process "
                f"broker, and {redact_url(base.transport_url)} lives in one process only: "
                "set AIOSVC_TRANSPORT_URL (or --transport-url) to amqp://..."
            )
        if args.workers > 1 and base.metrics_port:
            raise UsageError(
                f"--workers {args.workers}: each worker process serves its own metrics, and "
                f"cannot share metrics_port {base.metrics_port}: set metrics_port=0 (each "
                "worker logs its port) or run one process per port"
            )
        # Built here only to fail early, in one line; each worker builds its own.
        services = _services(args, base, classes, app)
        return _run_workers(args, base, len(services))
    # The services of one process share its connections: two to the broker (one
    # consuming, one publishing) and one database pool, whatever they and the app call.
    transport, store = get_transport(base), get_store(base)
    services = _services(args, base, classes, app, transport=transport, store=store)
    link = ParentLink(args.parent_fd) if args.parent_fd is not None else None
    try:
        return loops.run(_serve(services, transport, store, link), base)
    except (AiosvcError, OSError):
        raise
    except Exception as exc:
        # A manager's hook (init_host, pre_start_hook, ...) raised: one line, like any
        # other failure; --log-level DEBUG shows the traceback.
        which = services[0].binary if len(services) == 1 else "a service"
        raise ServiceError(f"{which} failed to start: {type(exc).__name__}: {exc}") from exc


def _load_app(path: str) -> ASGIApp:
    from .api import load_app  # LoadError naming the extra when uvicorn is missing

    return load_app(path)


def _services(
    args: argparse.Namespace,
    settings: Settings,
    classes: Sequence[type[Manager]],
    app: ASGIApp | None,
    *,
    transport: Transport | None = None,
    store: ServiceStore | None = None,
) -> list[Service]:
    """The managers' services, then the API service (started last, stopped first), on
    ``transport`` and ``store`` (or, to check them only, on none)."""
    services = [
        Service.create(
            cls,
            topic=args.topic,
            host=args.host,
            binary=args.binary,
            settings=_load_settings(args, cls.settings_class),
            transport=transport,
            store=store,
        )
        for cls in classes
    ]
    if app is not None:
        from .api import APIService

        given = args.listen_fd is not None and transport is not None
        services.append(
            APIService.create(
                app=app,
                host=args.host,
                settings=settings,
                transport=transport,
                store=store,
                listen_socket=socket.socket(fileno=args.listen_fd) if given else None,
            )
        )
    return services


async def _serve(
    services: Sequence[Service], transport: Transport, store: ServiceStore, link: ParentLink | None
) -> int:
    """Connect the process's transport and store, launch the services, close them."""
    with link.watch() if link is not None else contextlib.nullcontext():
        try:
            try:
                async with anyio.create_task_group() as tg:  # both at once: a quicker start
                    tg.start_soon(transport.connect)
                    tg.start_soon(store.connect)
            except BaseException as exc:
                raise unwrap_group(exc) from None
            log.info("Event loop: %s", loops.loop_name(asyncio.get_running_loop()))
            return await launch(
                *services,
                restore_signals=False,  # this process exits next: later signals change nothing
                on_started=link.ready if link is not None else None,
            )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                for name, resource in (("service store", store), ("transport", transport)):
                    try:
                        await resource.close()
                    except Exception as exc:
                        log.error("Could not close the %s: %s", name, exc)


def _run_workers(args: argparse.Namespace, settings: Settings, services: int) -> int:
    """Be the parent of ``--workers`` processes, each running the same ``run``."""
    listen_socket = None
    if args.api is not None:
        from .api import listen, url_of

        listen_socket = listen(settings.api_listen, settings.api_port)
        log.info("API listening on %s, shared by %d worker(s)", url_of(listen_socket), args.workers)
    launcher = ProcessLauncher(
        _without_workers(args.argv),
        args.workers,
        listen_socket=listen_socket,
        stop_timeout=stop_timeout(settings.graceful_shutdown_timeout, services),
    )
    try:
        return asyncio.run(launcher.run(restore_signals=False))
    finally:
        if listen_socket is not None:
            listen_socket.close()


def _without_workers(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--workers N``: what each worker process runs."""
    kept: list[str] = []
    value_next = False
    for token in argv:
        if value_next:
            value_next = False
            continue
        name, equals, _ = token.partition("=")
        if len(name) > 2 and "--workers".startswith(name):  # argparse takes any prefix
            value_next = not equals
            continue
        kept.append(token)
    return kept


# -- call / cast


async def _with_client(args: argparse.Namespace, send: Callable[[Any], Awaitable[Any]]) -> Any:
    settings = _load_settings(args)
    if transport_class(settings.transport_url).in_process:
        raise UsageError(
            f"call and cast need a message broker shared with the services, and "
            f"{redact_url(settings.transport_url)} lives in this process only: "
            "set AIOSVC_TRANSPORT_URL (or --transport-url) to amqp://..."
        )
    async with connect(settings) as transport:
        client = RPCClient(
            transport,
            args.topic,
            version=args.api_version,
            timeout=getattr(args, "timeout", None),
            namespace=args.namespace,
            server=args.server,
            fanout=getattr(args, "fanout", False),
        )
        return await send(client)


def _cmd_call(args: argparse.Namespace) -> int:
    kwargs = _call_args(args.args)
    result = asyncio.run(_with_client(args, lambda c: c.call(None, args.method, **kwargs)))
    print(json.dumps(result, separators=(",", ":")) if args.json else json.dumps(result, indent=2))
    return EXIT_OK


def _cmd_cast(args: argparse.Namespace) -> int:
    kwargs = _call_args(args.args)
    if args.repeat is None and args.jsonl is None:
        asyncio.run(_with_client(args, lambda c: c.cast(None, args.method, **kwargs)))
        return EXIT_OK
    lines = _jsonl_lines(args.jsonl) if args.jsonl is not None else None
    count = args.repeat
    started = time.perf_counter()

    async def send(client: RPCClient) -> int:
        async with client.batch() as batch:
            if lines is None:
                for _ in range(count):
                    await batch.cast(None, args.method, **kwargs)
            else:
                for number, line in lines:
                    extra = _jsonl_arguments(args.jsonl, number, line, batch.sent)
                    await batch.cast(None, args.method, **(kwargs | extra))
        return batch.sent

    sent = asyncio.run(_with_client(args, send))
    took = time.perf_counter() - started
    print(
        f"{sent} cast(s) of {args.method} confirmed in {took:.2f} s ({sent / took:.0f}/s)",
        file=sys.stderr,
    )
    return EXIT_OK


def _jsonl_lines(path: str) -> Iterator[tuple[int, str]]:
    """The numbered, non-blank lines of ``path`` (stdin for ``-``), read as they are sent."""
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"--jsonl {path}: {exc.strerror}") from None
    with stream if path != "-" else contextlib.nullcontext(stream):
        for number, line in enumerate(stream, 1):
            if line.strip():
                yield number, line


def _jsonl_arguments(path: str, number: int, line: str, sent: int) -> dict[str, Any]:
    """The arguments on one ``--jsonl`` line; a bad line stops the batch, naming it."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        problem = f"not JSON ({getattr(exc, 'msg', exc)})"
    else:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return value
        problem = f"a JSON {type(value).__name__}, not an object of arguments"
    raise UsageError(
        f"--jsonl {path} line {number}: {problem}; "
        f"stopped there; the {sent} cast(s) before it were sent"
    )


# -- services / db


def _shared_store(args: argparse.Namespace) -> tuple[Settings, type[ServiceStore]]:
    """The settings and the store class, for commands that read what services wrote."""
    settings = _load_settings(args)
    cls = store_class(settings.database_url)
    if cls.in_process:
        # An in-process store lives in one process: a listing would always be empty.
        raise UsageError(
            f"{args.command} commands need the database shared with the services, and "
            f"{redact_url(settings.database_url)} lives in this process only: "
            "set AIOSVC_DATABASE_URL (or --database-url) to postgresql://..."
        )
    return settings, cls


def _cmd_services_list(args: argparse.Namespace) -> int:
    settings, _ = _shared_store(args)

    async def fetch() -> list[Any]:
        async with get_store(settings, migrate=False) as store:
            return await store.list(topic=args.topic, host=args.host, binary=args.binary)

    records = asyncio.run(fetch())
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return EXIT_OK
    columns = (
        "Id",
        "Binary",
        "Host",
        "Topic",
        "Status",
        "State",
        "Updated At",
        "Disabled Reason",
        "Working",
    )
    rows = [
        (
            str(r.id),
            r.binary,
            r.host,
            r.topic,
            r.status,
            # Why it is down: forced by an operator, stopped gracefully (else it crashed
            # or lost its link: no report for service_down_time).
            _qualified(r.state, ("forced", r.forced_down), ("stopped", r.stopped)),
            (r.last_seen_up or r.updated_at or r.created_at).isoformat(timespec="seconds"),
            r.disabled_reason or "-",
            _working(r),
        )
        for r in records
    ]
    print(_table(columns, rows))
    return EXIT_OK


def _working(record: ServiceRecord) -> str:
    """``yes``, ``no: broker, periodic`` (the checks that failed), or ``-``: not known (not
    reported yet, an older aiosvc) or stale (the service is down)."""
    if record.working is None or not record.is_up:
        return "-"
    if record.working:
        return "yes"
    return "no: " + ", ".join(record.problems) if record.problems else "no"


def _qualified(state: str, *reasons: tuple[str, bool]) -> str:
    """``down (forced, stopped)``: the state with the reasons that hold, if any."""
    held = [name for name, holds in reasons if holds]
    return f"{state} ({', '.join(held)})" if held else state


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([rule, line(columns), rule, *(line(r) for r in rows), rule])


def _cmd_services_action(args: argparse.Namespace) -> int:
    settings, _ = _shared_store(args)

    async def act() -> str:
        async with get_store(settings, migrate=False) as store:
            if args.action == "delete":
                gone = await store.get(args.host, args.binary)
                await store.delete(args.host, args.binary)
                done = f"deleted {gone.binary} on {gone.host} (id {gone.id})"
                if gone.is_up:
                    # Nova's behaviour: a running service does not re-create its record.
                    done += "; it was up: if it still runs, restart it to recreate its record"
                return done
            if args.action == "disable":
                r = await store.update(
                    args.host, args.binary, disabled=True, disabled_reason=args.reason
                )
            elif args.action == "enable":
                r = await store.update(args.host, args.binary, disabled=False)
            else:
                r = await store.update(args.host, args.binary, forced_down=not args.unset)
            status = r.status + (f" ({r.disabled_reason})" if r.disabled_reason else "")
            state = _qualified(r.state, ("forced down", r.forced_down), ("stopped", r.stopped))
            done = f"{r.binary} on {r.host}: {status}, {state}"
            # Say what the change means for the service (it learns at its next report).
            if args.action == "disable" and r.is_up:
                done += (
                    f"; it stops taking work from the shared queue {r.topic!r} at its next "
                    f"state report, and still answers calls sent to {r.host}"
                )
            elif args.action == "disable":
                done += f"; it will take no work from the shared queue {r.topic!r} when it runs"
            elif args.action == "enable" and r.is_up:
                done += f"; it takes work from the shared queue {r.topic!r} from its next report"
            return done

    print(asyncio.run(act()))
    return EXIT_OK


def _cmd_db(args: argparse.Namespace) -> int:
    settings, store = _shared_store(args)
    if args.action == "upgrade":
        applied = asyncio.run(store.upgrade_schema(settings))
        print(f"applied migrations {applied}" if applied else "already up to date")
        print(f"schema version {asyncio.run(store.schema_versions(settings))[1]}")
    else:
        current, latest = asyncio.run(store.schema_versions(settings))
        hint = ""
        if current < latest:
            hint = "; run `python -m aiosvc db upgrade` to apply the pending migrations"
        elif current > latest:
            hint = "; the database is newer than this aiosvc: upgrade aiosvc"
        print(f"schema version {current} (latest {latest}){hint}")
    return EXIT_OK


# -- dead-letters / queues


def _broker_settings(args: argparse.Namespace) -> Settings:
    """The settings, for commands that work on RabbitMQ's queues themselves."""
    settings = _load_settings(args)
    if urlsplit(settings.transport_url).scheme not in ("amqp", "amqps", "rabbit"):
        raise UsageError(
            f"{args.command} {args.action} works on RabbitMQ's queues, and "
            f"{redact_url(settings.transport_url)} is not RabbitMQ: "
            "set AIOSVC_TRANSPORT_URL (or --transport-url) to amqp://..."
        )
    return settings


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    from .transport.amqp import deadletters

    settings = _broker_settings(args)
    queue = dead_letter_exchange(settings.control_exchange)
    if args.action == "purge":
        print(f"purged {asyncio.run(deadletters.purge(settings))} dead letter(s) from {queue}")
        return EXIT_OK
    if args.action == "replay":
        limit = args.limit or sys.maxsize
        done = asyncio.run(deadletters.replay(settings, limit, args.message_id))
        for letter in done.replayed:
            print(f"replayed {letter.message_id} to queue {letter.queue}")
        for letter in done.kept:
            print(f"kept {letter.message_id}: its queue {letter.queue} is gone")
        print(f"replayed {len(done.replayed)} dead letter(s) from {queue}")
        if args.message_id and not done.replayed and not done.kept:
            print(f"aiosvc: error: no dead letter {args.message_id} in {queue}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK
    total, letters = asyncio.run(deadletters.list_dead_letters(settings, args.limit))
    rows = [_dead_letter_row(letter) for letter in letters]
    if args.json:
        print(json.dumps([dict(zip(_DEAD_LETTER_KEYS, row, strict=True)) for row in rows]))
        return EXIT_OK
    print(_table(_DEAD_LETTER_COLUMNS, [[str(cell) for cell in row] for row in rows]))
    print(f"{queue}: {total} dead letter(s), {len(rows)} shown")
    return EXIT_OK


_DEAD_LETTER_COLUMNS = (
    "Message Id",
    "Reason",
    "Queue",
    "Exchange",
    "Routing Key",
    "Died At",
    "Method",
    "Size",
)
_DEAD_LETTER_KEYS = tuple(c.lower().replace(" ", "_") for c in _DEAD_LETTER_COLUMNS)


def _dead_letter_row(letter: DeadLetter) -> tuple[str, str, str, str, str, str, str, int]:
    try:
        method = decode_request(letter.body).method
    except MalformedMessage:
        method = "(malformed)"
    died_at = letter.died_at.isoformat(timespec="seconds") if letter.died_at else "-"
    return (
        letter.message_id,
        letter.reason,
        letter.queue,
        letter.exchange or "(default)",
        letter.routing_key,
        died_at,
        method,
        letter.size,
    )


def _cmd_queues_migrate(args: argparse.Namespace) -> int:
    from .transport.amqp.migrate import migrate_queues

    settings = _broker_settings(args)
    hosts: dict[str, set[str]] = {topic: set(args.hosts) for topic in args.topic}
    if not store_class(settings.database_url).in_process:

        async def recorded() -> list[Any]:
            async with get_store(settings, migrate=False) as store:
                return await store.list()

        for record in asyncio.run(recorded()):
            if record.topic in hosts or not args.topic:
                hosts.setdefault(record.topic, set(args.hosts)).add(record.host)
    elif not args.topic:
        raise UsageError(
            "queues migrate needs --topic (there is no shared database whose services "
            "table names the topics: set AIOSVC_DATABASE_URL to postgresql://... or name them)"
        )
    topics = [(topic, sorted(hosts[topic])) for topic in sorted(hosts)]
    for done in asyncio.run(migrate_queues(settings, topics)):
        moved = f", {done.moved} message(s) moved and back" if done.moved else ""
        print(f"{done.kind} {done.name}: {done.outcome}{moved}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The command line's entry point; returns the exit status."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version (0), or a bad command line (2, printed)
        return int(exc.code or 0)
    args.argv = argv  # what a --workers parent gives its workers
    debug = (args.log_level or "").upper() == "DEBUG"
    if args.command != "run" and not debug:
        # A one-shot command has no log: with no handler, Python prints what aio-pika and
        # aiormq log about a failed connection, a second line before the error's own.
        for noisy in ("aio_pika", "aiormq"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except (UsageError, ConfigError) as exc:
        _error(exc, debug)
        return EXIT_USAGE
    except (AiosvcError, OSError) as exc:
        _error(exc, debug)
        return EXIT_FAILURE


def _error(exc: BaseException, debug: bool) -> None:
    if debug:
        logging.getLogger("aiosvc").error("failed", exc_info=exc)
    name = type(exc).__name__
    print(f"aiosvc: error: {name}: {one_line(exc)}", file=sys.stderr)
