"""The aiosvc test suite (a package, so tests can name their own modules by import path)."""
