"""The request context that travels with every RPC message and periodic run.

Nova: ``nova.context.RequestContext``, serialised by ``RequestContextSerializer``.
The context in use is also held in a context variable, so log lines written while a
request is handled carry its request id (see :mod:`aiosvc.log`).
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .exceptions import MalformedMessage

__all__ = ["Context", "current_context", "use_context"]


def _request_id() -> str:
    return f"req-{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class Context:
    """Who asked for the work, and the ids that trace it across services.

    Args:
        request_id: unique per request; generated when not given.
        global_request_id: the id of the request that started a chain of calls.
        user_id, project_id, roles, is_admin: the caller, as the API authenticated it.
        extra: any further JSON-serialisable fields an application wants carried.
    """

    request_id: str = field(default_factory=_request_id)
    global_request_id: str | None = None
    user_id: str | None = None
    project_id: str | None = None
    roles: tuple[str, ...] = ()
    is_admin: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def admin(cls) -> Context:
        """A context for work the service does on its own behalf (nova ``get_admin_context``)."""
        return cls(is_admin=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form that travels in a message."""
        return {
            "request_id": self.request_id,
            "global_request_id": self.global_request_id,
            "user_id": self.user_id,
            "project_id": self.project_id,
            "roles": list(self.roles),
            "is_admin": self.is_admin,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Context:
        """Rebuild a context from a message; unknown keys are ignored.

        Raises:
            MalformedMessage: ``data`` is not a mapping or a field has the wrong type.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise MalformedMessage(f"context must be an object, got {type(data).__name__}")
        values = {k: v for k, v in data.items() if k in _FIELDS and v is not None}
        for key in ("request_id", "global_request_id", "user_id", "project_id"):
            if key in values and not isinstance(values[key], str):
                raise MalformedMessage(f"context field {key!r} must be a string")
        roles = values.get("roles", ())
        if not isinstance(roles, list | tuple) or not all(isinstance(r, str) for r in roles):
            raise MalformedMessage("context field 'roles' must be a list of strings")
        values["roles"] = tuple(roles)
        if not isinstance(values.get("is_admin", False), bool):
            raise MalformedMessage("context field 'is_admin' must be a boolean")
        if not isinstance(values.get("extra", {}), Mapping):
            raise MalformedMessage("context field 'extra' must be an object")
        return cls(**values)

    def child(self) -> Context:
        """A context for a call made while handling this one: a new request id, same chain."""
        return replace(
            self,
            request_id=_request_id(),
            global_request_id=self.global_request_id or self.request_id,
        )


_FIELDS = frozenset(f.name for f in fields(Context))

current_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "aiosvc_context", default=None
)


@contextmanager
def use_context(ctx: Context) -> Iterator[Context]:
    """Make ``ctx`` the current context (for log lines) within the block."""
    token = current_context.set(ctx)
    try:
        yield ctx
    finally:
        current_context.reset(token)
