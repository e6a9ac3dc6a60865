"""Files that hold personal data (journal, outbox, locks): owner-only, whatever the umask,
and never through a symlink (cron may run as root: a planted link must not make mailer
overwrite or truncate its target)."""

from __future__ import annotations

import os
from pathlib import Path

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def private_dir(path: Path) -> Path:
    """Create a folder (and any missing parents) readable by the owner only (0700).

    A folder that already exists is left as it is: it may be the user's working folder."""
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in missing:
        os.chmod(folder, 0o700)
    return path


def open_private(path: Path, flags: int = os.O_RDWR) -> int:
    """Open (creating when missing) a file with mode 0600, never through a symlink: a
    symlink in its place is an OSError (ELOOP). Returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def private_file(path: Path) -> Path:
    """Create a file with mode 0600 (truncating nothing) and return its path."""
    os.close(open_private(path, os.O_WRONLY))
    return path


def new_private_file(path: Path) -> int:
    """Create a new file with mode 0600; an OSError when anything (a file, a symlink) is
    already there. Returns a descriptor open for writing."""
    return open_private(path, os.O_WRONLY | os.O_EXCL)


def inside(path: Path | str, root: Path | str) -> bool:
    """Whether ``path``, symlinks and ``..`` resolved, lies in the folder ``root``: the one
    check for every file named by untrusted input (templates, lists, event files)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top


def folders_up(folder: Path, root: Path) -> list[Path]:
    """``folder`` and each folder above it, up to and including ``root`` (where a
    sub-template looks for what it shares with its parent: the event, the logo)."""
    top = os.path.realpath(root)
    found = []
    probe = folder
    while inside(probe, top):
        found.append(probe)
        if os.path.realpath(probe) == top or probe == probe.parent:
            break
        probe = probe.parent
    return found
