"""A rate limiter shared by all connections: evenly spaced starts, no burst."""

from __future__ import annotations

import re
import time

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

    Each ``reserve()`` takes the next free slot on the monotonic clock and says how long
    until it starts (the caller sleeps that long); slots are ``1/rate`` apart, so there is
    never a burst of more than one message, not even after an idle period.
    """

    def __init__(self, rate: float | None) -> None:
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._next = 0.0

    def reserve(self) -> float:
        """Take the next free slot; the seconds until it starts."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now
