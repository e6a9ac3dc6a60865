"""The queue: every message a run sends, built once by the plan's pass over the list,
kept on disk, and finished on the way out.

The pass over the list appends a record for every guest of the list, in list order:
the guest alone (for the journal's sync: who is on the list, suppressed or excluded),
or the guest with the message the plan gives them. Delivery (and the dry run's outbox)
reads only the queue; the list is never read again. A message over 1 MB (attachments),
or any past the queue's size limit (1 GiB, or half the free space), is kept as its
recipe instead (the guest's row and what the plan gives them) and built again when it
leaves, so a large file attached to every message does not fill the disk.

``finish`` is the one place a message is completed when it leaves: its Date (a
rate-limited run may send hours after the pass), then the wire form (dot-stuffed, ended
by ``.``).

The file is a ``TemporaryFile`` in the journal's (private) folder: on Linux it is opened
with ``O_TMPFILE`` and never has a name, so no other user can open it and it disappears
with the process, even one that is killed; never through a symlink, since it has no
name. A record is its length and a ``marshal``-ed tuple of strings, ints and bytes (no
code is ever loaded from it).
"""

from __future__ import annotations

import marshal
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import TemporaryError
from .message import fresh_date, wire_form
from .models import Decision, Kind, Mark, Outgoing, Recipient, Rendered, State

if TYPE_CHECKING:
    from .dkim import Signer

MAX_BYTES = 1 << 30  # messages kept whole up to 1 GiB (nor past half the free space)
LARGEST = 1 << 20  # a message over 1 MB (attachments) is kept as its recipe
_CHUNK = 1 << 18  # bytes written or read at once
_PIECES = 1000  # at most this many buffers to one writev (the system's limit is 1024)
_LENGTH = struct.Struct("<I")

Record = tuple[Any, ...]  # (line, key, email, name, mark[, tag, ...])
_MESSAGE, _RECIPE = "m", "r"
# A recipe is built again by this: (guest, kind, event version held) → the message.
Build = Callable[[Recipient, Kind, int | None], Outgoing]


AHEAD = 8  # messages finished ahead of delivery when signing (a Date at most this early)


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def ahead(items: Iterator[Outgoing], depth: int) -> Iterator[Outgoing]:
    """``items``, made by a thread of their own at most ``depth`` ahead of the reader; an
    error in the thread is raised in the reader; the thread stops when the reader does."""
    import queue
    import threading

    box: queue.Queue[Outgoing | _Failed | None] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: Outgoing | _Failed | None) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(None)
        except BaseException as exc:  # handed to the reader, which raises it
            put(_Failed(exc))

    thread = threading.Thread(target=work, name="mailer-finish", daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is None:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def finish(message: Outgoing, signer: Signer | None = None) -> Outgoing:
    """Complete a message as it leaves: a fresh Date, the DKIM signature (with a
    ``signer``), then the wire form."""
    message.data = fresh_date(message.data)
    if signer is not None:
        message.data = signer.sign(message.data)
    message.wire = wire_form(message.data)
    return message


class Queue:
    """Records appended in list order by the pass, read back in the same order."""

    def __init__(self, folder: Path | None = None, limit: int | None = None) -> None:
        folder = folder or Path(tempfile.gettempdir())
        limit = MAX_BYTES if limit is None else limit
        try:
            # Closed by __exit__: the queue lives for the whole run.
            self._file: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115
                dir=folder, prefix=".mailer-queue-", buffering=0)
        except OSError as exc:
            raise TemporaryError(f"{folder}: cannot make the queue: {exc.strerror}") from None
        self.folder = folder
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
        self.due = 0  # messages (and recipes) in the queue
        self.excluded = 0  # guests --where leaves out
        self.headers: list[str] = []  # the list's columns, for a recipe's guest

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    # Writing (the pass) ----------------------------------------------------------------

    def guest(self, recipient: Recipient, mark: int) -> None:
        """A guest of the list who is sent nothing in this run (``mark``: a models.Mark)."""
        self.excluded += mark == Mark.EXCLUDED
        self._append((recipient.line, recipient.address.key, recipient.email,
                      recipient.name, int(mark)))

    def put(self, recipient: Recipient, decision: Decision, message: Outgoing,
            mark: int = 0) -> None:
        """A guest and the message the plan gives them (a recipe when it is too large
        to keep, or the queue is past its limit). A message that keeps its rendered parts
        (a dry run's, for the preview page) keeps them, and the guest's row to search by."""
        self.due += 1
        guest = (message.line, message.key, message.email, message.name, int(mark))
        prior = decision.state.value if decision.state is not None else ""
        if len(message.data) <= LARGEST and self._written + self._pending < self._limit:
            rendered = message.rendered
            preview = None if rendered is None else (rendered.text, rendered.html,
                                                     rendered.unsubscribe_url,
                                                     " ".join(recipient.row))
            self._append((*guest, _MESSAGE, prior, message.envelope_from,
                          message.envelope_to, message.message_id, message.data,
                          message.subject, message.lang, message.kind.value, message.files,
                          message.holds, preview))
            return
        self.headers = list(recipient.headers)
        self._append((*guest, _RECIPE, prior, list(recipient.row), recipient.language,
                      message.kind.value, decision.held))

    def _append(self, record: Record) -> None:
        data = marshal.dumps(record)
        self._pieces += (_LENGTH.pack(len(data)), data)
        self._pending += len(data) + 4
        if self._pending >= _CHUNK or len(self._pieces) >= _PIECES:
            self._flush()

    def _flush(self) -> None:
        """Write the pieces (one writev, no copy into a buffer)."""
        if not self._pieces:
            return
        try:
            done = os.writev(self._fd, self._pieces)
            if done != self._pending:  # the rest, until it is written or the error shows
                rest = memoryview(b"".join(self._pieces))[done:]
                while rest:
                    rest = rest[os.write(self._fd, rest):]
        except OSError as exc:
            raise TemporaryError(f"{self.folder}: no room for the queue of this run: "
                                 f"{exc.strerror} (nothing was sent)") from None
        self._written += self._pending
        self._pieces.clear()
        self._pending = 0

    # Reading (the sync, delivery, the outbox) ------------------------------------------

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

    def guests(self) -> Iterator[tuple[str, str, str, int, int]]:
        """(key, email, name, line, mark) of every guest, as the journal's sync takes
        them."""
        for record in self.records():
            yield record[1], record[2], record[3], record[0], record[4]

    def messages(self, build: Build, signer: Signer | None = None) -> Iterator[Outgoing]:
        """Every message, in list order, finished as it is taken (a recipe built again
        by ``build`` first). With a DKIM ``signer`` they are finished by a thread of their
        own, a few ahead: OpenSSL's RSA lets go of the GIL, so the signatures are made on
        the other core while the event loop delivers."""
        found = (message for message, _ in self.entries(build, signer))
        return found if signer is None else ahead(found, AHEAD)

    def entries(self, build: Build, signer: Signer | None = None
                ) -> Iterator[tuple[Outgoing, str]]:
        """Every message, finished, with the text the preview page finds it by."""
        for record in self.records():
            if len(record) > 5:
                message, search = self._message(record, build)
                yield finish(message, signer), search

    def _message(self, record: Record, build: Build) -> tuple[Outgoing, str]:
        line, key, email, name, _, tag, prior = record[:7]
        if tag == _RECIPE:
            from .address import check_address

            row, language, kind, held = record[7:]
            guest = Recipient(line=line, address=check_address(email), name=name,
                              language=language, headers=self.headers, row=row)
            message = build(guest, Kind(kind), held)
            search = " ".join(row)
        else:
            (envelope_from, envelope_to, message_id, data, subject, lang, kind, files, holds,
             preview) = record[7:]
            rendered = None if preview is None else \
                Rendered(subject, preview[0], preview[1], lang, preview[2])
            search = "" if preview is None else preview[3]
            message = Outgoing(line=line, key=key, email=email, name=name,
                               envelope_from=envelope_from, envelope_to=envelope_to,
                               message_id=message_id, data=data, wire=b"", subject=subject,
                               lang=lang, rendered=rendered, kind=Kind(kind),
                               holds=None if holds is None else tuple(holds), files=files)
        message.prior = State(prior) if prior else None
        return message, search
