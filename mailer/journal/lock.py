"""One ``send`` per journal and campaign: an flock on a file beside the journal."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from pathlib import Path

from ..errors import ConfigError, TemporaryError
from ..files import open_private, private_dir


class CampaignLock:
    """The kernel drops an flock when its process dies, so the lock never outlives a killed
    run; the file keeps the holder's PID and host for the message to a second run."""

    def __init__(self, journal: Path, campaign: str) -> None:
        digest = hashlib.sha256(campaign.encode()).hexdigest()[:12]
        self.path = journal.with_name(f"{journal.name}.{digest}.lock")
        self.campaign = campaign
        self._fd: int | None = None

    def __enter__(self) -> CampaignLock:
        try:
            private_dir(self.path.parent)
            fd = open_private(self.path)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create the lock file: "
                              f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise TemporaryError(f"campaign {self.campaign!r} is in use by {holder} "
                                 f"(lock {self.path}); try again when it has finished"
                                 ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
