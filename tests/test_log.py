"""aiosvc.log: how any error becomes the one line that logs and the CLI show."""

from __future__ import annotations

import pytest

from aiosvc.exceptions import StoreError
from aiosvc.log import one_line


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (TimeoutError(), "timed out"),
        (TimeoutError("no reply in 5s"), "no reply in 5s"),
        (ConnectionResetError(), "ConnectionResetError"),
        (ValueError("line one\n  line two\tand\r\nthree"), "line one line two and three"),
        (StoreError("  padded  "), "padded"),
    ],
)
def test_one_line(error: BaseException, line: str) -> None:
    assert one_line(error) == line


def test_one_line_never_shows_the_secret() -> None:
    error = OSError("connect to amqp://guest:hunter2@broker failed: hunter2 refused")
    assert one_line(error, secret="hunter2") == (
        "connect to amqp://guest:***@broker failed: *** refused"
    )
    assert one_line(error, secret=None).count("hunter2") == 2


def test_a_short_secret_is_masked_only_in_a_url() -> None:
    error = OSError("amqp://u:ab@host: bad password for user u; abort")
    assert one_line(error, secret="ab") == "amqp://u:***@host: bad password for user u; abort"
