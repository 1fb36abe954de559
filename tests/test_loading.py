"""``load_object``: how managers and drivers named in settings are found.

A user names a class in a setting or on the command line; when that name is wrong the
error must say which part is wrong (the path's form, the module, an import inside the
module, the attribute, or the kind of object), and be catchable as ``LoadError``,
``ImportError`` and ``ValueError`` alike.
"""

from __future__ import annotations

import collections
import importlib
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import aiosvc
from aiosvc.exceptions import ConfigError, LoadError
from aiosvc.loading import load_object
from aiosvc.manager import Manager
from examples.volume import MemoryVolumeDriver, VolumeDriver, VolumeManager, VolumeSettings

ModuleFactory = Callable[[str], str]


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleFactory]:
    """Write a module with a unique name under ``tmp_path``; return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(source: str) -> str:
        name = f"aiosvc_test_mod_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


# -- what loads


def test_colon_form_loads_the_class() -> None:
    assert load_object("examples.volume:VolumeManager") is VolumeManager


def test_dotted_form_loads_the_class() -> None:
    assert load_object("examples.volume.VolumeManager") is VolumeManager
    assert load_object("examples.volume.settings.VolumeSettings") is VolumeSettings


def test_stdlib_object_loads() -> None:
    assert load_object("collections:OrderedDict") is collections.OrderedDict


def test_surrounding_whitespace_is_ignored() -> None:
    # Values pasted into an environment variable or a TOML file often carry it.
    assert load_object("  examples.volume:VolumeManager\n") is VolumeManager


def test_nested_name_with_colon_form(make_module: ModuleFactory) -> None:
    name = make_module(
        """
        class Outer:
            class Inner:
                class Deepest:
                    pass
        """
    )
    module = importlib.import_module(name)
    assert load_object(f"{name}:Outer.Inner") is module.Outer.Inner
    assert load_object(f"{name}:Outer.Inner.Deepest") is module.Outer.Inner.Deepest


def test_object_need_not_be_a_class() -> None:
    assert load_object("aiosvc.loading:load_object") is load_object


def test_kind_accepts_the_class_and_subclasses() -> None:
    assert load_object("examples.volume:VolumeManager", Manager) is VolumeManager
    assert load_object("examples.volume:VolumeManager", VolumeManager) is VolumeManager
    driver = load_object("examples.volume.drivers:MemoryVolumeDriver", VolumeDriver)
    assert driver is MemoryVolumeDriver


def test_exported_from_the_package() -> None:
    assert aiosvc.load_object is load_object


# -- what fails, and how it says so


def _all_kinds_of_error(exc: BaseException) -> None:
    assert isinstance(exc, LoadError)
    assert isinstance(exc, ConfigError)
    assert isinstance(exc, ImportError)
    assert isinstance(exc, ValueError)
    assert "\n" not in str(exc)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "   ",
        "examples",  # a bare module: no attribute named
        "examples.volume:",
        ":VolumeManager",
        "examples.volume::VolumeManager",
        "examples.volume:VolumeManager:Other",
        "examples..volume:VolumeManager",
        ".volume:VolumeManager",  # relative imports make no sense here
        "examples/volume:VolumeManager",
        "examples.volume:Volume-Manager",
        "1examples.volume:VolumeManager",
    ],
)
def test_malformed_path_is_named_as_such(path: str) -> None:
    with pytest.raises(LoadError, match="invalid import path") as info:
        load_object(path)
    _all_kinds_of_error(info.value)
    assert repr(path) in str(info.value)
    assert "pkg.module:Name" in str(info.value)


@pytest.mark.parametrize("value", [None, 42, b"examples.volume:VolumeManager"])
def test_a_path_that_is_not_a_string_is_malformed(value: object) -> None:
    with pytest.raises(LoadError, match="invalid import path"):
        load_object(value)  # type: ignore[call-overload]


def test_missing_top_level_module() -> None:
    with pytest.raises(LoadError) as info:
        load_object("no_such_pkg_xyz.mod:Thing")
    message = str(info.value)
    _all_kinds_of_error(info.value)
    assert "'no_such_pkg_xyz.mod' not found" in message
    assert "no module named 'no_such_pkg_xyz'" in message  # which part of it is missing
    assert "failed to import" not in message


def test_missing_submodule_of_an_existing_package() -> None:
    with pytest.raises(LoadError) as info:
        load_object("examples.no_such_module:Thing")
    assert "module 'examples.no_such_module' not found" in str(info.value)
    _all_kinds_of_error(info.value)


def test_missing_module_in_dotted_form() -> None:
    with pytest.raises(LoadError, match=r"module 'examples\.nothing' not found"):
        load_object("examples.nothing.Thing")


def test_module_whose_own_import_is_missing_is_not_reported_as_not_found(
    make_module: ModuleFactory,
) -> None:
    # The module exists; one of *its* imports is missing: a bug in that module (or a
    # dependency not installed), which "not found" would hide.
    name = make_module(
        """
        import aiosvc_dependency_that_is_not_installed

        class Driver:
            pass
        """
    )
    with pytest.raises(LoadError) as info:
        load_object(f"{name}:Driver")
    message = str(info.value)
    _all_kinds_of_error(info.value)
    assert f"module {name!r} failed to import" in message
    assert "aiosvc_dependency_that_is_not_installed" in message
    assert "not found" not in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert info.value.__cause__.name == "aiosvc_dependency_that_is_not_installed"


def test_module_raising_at_import_chains_the_original_error(make_module: ModuleFactory) -> None:
    name = make_module(
        """
        raise RuntimeError("driver needs /dev/kvm")
        """
    )
    with pytest.raises(LoadError) as info:
        load_object(f"{name}:Anything")
    message = str(info.value)
    _all_kinds_of_error(info.value)
    assert f"module {name!r} failed to import" in message
    assert "RuntimeError: driver needs /dev/kvm" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "driver needs /dev/kvm"


def test_module_with_a_syntax_error(make_module: ModuleFactory) -> None:
    name = make_module("def broken(:\n")
    with pytest.raises(LoadError, match="failed to import: SyntaxError") as info:
        load_object(f"{name}.broken")
    assert isinstance(info.value.__cause__, SyntaxError)


def test_missing_attribute_names_the_module_and_the_attribute() -> None:
    with pytest.raises(LoadError) as info:
        load_object("examples.volume:NoSuchManager")
    message = str(info.value)
    _all_kinds_of_error(info.value)
    assert "'examples.volume' has no attribute 'NoSuchManager'" in message
    assert info.value.__cause__ is None  # an AttributeError traceback would add nothing


def test_missing_nested_attribute_names_the_owner() -> None:
    with pytest.raises(LoadError) as info:
        load_object("examples.volume:VolumeManager.NoSuchThing")
    assert "'examples.volume:VolumeManager' has no attribute 'NoSuchThing'" in str(info.value)


def test_missing_attribute_in_dotted_form() -> None:
    with pytest.raises(LoadError, match=r"'examples\.volume' has no attribute 'Nope'"):
        load_object("examples.volume.Nope")


@pytest.mark.parametrize(
    ("path", "module"),
    [
        ("examples.volume", "examples.volume"),  # the usual slip: the module, not its class
        ("examples:volume", "examples.volume"),
        ("examples.volume:drivers", "examples.volume.drivers"),
        ("examples.volume.drivers", "examples.volume.drivers"),
    ],
)
@pytest.mark.parametrize("kind", [None, Manager])
def test_a_path_naming_a_module_says_to_name_a_class_in_it(
    path: str, module: str, kind: type[Manager] | None
) -> None:
    with pytest.raises(LoadError) as info:
        load_object(path) if kind is None else load_object(path, kind)
    _all_kinds_of_error(info.value)
    assert str(info.value) == (
        f"cannot load {path!r}: {module!r} is a module; name a class in it as 'pkg.module:Class'"
    )


def test_a_submodule_not_imported_yet_is_named_as_a_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package does not import its submodule, so it has no such attribute: the error
    # must still say that the path names a module, without importing that module.
    package = f"aiosvc_test_pkg_{uuid.uuid4().hex[:10]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "manager.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(LoadError) as info:
            load_object(f"{package}.manager", Manager)
        assert f"{package + '.manager'!r} is a module" in str(info.value)
        assert "'pkg.module:Class'" in str(info.value)
        assert f"{package}.manager" not in sys.modules
    finally:
        sys.modules.pop(package, None)


def test_kind_mismatch_names_both_classes() -> None:
    with pytest.raises(LoadError) as info:
        load_object("examples.volume:VolumeSettings", Manager)
    message = str(info.value)
    _all_kinds_of_error(info.value)
    assert "VolumeSettings" in message
    assert "is not a subclass of Manager" in message


def test_kind_that_is_not_a_class_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="is not a subclass of len"):
        load_object("examples.volume:VolumeManager", len)


def test_kind_mismatch_for_an_object_that_is_not_a_class() -> None:
    with pytest.raises(LoadError, match="is not a subclass of Manager"):
        load_object("aiosvc.loading:load_object", Manager)


def test_kind_rejects_an_instance_of_the_kind(make_module: ModuleFactory) -> None:
    # A module-level *instance* is not a driver class, even if it is of the right type.
    name = make_module(
        """
        from examples.volume.drivers import MemoryVolumeDriver
        from examples.volume.settings import VolumeSettings

        DRIVER = MemoryVolumeDriver(VolumeSettings())
        """
    )
    with pytest.raises(LoadError, match="is not a subclass of VolumeDriver"):
        load_object(f"{name}:DRIVER", VolumeDriver)
