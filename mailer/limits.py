"""A time limit for work on untrusted input (a template, a message from a stranger): a
timer of the process's CPU time (``ITIMER_VIRTUAL``, ``SIGVTALRM``: no clash with anyone's
``SIGALRM``) that interrupts pure-Python code that runs too long, in the main thread
(elsewhere no limit is set: signals only reach the main thread)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class TooSlow(Exception):
    """The work took longer than its limit."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise TooSlow


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Raise TooSlow in the block once it has used ``seconds`` of CPU time (a few system
    calls a block: cheap enough to put around each message of a run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGVTALRM) is not _alarm:
        signal.signal(signal.SIGVTALRM, _alarm)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
