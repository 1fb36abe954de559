"""Log lines that say which service and which request they belong to.

Every record gets two attributes from context variables: ``service`` (``topic@host``
of the service whose task wrote it, or ``-``) and ``request_id`` (of the RPC request
or periodic run being handled, or ``-``). :func:`setup_logging` installs a readable
format that shows both; embedders keep their own logging and may add
:class:`ContextFilter` to their handlers. :func:`one_line` turns any error into the one
line that logs and the CLI show.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from .context import current_context

__all__ = ["ContextFilter", "current_service", "one_line", "setup_logging"]

current_service: contextvars.ContextVar[str] = contextvars.ContextVar("aiosvc_service", default="-")

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s [%(service)s %(request_id)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class ContextFilter(logging.Filter):
    """Adds ``service`` and ``request_id`` to every record it sees; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = current_service.get()
        if not hasattr(record, "request_id"):
            ctx = current_context.get()
            record.request_id = ctx.request_id if ctx is not None else "-"
        return True


def setup_logging(level: str | int = "INFO") -> None:
    """Log to stderr in aiosvc's format; what ``python -m aiosvc`` uses.

    Replaces the root logger's handlers, so calling it twice is harmless.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aio-pika and aiormq are chatty at INFO about every reconnect attempt detail.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def one_line(exc: BaseException, *, secret: str | None = None) -> str:
    """``exc`` as one line for a log or an error message; never shows ``secret``.

    Its text with white space folded, ``"timed out"`` for a bare ``TimeoutError``, or its
    type's name when it has no text. ``secret`` (a password) is replaced by ``***`` in a
    URL's ``user:secret@``, and anywhere else once it is long enough not to be a common
    word (4 characters or more).
    """
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(f":{secret}@", ":***@")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
