"""What ``import aiosvc`` promises, and which way the modules lean on each other.

Imports point down the layers of docs/architecture.md (leaves, logic, edges, wiring,
faces) and never up; an edge never imports another edge (a transport never imports a
store), and a backend is imported only by its own modules and the faces, the rest
loading it from its scheme table. Only ``transport/amqp/`` imports aio-pika and only
``store/postgres.py`` imports asyncpg. Checked on the source with ``ast``, so a violation
is caught even in a branch no test runs; a copy of the package with one bad import shows
that each rule fails when it should.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import pytest

import aiosvc

PACKAGE = Path(aiosvc.__file__).resolve().parent

PUBLIC_API = [
    "AiosvcError",
    "CastsFailed",
    "ConfigError",
    "Context",
    "HostCapabilities",
    "InvalidArguments",
    "InvalidTarget",
    "LoadError",
    "MalformedMessage",
    "Manager",
    "MessageUndeliverable",
    "MessagingTimeout",
    "NoSuchMethod",
    "RPCClient",
    "RPCError",
    "RemoteError",
    "SchedulerManager",
    "Service",
    "ServiceError",
    "ServiceGroup",
    "ServiceNotFound",
    "ServiceRecord",
    "ServiceStore",
    "Settings",
    "StoreError",
    "Transport",
    "TransportError",
    "UnsupportedVersion",
    "__version__",
    "connect",
    "launch",
    "load_object",
    "loop_factory",
    "periodic_task",
]

# The layers of DESIGN section 2, lowest first. A module belongs to the longest prefix that
# names it; imports point down this list or stay within their layer, never up.
LAYERS: dict[str, list[str]] = {
    "leaves": [
        "aiosvc.backends",
        "aiosvc.clock",
        "aiosvc.context",
        "aiosvc.exceptions",
        "aiosvc.loading",
        "aiosvc.log",
        "aiosvc.metrics",
        "aiosvc.loopwatch",
        "aiosvc.loops",
        "aiosvc.settings",
        "aiosvc.tasks",
        "aiosvc.tracing",
    ],
    "logic": [
        "aiosvc.manager",
        "aiosvc.periodic",
        "aiosvc.rpc.dispatcher",
        "aiosvc.rpc.oslo",
        "aiosvc.rpc.protocol",
        "aiosvc.scheduler",
    ],
    "edges": ["aiosvc.store", "aiosvc.transport"],
    "wiring": [
        "aiosvc.api",
        "aiosvc.capabilities",
        "aiosvc.connections",
        "aiosvc.launcher",
        "aiosvc.rpc.client",
        "aiosvc.rpc.server",
        "aiosvc.service",
        "aiosvc.servicegroup",
        "aiosvc.workers",
    ],
    "faces": ["aiosvc", "aiosvc.__main__", "aiosvc.cli", "aiosvc.rpc", "aiosvc.testing"],
}
# Each kind of edge: the parts every backend of that kind shares (the protocol, the names,
# the factory); any other module of the kind belongs to one backend.
EDGE_SHARED = {
    "aiosvc.transport": {"aiosvc.transport", "aiosvc.transport.base", "aiosvc.transport.topology"},
    "aiosvc.store": {"aiosvc.store", "aiosvc.store.base"},
}
ONLY_IN = {"aio_pika": "aiosvc.transport.amqp", "aiormq": "aiosvc.transport.amqp"}
ONLY_IN["asyncpg"] = "aiosvc.store.postgres"
ONLY_IN["uvicorn"] = "aiosvc.api"  # an optional extra: aiosvc[api]
ONLY_IN["prometheus_client"] = "aiosvc.metrics"  # an optional extra: aiosvc[metrics]
ONLY_IN["uvloop"] = "aiosvc.loops"  # an optional extra: aiosvc[uvloop]
ONLY_IN["opentelemetry"] = "aiosvc.tracing"  # an optional extra: aiosvc[tracing]


def test_all_is_sorted() -> None:
    assert aiosvc.__all__ == sorted(aiosvc.__all__)


def test_all_is_pinned() -> None:
    # Adding or removing a public name is a decision: update this list with it.
    assert aiosvc.__all__ == PUBLIC_API


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from aiosvc import {name}", namespace)
    assert namespace[name] is getattr(aiosvc, name)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from aiosvc import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC_API)


def test_version_is_the_distributions() -> None:
    from importlib.metadata import version

    assert aiosvc.__version__ == version("aiosvc")


def test_errors_are_exported_with_their_builtin_bases() -> None:
    assert issubclass(aiosvc.MessagingTimeout, TimeoutError)
    assert issubclass(aiosvc.NoSuchMethod, AttributeError)
    assert issubclass(aiosvc.ConfigError, ValueError)
    assert issubclass(aiosvc.LoadError, ImportError)
    assert issubclass(aiosvc.InvalidArguments, TypeError)
    for name in PUBLIC_API:
        obj = getattr(aiosvc, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, aiosvc.AiosvcError), name


def test_py_typed_ships() -> None:
    marker = resources.files("aiosvc") / "py.typed"
    assert marker.is_file()


def test_pytest_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("aiosvc")


# -- import direction


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _scan(root: Path) -> dict[str, set[str]]:
    """Every module under ``root`` (a copy of the package) -> the modules it imports.

    Absolute names; ``from m import x`` counts as importing ``m.x`` when that is a module
    of the package, else ``m``.
    """
    paths = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in paths else target)
        graph[module] = found
    return graph


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:``: imports for type hints never run,
    so they may name a module above (the wiring hands a manager its connections)."""
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in _TYPE_CHECKING:
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if id(n) not in typing_only]


_TYPE_CHECKING = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def _is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _owner(name: str, prefixes: Iterable[str]) -> str | None:
    """The longest of ``prefixes`` that ``name`` is within, if any."""
    return max((p for p in prefixes if _is_within(name, p)), key=len, default=None)


_RANK = {prefix: rank for rank, layer in enumerate(LAYERS.values()) for prefix in layer}


def _layer(module: str) -> int:
    owner = _owner(module, _RANK)
    assert owner is not None, f"{module} is in no layer: add it to LAYERS"
    return _RANK[owner]


def _backend(module: str) -> str | None:
    """The backend ``module`` belongs to (``aiosvc.transport.amqp``), or None if shared."""
    kind = _owner(module, EDGE_SHARED)
    if kind is None or module in EDGE_SHARED[kind]:
        return None
    return ".".join(module.split(".")[:3])


def import_violations(root: Path) -> list[str]:
    """Every import in the package at ``root`` that breaks the layering, as a sentence."""
    bad: list[str] = []
    for module, imports in _scan(root).items():
        for name in sorted(imports):
            library = _owner(name, ONLY_IN)
            if library is not None and not _is_within(module, ONLY_IN[library]):
                bad.append(f"{module} imports {name}: only {ONLY_IN[library]} may")
            if not _is_within(name, "aiosvc"):
                continue
            kind, other_kind = _owner(module, EDGE_SHARED), _owner(name, EDGE_SHARED)
            backend = _backend(name)
            if _layer(name) > _layer(module):
                bad.append(f"{module} imports {name}, which is in a layer above it")
            elif kind and other_kind and kind != other_kind:
                bad.append(f"{module} imports {name}: an edge never imports another edge")
            elif backend and _layer(module) < len(LAYERS) - 1 and _backend(module) != backend:
                bad.append(f"{module} imports {name}: a backend is loaded from its table only")
    return bad


def test_the_scanner_sees_relative_and_absolute_imports() -> None:
    # The rules below are only as good as this: check it on modules we know.
    graph = _scan(PACKAGE)
    dispatcher = graph["aiosvc.rpc.dispatcher"]
    assert "aiosvc.manager" in dispatcher
    assert "aiosvc.rpc.protocol" in dispatcher
    assert "pydantic" in dispatcher
    assert "aiosvc.exceptions" in graph["aiosvc.rpc.protocol"]
    assert "aiosvc.service" in graph["aiosvc.launcher"]
    assert "aiosvc.transport.topology" in graph["aiosvc.transport.memory"]  # from . import x
    assert "aio_pika" in graph["aiosvc.transport.amqp.connection"]
    # Imports for type hints only never run: the manager names the wiring's types so.
    assert "aiosvc.connections" not in graph["aiosvc.manager"]
    assert "aiosvc.exceptions" in graph["aiosvc.manager"]


def test_every_module_is_in_a_layer() -> None:
    for module in _scan(PACKAGE):
        _layer(module)


def test_imports_point_down_and_edges_stay_apart() -> None:
    assert import_violations(PACKAGE) == []


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("transport/memory.py", "from ..store import memory", "an edge never imports another"),
        ("store/postgres.py", "from ..transport import base", "an edge never imports another"),
        ("transport/memory.py", "from .amqp import consumer", "a backend is loaded from its"),
        ("transport/__init__.py", "from . import memory", "a backend is loaded from its"),
        ("transport/memory.py", "from ..service import Service", "in a layer above it"),
        ("manager.py", "from .rpc.server import RPCServer", "in a layer above it"),
        ("clock.py", "from .periodic import PeriodicRunner", "in a layer above it"),
        ("manager.py", "if True:\n    from .connections import Connections", "in a layer above"),
        ("store/memory.py", "import asyncpg", "only aiosvc.store.postgres may"),
        ("rpc/client.py", "import aio_pika", "only aiosvc.transport.amqp may"),
        ("service.py", "import uvicorn", "only aiosvc.api may"),
    ],
)
def test_the_rules_catch_a_bad_import(tmp_path: Path, module: str, line: str, broken: str) -> None:
    copy = tmp_path / "aiosvc"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(f"{target.read_text()}\n{line}\n")
    found = import_violations(copy)
    assert len(found) == 1, found
    assert broken in found[0]


def test_importing_aiosvc_loads_no_broker_or_database_driver_nor_uvicorn() -> None:
    # memory:// users must not pay for (or need) aio-pika and asyncpg at import time, nor
    # anyone uvicorn (an optional extra) but for an API service.
    code = (
        "import sys, aiosvc, aiosvc.testing, aiosvc.cli;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'aio_pika','aiormq','asyncpg','uvicorn'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module",
    [
        "aiosvc.backends",
        "aiosvc.clock",
        "aiosvc.tasks",
        "aiosvc.periodic",
        "aiosvc.rpc.protocol",
        "aiosvc.rpc.dispatcher",
        "aiosvc.manager",
        "aiosvc.transport.topology",
        "aiosvc.transport.amqp",
        "aiosvc.api",
        "aiosvc.workers",
        "aiosvc.service",
        "aiosvc.launcher",
    ],
)
def test_modules_export_what_they_document(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"
