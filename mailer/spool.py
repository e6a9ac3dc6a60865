"""The check pass's messages, kept for the send: each guest's message is rendered and
built once per run, and the list is read once.

The check pass renders every message before the first one goes out (a template that fails
for one guest stops the run with nothing sent). When the run will send the whole list (a
first run of a campaign without an event, no --where, --only or --max-messages), it also
builds each message and appends it here, with a short record for each suppressed guest.
When every guest made it in (``complete``), the journal's sync and the send walk the
spool instead of reading and checking the list again; otherwise (over the size limit, a
full disk) they read the list as before and take from here what they find.

The file is a ``TemporaryFile`` in the journal's (private) folder: on Linux it is opened
with ``O_TMPFILE`` and never has a name, so no other user can open it and it disappears
with the process, even one that is killed. A record is its length and a ``marshal``-ed
tuple of strings, ints and bytes (no code is ever loaded from it). The Date header is set
again when a message is taken: a rate-limited run may send hours after its check.
"""

from __future__ import annotations

import marshal
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .message import fresh_date, wire_form
from .models import Outgoing, Recipient

MAX_BYTES = 1 << 30  # a spool never grows past 1 GiB (nor past half the free space)
LARGEST = 1 << 20  # a message over 1 MB (attachments) is built again rather than kept
_CHUNK = 1 << 18  # bytes written or read at once
_PIECES = 1000  # at most this many buffers to one writev (the system's limit is 1024)
_LENGTH = struct.Struct("<I")

Record = tuple[Any, ...]  # (line, key, email, name[, the message's other fields])
_GUEST_ONLY = 4  # the length of a suppressed guest's record: no message


def holds_message(record: Record) -> bool:
    """Whether a record holds a message (not only a suppressed guest's line)."""
    return len(record) > _GUEST_ONLY


class Spool:
    """Messages appended in list order by the check pass, read back in the same order."""

    def __init__(self, folder: Path, limit: int = MAX_BYTES) -> None:
        # Closed by __exit__: the spool lives for the whole run.
        self._file: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115
            dir=folder, prefix=".mailer-spool-", buffering=0)
        self._fd = self._file.fileno()
        try:
            stat = os.statvfs(folder)
            limit = min(limit, stat.f_bavail * stat.f_frsize // 2)
        except OSError:
            pass
        self._limit = limit
        self._written = 0  # bytes in the file
        self._pieces: list[bytes] = []  # records not yet written: one writev() for many
        self._pending = 0  # their bytes
        self._taking: Iterator[Record] | None = None
        self._next: Record | None = None
        self._full = False  # a guest's record was left out (limit, size, the disk)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    @property
    def complete(self) -> bool:
        """Whether every guest of the list has its record (the list need not be read
        again)."""
        return not self._full

    # Writing (the check pass) ----------------------------------------------------------

    def put(self, message: Outgoing) -> None:
        """Keep a message the check pass built (in list order)."""
        if len(message.data) > LARGEST:
            self._full = True
            return
        self._append((message.line, message.key, message.email, message.name,
                      message.envelope_from, message.envelope_to, message.message_id,
                      message.data, message.subject, message.lang, message.kind,
                      message.files))

    def suppressed(self, recipient: Recipient) -> None:
        """A guest of the list who is not sent anything (for the journal's sync)."""
        self._append((recipient.line, recipient.address.key, recipient.email,
                      recipient.name))

    def _append(self, record: Record) -> None:
        if self._full or self._taking is not None:
            self._full = True
            return
        data = marshal.dumps(record)
        size = len(data) + 4
        if self._written + self._pending + size > self._limit:
            self._full = True
            return
        self._pieces += (_LENGTH.pack(len(data)), data)
        self._pending += size
        if self._pending >= _CHUNK or len(self._pieces) >= _PIECES:
            self._flush()

    def _flush(self) -> None:
        """Write the pieces (one writev, no copy into a buffer); on a full disk keep what
        was written whole and stop there."""
        if not self._pieces:
            return
        try:
            if os.writev(self._fd, self._pieces) != self._pending:
                raise OSError("short write")
        except OSError:
            self._full = True
            os.ftruncate(self._fd, self._written)
        else:
            self._written += self._pending
        self._pieces.clear()
        self._pending = 0

    # Reading (the sync, the send) ------------------------------------------------------

    def records(self) -> Iterator[Record]:
        """Every record from the start, in list order (each call reads the file anew)."""
        self._flush()
        fd = self._fd
        offset = 0
        buffer = b""
        at = 0
        while True:
            left = len(buffer) - at
            if left < 4 or left < 4 + _LENGTH.unpack_from(buffer, at)[0]:
                chunk = os.pread(fd, _CHUNK, offset)
                if not chunk:
                    return
                offset += len(chunk)
                buffer = buffer[at:] + chunk
                at = 0
                continue
            end = at + 4 + _LENGTH.unpack_from(buffer, at)[0]
            # Our own file, unlinked and owner-only since it was opened: never untrusted.
            yield marshal.loads(memoryview(buffer)[at + 4:end])  # noqa: S302
            at = end

    def rows(self) -> Iterator[tuple[str, str, str, int, bool]]:
        """(key, email, name, line, suppressed) of every guest, as the journal's sync
        takes them (only when ``complete``)."""
        for record in self.records():
            yield record[1], record[2], record[3], record[0], not holds_message(record)

    def take(self, line: int, key: str) -> Outgoing | None:
        """The kept message of the guest on ``line`` with address ``key``, with a fresh
        Date; None when there is none (the caller builds it). Lines must be asked for in
        increasing order, as the list is walked."""
        if self._taking is None:
            self._taking = self.records()
            self._next = next(self._taking, None)
        while self._next is not None and (self._next[0] < line
                                          or not holds_message(self._next)):
            self._next = next(self._taking, None)
        found = self._next
        if found is None or found[0] != line or found[1] != key:
            return None
        self._next = next(self._taking, None)
        return self.message(found)

    def message(self, record: Record) -> Outgoing:
        """The message of a record (not a suppressed guest's), with a fresh Date."""
        data = fresh_date(record[7])
        return Outgoing(line=record[0], key=record[1], email=record[2], name=record[3],
                        envelope_from=record[4], envelope_to=record[5],
                        message_id=record[6], data=data, wire=wire_form(data),
                        subject=record[8], lang=record[9], kind=record[10],
                        files=record[11])
