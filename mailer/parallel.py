"""Run one function in n forked processes, for the second core.

CPython runs one core per process; rendering and the SMTP client are both CPU work. A
list is split into n shares (see Campaign.recipients), each worked by a forked child
with its own event loop, SMTP connections and journal connection. Children die with the
parent (PR_SET_PDEATHSIG), so a SIGKILL of the run leaves no orphan sending behind the
next run's back; SIGTERM and SIGINT are passed on, so a graceful stop stays graceful.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any, TypeVar

from .errors import MailerError

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(fn: Callable[[int], Any], k: int, parent: int, conn: Connection) -> None:
    _die_with_parent(parent)
    try:
        result: tuple[str, Any] = ("ok", fn(k))
    except MailerError as exc:
        result = ("error", (type(exc).__name__, exc.exit_code, str(exc)))
    except BaseException as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        result = ("crash", text)
    try:
        conn.send(result)
    finally:
        conn.close()


class ChildError(MailerError):
    """A MailerError raised in a child, with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fork_map(fn: Callable[[int], T], n: int, *, tick: Callable[[], None] | None = None,
             started: Callable[[], None] | None = None,
             forward_signals: bool = False) -> list[T]:
    """Return [fn(0), ..., fn(n-1)], each computed in its own forked process.

    Fork before starting any thread: ``started`` is called once every child is forked
    (to start a progress display), ``tick`` about five times a second while waiting. A
    MailerError
    in a child is raised here with its exit code once all children have ended (the most
    serious one when several fail); a crash of a child is a RuntimeError.
    """
    context = multiprocessing.get_context("fork")
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    children = []
    for k in range(n):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(fn, k, parent, send), daemon=True)
        process.start()
        send.close()
        children.append((process, receive))

    def forward(signum: int, frame: FrameType | None) -> None:
        for process, _ in children:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    previous: dict[int, Any] = {}
    if forward_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    results: dict[int, tuple[str, Any]] = {}
    try:
        if started is not None:
            started()
        waiting = {receive: k for k, (_, receive) in enumerate(children)}
        while waiting:
            for ready in wait(list(waiting), timeout=0.2):
                assert isinstance(ready, Connection)
                k = waiting.pop(ready)
                try:
                    results[k] = ready.recv()
                except EOFError:
                    results[k] = ("crash", f"worker process {k} ended without a result")
            if tick is not None:
                tick()
        for process, _ in children:
            process.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for process, _ in children:
            if process.is_alive():
                process.kill()
                process.join()
    errors = [value for kind, value in results.values() if kind == "error"]
    if errors:
        _, code, message = max(errors, key=lambda e: (e[1] == 78, e[1] == 75, e[1]))
        raise ChildError(message, code)
    crashes = [value for kind, value in results.values() if kind == "crash"]
    if crashes:
        raise RuntimeError(crashes[0])
    return [results[k][1] for k in range(n)]
