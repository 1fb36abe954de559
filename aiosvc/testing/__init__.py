"""Helpers for testing services built on aiosvc.

* :class:`FakeClock` (``clock``): drive periodic tasks and state reports without waiting:
  ``await clock.advance(60)`` runs everything that falls due in those 60 seconds, in order.
* :func:`run_periodic_tasks` (``periodic``): run a manager's periodic tasks now, each once.
* :func:`handled` and :func:`wait_until` (``waiting``): wait, with a deadline, until a
  service has handled a cast, or for a condition no event signals.
* :func:`isolated_settings` (``isolation``): settings on a private in-memory broker and
  store, from explicit values only (never the ``AIOSVC_*`` environment or ``.env``).
* :class:`ServiceFactory` and :class:`ClientFactory` (``factories``): what the fixtures
  ``aiosvc_service`` and ``aiosvc_client`` give a test.
* The pytest plugin (:mod:`aiosvc.testing.plugin`, loaded automatically when aiosvc is
  installed) provides the ``aiosvc_settings``, ``aiosvc_clock``, ``aiosvc_service`` and
  ``aiosvc_client`` fixtures.
"""

from __future__ import annotations

from .clock import FakeClock
from .factories import ClientFactory, ServiceFactory
from .isolation import isolated_settings, server_overrides
from .periodic import run_periodic_tasks
from .waiting import handled, wait_until

__all__ = [
    "ClientFactory",
    "FakeClock",
    "ServiceFactory",
    "handled",
    "isolated_settings",
    "run_periodic_tasks",
    "server_overrides",
    "wait_until",
]
