"""Files attached to messages: ``--attach`` (every message) and a list's attachment column
(per guest). Each file is read and base64-encoded once per run, however many messages
carry it. A path from a list is untrusted: it must stay inside the attachments folder
(no absolute path, no ``..`` out of it, no symlink pointing out of it)."""

from __future__ import annotations

import mimetypes
import os
import stat
from pathlib import Path

from .files import inside
from .message import Attachment

WARN_BYTES = 10 * 1024 * 1024  # a message over this is a warning
MAX_BYTES = 25 * 1024 * 1024  # and over this an error: the common provider limit
_CACHE_BYTES = 64 * 1024 * 1024  # files kept encoded in memory at once


class AttachmentError(ValueError):
    """A file cannot be attached; the message says why."""


def content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


class AttachmentStore:
    """Load files once: by real path, encoded, kept while they fit in the cache."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(os.path.realpath(folder))
        self._cache: dict[str, Attachment] = {}
        self._cached = 0
        self.reads = 0  # files read from disk (a test counts them)

    def given(self, path: Path) -> Attachment:
        """A file named on the command line (--attach): the user's own path."""
        return self._load(Path(os.path.realpath(path)), path.name)

    def from_list(self, value: str) -> list[Attachment]:
        """The files a list's cell names (``a.pdf|b.png``), confined to the folder."""
        found = []
        for name in (part.strip() for part in value.split("|")):
            if not name:
                continue
            if os.path.isabs(name) or name.startswith("~"):
                raise AttachmentError(f"attachment {name!r}: an absolute path; name a file "
                                      f"inside {self.folder}")
            real = Path(os.path.realpath(self.folder / name))
            if not inside(real, self.folder):
                raise AttachmentError(f"attachment {name!r} lies outside {self.folder}")
            found.append(self._load(real, Path(name).name))
        return found

    def _load(self, real: Path, name: str) -> Attachment:
        cached = self._cache.get(str(real))
        if cached is not None:
            return cached
        try:
            with open(real, "rb") as handle:
                info = os.fstat(handle.fileno())  # the file opened, not a name looked up
                if not stat.S_ISREG(info.st_mode):
                    raise AttachmentError(f"attachment {name!r}: not a regular file")
                if info.st_size > MAX_BYTES:  # never read a file that cannot be sent
                    raise AttachmentError(
                        f"attachment {name!r}: {info.st_size / 1024 / 1024:.1f} MB, over the "
                        f"25 MB most providers accept")
                data = handle.read(info.st_size + 1)  # once; a file that grew is refused
        except FileNotFoundError:
            raise AttachmentError(f"attachment {name!r}: no such file") from None
        except IsADirectoryError:
            raise AttachmentError(f"attachment {name!r}: not a regular file") from None
        except OSError as exc:
            raise AttachmentError(f"attachment {name!r}: cannot read it: "
                                  f"{exc.strerror}") from None
        if len(data) > info.st_size:
            raise AttachmentError(f"attachment {name!r}: it grew while it was read")
        self.reads += 1
        attachment = Attachment(name, content_type(name), data, source=real.as_uri())
        if self._cached + len(data) <= _CACHE_BYTES:
            self._cache[str(real)] = attachment
            self._cached += len(data)
        return attachment


def encoded_size(attachments: list[Attachment]) -> int:
    return sum(len(a.encoded) for a in attachments)
