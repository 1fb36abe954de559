"""Settings for tests: only what the test says, never the user's ``AIOSVC_*`` environment.

:func:`isolated_settings` builds settings from explicit values alone: no ``AIOSVC_*``
variable, no ``.env``, no config file (``Settings.load(isolated=True)``). The isolation
survives the upgrade to a manager's ``settings_class`` (``Service.create`` and ``Manager``
call ``reload_as``, which keeps it), so an exported
``AIOSVC_REPORT_INTERVAL`` or ``AIOSVC_VOLUME_DRIVER`` never changes what a test runs.
:meth:`aiosvc.Settings.load` keeps reading every source, as before.

:func:`server_overrides` is how the pytest plugin switches to a real RabbitMQ and
PostgreSQL: from ``AIOSVC_TEST_AMQP_URL`` and ``AIOSVC_TEST_DATABASE_URL``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar, overload

from ..settings import Settings

__all__ = [
    "TEST_AMQP_URL_ENV",
    "TEST_DATABASE_URL_ENV",
    "isolated_settings",
    "server_overrides",
]

S = TypeVar("S", bound=Settings)

TEST_AMQP_URL_ENV = "AIOSVC_TEST_AMQP_URL"
"""A RabbitMQ for the plugin's fixtures to use instead of the in-memory broker."""
TEST_DATABASE_URL_ENV = "AIOSVC_TEST_DATABASE_URL"
"""A PostgreSQL database for the plugin's fixtures to use instead of the in-memory store."""


@overload
def isolated_settings(settings_class: None = None, /, **overrides: Any) -> Settings: ...


@overload
def isolated_settings(settings_class: type[S], /, **overrides: Any) -> S: ...


def isolated_settings(
    settings_class: type[Settings] | None = None, /, **overrides: Any
) -> Settings:
    """Settings on a broker and store of their own, with test-friendly timings.

    A private in-memory broker and store (``memory://test-<random>``), host ``test-host``,
    no fuzzy delay before first runs, short graceful and call timeouts; ``overrides`` win.
    Nothing is read from the environment, ``.env`` or a config file.

    Args:
        settings_class: a :class:`~aiosvc.Settings` subclass with a manager's own options
            (``isolated_settings(VolumeSettings, volume_driver=...)``); ``Settings`` by default.
        overrides: setting values.

    Raises:
        ConfigError: an override is invalid.
    """
    name = f"test-{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = {
        "transport_url": f"memory://{name}",
        "database_url": f"memory://{name}",
        "host": "test-host",
        "periodic_fuzzy_delay": 0,
        "graceful_shutdown_timeout": 5,
        "rpc_response_timeout": 5,
    }
    values.update(overrides)
    return (settings_class or Settings).load(isolated=True, **values)


def server_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Overrides that put a test on a real broker and database, when the environment names them.

    ``AIOSVC_TEST_AMQP_URL`` becomes ``transport_url`` and ``AIOSVC_TEST_DATABASE_URL``
    ``database_url``; when either is set, the test also gets a ``host`` of its own, so its
    service records and its ``topic.host`` queues are its alone. Empty when neither is set.

    The ``control_exchange`` stays the default: RabbitMQ fixes a queue's dead-letter
    exchange (``<control_exchange>.dlx``) when the queue is first declared, so the shared
    ``topic`` queues only work with one exchange per broker (vhost). Tests therefore share
    those queues: a cast no service handled during its test waits there for the next
    test's service. Give the test suite a broker or vhost of its own.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if env.get(TEST_AMQP_URL_ENV):
        values["transport_url"] = env[TEST_AMQP_URL_ENV]
    if env.get(TEST_DATABASE_URL_ENV):
        values["database_url"] = env[TEST_DATABASE_URL_ENV]
    if values:
        values["host"] = f"test-{uuid.uuid4().hex[:12]}"
    return values
