"""Every error aiosvc raises, rooted at :class:`AiosvcError`.

Each error also subclasses the builtin a user would already catch, so
``except TimeoutError`` keeps working around an RPC call::

    AiosvcError
    ├── ConfigError (ValueError)            a bad setting or option value
    │   └── LoadError (ImportError)         an import path that does not resolve
    ├── ServiceError (RuntimeError)         a service used out of order, or failed to start
    ├── TransportError (ConnectionError)    the message broker is unreachable or went away
    ├── StoreError (ConnectionError)        the service store is unreachable or went away
    │   └── ServiceNotFound (LookupError)   no live record for that host and binary
    └── RPCError
        ├── MessagingTimeout (TimeoutError)        no reply within the timeout
        ├── MessageUndeliverable (LookupError)     no queue is bound for the target
        ├── InvalidTarget (ValueError)             e.g. a call on a fanout target
        ├── MalformedMessage (ValueError)          a message that cannot be decoded
        ├── UnsupportedVersion                     no compatible API version on the server
        ├── NoSuchMethod (AttributeError)          the method is unknown or not callable
        ├── InvalidArguments (TypeError)           arguments do not fit the method's hints
        ├── RemoteError                            the remote method raised
        └── CastsFailed                            casts of a batch that were not confirmed

Nova: ``oslo_messaging.exceptions`` and ``nova.exception``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AiosvcError",
    "CastsFailed",
    "ConfigError",
    "InvalidArguments",
    "InvalidTarget",
    "LoadError",
    "MalformedMessage",
    "MessageUndeliverable",
    "MessagingTimeout",
    "NoSuchMethod",
    "RPCError",
    "RemoteError",
    "ServiceError",
    "ServiceNotFound",
    "StoreError",
    "TransportError",
    "UnsupportedVersion",
]


class AiosvcError(Exception):
    """Raised for any failure aiosvc itself detects; the root of the hierarchy."""


class ConfigError(AiosvcError, ValueError):
    """Raised when a setting or option has a value that cannot be used."""


class LoadError(ConfigError, ImportError):
    """Raised when an import path (``pkg.mod:Name``) does not resolve.

    The message says which part failed: the module was not found, the module
    failed to import (the original error is chained), or the attribute is missing.
    """


class ServiceError(AiosvcError, RuntimeError):
    """Raised when a service is used out of order or cannot start."""


class TransportError(AiosvcError, ConnectionError):
    """Raised when the message broker cannot be reached or the connection is lost."""


class StoreError(AiosvcError, ConnectionError):
    """Raised when the service store (database) cannot be reached or fails."""


class ServiceNotFound(StoreError, LookupError):
    """Raised when no live service record exists for a host and binary."""


class RPCError(AiosvcError):
    """Raised for failures of remote procedure calls; the root of the RPC errors."""


class MessagingTimeout(RPCError, TimeoutError):
    """Raised when a call gets no reply within its timeout.

    After a timeout it is unknown whether the remote method ran (at-most-once).
    """


class MessageUndeliverable(RPCError, LookupError):
    """Raised when no queue is bound for the target, so nobody could receive the message."""


class InvalidTarget(RPCError, ValueError):
    """Raised when the target does not fit the operation, e.g. a call with ``fanout=True``."""


class MalformedMessage(RPCError, ValueError):
    """Raised when a message is not valid JSON or lacks the fields of an aiosvc envelope."""


class UnsupportedVersion(RPCError):
    """Raised when the server implements no API version compatible with the request."""


class NoSuchMethod(RPCError, AttributeError):
    """Raised when the method does not exist or is not callable over RPC."""


class InvalidArguments(RPCError, TypeError):
    """Raised when the arguments of a call do not fit the method's signature or type hints.

    The handler is not run. The message names each bad field.
    """


class RemoteError(RPCError):
    """Raised at the caller when the remote method raised an exception it may not rebuild.

    Attributes:
        exc_type: the remote exception's qualified class name (``pkg.mod.Class``).
        value: the remote exception's message.
        traceback: the remote traceback, one formatted string per frame.
    """

    def __init__(self, exc_type: str, value: str, traceback: Sequence[str] = ()) -> None:
        self.exc_type = exc_type
        self.value = value
        self.traceback = list(traceback)
        super().__init__(f"{exc_type}: {value}")


@dataclass(frozen=True, slots=True)
class CastFailure:
    """One message of a batch that the broker did not confirm (see :class:`CastsFailed`)."""

    position: int
    """Its place in the batch, counting from 0 in the order it was sent."""
    method: str
    message_id: str
    error: BaseException
    """The exception that says what went wrong. ``MessageUndeliverable`` when no queue is
    bound, ``TransportError`` when the broker refused it or the connection dropped before
    the confirm (the broker may or may not have it), or a cancellation."""

    def __str__(self) -> str:
        return f"#{self.position} {self.method} (message {self.message_id}): {self.error}"


class CastsFailed(RPCError):
    """Raised when a batch of casts ends and some of its messages were not confirmed.

    ``failures`` lists each (:class:`CastFailure`: position, method, message id, error);
    every other message of the batch was confirmed by the broker. (Raised by a remote
    method, it comes back to its caller with the message only.)
    """

    SHOWN = 5
    """How many failures the message names; ``failures`` has them all."""

    def __init__(
        self, message: str, failures: Sequence[CastFailure] = (), *, sent: int = 0
    ) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.sent = sent

    @classmethod
    def of(cls, failures: Sequence[CastFailure], *, sent: int) -> CastsFailed:
        """The error for a batch of ``sent`` casts of which ``failures`` were not confirmed."""
        shown = "; ".join(str(f) for f in failures[: cls.SHOWN])
        more = len(failures) - cls.SHOWN
        return cls(
            f"{len(failures)} of {sent} cast(s) not confirmed: {shown}"
            + (f"; and {more} more" if more > 0 else ""),
            failures,
            sent=sent,
        )
