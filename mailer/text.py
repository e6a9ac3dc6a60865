"""Text from outside (a message from a stranger, a server's reply) made fit to print on a
terminal and to store: control characters, a terminal's escape sequences among them, are
shown as ``\\xNN``."""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, limit: int = 300) -> str:
    """``text`` with its control characters (but tab and line feed) as ``\\xNN``, at most
    ``limit`` characters."""
    text = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "…"
