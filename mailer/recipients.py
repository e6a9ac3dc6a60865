"""Read a recipient list (CSV) as a stream of checked, de-duplicated recipients.

The list is read as bytes, in blocks of whole lines, so that every record keeps the line
it starts on, and so that bytes that are not UTF-8 are reported on their line instead of
ending the read. Nothing here holds more than a block at a time, apart from the table of
addresses seen (for duplicates).

A check that needs nothing but the addresses and languages (``mailer validate`` without
a template) reads a block in bulk when every row in it is plain: a few passes of string
methods and one regular expression over the whole block instead of the csv reader, a
Recipient and the address check for each row (100,000 rows: about 0.25 s instead of
1.1 s). Any block with one row that is not plain is read record by record, so every
problem is found and worded the same either way; tests/test_bulk.py holds both reads
to that.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from array import array
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from itertools import compress, repeat
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

from .address import AddressError, check_address, plain_keys
from .errors import InputError
from .models import Plain, Problem, Recipient

EMAIL_COLUMNS = ("email", "e-mail", "e-post", "epost", "mail")
NAME_COLUMNS = ("name", "navn")
LANGUAGE_COLUMNS = ("language", "lang", "språk", "målform")
ATTACHMENT_COLUMNS = ("attachment", "attachments", "vedlegg")

# Language values people write in a spreadsheet, mapped to the codes variants use.
_LANGUAGE_ALIASES = {
    "bokmål": "nb", "bokmal": "nb", "no": "nb", "nob": "nb",
    "nynorsk": "nn", "nno": "nn",
    "english": "en", "engelsk": "en", "eng": "en",
}

# C0 controls but CR and LF, DEL, C1 controls, the Unicode line and paragraph separators:
# never allowed in a field. CR and LF (a line break typed with Alt+Enter in Excel) are
# allowed, except in the columns that reach a header (address, name, language). Lone
# surrogates are bytes that were not UTF-8, kept by surrogateescape.
_SEP = "\x1f"  # joins the fields of a row for one search of both patterns below
_CONTROLS = "\x00-\x09\x0b\x0c\x0e-\x1e\x7f-\x9f\u2028\u2029"
_SURROGATES = "\udc80-\udcff"
_CONTROL = re.compile(f"[{_CONTROLS}{_SEP}]")
_NOT_UTF8 = re.compile(f"[{_SURROGATES}]")
_BAD_IN_ROW = re.compile(f"[{_CONTROLS}{_SURROGATES}]")  # a lookahead is 3x slower
_BREAK = re.compile(r"\r\n?|\n")
# Longest field accepted (Python's csv default is 131,072 characters).
FIELD_LIMIT = 1_000_000
KNOWN_LANGUAGES = ("nb", "nn", "en")
BLOCK = 1 << 16  # bytes of the list read at a time
# Bytes that keep a block of a list off the bulk path (besides the delimiter, which is
# taken out of this set): a quote, C0 controls but LF and CR, DEL, and _SEP. C1 controls
# and the line and paragraph separators in UTF-8, and bytes that are not UTF-8, too.
_NOT_PLAIN = bytes([*range(0x0a), 0x0b, 0x0c, *range(0x0e, 0x20), ord('"'), 0x7f])
_NOT_PLAIN_UTF8 = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}\Z")
STDIN = Path("-")  # the list on standard input


def normalize_language(value: str) -> str | None:
    """``nb-NO`` → ``nb``, ``Nynorsk`` → ``nn``, empty → None; anything else lower-cased."""
    value = value.strip().lower()
    if not value:
        return None
    value = _LANGUAGE_ALIASES.get(value, value)
    return value.replace("_", "-").split("-")[0]


def _find(headers: list[str], names: Iterable[str]) -> int | None:
    folded = [h.strip().casefold() for h in headers]
    for name in names:
        if name in folded:
            return folded.index(name)
    return None


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter of a list: the one of ``;``, ``,``, tab used most in the header."""
    counts = {d: header_line.count(d) for d in (";", ",", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _encoding_problem(head: bytes) -> str | None:
    """Why the start of a file shows it is not UTF-8 text (UTF-16, binary), or None."""
    if head.startswith(b"PK\x03\x04"):
        return "a workbook (.xlsx) must be given as a file named .xlsx, not as CSV or " \
               "on standard input"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (
            len(head) >= 4 and head.count(0) * 3 >= len(head)):
        return "the file is UTF-16 (Excel's 'Unicode text'): save it as 'CSV UTF-8'"
    if b"\x00" in head[:1024] and head.count(0) * 3 < len(head):
        return "the file holds NUL bytes: it is not a CSV file"
    return None


class _Feed:
    """A list file as blocks of whole lines (raw bytes, for the bulk path) or as text
    lines (LF, CRLF or CR alone, as Excel for Mac writes; for the csv reader), from one
    binary stream: what one has taken, the other does not see. ``size`` is the size of
    the next block; a block given back with ``unread`` is read again, in blocks of the
    size then set."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle = handle
        self.size = size
        self._rest = b""  # read, but not yet given out as a block
        self._pending: deque[str] = deque()  # text lines of a block not yet taken

    @property
    def empty(self) -> bool:
        """No text lines left of the last block: the next read starts a new block."""
        return not self._pending

    def block(self) -> bytes | None:
        """The next block of whole lines (about ``size`` bytes, more for a long line);
        None at the end of the file."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            return text.encode("utf-8", "surrogateescape")
        data = self._rest
        while True:
            cut = _cut(data, self.size) if len(data) >= self.size else 0
            if cut:
                self._rest = data[cut:]
                return data[:cut]
            chunk = self._handle.read(max(self.size, len(data)))  # doubling for long lines
            if not chunk:
                self._rest = b""
                return data or None
            data += chunk

    def unread(self, block: bytes) -> None:
        """Give ``block`` back: the next blocks start with it."""
        self._rest = block + self._rest

    def push(self, block: bytes) -> None:
        """Give the text lines of ``block`` to ``lines()``."""
        self._pending.extend(io.StringIO(block.decode("utf-8", "surrogateescape"),
                                         newline=""))

    def lines(self) -> Iterator[str]:
        """Every text line from here to the end of the file, line ends kept."""
        pending = self._pending
        while True:
            while pending:
                yield pending.popleft()
            block = self.block()
            if block is None:
                return
            self.push(block)


def _cut(data: bytes, size: int) -> int:
    """Where a block of about ``size`` bytes of whole lines ends in ``data``: after its last
    line end before ``size``, else after the first one; 0 when there is none yet. A block
    never ends between a CR and its LF, or inside a character."""
    last = len(data) - 1  # a CR as the last byte may be half of a CRLF: not an end yet
    at = max(data.rfind(b"\n", 0, size), data.rfind(b"\r", 0, min(size, last)))
    if at < 0:
        later = [i for i in (data.find(b"\n", size), data.find(b"\r", size, last)) if i >= 0]
        if not later:
            return 0
        at = min(later)
    return at + 2 if data[at] == 0x0D and data[at + 1] == 0x0A else at + 1


class _Lines:
    """The physical lines of a file, each kept until the record it belongs to has been
    read, and counted."""

    def __init__(self, lines: Iterator[str], before: int = 0) -> None:
        self._lines = lines
        self.count = before  # physical lines read so far
        self.record: list[str] = []  # the lines of the record being read

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            self.count += 1
            self.record.append(line)
            yield line


class SeenAddresses:
    """The addresses seen so far in a pass, for duplicates: an open-addressing table of
    64-bit hashes and line numbers in two arrays (12 bytes a slot, at most half full), so
    a list of a million addresses needs some 32 MB instead of a dict's 180. Two different
    addresses with the same 64-bit hash (odds about 1 in 10^7 for a million) would be
    reported as a duplicate: a warning that names both lines, so a person sees it."""

    def __init__(self) -> None:
        self._hashes = array("q", bytes(8 * 1024))
        self._lines = array("i", bytes(4 * 1024))
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    def first_line(self, key: str, line: int) -> int | None:
        """The line ``key`` was first seen on; None (and remembered) when it is new."""
        if 2 * (self._used + 1) > len(self._hashes):
            self.reserve(1)
        digest = hash(key) or 1  # 0 marks an empty slot
        at = _slot(self._hashes, digest)
        if self._hashes[at]:
            return self._lines[at]
        self._hashes[at] = digest
        self._lines[at] = line
        self._used += 1
        return None

    def add_all(self, keys: list[str], line: int) -> list[tuple[int, int]]:
        """Remember ``keys``, seen on consecutive lines from ``line``. Return (index, first
        line) for each key seen before, which is not remembered again."""
        self.reserve(len(keys))
        seen: list[tuple[int, int]] = []
        hashes, lines, slot = self._hashes, self._lines, _slot
        for index, digest in enumerate(map(hash, keys)):
            digest = digest or 1
            at = slot(hashes, digest)
            if hashes[at]:
                seen.append((index, lines[at]))
            else:
                hashes[at] = digest
                lines[at] = line + index
        self._used += len(keys) - len(seen)
        return seen

    def reserve(self, more: int) -> None:
        """Make room for ``more`` addresses (the table stays at most half full)."""
        size = len(self._hashes)
        if 2 * (self._used + more) <= size:
            return
        while 2 * (self._used + more) > size:
            size *= 2
        old_hashes, old_lines = self._hashes, self._lines
        self._hashes = hashes = array("q", bytes(8 * size))
        self._lines = lines = array("i", bytes(4 * size))
        for digest, line in zip(compress(old_hashes, old_hashes),
                                compress(old_lines, old_hashes), strict=True):
            at = _slot(hashes, digest)
            hashes[at] = digest
            lines[at] = line


def _slot(hashes: array[int], digest: int) -> int:
    """Where ``digest`` is in an open-addressing table of a power-of-two size, or the empty
    slot it goes to (linear probing)."""
    mask = len(hashes) - 1
    at = digest & mask
    found = hashes[at]
    while found and found != digest:
        at = (at + 1) & mask
        found = hashes[at]
    return at


@dataclass
class RecipientList:
    """A recipient CSV file. Iterate ``scan()`` once per pass; each pass streams the file."""

    path: Path
    sheet: str | None = None  # a worksheet of an .xlsx list (default: the first)
    headers: list[str] = field(default_factory=list)
    email_column: int = 0
    name_column: int | None = None
    language_column: int | None = None
    attachment_column: int | None = None
    block_size: int = BLOCK  # bytes read at a time

    @property
    def display(self) -> str:
        return "<stdin>" if self.from_stdin else str(self.path)

    @property
    def from_stdin(self) -> bool:
        """The list is ``-``: standard input (read once, as every list is)."""
        return self.path == STDIN

    def _open(self, shown: str) -> BinaryIO:
        """The list's bytes: the file, a pipe (``<(…)``), or standard input for ``-``."""
        try:
            if not self.from_stdin:
                return self.path.open("rb")
            try:
                return open(sys.stdin.fileno(), "rb", closefd=False)
            except (AttributeError, io.UnsupportedOperation):  # not a real file (a test's)
                return io.BufferedReader(sys.stdin.buffer)  # type: ignore[type-var]
        except OSError as exc:
            raise InputError(f"{shown}: cannot read the list: {exc.strerror}") from None

    @overload
    def scan(self, *, bulk: Literal[False] = False) -> Iterator[Recipient | Problem]: ...

    @overload
    def scan(self, *, bulk: Literal[True]) -> Iterator[Recipient | Plain | Problem]: ...

    @overload
    def scan(self, *, bulk: bool) -> Iterator[Recipient | Plain | Problem]: ...

    def scan(self, *, bulk: bool = False) -> Iterator[Recipient | Plain | Problem]:
        """Yield every unique valid recipient and a Problem for each bad or duplicate record.
        With ``bulk``, runs of plain valid rows of a CSV list come as one Plain each rather
        than a Recipient a row (for a check that needs no more; see ``_plain``), unless
        the list has an attachment column: each row's files are to be checked.

        Raise InputError when the file as a whole is unusable (empty, no email column).
        """
        shown = self.display
        if self.path.suffix.lower() in (".xlsx", ".xlsm"):
            yield from self._scan_workbook(shown)
            return
        with self._open(shown) as handle:
            assert isinstance(handle, io.BufferedReader)
            why = _encoding_problem(handle.peek(4096)[:4096])
            if why is not None:
                raise InputError(f"{shown}:1: {why}")
            feed = _Feed(handle, self.block_size)
            stream = feed.lines()
            first = next(stream, None)
            blank = 0
            while first is not None and not first.strip(" \t\r\n\ufeff;,"):
                blank += 1
                first = next(stream, None)
            if first is None:
                raise InputError(f"{shown}:1: the list is empty: expected a header row "
                                 f"with an email column")
            first = first.removeprefix("\ufeff")
            header_line = blank + 1
            if _NOT_UTF8.search(first):
                raise InputError(f"{shown}:{header_line}: the file is not UTF-8: save it as "
                                 f"'CSV UTF-8' and try again")
            delimiter = _sniff_delimiter(first)
            headers = next(csv.reader([first], delimiter=delimiter, strict=False), [])
            self._columns(headers, shown, header_line)
            lines, seen = _Lines(stream, header_line), SeenAddresses()
            if not bulk or self.attachment_column is not None:
                yield from self._records(lines, shown, delimiter, seen)
                return
            avoid = _NOT_PLAIN.replace(delimiter.encode(), b"")
            try:
                size = os.fstat(handle.fileno()).st_size  # 0 for a pipe
            except (OSError, io.UnsupportedOperation):  # standard input that is no file
                size = 0
            # A block with a row that is not plain is read again in blocks of 512 bytes (some
            # 14 rows), growing again while they are plain: one typo in 2,000 rows then
            # costs some 14 rows read record by record, not 2,000.
            largest, smallest = self.block_size, max(1, self.block_size // 128)
            while (block := feed.block()) is not None:
                if not seen.used:  # room for as many rows as the file holds lines like these
                    # (at most half a million: an estimate too high costs memory)
                    seen.reserve(min(size * (block.count(b"\n") + 1) // len(block), 1 << 19))
                taken, items = self._plain(block, lines.count + 1, shown, delimiter, seen,
                                           avoid)
                if taken:
                    lines.count += taken
                    yield from items
                    feed.size = min(2 * feed.size, largest)
                    continue
                if feed.size > smallest:
                    feed.unread(block)
                    feed.size = smallest
                    continue
                feed.push(block)  # record by record, to the end of the block's last record
                if (yield from self._records(lines, shown, delimiter, seen,
                                             until=lambda: feed.empty)):
                    return  # the read ended early (a csv error, a quote that never closes)

    def _plain(self, block: bytes, line: int, shown: str, delimiter: str,
               seen: SeenAddresses, avoid: bytes) -> tuple[int, list[Plain | Problem]]:
        """Read a block of a list in bulk when every row in it is plain: no quotes, no
        controls, no lone CR, no more fields than the header, an address that takes
        check_address's fast path. Then the rows are Plain but for duplicates, which are
        Problems, as record by record. Return how many lines were read and the items; 0
        and none when a row is not plain: then the block is read record by record."""
        if len(block) > FIELD_LIMIT or len(block.translate(None, avoid)) != len(block) or (
                (b"\xc2" in block or b"\xe2\x80" in block) and _NOT_PLAIN_UTF8.search(block)):
            return 0, []
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            return 0, []
        if "\r" in text:
            if "\n" not in text:
                text = text.replace("\r", "\n")  # lines that end in CR alone
            elif text.count("\r") == text.count("\r\n"):
                text = text.replace("\r\n", "\n")
            else:
                return 0, []  # CR alone and LF both end lines here, or a CR is in a field
        rows = text.split("\n")
        if not rows[-1]:
            rows.pop()  # after the last line end
        count, width = len(rows), len(self.headers)
        columns = [self.email_column] + ([] if self.language_column is None
                                         else [self.language_column])
        if text.count(delimiter) == (width - 1) * count and \
                max(map(str.count, rows, repeat(delimiter))) == width - 1:
            cells = text.replace("\n", delimiter).split(delimiter)  # every row: width cells
            values = [cells[c:width * count:width] for c in columns]
        else:  # rows of fewer fields than the header, as some tools write them
            split = [row.split(delimiter) for row in rows]
            if max(map(len, split)) > width:
                return 0, []
            values = [[row[c] if c < len(row) else "" for row in split] for c in columns]
        checked = plain_keys(values[0])
        if checked is None:
            return 0, []
        keys, domains = checked
        languages: list[str | None] | None = None
        if len(values) > 1:
            codes = {value: normalize_language(value) for value in set(values[1])}
            languages = list(map(codes.__getitem__, values[1]))
        items: list[Plain | Problem] = []
        start = 0
        for index, first in [*seen.add_all(keys, line), (count, 0)]:
            if index > start:
                items.append(Plain(line + start, keys[start:index],
                                   None if languages is None else languages[start:index]))
            if index < count:
                local, _, domain = values[0][index].rpartition("@")
                items.append(_duplicate(shown, line + index, f"{local}@{domains[domain]}",
                                        first))
            start = index + 1
        return count, items

    def _columns(self, headers: list[str], shown: str, line: int) -> None:
        self.headers = [h.strip() for h in headers]
        email = _find(self.headers, EMAIL_COLUMNS)
        if email is None:
            raise InputError(
                f"{shown}:{line}: no email column: expected one of "
                f"{', '.join(EMAIL_COLUMNS)} (found: {', '.join(self.headers)})")
        self.email_column = email
        self.name_column = _find(self.headers, NAME_COLUMNS)
        self.language_column = _find(self.headers, LANGUAGE_COLUMNS)
        self.attachment_column = _find(self.headers, ATTACHMENT_COLUMNS)

    def _scan_workbook(self, shown: str) -> Iterator[Recipient | Problem]:
        """An .xlsx list, streamed (openpyxl read-only): the first sheet or ``sheet``, the
        first non-empty row the header, every value the text Excel shows, problems on the
        row numbers Excel shows. A workbook past the limits (``_check_workbook``) is
        refused before openpyxl reads it; a cell openpyxl cannot read is an error on its
        row, after which the sheet is not read further; openpyxl's warnings are not
        printed."""
        import warnings

        from openpyxl import load_workbook

        _check_workbook(self.path, shown)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl's words about styles and validation
            try:
                book = load_workbook(self.path, read_only=True, data_only=True)
            except Exception as exc:  # zip, XML and openpyxl errors alike: not a workbook
                raise InputError(f"{shown}: not a readable .xlsx workbook: "
                                 f"{type(exc).__name__}: {exc}") from None
            try:
                yield from self._sheet_rows(book, shown)
            finally:
                book.close()

    def _sheet_rows(self, book: Any, shown: str) -> Iterator[Recipient | Problem]:
        if self.sheet is not None and self.sheet not in book.sheetnames:
            raise InputError(f"{shown}: no sheet {self.sheet!r} (sheets: "
                             f"{', '.join(book.sheetnames)})")
        sheet = book[self.sheet] if self.sheet is not None else book.worksheets[0]
        number = 0
        try:
            rows = enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1)
            for number, values in rows:
                header = [cell_text(v) for v in values]
                if any(h.strip() for h in header):
                    while header and not header[-1].strip():
                        header.pop()
                    self._columns(header, shown, number)
                    break
            else:
                raise InputError(f"{shown}:1: the sheet is empty: expected a header row with "
                                 f"an email column")
            width = len(self.headers)
            seen = SeenAddresses()
            for number, values in rows:
                row = [cell_text(v) for v in values]
                while len(row) > width and not row[-1]:
                    row.pop()
                item = self._check(row, number, shown, seen, "clear the cells right of the "
                                                             "last column")
                if item is not None:
                    yield item
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            if not self.headers:
                raise InputError(f"{shown}:{number + 1}: a cell cannot be read: "
                                 f"{type(exc).__name__}: {str(exc)[:200]}") from None
            yield Problem(shown, number + 1, f"a cell cannot be read ({type(exc).__name__}: "
                                             f"{str(exc)[:200]}); the rows after it were not "
                                             f"read")

    def _records(self, lines: _Lines, shown: str, delimiter: str, seen: SeenAddresses,
                 until: Callable[[], bool] | None = None,
                 ) -> Generator[Recipient | Problem, None, bool]:
        """The records of ``lines``, to the end or to the first record after which
        ``until()`` holds; a csv error ends the read with a Problem. True when the read
        has ended."""
        csv.field_size_limit(FIELD_LIMIT)
        reader = csv.reader(lines, delimiter=delimiter, strict=False)
        try:
            return (yield from self._rows(reader, lines, shown, delimiter, seen, until))
        except csv.Error as exc:  # what follows cannot be read reliably
            line = lines.count - len(lines.record) + 1
            if "field larger" in str(exc):
                yield Problem(shown, line, f"a field is longer than {FIELD_LIMIT:,} "
                                           f"characters: check for a stray '\"'")
            else:
                yield Problem(shown, line, f"cannot read the record: {exc}")
            return True

    def _rows(self, reader: Iterator[list[str]], lines: _Lines, shown: str, delimiter: str,
              seen: SeenAddresses, until: Callable[[], bool] | None,
              ) -> Generator[Recipient | Problem, None, bool]:
        raw = lines.record
        too_many = f"quote fields that hold '{delimiter}'"
        for row in reader:
            line = lines.count - len(raw) + 1
            if len(raw) == 1:
                raw.clear()
            else:
                record = raw[:]
                raw.clear()
                if sum(part.count('"') for part in record) % 2:
                    # A quote opened and never closed: the reader swallowed every line to
                    # the end. Say so, then read the lines after this one again as records.
                    yield Problem(shown, line, f"a quoted field opens on this line and "
                                               f"never closes (it swallows lines {line}–"
                                               f"{lines.count}): check for a stray '\"'")
                    yield from self._records(_Lines(iter(record[1:]), line), shown,
                                             delimiter, seen)
                    return True
            item = self._check(row, line, shown, seen, too_many)
            if item is not None:
                yield item
            if until is not None and until():
                return False
        return True

    def _check(self, row: list[str], line: int, shown: str, seen: SeenAddresses,
               too_many: str) -> Recipient | Problem | None:
        """One record (of a CSV file or a worksheet) as a Recipient or a Problem; None for a
        row of empty cells."""
        headers = self.headers
        width = len(headers)
        email_col, name_col, lang_col = self.email_column, self.name_column, self.language_column
        if len(row) > width:
            return Problem(shown, line, f"{len(row)} fields but the header has {width}: "
                                        f"{too_many}")
        joined = _SEP.join(row)
        if not joined.strip(_SEP + " \t\r\n"):
            return None  # a blank line or a row of empty cells, as spreadsheets write
        if _BAD_IN_ROW.search(joined):
            return self._field_problem(row, shown, line)
        multiline: tuple[str, ...] = ()
        if "\n" in joined or "\r" in joined:
            bound = {email_col} | {c for c in (name_col, lang_col) if c is not None}
            bad = [c for c, v in enumerate(row) if c in bound and _BREAK.search(v)]
            if bad:
                return Problem(shown, line, f"column '{headers[bad[0]]}' holds a line break")
            row = [_BREAK.sub("\n", v) for v in row]
            multiline = tuple(headers[c] for c, v in enumerate(row) if "\n" in v)
        if len(row) < width:
            row += [""] * (width - len(row))
        raw_email = row[email_col].strip()
        if not raw_email:
            return Problem(shown, line, f"missing address in column '{headers[email_col]}'")
        try:
            address = check_address(raw_email)
        except AddressError as exc:
            return Problem(shown, line, f"invalid address {raw_email!r}: {exc}")
        first_line = seen.first_line(address.key, line)
        if first_line is not None:
            return _duplicate(shown, line, address.normalized, first_line)
        return Recipient(
            line=line,
            address=address,
            name=" ".join(row[name_col].split()) if name_col is not None else "",
            language=normalize_language(row[lang_col]) if lang_col is not None else None,
            headers=headers,
            row=row,
            multiline=multiline,
        )

    def _field_problem(self, row: list[str], shown: str, line: int) -> Problem:
        for header, value in zip(self.headers, row, strict=False):
            if _NOT_UTF8.search(value):
                return Problem(shown, line, f"column '{header}' holds bytes that are not "
                                            f"UTF-8: save the file as 'CSV UTF-8'")
            found = _CONTROL.search(value)
            if found:
                what = {"\t": "a tab"}.get(found.group(), f"control character "
                                                          f"U+{ord(found.group()):04X}")
                return Problem(shown, line, f"column '{header}' holds {what}")
        return Problem(shown, line, "a field holds a control character")


def _duplicate(shown: str, line: int, address: str, first: int) -> Problem:
    return Problem(shown, line, f"duplicate address {address} (first on line {first}): "
                                f"skipped", warning=True)


def load_suppressions(paths: Iterable[Path]) -> frozenset[str]:
    """Read suppression files: one address a line (``#`` comments) or a CSV with an email
    column. Return the case-folded addresses. A line that is not an address is an
    InputError naming the file and line: for people who asked not to be mailed, a typo must
    not pass unnoticed."""
    found: set[str] = set()
    problems: list[str] = []
    for path in paths:
        workbook = path.suffix.lower() in (".xlsx", ".xlsm")
        text = ""
        if not workbook:
            try:
                text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
            except OSError as exc:
                raise InputError(f"{path}: cannot read the suppression list: "
                                 f"{exc.strerror}") from None
        first = next((ln for ln in text.splitlines() if ln.strip()
                      and not ln.lstrip().startswith("#")), "")
        looks_csv = any(d in first for d in ";,\t") or _find([first.strip()], EMAIL_COLUMNS) == 0
        if workbook or looks_csv:  # a list with an email column
            for item in RecipientList(path).scan(bulk=True):
                if isinstance(item, Plain):
                    found.update(item.keys)
                elif isinstance(item, Recipient):
                    found.add(item.address.key)
                elif not item.warning:
                    problems.append(str(item))
            continue
        for number, raw in enumerate(text.splitlines(), start=1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            try:
                found.add(check_address(entry).key)
            except AddressError as exc:
                problems.append(f"{path}:{number}: not an address {entry!r}: {exc}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{problems[0]}{more}")
    return frozenset(found)


WORKBOOK_BYTES = 200_000_000  # a workbook's contents, uncompressed
SHARED_STRINGS = 1_000_000  # distinct texts in a workbook (a list of 100,000 guests has
# a few hundred thousand)
_SHARED_STRING = re.compile(rb"<si[ >/]")


def _check_workbook(path: Path, shown: str) -> None:
    """InputError (65) for a workbook built to exhaust memory: over WORKBOOK_BYTES
    uncompressed, or over SHARED_STRINGS shared strings (a 157 KB file can hold
    2,000,000, and openpyxl keeps them all)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            total = sum(info.file_size for info in infos)
            if total > WORKBOOK_BYTES:
                raise InputError(f"{shown}: the workbook holds {total:,} bytes uncompressed, "
                                 f"over the limit of {WORKBOOK_BYTES:,}")
            names = {info.filename for info in infos}
            if "xl/sharedStrings.xml" in names:
                count = 0  # the <si> elements themselves: a count attribute may lie
                with archive.open("xl/sharedStrings.xml") as handle:
                    rest = b""
                    while count <= SHARED_STRINGS and (chunk := handle.read(1 << 20)):
                        data = rest + chunk
                        count += len(_SHARED_STRING.findall(data))
                        rest = data[-3:]  # a '<si ' split between two chunks
                if count > SHARED_STRINGS:
                    raise InputError(f"{shown}: the workbook holds over {SHARED_STRINGS:,} "
                                     f"shared strings, the limit")
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{shown}: not a readable .xlsx workbook: {exc}") from None


def cell_text(value: object) -> str:
    """A worksheet value as the text Excel shows: 27.10.2026 for a date, 42 for 42.0."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return f"{value:%d.%m.%Y}" if value.time() == time() else f"{value:%d.%m.%Y %H:%M}"
    if isinstance(value, date):
        return f"{value:%d.%m.%Y}"
    if isinstance(value, time):
        return f"{value:%H:%M}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def language_warning(value: str | None, known: Iterable[str], fallback: str) -> str | None:
    """Why a recipient's language will not be served (it gets the fallback), or None."""
    if value is None or value in known:
        return None
    return f"unknown language {value!r}: gets the fallback ({fallback})"
