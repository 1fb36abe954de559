"""Every bad value of every flag of every command: one line on stderr, never a traceback.

The commands and their flags come from the real parser (``aiosvc.cli._build_parser()``),
so a new command or flag is covered as soon as it exists. For each (command, flag) pair,
hypothesis generates bad values of the flag's kind, and ``aiosvc.cli.main(argv)`` runs
in-process with the broker and database on closed loopback ports.

The rule checked, for every value:

* stderr is exactly one line: ``aiosvc: error: ...`` (``_error``) or argparse's
  ``python -m aiosvc ...: error: ... (see ... --help)`` (no usage block); nothing on stdout;
  no ``Traceback``; no password of a URL on the command line;
* a value the CLI can check (a typed flag, a setting, ``--set``, an import path, a call
  argument) is refused before anything connects: exit status 2. A connection attempt would
  fail with exit status 1, so 2 shows that nothing connected;
* a free-form value (a topic, a host, a message id, ...) may be fine: then the command
  fails to connect, exit status 1, with the same one line.

``--log-level DEBUG`` adds a traceback on purpose, so it is never generated here.
A few real ``python -m aiosvc`` processes check the same rule outside the test process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from aiosvc import Settings
from aiosvc.cli import _build_parser, _setting, main
from tests.procs import clean_env, run_cli

PASSWORD = "s3cret-Pw42"
BROKER = f"amqp://guest:{PASSWORD}@127.0.0.1:1/"  # port 1: refused at once
DATABASE = f"postgresql://aiosvc:{PASSWORD}@127.0.0.1:1/aiosvc"
MANAGER = "tests.apps:Journaling"
SETTINGS_FLAGS = {"transport_url", "database_url", "log_level", "config"}
IMPORT_PATHS = {"manager", "api"}
LEVELS = set(logging.getLevelNamesMapping())


@dataclass(frozen=True)
class Flag:
    """One value-taking flag (or ``call``/``cast``'s ARG list) of one command."""

    command: tuple[str, ...]
    action: argparse.Action
    base: tuple[str, ...]  # a command line that is fine but for the servers it cannot reach

    @property
    def option(self) -> str:
        return self.action.option_strings[-1] if self.action.option_strings else "ARG"

    @property
    def checked(self) -> bool:
        """Whether the CLI can tell a bad value before connecting (exit status 2)."""
        return self.action.type is not None or self.action.dest in SETTINGS_FLAGS | IMPORT_PATHS | {
            "overrides",
            "args",
        }

    def __str__(self) -> str:
        return f"{' '.join(self.command)} {self.option}"


def _leaves(
    parser: argparse.ArgumentParser, command: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield command, parser
    for action in subparsers:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*command, name))


def _base(command: tuple[str, ...], parser: argparse.ArgumentParser) -> tuple[str, ...]:
    # By --set, so that a bad --transport-url (a flag beats --set) or a later
    # --set transport_url=... (the last one wins) is the one in force.
    words = [f"--set=transport_url={BROKER}", f"--set=database_url={DATABASE}"]
    if command == ("run",):
        words += ["--manager", MANAGER]
    positionals = [a for a in parser._actions if not a.option_strings and a.nargs not in ("*", "?")]
    return (*command, *(f"{a.dest}-1" for a in positionals), *words)


def all_flags() -> list[Flag]:
    flags = []
    for command, parser in _leaves(_build_parser()):
        base = _base(command, parser)
        for action in parser._actions:
            takes_value = action.nargs != 0 and not isinstance(
                action, argparse._HelpAction | argparse._VersionAction
            )
            if takes_value and (action.option_strings or action.dest == "args"):
                flags.append(Flag(command, action, base))
    return flags


FLAGS = all_flags()

# -- bad values, by kind

garbage = st.text(max_size=30) | st.sampled_from(
    ["", " ", "-", "--", "\u202e", "é\u0301", "🙂" * 40, "x" * 5000, "\n", "a\nb"]
)
bad_urls = st.sampled_from(
    [
        "",
        "notaurl",
        "rabbit:5672",
        f"http://u:{PASSWORD}@rabbit/",
        f"amqp://u:{PASSWORD}@rabbit:99999/",
        f"amqp://u:{PASSWORD}@rabbit:port/",
        f"amqp://u:{PASSWORD}@[::1/",
        f"postgresql://u:{PASSWORD}@db:-1/x",
        "mysql://db/nova",
        "://",
    ]
) | garbage.filter(lambda t: "://" not in t)
bad_import_paths = st.sampled_from(
    ["", ":", "no.such:Thing", "os:nothing_here", "tests.apps", "tests.apps:", "a:b:c", "..x:y"]
) | garbage.map(lambda t: f"no_such_module_{t.encode().hex()}:{t}")


def _fails_type(action: argparse.Action, value: str) -> bool:
    assert callable(action.type)
    try:
        action.type(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return True
    return False


def bad_set_values() -> st.SearchStrategy[str]:
    known = sorted(Settings.model_fields)
    return (
        st.sampled_from(["x", "=5", "a b=1", "1x=2", "report_interval", "é=1"])  # malformed
        | st.sampled_from(["colour=red", "not_a_setting=1", "Transport_URL=memory://"])
        | st.from_regex(r"\Azz_[a-z_]{1,20}=[a-z0-9]{0,5}\Z")  # unknown names
        | st.sampled_from(
            [
                "report_interval=-5",
                "report_interval=soon",
                "rpc_max_concurrency=0",
                "rpc_response_timeout=nan",
                "api_port=70000",
                "log_level=LOUD",
                "periodic_enable=maybe",
                f"transport_url=amqp://u:{PASSWORD}@[::1/",
                f"transport_url=http://u:{PASSWORD}@rabbit/",
                "database_url=mysql://db/nova",
                "allowed_remote_exceptions={}",
            ]
        )
        | st.tuples(st.sampled_from(known), st.sampled_from(["[]", "{}", "-1e999"]))
        .map("=".join)
        .filter(lambda text: not _valid_setting(text))
    )


def _valid_setting(text: str) -> bool:
    try:
        Settings.load(isolated=True, **dict([_setting(text)]))
    except Exception:
        return False
    return True


def bad_call_args() -> st.SearchStrategy[str]:
    return st.sampled_from(
        ["novalue", "=v", "a b=1", "x:=[1,", "x:=", "x:=nan1", "x:={'a': 1}", ":=1", "1x=2"]
    ) | garbage.filter(lambda t: "=" not in t)


def bad_values(flag: Flag, tmp: Path) -> st.SearchStrategy[list[str]]:
    """Bad values for ``flag``, as the argv words that give them."""
    dest, action = flag.action.dest, flag.action
    if dest == "args":
        return st.lists(bad_call_args(), min_size=1, max_size=2).map(lambda args: ["good=1", *args])
    if dest == "overrides":
        values = bad_set_values()
    elif dest in ("transport_url", "database_url"):
        values = bad_urls
    elif dest == "log_level":
        values = garbage.filter(lambda t: t.strip().upper() not in LEVELS)
    elif dest == "config":
        values = st.sampled_from([str(tmp / "missing.toml"), str(tmp), str(tmp / "bad.toml")])
    elif dest in IMPORT_PATHS:
        values = bad_import_paths
    elif action.type is not None:
        candidates = st.sampled_from(["", "-1", "0", "nan", "inf", "1e999", "9" * 400, "½", "x"])
        values = (candidates | garbage).filter(lambda t: _fails_type(action, t))
    else:
        values = garbage  # free-form: may be fine, then the command cannot connect
    return values.map(lambda value: [f"{flag.option}={value}"])


# -- running the CLI in this process


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory without .env, and no AIOSVC_* variable, for the whole module."""
    tmp = tmp_path_factory.mktemp("cli-properties")
    (tmp / "bad.toml").write_text("rpc_response_timeout = -1\n")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith("AIOSVC_"):
                patch.delenv(name)
        patch.chdir(tmp)
        yield tmp


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)``: exit status, stdout, stderr; the logging setup is left as it was.

    Logging starts as in a fresh process: no handler (pytest's would swallow what a
    library logs; Python's last-resort handler prints it to stderr), level WARNING.
    """
    root = logging.getLogger()
    handlers = root.handlers[:]
    levels = {name: logging.getLogger(name).level for name in ("", "aio_pika", "aiormq")}
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        root.handlers[:] = handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return code, out.getvalue(), err.getvalue()


def check(flag: Flag, code: int, out: str, err: str, argv: list[str]) -> None:
    context = f"{flag}: {argv!r} gave {code}:\n{err}"
    assert "Traceback" not in err, context
    assert PASSWORD not in err + out, context
    assert out == "", context
    lines = err.splitlines()
    assert len(lines) == 1, context
    [line] = lines
    assert line.startswith("aiosvc: error: ") or (
        line.startswith("python -m aiosvc") and ": error: " in line
    ), context
    if flag.checked:
        assert code == 2, context
    else:
        assert code in (1, 2), context


@pytest.mark.parametrize("flag", FLAGS, ids=str)
def test_every_bad_flag_value_is_one_line_without_traceback(flag: Flag, workdir: Path) -> None:
    @hypothesis.settings(max_examples=10)
    @hypothesis.given(bad_values(flag, workdir))
    def bad_value_is_one_line(words: list[str]) -> None:
        argv = [*flag.base, *words]
        check(flag, *run_main(argv), argv)

    bad_value_is_one_line()


def test_the_parser_is_walked_whole() -> None:
    # The walk reaches every command, so a new one is covered without editing this file.
    commands = {flag.command for flag in FLAGS}
    assert {("run",), ("call",), ("cast",), ("services", "list"), ("db", "upgrade")} <= commands
    options = {(flag.command, flag.option) for flag in FLAGS}
    assert (("call",), "--timeout") in options
    assert (("run",), "--workers") in options
    assert (("cast",), "ARG") in options


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--manager", "no.such:Thing", "--transport-url", BROKER],
        ["run", "--manager", MANAGER, "--workers", "0", "--transport-url", BROKER],
        ["call", "t", "m", "x:=[1,", "--transport-url", BROKER],
        ["call", "t", "m", "--version", "1.x", "--transport-url", BROKER],
        ["cast", "t", "m", "--set", "colour=red", "--transport-url", BROKER],
        ["services", "list", "--database-url", f"mysql://u:{PASSWORD}@db/nova"],
        ["db", "version", "--set", "colour=red", "--database-url", DATABASE],
    ],
)
def test_a_real_process_prints_one_line_too(argv: list[str]) -> None:
    result = run_cli(argv, clean_env())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr
    [line] = result.stderr.splitlines()
    assert "error: " in line
