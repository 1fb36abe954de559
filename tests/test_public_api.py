"""What ``import aiosvc`` promises, and which way the modules lean on each other.

The logic layer (periodic tasks, the RPC protocol and dispatcher, the Manager) never
imports a transport, a store or the wiring above it; only ``transport/amqp.py`` imports
aio-pika and only ``store/postgres.py`` imports asyncpg. Checked on the source with
``ast``, so a violation is caught even in a branch no test runs.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import aiosvc

PACKAGE = Path(aiosvc.__file__).resolve().parent

PUBLIC_API = [
    "AiosvcError",
    "ConfigError",
    "Context",
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
    "periodic_task",
]

LOGIC_LAYER = [
    "exceptions.py",
    "settings.py",
    "context.py",
    "loading.py",
    "periodic.py",
    "rpc/protocol.py",
    "rpc/dispatcher.py",
    "manager.py",
]
ABOVE_THE_LOGIC_LAYER = [
    "aiosvc.transport",
    "aiosvc.store",
    "aiosvc.service",
    "aiosvc.servicegroup",
    "aiosvc.launcher",
    "aiosvc.cli",
    "aiosvc.rpc.client",
    "aiosvc.rpc.server",
    "aiosvc.testing",
]
ONLY_IN = {
    "aio_pika": ["transport/amqp.py"],
    "aiormq": ["transport/amqp.py"],
    "asyncpg": ["store/postgres.py"],
}


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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from m import x`` also gives m.x)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_scanner_sees_relative_and_absolute_imports() -> None:
    # The rules below are only as good as this: check it on modules we know.
    dispatcher = _imports(PACKAGE / "rpc" / "dispatcher.py")
    assert "aiosvc.manager" in dispatcher
    assert "aiosvc.rpc.protocol" in dispatcher
    assert "pydantic" in dispatcher
    assert "aiosvc.exceptions" in _imports(PACKAGE / "rpc" / "protocol.py")
    assert "aiosvc.service" in _imports(PACKAGE / "launcher.py")


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_broker_and_database_drivers_are_imported_in_one_module_only(library: str) -> None:
    allowed = {PACKAGE / p for p in ONLY_IN[library]}
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _sources()
        if path not in allowed and any(_is_within(n, library) for n in _imports(path))
    ]
    assert offenders == []


@pytest.mark.parametrize("relative", LOGIC_LAYER)
def test_logic_layer_imports_nothing_above_it(relative: str) -> None:
    path = PACKAGE / relative
    assert path.is_file()
    imports = _imports(path)
    bad = sorted(
        name for name in imports if any(_is_within(name, up) for up in ABOVE_THE_LOGIC_LAYER)
    )
    assert bad == []
    for library in ONLY_IN:
        assert not any(_is_within(name, library) for name in imports)


def test_importing_aiosvc_loads_no_broker_or_database_driver() -> None:
    # memory:// users must not pay for (or need) aio-pika and asyncpg at import time.
    code = (
        "import sys, aiosvc, aiosvc.testing, aiosvc.cli;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aio_pika','aiormq','asyncpg'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module", ["aiosvc.periodic", "aiosvc.rpc.protocol", "aiosvc.rpc.dispatcher", "aiosvc.manager"]
)
def test_logic_modules_document_what_they_export(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"
