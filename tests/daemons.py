"""What the private server fixtures (Postfix, Dovecot) share: waiting for an observable
event with a generous bound, a port that accepts connections, a process that is gone."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], what: str = "the event",
               timeout: float = 60.0) -> None:
    """Poll until ``predicate`` holds; the bound is a safety net, not an expectation."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
