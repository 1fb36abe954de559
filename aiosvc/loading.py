"""Load a class or object named by an import path: how managers and drivers are chosen.

Nova: ``oslo_utils.importutils.import_class`` (``pkg.mod.Name``); manila's docs call the
same thing ``utils.load_object``. aiosvc also accepts ``pkg.mod:Name`` (the entry-point
form), which is unambiguous for nested names (``pkg.mod:Outer.Inner``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import types
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .exceptions import LoadError

__all__ = ["load_object"]

T = TypeVar("T")

_IDENT = r"[A-Za-z_]\w*"
_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*(:{_IDENT}(\.{_IDENT})*)?$")


# ``kind`` is a class; it is typed as a callable returning T, not ``type[T]``, because mypy
# refuses an abstract class where ``type[T]`` is expected (its ``type-abstract`` check),
# and checking a driver against its ABC is the main use.
@overload
def load_object(path: str) -> Any: ...
@overload
def load_object(path: str, kind: Callable[..., T]) -> type[T]: ...


def load_object(path: str, kind: Callable[..., Any] | None = None) -> Any:
    """Import and return the object ``path`` names.

    Args:
        path: ``"pkg.mod:Name"`` or ``"pkg.mod.Name"``.
        kind: when given, the object must be this class or a subclass of it
            (nova checks a driver against its ABC the same way); abstract classes
            are fine, for type checkers too.

    Raises:
        LoadError: the path is malformed; the module was not found; the module
            failed to import (the original error is chained); the module has no
            such attribute; the path names a module, not an object in one; or the
            object is not a subclass of ``kind``.
    """
    if not isinstance(path, str) or not _PATH.match(path.strip()):
        raise LoadError(
            f"invalid import path {path!r}: expected 'pkg.module:Name' or 'pkg.module.Name'"
        )
    path = path.strip()
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
    else:
        module_name, _, attr_path = path.rpartition(".")
        if not module_name:
            raise LoadError(
                f"invalid import path {path!r}: expected 'pkg.module:Name' or 'pkg.module.Name'"
            )
    module = _import(module_name, path)
    obj: Any = module
    for depth, attr in enumerate(attr_path.split(".")):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            if isinstance(obj, types.ModuleType) and _is_submodule(f"{obj.__name__}.{attr}"):
                raise _is_a_module(path, f"{obj.__name__}.{attr}") from None
            owner = (
                module_name
                if depth == 0
                else f"{module_name}:{'.'.join(attr_path.split('.')[:depth])}"
            )
            raise LoadError(f"cannot load {path!r}: {owner!r} has no attribute {attr!r}") from None
    if isinstance(obj, types.ModuleType):
        raise _is_a_module(path, obj.__name__)
    if kind is not None and not (
        isinstance(obj, type) and isinstance(kind, type) and issubclass(obj, kind)
    ):
        name = getattr(kind, "__qualname__", repr(kind))
        raise LoadError(f"cannot load {path!r}: {obj!r} is not a subclass of {name}")
    return obj


def _is_submodule(name: str) -> bool:
    """Whether ``name`` is a module that could be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is_a_module(path: str, module_name: str) -> LoadError:
    # "examples.volume" for "examples.volume:VolumeManager": say which form is wanted.
    return LoadError(
        f"cannot load {path!r}: {module_name!r} is a module; "
        "name a class in it as 'pkg.module:Class'"
    )


def _import(module_name: str, path: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Tell "the module you named does not exist" apart from "it exists but one
        # of its own imports is missing": the second is a bug in that module.
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            detail = "" if missing == module_name else f" (no module named {missing!r})"
            raise LoadError(
                f"cannot load {path!r}: module {module_name!r} not found{detail}"
            ) from None
        raise LoadError(
            f"cannot load {path!r}: module {module_name!r} failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise LoadError(
            f"cannot load {path!r}: module {module_name!r} failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
