"""Sphinx configuration of aiosvc's API reference, built from the docstrings.

    .venv/bin/sphinx-build -E -W --keep-going -n -q -b html docs/reference build/docs  # as .ci/run

Why Sphinx: ``autodoc`` reads the docstrings from the code itself and ``napoleon`` reads the
Google style ("Args:", "Returns:", "Raises:") they are written in; both ship with Sphinx, one
well-kept package with no plugins to keep in step. ``-n`` (nitpicky) makes every reference
that leads nowhere a warning and ``-W`` every warning an error, so a docstring naming a class,
method or module that does not exist fails the build.

The prose pages (README.md, docs/*.md) stay Markdown, read where they are; this site is the
reference they point to. The settings table is generated from :class:`aiosvc.Settings` by the
``aiosvc-settings`` directive below, so it cannot drift from the code.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.domains.python import PythonDomain
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import aiosvc  # noqa: E402  (after the path is set)

logger = logging.getLogger(__name__)

project = "aiosvc"
author = "aiosvc developers"
copyright = "aiosvc developers"
release = version = aiosvc.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"  # ships with Sphinx
html_static_path: list[str] = []

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
    # pydantic's machinery on Settings: the table of settings says what matters.
    "exclude-members": "model_config, model_post_init, settings_customise_sources",
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -n checks every cross-reference. CI reaches no documentation site, so there are no
# intersphinx inventories: references into the standard library and the dependencies are
# not checked (written in full, they still read well). References into aiosvc always are.
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(_asyncio|abc|asyncio|collections|contextlib|contextvars|datetime|enum|logging|"
        r"pathlib|socket|types|typing|typing_extensions|uuid|anyio|aio_pika|aiormq|asyncpg|"
        r"pydantic|pydantic_settings|_pytest|pytest|yarl)(\..*)?",
    ),
    # Private names (a sentinel's class, a queue's internals) in signatures: not documented.
    (r"py:class", r"aiosvc\..*\._\w+"),
    # Type variables and aliases that autodoc shows by name.
    (r"py:.*", r"(aiosvc\.\S+\.)?(S|T|P|R|F|M|LogLevel|ExchangeKind|MessageCallback|ReplyFn)"),
]


class SettingsTable(SphinxDirective):
    """``.. aiosvc-settings::``: a table of every field of :class:`aiosvc.Settings`."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        rows = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 22 30 14 34",
            "",
            "   * - setting",
            "     - environment variable",
            "     - default",
            "     - meaning",
        ]
        for name, field in aiosvc.Settings.model_fields.items():
            if not field.description:
                logger.warning(
                    "aiosvc.Settings.%s has no description", name, location=self.get_location()
                )
            rows += [
                f"   * - ``{name}``",
                f"     - ``AIOSVC_{name.upper()}``",
                f"     - {_default(name, field)}",
                f"     - {field.description or ''}",
            ]
        node = nodes.container()
        self.state.nested_parse(StringList(rows, source="aiosvc.Settings"), 0, node)
        return node.children


def _default(name: str, field: Any) -> str:
    if name == "host":
        return "this machine's name (``socket.gethostname()``)"
    if field.default_factory is not None:
        return f"``{field.default_factory()!r}``"
    return f"``{field.default!r}``"


def _factory_defaults(  # noqa: PLR0917  (the signature of Sphinx's event)
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    ret: str | None,
) -> tuple[str | None, str | None] | None:
    # A dataclass field with a default_factory shows its default as ``<factory>``, which is
    # not Python: Sphinx then cannot parse the signature and splits it at every comma.
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), ret
    return None


def _resolve(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.Element | None:
    """Resolve a reference to an aiosvc object documented under another name.

    The reference documents each object once, under its public name (``aiosvc.Transport``,
    with its defining module's name as the canonical one), while docstrings name objects the
    way their code imports them (``aiosvc.transport.Transport``, ``ServiceStore`` in
    ``aiosvc.store``, ``Connections`` imported under ``TYPE_CHECKING``). So a reference that
    Sphinx could not resolve is looked up (1) by importing it, from the module it was
    written in, and finding the documented object it is; else (2) as a short name that fits
    exactly one documented aiosvc object of the right kind. A name that still fits nothing
    stays unresolved: a warning, hence an error.
    """
    if node.get("refdomain") != "py" or not node.get("reftarget"):
        return None
    domain = env.get_domain("py")
    assert isinstance(domain, PythonDomain)
    target = node["reftarget"].lstrip("~.")
    kinds = set(domain.objtypes_for_role(node["reftype"]) or ())
    entries = {n: e for n, e in domain.objects.items() if n.startswith("aiosvc.")}
    name = _canonical(target, node.get("py:module"))
    if name not in entries:
        found = [
            n
            for n, e in entries.items()
            if (n == target or n.endswith("." + target)) and e.objtype in kinds and not e.aliased
        ]
        name = found[0] if len(found) == 1 else None
    if name is None:
        return None
    entry = entries[name]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)


def _canonical(target: str, module: str | None) -> str | None:
    """The ``module.qualname`` of the object ``target`` names, if it imports."""
    candidates = [target] if target.startswith("aiosvc.") else []
    if module:
        candidates.append(f"{module}.{target}")
    for dotted in candidates:
        parts = dotted.split(".")
        for split in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:split]))
                for attr in parts[split:]:
                    obj = getattr(obj, attr)
            except (ImportError, AttributeError):
                continue
            owner = getattr(obj, "__module__", None)
            qualname = getattr(obj, "__qualname__", None)
            if owner and qualname:
                return f"{owner}.{qualname}"
            if isinstance(obj, types.ModuleType):
                return obj.__name__
            break
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("aiosvc-settings", SettingsTable)
    app.connect("autodoc-process-signature", _factory_defaults)
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True}
