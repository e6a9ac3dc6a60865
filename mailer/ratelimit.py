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

    When the relay asks to slow down (``slow_down``), the rate is halved (without a rate,
    from the pace of the last starts) and nobody starts for a pause, which doubles while
    such replies go on (up to MAX_PAUSE); after RECOVER starts without one, the next pause
    is short again and the rate comes back a quarter of the way to where it was, step by
    step.
    """

    MAX_PAUSE = 120.0
    RECOVER = 20

    def __init__(self, rate: float | None) -> None:
        import asyncio  # here, not at the top: settings import parse_rate, and a check
        # of a list alone need not load asyncio

        self.interval = 0.0 if rate is None else 1.0 / rate
        self._given = self.interval  # what the run was asked for
        self._last = -float("inf")
        self._turn = asyncio.Lock()
        self._sleep = asyncio.sleep
        self._starts: list[float] = []  # the last starts, for the pace without a rate
        self._pause = 0.0  # the last pause (the next doubles it)
        self._resume = -float("inf")  # nobody starts before this
        self._calm = 0  # starts since the last slow-down

    @property
    def rate(self) -> float | None:
        """Messages a second now (None: unlimited)."""
        return 1.0 / self.interval if self.interval else None

    async def wait(self, sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Return when the caller may start; ``sleep`` lets the caller cut the wait short
        (a graceful stop)."""
        now = time.monotonic()
        if not self.interval and now >= self._resume:
            self._started(now)
            return
        sleep = sleep or self._sleep
        async with self._turn:
            delay = max(self._last + self.interval, self._resume) - time.monotonic()
            if delay > 0:
                await sleep(delay)
            self._started(time.monotonic())

    def _started(self, now: float) -> None:
        self._last = now
        starts = self._starts
        starts.append(now)
        if len(starts) > 20:
            del starts[0]
        self._calm += 1
        if self._calm >= self.RECOVER and (self._pause or self.interval != self._given):
            self._calm = 0
            self._pause /= 2
            if self.interval > self._given:  # back a quarter of the way each time
                self.interval = max(self._given, self.interval - (self.interval - self._given)
                                    / 4) if self._given else self.interval * 0.75
                if self._given == 0 and self.interval < 0.001:
                    self.interval = 0.0

    def slow_down(self) -> float:
        """The relay asked to slow down: halve the rate and pause; the new rate (a
        second)."""
        if self.interval:
            self.interval *= 2
        else:  # no rate asked for: half the pace of the last starts
            starts = self._starts
            pace = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else 0.5
            self.interval = max(2 * pace, 0.01)
        self._pause = min(self.MAX_PAUSE, max(1.0, 2 * self._pause))
        self._resume = time.monotonic() + self._pause
        self._calm = 0
        return 1.0 / self.interval
