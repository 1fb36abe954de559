"""TLS to the broker (``amqps://``) and to the database (``sslmode=verify-full``), for real.

The test makes a certificate authority and a server certificate for ``localhost`` and
``127.0.0.1`` (trustme), and starts a RabbitMQ node with a TLS listener and a PostgreSQL
cluster that takes TLS connections only. A service then runs over both with the CA named in
its URLs; a CA that did not sign the servers' certificate fails at once, in one line that
names the server and shows no password.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from aiosvc import Settings
from tests.procs import aiosvc_proc, clean_env, run_cli, wait_journal
from tests.servers import (
    PostgresCluster,
    RabbitNode,
    find_postgres_bin,
    find_rabbitmq,
    free_ports,
)

pytestmark = pytest.mark.slow

SECRET = "Sekr3t-Pa55"
#: A failed TLS handshake must be reported well within this (no hang, no retry loop).
FAIL_FAST = 30.0


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA that signed the servers' certificate, another CA, the server's."""

    ca: Path
    other_ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    where = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    files = Certificates(
        where / "ca.pem", where / "other-ca.pem", where / "server.pem", where / "server.key"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    other.cert_pem.write_to_path(str(files.other_ca))
    server.private_key_pem.write_to_path(str(files.key))
    for blob in server.cert_chain_pems:  # the server's certificate first, then the chain
        blob.write_to_path(str(files.cert), append=True)
    return files


def no_secret_and_one_line(output: str, names: str) -> str:
    """The one line of ``output``; it names ``names`` and shows no password."""
    assert SECRET not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert names in lines[0], output
    return lines[0]


# -- RabbitMQ over TLS -----------------------------------------------------------------------------


class TLSRabbitNode(RabbitNode):
    """A :class:`RabbitNode` that also listens for AMQP over TLS on ``tls_port``."""

    def __init__(self, certificates: Certificates) -> None:
        super().__init__()
        self.certificates = certificates
        (self.tls_port,) = free_ports(1)

    def _write_config(self) -> None:
        super()._write_config()
        assert self.directory is not None
        c = self.certificates
        with (self.directory / "rabbitmq.conf").open("a") as conf:
            conf.write(
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {c.ca}\n"
                f"ssl_options.certfile = {c.cert}\n"
                f"ssl_options.keyfile = {c.key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )

    def tls_url(self, cafile: Path, password: str = "guest") -> str:
        """The ``amqps://`` URL of the TLS listener, trusting ``cafile``."""
        return f"amqps://guest:{password}@localhost:{self.tls_port}/?cafile={cafile}"


@pytest.fixture(scope="module")
def tls_rabbit(certificates: Certificates) -> Iterator[TLSRabbitNode]:
    if find_rabbitmq() is None:
        pytest.skip("RabbitMQ is not installed")
    with TLSRabbitNode(certificates) as node:
        yield node


@pytest.mark.amqp
def test_a_service_answers_over_amqps(
    tls_rabbit: TLSRabbitNode, certificates: Certificates, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    env = clean_env(
        AIOSVC_TRANSPORT_URL=tls_rabbit.tls_url(certificates.ca),
        AIOSVC_JOURNAL=str(journal),
        AIOSVC_GRACEFUL_SHUTDOWN_TIMEOUT="5",
    )
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    with aiosvc_proc(["run", "--manager", "tests.apps:Journaling", "--topic", topic], env) as svc:
        svc.wait_for("Started", timeout=60)
        called = run_cli(["call", topic, "echo", "value:=[1, 2]", "--json"], env)
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout) == [1, 2]
        cast = run_cli(["cast", topic, "record", "item=over-tls"], env)
        assert cast.returncode == 0, cast.stderr
        wait_journal(journal, lambda es: any(e.get("item") == "over-tls" for e in es))
        # Every connection the broker has is a TLS one: nothing fell back to plain AMQP.
        rows = tls_rabbit.rabbitmqctl("list_connections", "port", "ssl", "--no-table-headers")
        connections = [row.split("\t") for row in rows.splitlines() if row.strip()]
        assert connections, "the service holds no connection"
        assert all(c == [str(tls_rabbit.tls_port), "true"] for c in connections), connections
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0


@pytest.mark.amqp
@pytest.mark.parametrize("command", ["call", "run"])
def test_a_broker_certificate_from_another_ca_fails_at_once(
    tls_rabbit: TLSRabbitNode, certificates: Certificates, command: str
) -> None:
    url = tls_rabbit.tls_url(certificates.other_ca, password=SECRET)
    argv = {
        "call": ["call", "journal", "echo", "value=1", "--timeout", "60"],
        "run": ["run", "--manager", "tests.apps:Journaling"],
    }[command]
    started = time.monotonic()
    done = run_cli(argv, clean_env(AIOSVC_TRANSPORT_URL=url), timeout=2 * FAIL_FAST)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    line = no_secret_and_one_line(
        done.stdout + done.stderr, f"AMQP broker {url.replace(SECRET, '***')}"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert elapsed < FAIL_FAST


# -- PostgreSQL over TLS ---------------------------------------------------------------------------


class TLSPostgresCluster(PostgresCluster):
    """A :class:`PostgresCluster` that takes TCP connections over TLS only."""

    def __init__(self, certificates: Certificates) -> None:
        super().__init__()
        self.certificates = certificates

    def _initdb(self) -> None:
        super()._initdb()
        data = self._data
        # The server reads its key only if no one else may: mode 0600, owned by its user.
        for source, name in (
            (self.certificates.cert, "server.crt"),
            (self.certificates.key, "server.key"),
        ):
            shutil.copyfile(source, data / name)
            os.chmod(data / name, 0o600)
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(data / name, owner.pw_uid, owner.pw_gid)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        hba = data / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        # TCP over TLS only: every "host" line becomes "hostssl".
        hba.write_text(
            "\n".join("hostssl" + x[4:] if x.startswith("host ") else x for x in lines) + "\n"
        )

    def tls_url(
        self, rootcert: Path, sslmode: str = "verify-full", password: str = "aiosvc"
    ) -> str:
        """The URL of the ``aiosvc`` database at ``localhost``, verified against ``rootcert``."""
        return (
            f"postgresql://aiosvc:{password}@localhost:{self.port}/aiosvc"
            f"?sslmode={sslmode}&sslrootcert={rootcert}"
        )


@pytest.fixture(scope="module")
def tls_postgres(certificates: Certificates) -> Iterator[TLSPostgresCluster]:
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    with TLSPostgresCluster(certificates) as cluster:
        yield cluster


@pytest.mark.postgres
def test_a_service_reports_to_postgres_over_verified_tls(
    tls_postgres: TLSPostgresCluster, certificates: Certificates
) -> None:
    env = clean_env(
        AIOSVC_DATABASE_URL=tls_postgres.tls_url(certificates.ca),
        AIOSVC_REPORT_INTERVAL="0.5",
    )
    host = f"tls-{uuid.uuid4().hex[:8]}"
    with aiosvc_proc(["run", "--manager", "tests.apps:Journaling", "--host", host], env) as svc:
        svc.wait_for("Started", timeout=60)
        listed = run_cli(["services", "list", "--host", host, "--json"], env)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["host"], r["state"]) for r in rows] == [(host, "up")], rows
        # The server saw TLS: its view of the service's connections.
        ssl = tls_postgres.psql(
            "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.usename = 'aiosvc'"
        )
        assert ssl.split() == ["t"], ssl
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("sslmode", "expected"),
    [("verify-full", "certificate verify failed"), ("disable", "no encryption")],
)
def test_an_unverified_database_fails_at_once(
    tls_postgres: TLSPostgresCluster, certificates: Certificates, sslmode: str, expected: str
) -> None:
    url = tls_postgres.tls_url(certificates.other_ca, sslmode=sslmode, password=SECRET)
    started = time.monotonic()
    done = run_cli(["services", "list"], clean_env(AIOSVC_DATABASE_URL=url), timeout=2 * FAIL_FAST)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    line = no_secret_and_one_line(
        done.stdout + done.stderr, f"database {url.replace(SECRET, '***')}"
    )
    assert expected in line
    assert elapsed < FAIL_FAST


def test_settings_keep_tls_urls_whole_and_mask_only_the_password() -> None:
    amqps = (
        f"amqps://guest:{SECRET}@localhost:5671/vh"
        "?cafile=/etc/ca.pem&certfile=/etc/c.pem&keyfile=/etc/k.pem"
    )
    pg = f"postgresql://aiosvc:{SECRET}@db:5432/aiosvc?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    settings = Settings.load(isolated=True, transport_url=amqps, database_url=pg)
    assert (settings.transport_url, settings.database_url) == (amqps, pg)
    public = settings.public_dict()
    assert public["transport_url"] == amqps.replace(SECRET, "***")
    assert public["database_url"] == pg.replace(SECRET, "***")
