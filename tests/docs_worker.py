"""Run the python blocks of one documentation page, as a reader would in ``python -m asyncio``.

``python -m tests.docs_worker FD``, started by ``tests/test_docs.py`` in a copy of the
repository: reads one JSON request a line on stdin (``{"file", "line", "code"}``), runs the
code in the page's one namespace, with ``await`` allowed at the top level, on one event loop
that keeps running between blocks (a service started by one block still serves the next),
and writes ``{"ok": true}`` or ``{"ok": false, "error": traceback}`` as one line to the file
descriptor ``FD``. What the blocks print goes to stdout and stderr. Line numbers in
tracebacks are the page's own.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import sys
import traceback
from typing import Any


async def serve(replies: int) -> None:
    loop = asyncio.get_running_loop()
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    with os.fdopen(replies, "w") as out:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            request = json.loads(line)
            # Blank lines first, so that a traceback names the page's own line numbers.
            source = "\n" * request["line"] + request["code"]
            try:
                code = compile(
                    source, request["file"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
                )
                result = eval(code, namespace)  # the documentation's own code
                if inspect.iscoroutine(result):
                    await result
                reply: dict[str, Any] = {"ok": True}
            except BaseException as exc:  # SystemExit and KeyboardInterrupt are failures too
                reply = {"ok": False, "error": "".join(traceback.format_exception(exc))}
            sys.stdout.flush()
            sys.stderr.flush()
            out.write(json.dumps(reply) + "\n")
            out.flush()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
