"""Connections to RabbitMQ: broker lists, failover, and what is logged about the broker.

The fault suite (``tests/faults/``) kills real nodes under load; these tests pin the pieces:
how a URL listing several brokers is read and shown, that the first broker that answers is
used, that the loss and return of the broker are logged once (with a reminder a minute), and
that aio-pika's and aiormq's own lines never reach an operator's log at INFO, nor a password.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator

import pytest

from aiosvc import Settings
from aiosvc.exceptions import TransportError
from aiosvc.settings import redact_url
from aiosvc.testing import wait_until
from aiosvc.transport import get_transport
from aiosvc.transport.amqp import connection
from aiosvc.transport.amqp.connection import BrokerWatch, broker_urls, relay_library_logs
from tests.test_transport import Inbox

SECRET = "Sekr3t-Pa55"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the broker list


def test_one_broker_is_one_url() -> None:
    assert [str(u) for u in broker_urls("amqp://u:p@h:5672/v")] == ["amqp://u:p@h:5672/v"]


def test_a_list_gives_each_host_the_credentials_path_and_query() -> None:
    urls = broker_urls("amqps://u:p@h1:5671,h2,w:q@h3:1/vh?cafile=/ca.pem")
    assert [str(u) for u in urls] == [
        "amqps://u:p@h1:5671/vh?cafile=/ca.pem",
        "amqps://u:p@h2/vh?cafile=/ca.pem",
        "amqps://w:q@h3:1/vh?cafile=/ca.pem",
    ]
    assert [str(u) for u in broker_urls("amqp://h1,h2?x=1")] == [
        "amqp://h1/?x=1",
        "amqp://h2/?x=1",
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://h1,,h2/", "an empty host in the broker list"),
        ("amqp://u:p@h1,h2:99999/", "bad broker 'h2:99999'"),
        ("amqp://u:p@h1,h2:port/", "bad broker 'h2:port'"),
    ],
)
def test_a_bad_broker_in_the_list_is_named(url: str, message: str) -> None:
    with pytest.raises(TransportError, match=message) as caught:
        broker_urls(url)
    assert ":p@" not in str(caught.value)


def test_every_password_of_a_list_is_masked() -> None:
    assert redact_url("amqp://a:p1@h1:1,b:p2@h2:2,h3/v") == "amqp://a:***@h1:1,b:***@h2:2,h3/v"
    assert redact_url("amqp://a@h1,h2/") == "amqp://a@h1,h2/"


# -- what is logged about the broker


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_the_loss_is_logged_once_with_a_reminder_and_the_return_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "REMIND_EVERY", 0.01)
    caplog.set_level(logging.INFO, "aiosvc")
    watch = BrokerWatch("amqp://guest:***@broker/")
    url = broker_urls("amqp://guest:pw@broker/")[0]

    watch.lost("client", ConnectionResetError("reset by peer"))
    watch.lost("consumer", ConnectionResetError("reset by peer"))  # the same outage
    await wait_until(lambda: len(_lines(caplog, "still no AMQP broker")) >= 2)
    watch.back("client", url)
    assert not _lines(caplog, "reconnected")  # the consumer's connection is still down
    watch.back("consumer", url)
    reminders = len(_lines(caplog, "still no AMQP broker"))

    assert _lines(caplog, "lost the AMQP broker") == [
        "lost the AMQP broker amqp://guest:***@broker/ (reset by peer); reconnecting"
    ]
    [back] = _lines(caplog, "reconnected")
    assert back.startswith("reconnected to the AMQP broker amqp://guest:***@broker/ after ")
    assert watch.down_since is None
    await wait_until(lambda: watch._reminder is None)
    assert len(_lines(caplog, "still no AMQP broker")) == reminders  # none once it is back


def test_library_lines_are_relayed_at_debug_with_passwords_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay_library_logs([SECRET])
    library = logging.getLogger("aiormq.connection")
    caplog.set_level(logging.DEBUG, "aiosvc")
    library.error("Unexpected connection close from amqp://operator:%s@h/", SECRET)
    [record] = [r for r in caplog.records if r.name.startswith("aiosvc")]
    assert (record.name, record.levelno) == ("aiosvc.transport.amqp.library", logging.DEBUG)
    assert record.getMessage() == (
        "aiormq.connection: Unexpected connection close from amqp://operator:***@h/"
    )


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def root_log() -> Iterator[_Collect]:
    """What an operator's INFO log on the root logger gets (caplog also taps loggers that
    do not propagate, so it cannot show this)."""
    handler = _Collect()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_an_unreachable_broker_is_one_error_and_no_library_noise(root_log: _Collect) -> None:
    url = f"amqp://guest:{SECRET}@127.0.0.1:{_closed_port()},127.0.0.1:{_closed_port()}/"
    transport = get_transport(Settings(transport_url=url))
    with pytest.raises(TransportError) as caught:
        await transport.connect()
    assert str(caught.value).startswith("cannot connect to AMQP broker amqp://guest:***@127.0.0.1:")
    assert SECRET not in str(caught.value)
    assert root_log.messages == []  # aiormq's ERROR line for each broker used to come first


# -- failover


@pytest.mark.amqp
async def test_the_first_broker_of_the_list_that_answers_is_used(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aiosvc")
    real = broker_urls(amqp_url)[0]
    dead = f"127.0.0.1:{_closed_port()}"
    listed = f"amqp://{real.user}:{real.password}@{dead},{real.host}:{real.port}/"
    settings = Settings(transport_url=listed, control_exchange=f"test-{uuid.uuid4().hex[:8]}")

    async with get_transport(settings) as server, get_transport(settings) as client:
        await server.consume("failover", "h1", Inbox(), prefetch=5)
        assert await client.call("failover", b"x", message_id="m1", timeout=10) == b"re:x"
    [connected, *_] = _lines(caplog, "connected to AMQP broker")
    assert connected == f"connected to AMQP broker amqp://{real.user}:***@{real.host}:{real.port}/"
