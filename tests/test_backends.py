"""A new backend is one module plus one line in its kind's table (aiosvc.backends).

Proved with throwaway backends written to a temporary directory: nothing else in aiosvc
is told about them, yet settings accept their scheme, the factories build them, a
service runs on them, and the CLI asks them (not their URL) whether they live in-process.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

import aiosvc
from aiosvc import backends
from aiosvc.cli import main
from aiosvc.store import get_store, store_class
from aiosvc.transport import get_transport, transport_class

THROWAWAY = '''
"""Backends that exist only for this test."""

from aiosvc.store.memory import MemoryStore
from aiosvc.transport.memory import MemoryTransport


class LoopTransport(MemoryTransport):
    """loop://name: the memory broker under another scheme."""


class ScratchStore(MemoryStore):
    """scratch://name: the memory store under another scheme."""
'''


class Echo(aiosvc.Manager):
    topic = "echo"

    async def echo(self, ctx: aiosvc.Context, text: str) -> str:
        return text


@pytest.fixture
def throwaway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module with a new transport and store, and one line for each in the tables."""
    module = f"throwaway_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(THROWAWAY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backends.TRANSPORTS, "loop", f"{module}:LoopTransport")
    monkeypatch.setitem(backends.STORES, "scratch", f"{module}:ScratchStore")
    return module


def test_settings_accept_the_new_schemes_and_only_known_ones(throwaway: str) -> None:
    settings = aiosvc.Settings.load(transport_url="loop://a", database_url="scratch://a")
    assert type(get_transport(settings)).__name__ == "LoopTransport"
    assert type(get_store(settings)).__name__ == "ScratchStore"
    assert transport_class("loop://a").__module__ == throwaway
    with pytest.raises(aiosvc.ConfigError, match="loop"):
        aiosvc.Settings.load(transport_url="nope://a")


def test_without_its_table_line_a_scheme_is_refused() -> None:
    with pytest.raises(aiosvc.ConfigError, match="transport_url"):
        aiosvc.Settings.load(transport_url="loop://a")
    with pytest.raises(aiosvc.ConfigError, match="database_url: no backend for scheme 'scratch'"):
        store_class("scratch://a")


async def test_a_service_runs_on_the_new_backends(throwaway: str) -> None:
    name = uuid.uuid4().hex[:8]
    settings = aiosvc.Settings.load(
        transport_url=f"loop://{name}",
        database_url=f"scratch://{name}",
        host="h1",
        periodic_fuzzy_delay=0,
    )
    async with aiosvc.Service.create(Echo, settings=settings) as service:
        assert type(service.transport).__name__ == "LoopTransport"
        client = aiosvc.RPCClient(service.transport, "echo", timeout=5)
        assert await client.call(None, "echo", text="hi") == "hi"
        [record] = await service.store.list()  # type: ignore[union-attr]
        assert (record.host, record.binary, record.is_up) == ("h1", "aiosvc-echo", True)


def test_the_cli_asks_the_backend_whether_it_is_in_process(
    throwaway: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing in the CLI knows "loop://": the backend's in_process attribute answers.
    assert main(["call", "echo", "echo", "text=hi", "--transport-url", "loop://x"]) == 2
    assert "need a message broker shared with the services" in capsys.readouterr().err
    assert main(["services", "list", "--database-url", "scratch://x"]) == 2
    assert "need the database shared with the services" in capsys.readouterr().err
