"""The repository keeps its promises to a new user: README's commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert match is not None, ".ci/run names no TEST_COMMAND"
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", readme, re.DOTALL)
    commands = [line.strip() for block in blocks for line in block.splitlines()]
    assert match[1] in commands


def test_readme_set_up_runs_the_example_service() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python -m aiosvc run --manager examples.volume:VolumeManager" in readme


def test_package_ships_its_migrations_and_marker() -> None:
    package = ROOT / "aiosvc"
    assert (package / "py.typed").exists()
    assert sorted(p.name for p in (package / "store" / "migrations").glob("*.sql"))
