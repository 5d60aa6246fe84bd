"""Benchmarks behind ``flashmtp bench ...``: each prints one table and writes it as CSV."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


def _worker(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    with tempfile.TemporaryFile("w+") as log:
        os.dup2(log.fileno(), 2)  # llama.cpp's log: its loader says there why it refuses a file
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001 (reported to the parent, which goes on without this engine)
            log.seek(0)
            errors = [line.strip() for line in log if "error" in line.lower()]
            conn.send(("error", errors[-1] if errors else f"{type(e).__name__}: {e}"))


def run_in_process(fn: Callable[..., Any], *args: Any, timeout_s: float = 1800) -> tuple[bool, Any]:
    """``fn(*args)`` in a fresh interpreter (llama.cpp may abort on a file it refuses): (True, its result), or
    (False, why not: the last error line of its stderr, the exception, or how it died). ``fn`` must be a
    module-level function and its arguments and result picklable."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_worker, args=(child, fn, args), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            return False, f"no answer in {timeout_s:.0f} s"
        status, value = parent.recv()
    except EOFError:
        process.join(5)
        return False, f"the process died (exit code {process.exitcode})"
    finally:
        if process.is_alive():
            process.terminate()
        process.join(5)
    return status == "ok", value
