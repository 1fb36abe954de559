"""Example services built on aiosvc."""
