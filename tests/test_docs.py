"""Every code example in README.md, CONTRIBUTING.md, docs/*.md and examples/README.md runs.

Each fenced block is a test of its own, named by its page and the line of its opening fence
(``tests/test_docs.py::test_block[README.md:34]``), so a failure names the block. It runs as
written, but for the rules below, which CONTRIBUTING.md repeats for whoever writes a page:

* ```` ```python ```` blocks of one page run in order, in one namespace and on one event loop,
  as pasted into one ``python -m asyncio`` session started at the repository's root: ``await``
  works at the top level, and a service one block starts still runs in the next. Each page
  has its own session (``tests/docs_worker.py``), in a copy of the repository.
* ```` ```console ````, ```` ```sh ````, ```` ```bash ```` and ```` ```shell ```` blocks run
  with ``bash -eo pipefail`` in a fresh copy of the repository, the test run's virtualenv's
  ``bin`` first on ``PATH`` and as ``.venv`` (a block that makes ``.venv`` itself gets none),
  with no ``AIOSVC_*`` variable of the caller's. In a block with ``$ `` prompts only the
  prompted lines are commands; the lines below them are their output, not checked.
* ``python -m aiosvc run ...`` runs until stopped, so it is started in the background, as a
  reader starts it in a terminal of its own: the block goes on once it has logged that a
  service started (``Started aiosvc-volume: ...``; with ``--workers``, ``Worker 1 (pid ...)
  is ready``), and at the end it is sent SIGTERM and must exit with status 0.
* A shell block that uses a broker or a database (it names ``AIOSVC_TRANSPORT_URL`` or
  ``AIOSVC_DATABASE_URL``, or runs ``aiosvc call``, ``cast``, ``services`` or ``db``) runs
  with ``AIOSVC_TRANSPORT_URL`` set to the test session's RabbitMQ and ``AIOSVC_DATABASE_URL``
  to a new, empty database on its PostgreSQL; the URLs of ``docker-compose.yml``'s servers
  in a block are replaced by those.
* What cannot or must not run here is rewritten by these :data:`LINE_RULES`, and nothing else:
  ``docker compose`` lines are not run (CI has no Docker engine; the servers above stand in);
  the README's test command is not run (``.ci/run`` runs it, and the suite cannot run itself);
  another ``pytest`` command of this project's suite (naming no test file, or files of
  ``tests/``) gets ``--collect-only -q`` (its options and test ids are checked, and it must
  select a test) and ``nox -s`` gets ``--list`` (its sessions must exist);
  ``apt-get install`` gets ``--simulate`` (the packages must exist; nothing is installed).
* ```` ```text ```` blocks (synopses, sample output) and blocks with no language are not run.
* A block preceded by ``<!-- docs-test: skip: REASON -->`` is skipped with that reason, which
  pytest's summary shows. There are :data:`MAX_SKIPPED` at most (benchmarks that take minutes,
  a block that changes the reader's own git hooks): prefer a block that runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

import aiosvc

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    "README.md",
    "CONTRIBUTING.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
    "examples/README.md",
]
LANGUAGES = {
    "python": "python",
    "console": "shell",
    "sh": "shell",
    "bash": "shell",
    "shell": "shell",
}
MAX_SKIPPED = 4
BLOCK_TIMEOUT = 240.0  # seconds; the README's first block installs aiosvc into a new venv
SERVICE_STARTED = r"Started [^w]|Worker [0-9]+ \(pid [0-9]+\) is ready"
# Not copied into a block's repository: version control, virtualenvs, caches, build output.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".nox", "__pycache__", "*.egg-info", ".*_cache", "build", "dist"
)
# docker-compose.yml's servers, as the pages give them (a test checks the file agrees).
COMPOSE_URLS = {
    "transport": "amqp://aiosvc:aiosvc@localhost:5672/",
    "database": "postgresql://aiosvc:aiosvc@localhost:5432/aiosvc",
}
NEEDS_SERVERS = re.compile(
    r"AIOSVC_TRANSPORT_URL|AIOSVC_DATABASE_URL|\baiosvc\s+(call|cast|services|db)\b"
)
MARKER = re.compile(r"^<!--\s*docs-test:\s*(\S+?):?\s+(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # as shown: README.md, docs/rpc.md
    line: int  # of the opening fence
    language: str
    code: str
    skip: str | None  # the reason a docs-test marker gives

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> str | None:
        return LANGUAGES.get(self.language)


def read_blocks(page: str) -> list[Block]:
    """Every fenced block of the Markdown file ``page`` (relative to the repository)."""
    lines = (ROOT / page).read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j])
            j += 1
        previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        marker = MARKER.match(previous)
        skip = None
        if marker:
            if marker[1] != "skip":
                raise ValueError(f"{page}:{i + 1}: unknown docs-test marker {previous!r}")
            skip = marker[2]
        code = textwrap.dedent("\n".join(body)) if indent else "\n".join(body)
        found.append(Block(page, i + 1, language, code + "\n", skip))
        i = j + 1
    return found


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in read_blocks(page)]


def runnable_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.kind is not None]


# -- shell blocks: the rules -----------------------------------------------------------------------


def readme_test_command() -> str:
    """The README's test command, which ``.ci/run`` runs itself (``tests/test_repo.py``)."""
    match = re.search(r'^TEST_COMMAND="(.+)"$', (ROOT / ".ci" / "run").read_text(), re.M)
    assert match is not None
    return match[1]


def split_comment(command: str) -> tuple[str, str]:
    """``command`` without its trailing shell comment, and the comment (``# ...`` or "")."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip(), command[i:]
    return command.rstrip(), ""


def split_and(command: str) -> tuple[str, str]:
    """``a && b && c`` as ``("a && b", "c")``; ``("", command)`` without a top-level ``&&``."""
    quote = None
    last = -1
    for i, char in enumerate(command):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif command.startswith("&&", i):
            last = i
    if last < 0:
        return "", command
    return command[:last].rstrip(), command[last + 2 :].strip()


def _note(what: str, command: str) -> str:
    return f"echo {shlex.quote(f'docs-test: {what}: {command}')} >&2"


def _insert_before_dashdash(command: str, option: str) -> str:
    head, dashdash, tail = command.partition(" -- ")
    return f"{head} {option}{dashdash}{tail}" if dashdash else f"{command} {option}"


SERVICE = re.compile(r"(^|[\s/])(python3?\s+-m\s+aiosvc|aiosvc)\s+run\b")
PYTEST = re.compile(r"(^|[\s/])(python3?\s+-m\s+pytest|pytest)\b")
NOX_SESSIONS = re.compile(r"(^|[\s/])nox(\s.*)?\s(-s|--sessions?)\s")
APT_INSTALL = re.compile(r"^(sudo\s+)?apt-get\s+(-\S+\s+)*install\b")
DOCKER_COMPOSE = re.compile(r"^docker[\s-]compose\b")


def _not_docker(command: str) -> str | None:
    if DOCKER_COMPOSE.match(command):
        return _note("not run (CI has no Docker engine; the test servers stand in)", command)
    return None


def _not_the_suite(command: str) -> str | None:
    if command == readme_test_command():
        return _note("not run (.ci/run runs the README's test command itself)", command)
    return None


def _pytest_collects(command: str) -> str | None:
    # This project's suite: no test file named, or only files of tests/. A page's own test
    # file (one its block wrote, say) runs for real.
    files = re.findall(r"(?:^|\s)([\w./-]+\.py)\b", command)
    if PYTEST.search(command) and all(f.startswith("tests/") for f in files):
        return f"{command} --collect-only -q"
    return None


def _nox_lists(command: str) -> str | None:
    if NOX_SESSIONS.search(command):
        return _insert_before_dashdash(command, "--list")
    return None


def _apt_simulates(command: str) -> str | None:
    if APT_INSTALL.match(command):
        return APT_INSTALL.sub(lambda m: m[0] + " --simulate", command, count=1)
    return None


def _service_in_background(command: str) -> str | None:
    before, last = split_and(command)
    if not SERVICE.search(last) or last.endswith("&"):
        return None
    start = f"__docs_service {shlex.quote(last)}"
    return f"{before} || exit $?\n{start}" if before else start


#: What a shell line becomes when it cannot or must not run as written here; the first rule
#: that matches a command (comment removed) rewrites it.
LINE_RULES: list[Callable[[str], str | None]] = [
    _not_docker,
    _not_the_suite,
    _service_in_background,
    _pytest_collects,
    _nox_lists,
    _apt_simulates,
]

PRELUDE = r"""
set -eo pipefail
__docs_pids=()
__docs_logs=()
__docs_commands=()
__docs_service() {  # $1 runs until stopped: start it in the background, wait until it serves
  local log pid deadline=$((SECONDS + 60))
  log="$(mktemp "$DOCS_TEST_LOGS/service.XXXXXX")"
  bash -c "exec env $1" > "$log" 2>&1 &  # env: so that VAR=value before it works too
  pid=$!
  __docs_pids+=("$pid")
  __docs_logs+=("$log")
  __docs_commands+=("$1")
  until grep -Eq "$DOCS_TEST_STARTED" "$log"; do
    if ! kill -0 "$pid" 2> /dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "docs-test: did not start within 60 s: $1" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "docs-test: started in the background (pid $pid): $1" >&2
}
__docs_stop() {  # at the end: SIGTERM to every service started; each must exit 0
  local status=$? i code
  for i in "${!__docs_pids[@]}"; do
    kill -TERM "${__docs_pids[$i]}" 2> /dev/null || true
    code=0
    wait "${__docs_pids[$i]}" || code=$?
    echo "docs-test: SIGTERM -> exit status $code: ${__docs_commands[$i]}" >&2
    sed 's/^/    | /' "${__docs_logs[$i]}" >&2
    [ "$code" -eq 0 ] || status=1
  done
  exit "$status"
}
trap __docs_stop EXIT
"""


def commands(block: Block) -> Iterator[str]:
    """The block's commands as written (a line, with its ``\\`` continuations), in order.

    Lines of a heredoc belong to the command that opens it. In a block with ``$ `` prompts,
    the lines that are not commands are output, and left out.
    """
    lines = block.code.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    current: list[str] = []
    heredoc = None
    for raw in lines:
        line = raw
        if heredoc is not None:
            current.append(line)
            if line.strip() == heredoc:
                heredoc = None
                yield "\n".join(current)
                current = []
            continue
        if not current:
            if prompted:
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        elif prompted and line.startswith("> "):
            line = line[2:]
        current.append(line)
        opened = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", split_comment(line)[0])
        if opened:
            heredoc = opened[1]
        elif not line.endswith("\\"):
            yield "\n".join(current)
            current = []
    if current:
        yield "\n".join(current)


def shell_script(block: Block, urls: dict[str, str] | None = None) -> tuple[str, bool]:
    """The bash script that runs ``block`` under the rules above; whether it runs anything."""
    out = [PRELUDE]
    runs = False
    for written in commands(block):
        command = written
        for kind, url in COMPOSE_URLS.items() if urls else ():
            command = command.replace(url, urls[kind])
        code, _ = split_comment(command)
        logical = re.sub(r"\\\n\s*", " ", code)
        for rule in LINE_RULES if "<<" not in command else ():  # a heredoc stays as written
            rewritten = rule(logical)
            if rewritten is not None:
                out.append(rewritten)
                runs = runs or not rewritten.startswith("echo 'docs-test: not run")
                break
        else:
            out.append(command)
            runs = True
    return "\n".join(out) + "\n", runs


def copy_repository(dest: Path, *, venv: bool) -> Path:
    """A copy of the repository at ``dest``, its ``.venv`` this test run's virtualenv."""
    shutil.copytree(ROOT, dest, ignore=NOT_COPIED, symlinks=True)
    if venv:
        (dest / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return dest


def block_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOSVC_")}
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("PYTEST_ADDOPTS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["DOCS_TEST_STARTED"] = SERVICE_STARTED
    env.update(extra)
    return env


def _missing_tools(block: Block) -> list[str]:
    """The ``.venv/bin/X`` the block runs that this test run's virtualenv does not have."""
    tools = set(re.findall(r"\.venv/bin/([\w.-]+)", block.code))
    bin_dir = Path(sys.executable).parent
    return sorted(t for t in tools if not (bin_dir / t).exists())


def run_shell(block: Block, tmp_path: Path, urls: dict[str, str] | None) -> None:
    makes_venv = re.search(r"\bvenv\s+\.venv\b", block.code) is not None
    if not makes_venv and (missing := _missing_tools(block)):
        pytest.skip(f"this virtualenv has no {', '.join(missing)} (nox sessions install .[test])")
    repo = copy_repository(tmp_path / "repo", venv=not makes_venv)
    logs = tmp_path / "logs"
    logs.mkdir()
    extra = {"DOCS_TEST_LOGS": str(logs)}
    if urls:
        extra |= {
            "AIOSVC_TRANSPORT_URL": urls["transport"],
            "AIOSVC_DATABASE_URL": urls["database"],
        }
    script, runs = shell_script(block, urls)
    if not runs:
        pytest.skip("every command of this block is one that LINE_RULES do not run")
    (tmp_path / "block.sh").write_text(script)
    # A session of its own, so that whatever the block leaves running can be ended with it.
    with subprocess.Popen(
        ["bash", str(tmp_path / "block.sh")],
        cwd=repo,
        env=block_environment(**extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as bash:
        try:
            stdout, stderr = bash.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            _end_group(bash.pid, signal.SIGTERM)
            stdout, stderr = bash.communicate()
            pytest.fail(
                f"{block.id} ran longer than {BLOCK_TIMEOUT:.0f} s\n{_tail(stderr)}", pytrace=False
            )
        finally:
            _end_group(bash.pid, signal.SIGKILL)
    if bash.returncode != 0:
        pytest.fail(
            f"{block.id} failed (exit status {bash.returncode}), run as:\n{script}\n"
            f"--- stdout\n{_tail(stdout)}\n--- stderr\n{_tail(stderr)}",
            pytrace=False,
        )


def _end_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _tail(text: str | bytes | None, lines: int = 80) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


# -- python blocks: one session per page -----------------------------------------------------------


class PythonSession:
    """``tests/docs_worker.py`` for one page: its blocks, in order, in one namespace."""

    def __init__(self, page: str, repo: Path, log: Path) -> None:
        self.page = page
        self.log_path = log
        self.log: IO[str] = log.open("w")
        replies, self._reply_fd = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.docs_worker", str(self._reply_fd)],
            cwd=repo,
            env=block_environment(),
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(self._reply_fd,),
            text=True,
        )
        os.close(self._reply_fd)
        self.replies = os.fdopen(replies)
        self.results: dict[int, str | None] = {}  # line -> None (passed) or the error

    def run(self, block: Block) -> str | None:
        """Run ``block`` (once), and every block of the page before it; its error, or None."""
        for earlier in python_blocks(self.page):
            if earlier.line >= block.line:
                break
            if earlier.line not in self.results and earlier.skip is None:
                self._run(earlier)
            if self.results.get(earlier.line):
                return f"an earlier python block of this page failed: {earlier.id}"
        if block.line not in self.results:
            self._run(block)
        return self.results[block.line]

    def _run(self, block: Block) -> None:
        start = self.log_path.stat().st_size
        assert self.process.stdin is not None
        request = {"file": str(ROOT / self.page), "line": block.line, "code": block.code}
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.results[block.line] = "the python session has ended"
            return
        ready, _, _ = select.select([self.replies], [], [], BLOCK_TIMEOUT)
        line = self.replies.readline() if ready else ""
        if not line:
            self.process.kill()
            self.results[block.line] = f"no answer within {BLOCK_TIMEOUT:.0f} s"
        else:
            self.results[block.line] = json.loads(line).get("error")
        if self.results[block.line]:
            with self.log_path.open() as log:
                log.seek(start)
                output = log.read()
            self.results[block.line] += f"\n--- output\n{_tail(output)}"

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.replies.close()
        self.log.close()


def python_blocks(page: str) -> list[Block]:
    return [b for b in read_blocks(page) if b.kind == "python"]


@pytest.fixture(scope="session")
def python_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], PythonSession]]:
    """The python session of a page, started on first use, ended with the test session."""
    sessions: dict[str, PythonSession] = {}

    def session(page: str) -> PythonSession:
        if page not in sessions:
            where = tmp_path_factory.mktemp("docs-python")
            repo = copy_repository(where / "repo", venv=True)
            sessions[page] = PythonSession(page, repo, where / "output.log")
        return sessions[page]

    yield session
    for each in sessions.values():
        each.close()


# -- the tests -------------------------------------------------------------------------------------


def _params() -> list[object]:
    params: list[object] = []
    for block in runnable_blocks():
        marks = []
        if block.kind == "shell" and NEEDS_SERVERS.search(block.code) and not block.skip:
            marks = [pytest.mark.amqp, pytest.mark.postgres]
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_block(
    block: Block,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    python_session: Callable[[str], PythonSession],
) -> None:
    if block.skip:
        pytest.skip(f"docs-test marker: {block.skip}")
    if block.kind == "python":
        error = python_session(block.page).run(block)
        if error:
            pytest.fail(f"{block.id} failed:\n{error}", pytrace=False)
        return
    urls = None
    if NEEDS_SERVERS.search(block.code):
        urls = {
            "transport": request.getfixturevalue("amqp_url"),
            "database": request.getfixturevalue("fresh_database_url"),
        }
    run_shell(block, tmp_path, urls)


def test_pages_have_runnable_blocks() -> None:
    # The harness reads the blocks it should: a page with code that runs nothing is a bug here.
    kinds = {b.page: b.kind for b in runnable_blocks()}
    assert {"README.md", "CONTRIBUTING.md", "docs/rpc.md"} <= set(kinds)


def test_exceptions_stay_few() -> None:
    skipped = [f"{b.id}: {b.skip}" for b in all_blocks() if b.skip]
    assert len(skipped) <= MAX_SKIPPED, "make these blocks run instead:\n" + "\n".join(skipped)


def test_compose_urls_are_docker_composes() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    for url in COMPOSE_URLS.values():
        assert url in compose


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("docker compose up -d --wait", "echo 'docs-test: not run"),
        (".venv/bin/python -m pytest -m postgres", ".venv/bin/python -m pytest -m postgres --c"),
        ("nox -s tests-3.13 -- -m slow", "nox -s tests-3.13 --list -- -m slow"),
        ("apt-get install -y x", "apt-get install --simulate -y x"),
        ("python -m aiosvc run --manager m:M", "__docs_service 'python -m aiosvc run --manager"),
        ("a && python -m aiosvc run --manager m:M", "a || exit $?\n__docs_service 'python"),
        ("python -m aiosvc call volume m x=1   # a comment", "python -m aiosvc call volume m x"),
        ("python -m pytest -q test_volume.py", "python -m pytest -q test_volume.py\n"),
    ],
    ids=["docker", "suite", "nox", "apt", "service", "service-after-and", "comment", "own-file"],
)
def test_line_rules(line: str, expected: str) -> None:
    block = Block("page.md", 1, "sh", line + "\n", None)
    assert shell_script(block)[0].removeprefix(PRELUDE).lstrip("\n").startswith(expected)


def test_prompted_blocks_run_only_their_commands() -> None:
    block = Block("page.md", 1, "console", "$ echo one \\\n>   two\none two\n$ echo three\n", None)
    assert list(commands(block)) == ["echo one \\\n  two", "echo three"]


def test_every_setting_has_a_description() -> None:
    # The API reference's table of settings (docs/reference/conf.py) shows these.
    missing = [n for n, f in aiosvc.Settings.model_fields.items() if not f.description]
    assert not missing


def test_operators_page_lists_every_setting_with_its_default() -> None:
    page = (ROOT / "docs" / "operators.md").read_text()
    rows = {
        m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| `AIOSVC_\w+` \| ([^|]*) \|", page, re.M)
    }
    for name, field in aiosvc.Settings.model_fields.items():
        assert name in rows, f"docs/operators.md has no row for the setting {name}"
        if name == "host":
            continue
        factory = field.default_factory
        default = factory() if factory else field.default  # type: ignore[call-arg]
        shown = rows[name].strip().strip("`")
        try:
            value = json.loads(shown)
        except ValueError:
            value = shown
        assert value == default, f"docs/operators.md: {name}'s default is {default!r}"


def test_readme_configuration_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", readme, re.M))
    missing = sorted(set(aiosvc.Settings.model_fields) - listed)
    assert not missing, f"README.md's configuration table lacks {missing}"
