"""Read a recipient list (CSV) as a stream of checked, de-duplicated recipients.

The list is read as bytes line by line so that every record keeps the line it starts
on, and so that bytes that are not UTF-8 are reported on their line instead of ending
the read. Nothing here holds more than one record at a time, apart from the set of
addresses seen (for duplicates).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .address import Address, AddressError, check_address
from .errors import InputError

EMAIL_COLUMNS = ("email", "e-mail", "e-post", "epost", "mail")
NAME_COLUMNS = ("name", "navn")
LANGUAGE_COLUMNS = ("language", "lang", "språk", "målform")

# Language values people write in a spreadsheet, mapped to the codes variants use.
_LANGUAGE_ALIASES = {
    "bokmål": "nb", "bokmal": "nb", "no": "nb", "nob": "nb",
    "nynorsk": "nn", "nno": "nn",
    "english": "en", "engelsk": "en", "eng": "en",
}

# C0 controls (tab, CR and LF included), DEL, C1 controls, the Unicode line and paragraph
# separators, and lone surrogates (bytes that were not UTF-8, kept by surrogateescape).
_SEP = "\x1f"  # joins the fields of a row for one search of both patterns below
_CONTROLS_BUT_SEP = "\x00-\x1e\x7f-\x9f\u2028\u2029"
_SURROGATES = "\udc80-\udcff"
_CONTROL = re.compile(f"[{_CONTROLS_BUT_SEP}{_SEP}]")
_NOT_UTF8 = re.compile(f"[{_SURROGATES}]")
_BAD_IN_ROW = re.compile(f"[{_CONTROLS_BUT_SEP}{_SURROGATES}]")  # a lookahead is 3x slower


@dataclass(slots=True)
class Recipient:
    """One checked recipient; ``fields`` holds every column by its header."""

    line: int
    address: Address
    name: str
    language: str | None
    headers: Sequence[str] = ()
    row: Sequence[str] = ()

    @property
    def email(self) -> str:
        return self.address.normalized

    @property
    def fields(self) -> dict[str, str]:
        """Every column by its header (made when asked: a check of a list without a
        template never needs it)."""
        return dict(zip(self.headers, self.row, strict=True))


@dataclass(frozen=True, slots=True)
class Problem:
    """An error or a warning about one record of the list."""

    path: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.path}:{self.line}: {kind}{self.message}"


def normalize_language(value: str) -> str | None:
    """``nb-NO`` → ``nb``, ``Nynorsk`` → ``nn``, empty → None."""
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


class _Lines:
    """Decode a binary file line by line (surrogateescape), counting physical lines."""

    def __init__(self, raw: Iterable[bytes]) -> None:
        self._raw = iter(raw)
        self.first = True

    def __iter__(self) -> Iterator[str]:
        for chunk in self._raw:
            text = chunk.decode("utf-8", "surrogateescape")
            if self.first:
                text = text.removeprefix("\ufeff")
                self.first = False
            yield text


@dataclass
class RecipientList:
    """A recipient CSV file. Iterate ``scan()`` once per pass; each pass streams the file."""

    path: Path
    headers: list[str] = field(default_factory=list)
    email_column: int = 0
    name_column: int | None = None
    language_column: int | None = None

    @property
    def display(self) -> str:
        return str(self.path)

    def scan(self) -> Iterator[Recipient | Problem]:
        """Yield every unique valid recipient and a Problem for each bad or duplicate record.

        Raise InputError when the file as a whole is unusable (empty, no email column).
        """
        shown = self.display
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise InputError(f"{shown}: cannot read the list: {exc.strerror}") from None
        with handle:
            lines = _Lines(handle)
            stream = iter(lines)
            first = next(stream, None)
            while first is not None and not first.strip():
                first = next(stream, None)
            if first is None:
                raise InputError(f"{shown}:1: the list is empty: expected a header row "
                                 f"with an email column")
            if _NOT_UTF8.search(first):
                raise InputError(f"{shown}:1: the file is not UTF-8: save it as "
                                 f"'CSV UTF-8' and try again")
            delimiter = _sniff_delimiter(first)

            def chained() -> Iterator[str]:
                yield first
                yield from stream

            reader = csv.reader(chained(), delimiter=delimiter, strict=False)
            self.headers = [h.strip() for h in next(reader)]
            email = _find(self.headers, EMAIL_COLUMNS)
            if email is None:
                raise InputError(
                    f"{shown}:1: no email column: expected one of "
                    f"{', '.join(EMAIL_COLUMNS)} (found: {', '.join(self.headers)})")
            self.email_column = email
            self.name_column = _find(self.headers, NAME_COLUMNS)
            self.language_column = _find(self.headers, LANGUAGE_COLUMNS)
            yield from self._records(reader, shown, delimiter)

    def _records(self, reader: Any, shown: str, delimiter: str) -> Iterator[Recipient | Problem]:
        headers = self.headers
        width = len(headers)
        email_col, name_col, lang_col = self.email_column, self.name_column, self.language_column
        email_header = headers[email_col]
        seen: dict[str, int] = {}
        start = 2
        for row in reader:
            line = start
            start = reader.line_num + 1
            if len(row) > width:
                yield Problem(shown, line, f"{len(row)} fields but the header has {width}: "
                                           f"quote fields that hold '{delimiter}'")
                continue
            joined = _SEP.join(row)
            if not joined.strip(_SEP + " \t\r\n"):
                continue  # a blank line or a row of empty cells, as spreadsheets write
            if _BAD_IN_ROW.search(joined):
                yield self._field_problem(row, shown, line)
                continue
            if len(row) < width:
                row += [""] * (width - len(row))
            raw_email = row[email_col].strip()
            if not raw_email:
                yield Problem(shown, line, f"missing address in column '{email_header}'")
                continue
            try:
                address = check_address(raw_email)
            except AddressError as exc:
                yield Problem(shown, line, f"invalid address {raw_email!r}: {exc}")
                continue
            key = address.key
            first_line = seen.get(key)
            if first_line is not None:
                yield Problem(shown, line, f"duplicate address {address.normalized} "
                                           f"(first on line {first_line}): skipped",
                              warning=True)
                continue
            seen[key] = line
            yield Recipient(
                line=line,
                address=address,
                name=" ".join(row[name_col].split()) if name_col is not None else "",
                language=normalize_language(row[lang_col]) if lang_col is not None else None,
                headers=headers,
                row=row,
            )

    def _field_problem(self, row: list[str], shown: str, line: int) -> Problem:
        for header, value in zip(self.headers, row, strict=False):
            if _NOT_UTF8.search(value):
                return Problem(shown, line, f"column '{header}' holds bytes that are not "
                                            f"UTF-8: save the file as 'CSV UTF-8'")
            found = _CONTROL.search(value)
            if found:
                what = {"\r": "a carriage return (CR)", "\n": "a line break (LF)",
                        "\t": "a tab"}.get(found.group(), f"control character "
                                                         f"U+{ord(found.group()):04X}")
                return Problem(shown, line, f"column '{header}' holds {what}")
        return Problem(shown, line, "a field holds a control character")


def load_suppressions(paths: Iterable[Path]) -> frozenset[str]:
    """Read suppression files: one address a line (``#`` comments) or a CSV with an email
    column. Return the case-folded addresses; unreadable entries are ignored."""
    found: set[str] = set()
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8-sig", errors="replace")
        except OSError as exc:
            raise InputError(f"{path}: cannot read the suppression list: "
                             f"{exc.strerror}") from None
        first = next((ln for ln in text.splitlines() if ln.strip()
                      and not ln.lstrip().startswith("#")), "")
        looks_csv = any(d in first for d in ";,\t") or _find([first.strip()], EMAIL_COLUMNS) == 0
        if looks_csv:
            listing = RecipientList(path)
            for item in listing.scan():
                if isinstance(item, Recipient):
                    found.add(item.address.key)
            continue
        for raw in text.splitlines():
            entry = raw.split("#", 1)[0].strip()
            if entry:
                try:
                    found.add(check_address(entry).key)
                except AddressError:
                    found.add(entry.casefold())
    return frozenset(found)
