"""The event loop ``python -m aiosvc run`` runs on: uvloop when installed and chosen."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import aiosvc
from aiosvc.loops import loop_factory, loop_name, run
from aiosvc.testing import isolated_settings
from tests.procs import ROOT, aiosvc_proc, clean_env

uvloop = pytest.importorskip("uvloop", reason="the test extra installs uvloop")

RUN = ["run", "--manager", "tests.apps:Journaling", "--topic", "loops"]


async def _running_loop() -> str:
    return loop_name(asyncio.get_running_loop())


@pytest.mark.parametrize(("choice", "loop"), [("auto", "uvloop"), ("UVLOOP", "uvloop")])
def test_auto_and_uvloop_run_on_uvloop_when_installed(choice: str, loop: str) -> None:
    settings = isolated_settings(event_loop=choice)
    assert loop_factory(settings) is uvloop.new_event_loop
    assert run(_running_loop(), settings) == loop


def test_asyncio_never_uses_uvloop() -> None:
    settings = isolated_settings(event_loop="asyncio")
    assert loop_factory(settings) is None
    assert run(_running_loop(), settings) == "asyncio"


def test_a_bad_choice_names_the_setting_and_the_choices() -> None:
    with pytest.raises(aiosvc.ConfigError, match="event_loop") as failed:
        isolated_settings(event_loop="trio")
    assert "'auto', 'asyncio' or 'uvloop'" in str(failed.value)


@pytest.mark.parametrize(("variable", "loop"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_run_says_which_loop_it_runs_on(variable: str | None, loop: str) -> None:
    env = clean_env(**({"AIOSVC_EVENT_LOOP": variable} if variable else {}))
    with aiosvc_proc(RUN, env) as proc:
        proc.wait_for("Started")
        assert f"Event loop: {loop}" in proc.wait_for("Event loop:")


# The CLI in a process where uvloop cannot be imported.
WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; "
    "from aiosvc.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_uvloop_asked_for_but_missing_fails_the_start_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_UVLOOP, *RUN],
        cwd=ROOT,
        env=clean_env(AIOSVC_EVENT_LOOP="uvloop"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "aiosvc: error: ConfigError: event_loop = 'uvloop' needs uvloop, which is not "
        "installed: pip install 'aiosvc[uvloop]' (or set event_loop = 'auto')"
    )


def test_auto_without_uvloop_takes_asyncio() -> None:
    code = "import sys; sys.modules['uvloop'] = None; import aiosvc, aiosvc.loops as l; "
    code += "print(l.loop_factory(aiosvc.Settings(isolated=True)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "None"
