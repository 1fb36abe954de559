"""The event loop a process runs on: asyncio's own, or uvloop's.

``event_loop = "auto"`` (the default) takes uvloop when it is installed
(``pip install 'aiosvc[uvloop]'``), ``"uvloop"`` insists on it, ``"asyncio"`` never
uses it. ``python -m aiosvc run`` and its workers run on :func:`loop_factory`'s choice;
an application embedding services picks its own loop, for example::

    with asyncio.Runner(loop_factory=aiosvc.loop_factory(settings)) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .exceptions import ConfigError
from .settings import Settings

__all__ = ["loop_factory", "loop_name", "run"]

T = TypeVar("T")


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the event loop ``settings.event_loop`` asks for; None for asyncio's.

    Raises:
        ConfigError: ``event_loop = "uvloop"`` and uvloop is not installed.
    """
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            raise ConfigError(
                "event_loop = 'uvloop' needs uvloop, which is not installed: "
                "pip install 'aiosvc[uvloop]' (or set event_loop = 'auto')"
            ) from None
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop this is, for log lines."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run ``main`` to completion on the loop ``settings.event_loop`` chooses.

    Raises:
        ConfigError: the loop asked for is not installed (``main`` is closed unrun).
    """
    try:
        factory = loop_factory(settings)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
