"""A rate limiter shared by all connections: evenly spaced starts, no burst."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*\Z", re.I)
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PER |= {"h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float | None:
    """Parse ``N/s``, ``N/min``, ``N/h`` or a plain number (per second) into messages/s.

    An empty string, ``0`` or ``unlimited`` mean no limit (None). Raise ValueError otherwise.
    """
    if text.strip().lower() in {"", "0", "none", "unlimited"}:
        return None
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"cannot read rate {text!r}: use N/s, N/min, N/h or a number per second")
    count = float(match.group(1))
    if count <= 0:
        return None
    unit = (match.group(2) or "s").lower()
    return count / _PER[unit]


class RateLimiter:
    """Let callers start no faster than ``rate`` per second, evenly spaced.

    Callers take turns (a lock) and each waits until ``1/rate`` after the previous one
    actually started, on the monotonic clock. Spacing is measured between real starts, not
    between slots booked in advance, so a stalled event loop cannot release a burst of
    waiting callers at once, and an idle period earns no credit: never more than one message
    at a time.
    """

    def __init__(self, rate: float | None) -> None:
        import asyncio  # here, not at the top: settings import parse_rate, and a check
        # of a list alone need not load asyncio

        self.interval = 0.0 if rate is None else 1.0 / rate
        self._last = -float("inf")
        self._turn = asyncio.Lock()
        self._sleep = asyncio.sleep

    async def wait(self, sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Return when the caller may start; ``sleep`` lets the caller cut the wait short
        (a graceful stop)."""
        if not self.interval:
            return
        sleep = sleep or self._sleep
        async with self._turn:
            delay = self._last + self.interval - time.monotonic()
            if delay > 0:
                await sleep(delay)
            self._last = time.monotonic()
