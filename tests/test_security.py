"""Security: what RPC can reach, what the message path may run, what logs may show.

* Endpoint exposure: a request reaches only the public methods a manager's own classes
  define (and the endpoints aiosvc's bases serve on purpose): never a hook, a periodic task,
  a private or dunder name, a property, a callable class attribute, a static or class
  method, nor any method a manager inherits from aiosvc. A real :class:`aiosvc.Service` on
  the in-memory transport answers each refusal with ``NoSuchMethod``.
* No code from the wire: ``aiosvc/`` neither imports a deserialiser that runs code
  (pickle and friends) nor calls ``eval``/``exec``; an AST scan checks it, and is shown to
  fail on a planted ``pickle.loads``.
* Credentials: real ``python -m aiosvc`` processes given a distinctive password in
  ``transport_url`` and ``database_url`` never print it, whatever fails (unreachable
  broker or database, a refused login), and say what failed in one line.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import aiosvc
from aiosvc import Context, Manager, NoSuchMethod, periodic_task
from aiosvc.exceptions import MessagingTimeout
from aiosvc.rpc.dispatcher import Dispatcher
from aiosvc.rpc.protocol import Request
from aiosvc.testing import ClientFactory, ServiceFactory, isolated_settings
from tests.procs import aiosvc_proc, clean_env, run_cli
from tests.servers import PostgresCluster, RabbitNode, free_ports

ROOT = Path(__file__).resolve().parent.parent

# -- endpoint exposure -----------------------------------------------------------------------------


def _module_function(self: object, ctx: Context) -> str:
    """A plain function a class body assigns to a name: not a method written there."""
    return "leaked"


class _CallableObject:
    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return "leaked"


class Guarded(Manager):
    """Every kind of attribute a manager may have; only ``ping``, ``sync_ping`` answer."""

    topic = "guarded"

    # intended endpoints
    async def ping(self, ctx: Context, value: int = 0) -> int:
        return value + 1

    def sync_ping(self, ctx: Context) -> str:
        return "pong"  # a `def` endpoint runs in a worker thread (docs/rpc.md)

    # hooks
    async def init_host(self) -> None:
        self.ran: list[str] = []

    async def pre_start_hook(self) -> None:
        self.ran.append("pre_start_hook")

    async def post_start_hook(self) -> None:
        self.ran.append("post_start_hook")

    async def cleanup_host(self) -> None:
        self.ran.append("cleanup_host")

    async def reset(self) -> None:
        self.ran.append("reset")

    # periodic tasks, bare and with arguments
    @periodic_task
    async def bare_task(self, ctx: Context) -> None:
        self.ran.append("bare_task")

    @periodic_task(spacing=3600, name="renamed")
    async def spaced_task(self, ctx: Context) -> None:
        self.ran.append("spaced_task")

    @periodic_task(spacing=3600)
    def sync_task(self, ctx: Context) -> None:
        self.ran.append("sync_task")

    # private and dunder
    async def _private(self, ctx: Context) -> None:
        self.ran.append("_private")

    async def __secret(self, ctx: Context) -> None:  # mangled to _Guarded__secret
        self.ran.append("__secret")

    async def __dunder__(self, ctx: Context) -> None:
        self.ran.append("__dunder__")

    # not methods written in the class body
    @property
    def prop(self) -> str:
        return "leaked"

    @staticmethod
    async def static(ctx: Context) -> str:
        return "leaked"

    @classmethod
    async def klass(cls, ctx: Context) -> str:
        return "leaked"

    assigned = _module_function
    dumps = json.dumps
    builtin = len
    instance = _CallableObject()
    lam = lambda self, ctx: "leaked"  # noqa: E731


INTENDED = {"ping", "sync_ping", "publish_service_capabilities"}
HOOKS = ["init_host", "pre_start_hook", "post_start_hook", "cleanup_host", "reset"]
GUARDED_OWN = [
    "bare_task",
    "spaced_task",
    "renamed",
    "sync_task",
    "_private",
    "__secret",
    "_Guarded__secret",
    "__dunder__",
    "prop",
    "static",
    "klass",
    "assigned",
    "dumps",
    "builtin",
    "instance",
    "lam",
    "ran",
]
ODD_NAMES = [
    "__class__",
    "__init__",
    "__getattribute__",
    "__getattr__",
    "__dict__",
    "__call__",
    "__reduce__",
    "__init_subclass__",
    "__subclasshook__",
    "mro",
    "manager.host",
    "host",
    "settings",
    "ping.__globals__",
    "ping.__func__",
    "ping.",
    ".ping",
    "ping ",
    " ping",
    "Ping",
    "ping\x00",
    "x" * 10_000,
    "é" * 300,
]


def inherited_names() -> list[str]:
    """Every public name an aiosvc Manager has, found with inspect; none hard-coded."""
    return sorted(name for name, _ in inspect.getmembers(Manager) if not name.startswith("_"))


def refused_names() -> list[str]:
    names = [*HOOKS, *GUARDED_OWN, *ODD_NAMES, *inherited_names()]
    names += [name for name, _ in inspect.getmembers(Guarded) if name.startswith("__")]
    return sorted(set(names) - INTENDED)


def test_the_inherited_names_are_found() -> None:
    # The enumeration is real: it holds the framework's own methods and properties.
    found = set(inherited_names())
    assert {"attach", "rpc_methods", "periodic_tasks", "connections", "rpc_client"} <= found
    assert "publish_service_capabilities" in found  # served on purpose: must answer


def test_only_intended_methods_are_endpoints() -> None:
    assert set(Guarded.rpc_methods()) == INTENDED


async def test_a_service_answers_only_its_endpoints(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    service = await aiosvc_service(Guarded)
    client = await aiosvc_client("guarded")
    assert await client.call(None, "ping", value=41) == 42
    assert await client.call(None, "sync_ping") == "pong"
    assert await client.call(None, "publish_service_capabilities") is None
    refused = []
    for name in refused_names():
        with pytest.raises(NoSuchMethod) as caught:
            await client.call(None, name)
        refused.append(name)
        assert "Guarded has no RPC method" in str(caught.value)
    assert len(refused) > len(HOOKS) + len(GUARDED_OWN) + 10
    manager = service.manager
    assert isinstance(manager, Guarded)
    # Only the start hooks ran (at start); no refused call ran anything.
    assert manager.ran == ["pre_start_hook", "post_start_hook"]


async def test_an_empty_method_name_is_never_dispatched(
    aiosvc_service: ServiceFactory, aiosvc_client: ClientFactory
) -> None:
    service = await aiosvc_service(Guarded)
    # The server dead-letters a request without a method (MalformedMessage): no reply.
    client = await aiosvc_client("guarded", timeout=1)
    with pytest.raises(MessagingTimeout):
        await client.call(None, "")
    dispatcher = Dispatcher(service.manager)
    with pytest.raises(NoSuchMethod):
        await dispatcher.dispatch(Request("", {}, Context(), "1.0", None))


def _logged(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


class _Mixin:
    async def from_mixin(self, ctx: Context) -> str:
        return "mixin"


def test_methods_written_in_a_mixin_or_wrapped_stay_endpoints() -> None:
    # The rule "written in the class as def NAME" keeps what users write as methods.
    class Written(_Mixin, Manager):
        topic = "written"

        @_logged
        async def wrapped(self, ctx: Context) -> str:
            return "wrapped"

    assert set(Written.rpc_methods()) == {"from_mixin", "wrapped", "publish_service_capabilities"}


def test_a_subclass_cannot_hide_an_inherited_framework_method_as_an_endpoint() -> None:
    # Defining `attach` again would make an endpoint that is aiosvc's: refused at build.
    class Sneaky(Manager):
        topic = "sneaky"

        def attach(self, connections: Any) -> None:
            super().attach(connections)

    with pytest.raises(aiosvc.ServiceError, match="attach"):
        Sneaky.rpc_methods()
    with pytest.raises(aiosvc.ServiceError, match="attach"):
        aiosvc.Service.create(Sneaky, settings=isolated_settings())


# -- no code from the wire -------------------------------------------------------------------------

#: Modules whose loaders run code chosen by the data they read.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
#: Builtins that run code given as data.
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
#: yaml functions that build arbitrary Python objects.
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load"}
#: Calls that import a module by a name known only at run time.
DYNAMIC_IMPORTS = {"import_module", "find_spec", "__import__"}
#: Where a dynamic import is allowed, by (file, function), and why. Nothing a message
#: names is imported except an exception's module the operator allowed by name.
ALLOWED_IMPORTS = {
    # --manager, drivers and URL backends: a path from the command line or settings.
    ("aiosvc/loading.py", "_import"): "the module of a --manager/driver/backend path",
    ("aiosvc/loading.py", "_is_submodule"): "find_spec for a clear error on a bad path",
    # A remote exception whose module the operator listed in allowed_remote_exceptions (and,
    # on oslo's wire, as oslo.messaging does, builtins).
    ("aiosvc/rpc/protocol.py", "rebuild_allowed"): "modules in allowed_remote_exceptions",
}


def _called_name(func: ast.expr) -> tuple[str | None, str]:
    """``(owner, name)`` of a call's target: ``eval`` is (None, "eval"), ``a.b.c`` ("a.b", "c")."""
    if isinstance(func, ast.Name):
        return None, func.id
    if isinstance(func, ast.Attribute):
        return ast.unparse(func.value), func.attr
    return None, ""


def scan_for_code_execution(root: Path) -> list[str]:
    """Every place under ``root/aiosvc`` that could run code taken from data, as file:line.

    The rule: no module of aiosvc imports pickle, cPickle, marshal, shelve, dill or
    cloudpickle; none calls eval, exec, compile or __import__ (also as ``builtins.X``),
    nor yaml's object-building loaders (``yaml.load`` and friends). Importing a module by a
    name known only at run time (``importlib.import_module``, ``importlib.util.find_spec``)
    happens only in the functions of :data:`ALLOWED_IMPORTS`: loading the ``--manager``,
    drivers and backends an operator names, and the modules of remote exceptions the
    operator allowed. ``importlib.resources`` reads data files and is not an import.
    The source is parsed (AST), so comments, strings and ``re.compile`` never count.
    """
    found = []
    for path in sorted((root / "aiosvc").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        functions: dict[ast.AST, str] = {}  # node -> the innermost function around it
        for node in ast.walk(tree):  # breadth first: outer functions before inner ones
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if inner is not node:
                        functions[inner] = node.name
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                for module in modules:
                    if module and module.split(".")[0] in UNSAFE_MODULES:
                        found.append(f"{where}: imports {module}")
            elif isinstance(node, ast.Call):
                owner, name = _called_name(node.func)
                if name in UNSAFE_BUILTINS and owner in (None, "builtins"):
                    found.append(f"{where}: calls {name}()")
                elif owner == "yaml" and name in UNSAFE_YAML:
                    found.append(f"{where}: calls yaml.{name}()")
                elif (
                    name in DYNAMIC_IMPORTS
                    and (owner is None or owner.startswith("importlib"))
                    and (rel, functions.get(node, "")) not in ALLOWED_IMPORTS
                ):
                    found.append(f"{where}: imports a module by a run-time name ({name})")
    return found


def test_aiosvc_runs_no_code_from_data() -> None:
    assert scan_for_code_execution(ROOT) == []


def test_every_allowed_dynamic_import_still_exists() -> None:
    # An entry left behind after its function moved would allow a new one of that name.
    for rel, function in ALLOWED_IMPORTS:
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert function in names, f"{rel} has no function {function}()"


PLANTED = {
    "aiosvc/rpc/protocol.py": "import pickle\n\ndef _planted(b):\n    return pickle.loads(b)\n",
    "aiosvc/rpc/server.py": "from marshal import loads as _x\n",
    "aiosvc/rpc/client.py": "def _planted(text):\n    return eval(text)\n",
    "aiosvc/store/base.py": "import builtins\n\ndef _planted(s):\n    builtins.exec(s)\n",
    "aiosvc/settings.py": "import yaml\n\ndef _planted(s):\n    return yaml.load(s)\n",
    "aiosvc/loading.py": "def _planted(name):\n    return importlib.import_module(name)\n",
}


def test_the_scan_fails_on_planted_code(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "aiosvc", tmp_path / "aiosvc")
    lines = {}
    for rel, code in PLANTED.items():
        path = tmp_path / rel
        before = path.read_text(encoding="utf-8")
        lines[rel] = before.count("\n") + 1
        path.write_text(before + code, encoding="utf-8")
    # Harmless look-alikes: in strings, comments, re.compile, importlib.resources.
    (tmp_path / "aiosvc" / "lookalike.py").write_text(
        'import re\nimport importlib.resources\n# eval(x) pickle.loads(y)\nX = "exec(z)"\n'
        'R = re.compile("a")\nF = importlib.resources.files("aiosvc")\n'
    )
    found = scan_for_code_execution(tmp_path)
    assert found == [
        f"aiosvc/loading.py:{lines['aiosvc/loading.py'] + 1}: imports a module by a run-time "
        "name (import_module)",
        f"aiosvc/rpc/client.py:{lines['aiosvc/rpc/client.py'] + 1}: calls eval()",
        f"aiosvc/rpc/protocol.py:{lines['aiosvc/rpc/protocol.py']}: imports pickle",
        f"aiosvc/rpc/server.py:{lines['aiosvc/rpc/server.py']}: imports marshal",
        f"aiosvc/settings.py:{lines['aiosvc/settings.py'] + 3}: calls yaml.load()",
        f"aiosvc/store/base.py:{lines['aiosvc/store/base.py'] + 3}: calls exec()",
    ]


# -- credentials never shown -----------------------------------------------------------------------

SECRET = "Sekr3t-Pa55"


def with_password(url: str, password: str = SECRET, user: str | None = None) -> str:
    """``url`` with its password (and user, if given) replaced."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user or parts.username}:{password}@{host}"))


def closed_port() -> int:
    (port,) = free_ports(1)  # free a moment ago: nothing listens there
    return port


def assert_one_masked_error(output: str, what: str) -> None:
    """``output`` (a process's stdout and stderr) is one error line naming ``what`` masked."""
    assert SECRET not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{output}"
    assert lines[0].startswith("aiosvc: error: "), output
    assert what in lines[0], output


@pytest.fixture
def unreachable_broker() -> str:
    return f"amqp://guest:{SECRET}@127.0.0.1:{closed_port()}/"


@pytest.fixture
def unreachable_database() -> str:
    return f"postgresql://aiosvc:{SECRET}@127.0.0.1:{closed_port()}/aiosvc"


def masked(url: str) -> str:
    return url.replace(f":{SECRET}@", ":***@")


CLI_COMMANDS = {
    "run": ["run", "--manager", "tests.apps:Journaling"],
    "call": ["call", "journal", "echo", "value=1", "--timeout", "5"],
    "cast": ["cast", "journal", "record", "item=1"],
}


@pytest.mark.parametrize("command", CLI_COMMANDS)
def test_an_unreachable_broker_is_one_masked_line(command: str, unreachable_broker: str) -> None:
    done = run_cli(CLI_COMMANDS[command], clean_env(AIOSVC_TRANSPORT_URL=unreachable_broker))
    assert done.returncode != 0
    assert_one_masked_error(done.stdout + done.stderr, f"AMQP broker {masked(unreachable_broker)}")


@pytest.mark.parametrize("command", CLI_COMMANDS)
def test_a_refused_broker_login_is_one_masked_line(command: str, amqp_url: str) -> None:
    url = with_password(amqp_url)
    done = run_cli(CLI_COMMANDS[command], clean_env(AIOSVC_TRANSPORT_URL=url))
    assert done.returncode != 0
    assert_one_masked_error(done.stdout + done.stderr, f"AMQP broker {masked(url)}")


DB_COMMANDS = {
    "run": ["run", "--manager", "tests.apps:Journaling"],
    "services list": ["services", "list"],
    "db version": ["db", "version"],
}


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_an_unreachable_database_is_one_masked_line(
    command: str, unreachable_database: str
) -> None:
    done = run_cli(DB_COMMANDS[command], clean_env(AIOSVC_DATABASE_URL=unreachable_database))
    assert done.returncode != 0
    assert_one_masked_error(done.stdout + done.stderr, f"database {masked(unreachable_database)}")


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_a_refused_database_login_is_one_masked_line(command: str, database_url: str) -> None:
    url = with_password(database_url)
    done = run_cli(DB_COMMANDS[command], clean_env(AIOSVC_DATABASE_URL=url))
    assert done.returncode != 0
    assert_one_masked_error(done.stdout + done.stderr, f"database {masked(url)}")


@pytest.fixture
def secret_servers(
    rabbitmq: RabbitNode | None, postgres: PostgresCluster | None, amqp_url: str, database_url: str
) -> Iterator[tuple[str, str]]:
    """A broker user and a database role whose password is ``SECRET``: their two URLs."""
    if rabbitmq is None or postgres is None:
        pytest.skip("needs the session's own RabbitMQ node and PostgreSQL cluster")
    name = f"secret_{uuid.uuid4().hex[:8]}"
    rabbitmq.rabbitmqctl("add_user", name, SECRET)
    rabbitmq.rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
    postgres.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'", database="postgres")
    postgres.psql(f"CREATE DATABASE {name} OWNER {name}", database="postgres")
    try:
        db = urlunsplit(urlsplit(with_password(database_url, user=name))._replace(path=f"/{name}"))
        yield with_password(amqp_url, user=name), db
    finally:
        rabbitmq.rabbitmqctl("delete_user", name)
        postgres.drop_database(name)
        postgres.psql(f"DROP ROLE {name}", database="postgres")


def test_a_working_service_never_logs_its_passwords(
    secret_servers: tuple[str, str], tmp_path: Path
) -> None:
    transport_url, database_url = secret_servers
    env = clean_env(
        AIOSVC_TRANSPORT_URL=transport_url,
        AIOSVC_DATABASE_URL=database_url,
        AIOSVC_CONTROL_EXCHANGE=f"sec-{uuid.uuid4().hex[:8]}",
        AIOSVC_REPORT_INTERVAL="0.2",
        AIOSVC_JOURNAL=str(tmp_path / "journal.jsonl"),
    )
    topic = f"journal-{uuid.uuid4().hex[:8]}"
    run = ["run", "--manager", "tests.apps:Journaling", "--topic", topic, "--log-level", "DEBUG"]
    with aiosvc_proc(run, env) as service:
        service.wait_for("Started", timeout=60)
        called = run_cli(["call", topic, "echo", "value=7", "--json"], env)
        assert called.returncode == 0, called.stderr
        assert called.stdout.strip() == '"7"'
        listed = run_cli(["services", "list"], env)
        assert listed.returncode == 0, listed.stderr
        assert topic in listed.stdout
        service.signal(signal.SIGTERM)
        assert service.wait(60) == 0
    for output in (called.stdout, called.stderr, listed.stdout, listed.stderr, *service.lines):
        assert SECRET not in output
    # The URLs are logged, masked: the test looked at lines that name them.
    assert any(masked(transport_url) in line for line in service.lines), service.lines


@pytest.mark.parametrize(
    ("setting", "url", "reason"),
    [
        ("transport_url", f"amqpx://guest:{SECRET}@127.0.0.1:1/", "URL scheme must be one of"),
        ("transport_url", f"amqp://guest:{SECRET}@127.0.0.1:99999/", "bad port in"),
        ("transport_url", f"amqp://guest:{SECRET}@h1:x,guest:{SECRET}@h2/", "bad port in 'h1:x'"),
        ("database_url", f"postgresql://aiosvc:{SECRET}@127.0.0.1:1/db?pool_max_size=x", "bad"),
    ],
    ids=["scheme", "port", "port-in-list", "pool-option"],
)
@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_a_bad_url_is_one_masked_line(setting: str, url: str, reason: str, given_by: str) -> None:
    flag = "--" + setting.replace("_", "-")
    if given_by == "flag":
        done = run_cli(["services", "list", flag, url], clean_env())
    else:
        done = run_cli(["services", "list"], clean_env(**{f"AIOSVC_{setting.upper()}": url}))
    assert done.returncode != 0
    assert_one_masked_error(done.stdout + done.stderr, reason)
