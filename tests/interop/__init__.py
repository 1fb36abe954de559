"""aiosvc's ``rpc_wire = "oslo"`` against the real oslo.messaging (extra ``aiosvc[interop-test]``).

This module also stands for an application's exceptions module (Nova's ``nova.exception``):
the callers in these tests allow it (``allowed_remote_exmods`` on oslo.messaging's side,
``allowed_remote_exceptions`` on aiosvc's), so its errors cross the wire as themselves.
"""

from __future__ import annotations

from typing import Any


class QuotaExceeded(Exception):
    """An application error a caller allows; Nova-style, it keeps its keyword arguments."""

    def __init__(self, message: str = "quota exceeded", **kwargs: Any) -> None:
        super().__init__(message)
        self.kwargs = kwargs
