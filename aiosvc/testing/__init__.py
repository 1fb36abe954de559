"""Helpers for testing services built on aiosvc (and the pytest plugin in ``plugin``)."""
