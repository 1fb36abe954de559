"""The aiosvc pytest plugin (entry point ``pytest11``)."""
