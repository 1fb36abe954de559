"""The test suite on every Python the package claims (pyproject.toml: 3.11 to 3.13).

    nox -s tests-3.12 tests-3.13             # as .ci/run does; `nox` alone runs all three
    nox -s tests-3.13 -- -m "not amqp and not postgres"   # after --: pytest's arguments

Without arguments a session leaves out the tests marked ``faults`` and ``load``: they break
or load the servers for minutes and test the broker and the processes, not the Python
version; the README's test command runs them once, on the machine's Python. It also leaves
out ``interop`` (tests/interop/, against the real oslo.messaging): that tests the wire, which
no Python version changes, and oslo.messaging is not installed here (extra
``aiosvc[interop-test]``).

Each session is a fresh virtualenv under .nox/ with ``.[test]`` installed, and its pytest
starts its own throwaway RabbitMQ and PostgreSQL, as the README's test command does (or
uses ``AIOSVC_TEST_AMQP_URL`` / ``AIOSVC_TEST_DATABASE_URL`` when they are set). nox looks
for ``python3.12`` and so on on PATH; a Python it cannot find fails the run.
"""

from __future__ import annotations

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install the package with its test extra and run pytest (arguments after ``--``)."""
    session.install("--quiet", ".[test]")
    args = session.posargs or ["-m", "not faults and not load and not interop"]
    session.run("python", "-m", "pytest", *args)
