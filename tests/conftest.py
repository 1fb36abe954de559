"""Shared fixtures of the aiosvc test suite.

Real servers (see ``tests/servers.py``), session-scoped and started lazily, only when a test asks:

- ``amqp_url``: ``$AIOSVC_TEST_AMQP_URL`` if set, else the URL of a throwaway RabbitMQ node.
- ``rabbitmq``: that node (a ``RabbitNode``), for tests that stop/start the broker or run
  ``rabbitmqctl``; None when ``$AIOSVC_TEST_AMQP_URL`` is set, as there is no node to control
  (a test that needs one then calls ``pytest.skip``; under CI the fixture fails instead).
- ``database_url``: ``$AIOSVC_TEST_DATABASE_URL`` if set, else the ``aiosvc`` database of a
  throwaway PostgreSQL cluster.
- ``postgres``: that cluster (a ``PostgresCluster``); None with ``$AIOSVC_TEST_DATABASE_URL``,
  under the same rule as ``rabbitmq``.
- ``fresh_database_url`` (per test): a new, empty database on the same server, dropped afterwards.
  With an external server its role needs the CREATEDB privilege.

When the server binaries are missing those tests are skipped, except under ``CI=true``, where a
test that cannot get its server fails. Tests using these fixtures are marked ``amqp`` /
``postgres`` automatically, so ``-m "not amqp and not postgres"`` runs the unit tests alone.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import NoReturn, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import hypothesis
import pytest

from tests.servers import (
    PostgresCluster,
    RabbitNode,
    ServerError,
    find_postgres_bin,
    find_rabbitmq,
)

AMQP_URL_ENV = "AIOSVC_TEST_AMQP_URL"
DATABASE_URL_ENV = "AIOSVC_TEST_DATABASE_URL"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_SERVER_FIXTURES = {
    "amqp": {"amqp_url", "rabbitmq", "fresh_amqp_url"},
    "postgres": {"database_url", "postgres", "fresh_database_url"},
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _SERVER_FIXTURES.items():
            if used & fixtures:
                item.add_marker(marker)


def _unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, where every server test must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: a missing server is a failure)", pytrace=False)
    pytest.skip(reason)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _teardown_on_sigterm() -> None:
    """Let SIGTERM (a CI timeout, ``kill``) unwind like Ctrl-C, so session teardown stops servers.

    Servers run in sessions of their own and would otherwise outlive a terminated pytest.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _external(variable: str) -> bool:
    """Whether ``variable`` names an external server; under CI, tests must control theirs."""
    if not os.environ.get(variable):
        return False
    if IN_CI:
        pytest.fail(
            f"{variable} is set, but under CI tests control their own servers", pytrace=False
        )
    return True


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitNode | None]:
    """The session's own RabbitMQ node; None when ``$AIOSVC_TEST_AMQP_URL`` is used instead."""
    if _external(AMQP_URL_ENV):
        yield None
        return
    if find_rabbitmq() is None:
        _unavailable(
            "RabbitMQ is not installed (apt-get install rabbitmq-server), "
            f"and {AMQP_URL_ENV} is not set"
        )
    _teardown_on_sigterm()
    with RabbitNode() as node:
        yield node


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    """URL of a RabbitMQ to test against: ``$AIOSVC_TEST_AMQP_URL`` or the session's node."""
    return os.environ.get(AMQP_URL_ENV) or cast(RabbitNode, request.getfixturevalue("rabbitmq")).url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster | None]:
    """The session's own PostgreSQL cluster; None when ``$AIOSVC_TEST_DATABASE_URL`` is used."""
    if _external(DATABASE_URL_ENV):
        yield None
        return
    if find_postgres_bin() is None:
        _unavailable(
            "PostgreSQL is not installed (apt-get install postgresql), "
            f"and {DATABASE_URL_ENV} is not set"
        )
    _teardown_on_sigterm()
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> str:
    """URL of a PostgreSQL database: ``$AIOSVC_TEST_DATABASE_URL`` or the session cluster's."""
    return (
        os.environ.get(DATABASE_URL_ENV)
        or cast(PostgresCluster, request.getfixturevalue("postgres")).url
    )


@pytest.fixture
async def fresh_database_url(database_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database on the server of ``database_url``; dropped after the test."""
    name = f"aiosvc_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
def fresh_amqp_url(request: pytest.FixtureRequest, amqp_url: str) -> Iterator[str]:
    """URL of a new, empty virtual host on the session's RabbitMQ; deleted after the test.

    For tests that run services with fixed topics (the examples' ``volume``, ``scheduler``):
    a queue's arguments are fixed when first declared, so tests must not share its vhost.
    """
    node = cast("RabbitNode | None", request.getfixturevalue("rabbitmq"))
    if node is None:
        _unavailable(f"a fresh vhost needs the session's own RabbitMQ node ({AMQP_URL_ENV} is set)")
    vhost = f"aiosvc-test-{uuid.uuid4().hex[:12]}"
    _add_vhost(node, vhost)
    try:
        yield urlunsplit(urlsplit(amqp_url)._replace(path=f"/{vhost}"))
    finally:
        node.rabbitmqctl("delete_vhost", vhost)


def _add_vhost(node: RabbitNode, vhost: str) -> None:
    """Add ``vhost`` with every permission for guest: one ``rabbitmqctl eval`` (each run of
    rabbitmqctl starts an Erlang VM, about a second on a busy machine), or, where RabbitMQ's
    internal functions differ from 3.10's, the two commands."""
    try:
        node.rabbitmqctl(
            "eval",
            f'ok = rabbit_vhost:add(<<"{vhost}">>, <<"aiosvc-tests">>), '
            f'ok = rabbit_auth_backend_internal:set_permissions(<<"guest">>, <<"{vhost}">>, '
            '<<".*">>, <<".*">>, <<".*">>, <<"aiosvc-tests">>).',
        )
    except ServerError:
        node.rabbitmqctl("add_vhost", vhost)
        node.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


# ================================================================================================
# Shared non-server fixtures: add new fixtures below this line.
# ================================================================================================

# Hypothesis (tests/test_properties.py, tests/test_cli_properties.py): the same examples on
# every run and machine (derandomize, no example database), bounded so a property file runs
# in seconds, and no per-example deadline: the machine is shared and busy.
# HYPOTHESIS_PROFILE=explore searches further, with random examples, when run by hand.
hypothesis.settings.register_profile(
    "aiosvc", derandomize=True, database=None, deadline=None, max_examples=100
)
hypothesis.settings.register_profile("explore", database=None, deadline=None, max_examples=2000)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "aiosvc"))
