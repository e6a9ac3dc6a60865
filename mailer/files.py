"""Files that hold personal data (journal, outbox): owner-only, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create a folder (and any missing parents) readable by the owner only (0700).

    A folder that already exists is left as it is: it may be the user's working folder."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in missing:
        os.chmod(folder, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create (or truncate nothing of) a file with mode 0600 and return its path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path
