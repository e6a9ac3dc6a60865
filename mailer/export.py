"""What ``mailer status`` writes: the counts per campaign and state as a table (and for an
event: versions held against the event file as it is now, answers, the deadline,
unsubscribes and soft bounces), and every guest as csv or json (for programs: values raw,
times in UTC), or as an .xlsx workbook (headers in ``MAILER_LANGUAGE``) or a CSV that Excel
opens as columns (``;``, UTF-8 with BOM) for people: times in the local time zone, and no
cell that a spreadsheet would run as a formula (a guest named ``=HYPERLINK(...)`` stays
text). ``--list`` joins the list's own columns (organisation, role, ...) to every row: the
attendee list, with nothing more kept in the journal."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .files import open_private
from .models import State
from .text import printable

if TYPE_CHECKING:
    from .calendar import Event
    from .journal import Journal

FIELDS = ("campaign", "email", "name", "line", "state", "attempts", "code", "reply",
          "message_id", "updated", "answer", "answered_at", "comment", "late", "unsubscribed",
          "bounce", "bounce_status")
# The workbook's headers, in the language of MAILER_LANGUAGE (English for any other).
HEADERS = {
    "nb": ("Kampanje", "E-post", "Navn", "Linje", "Status", "Forsøk", "Kode",
           "Svar fra tjeneren", "Message-ID", "Oppdatert", "Svar", "Svart", "Kommentar",
           "For sent", "Avmeldt", "Avvist", "Avvisningskode"),
    "nn": ("Kampanje", "E-post", "Namn", "Linje", "Status", "Forsøk", "Kode",
           "Svar frå tenaren", "Message-ID", "Oppdatert", "Svar", "Svart", "Kommentar",
           "For seint", "Avmeld", "Avvist", "Avvisingskode"),
    "en": ("Campaign", "Email", "Name", "Line", "State", "Attempts", "Code", "Server reply",
           "Message-ID", "Updated", "Answer", "Answered at", "Comment", "Late", "Unsubscribed",
           "Bounce", "Bounce status"),
}
FORMATS = ("table", "csv", "json", "excel-csv", "xlsx")

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TIME_COLUMNS = ("updated", "answered_at")


def _local(value: Any) -> Any:
    """An ISO UTC time from the journal as local time (the spreadsheet's reader's)."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo is not None:
            return moment.astimezone().replace(tzinfo=None)
    return value


def _cells(fields: Sequence[str], row: Sequence[Any]) -> list[Any]:
    return [_local(v) if f in TIME_COLUMNS else _safe(v)
            for f, v in zip(fields, row, strict=True)]


def _safe(value: Any) -> Any:
    """A value as it may be shown: control characters escaped (a reply or a bounce
    status from mail, in a journal written before they were stored escaped)."""
    return printable(value, 10_000) if isinstance(value, str) else value


def neutralise(value: Any) -> Any:
    """OWASP's advice for CSV injection: a leading ' before what would start a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_excel_csv(out: IO[str], fields: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    out.write("\ufeff")
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(fields)
    for row in rows:
        cells = _cells(fields, row)
        writer.writerow([neutralise(f"{v:%d.%m.%Y %H:%M}" if isinstance(v, datetime) else v)
                         for v in cells])


def write_workbook(path: Path, fields: Sequence[str], rows: Iterable[Sequence[Any]],
                   titles: Sequence[str] | None = None) -> int:
    """One row per guest, a filter on the header row (``titles``, default the field
    names), columns sized to fit; every string written as text, never as a formula.
    Returns the number of guests."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    book = Workbook()
    sheet = book.active
    sheet.title = "Gjester"
    titles = list(titles or fields)
    sheet.append(titles)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    widths = [len(f) for f in titles]
    count = 0
    for row in rows:
        count += 1
        values = _cells(fields, row)
        sheet.append(values)
        for column, value in enumerate(values, start=1):
            cell = sheet.cell(row=count + 1, column=column)
            if isinstance(value, str):
                cell.data_type = "s"  # a value starting with = stays text
            elif isinstance(value, datetime):
                cell.number_format = "dd.mm.yyyy hh:mm"
            widths[column - 1] = max(widths[column - 1], min(len(str(value or "")), 60))
    for column, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(column)].width = width + 2
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(fields))}{count + 1}"
    sheet.freeze_panes = "A2"
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)  # personal data: owner only
    with open(fd, "wb", closefd=True) as handle:
        book.save(handle)
    return count


@dataclass
class Extras:
    """What ``status`` adds from outside the journal: the list's own columns by guest
    (``--list``), the language of the workbook's headers, and each campaign's event as its
    file says it now (None: no event, or none found)."""

    columns: list[str] = field(default_factory=list)
    guests: dict[str, list[str]] = field(default_factory=dict)  # key → the list's values
    language: str = "nb"
    events: Mapping[str, Event | None] = field(default_factory=dict)  # campaign → event


def headers(language: str) -> tuple[str, ...]:
    return HEADERS.get({"no": "nb"}.get(language, language), HEADERS["en"])


def _versions(journal: Journal, cid: str, uid: str, event: Event | None) -> str:
    """Which version the guests' calendars hold, against the event file as it is now."""
    current, older = journal.holder_counts(uid)
    cancelled = journal.cancelled_count(uid)
    sent = journal.last_sent(uid)
    head = f"{cid}: event {uid}: "
    if event is None or sent is None or event.fingerprint() == sent[1]:
        if event is not None and event.cancelled:
            return (head + f"cancelled: {cancelled} guests were sent the cancellation"
                    + (f", {current + older} still hold the event" if current + older else ""))
        return head + f"{current} guests hold the current version, {older} need an update"
    if event.cancelled:
        return (head + f"cancelled in {event_file()}: the next send cancels it for "
                f"{current + older} guests who hold it")
    return (head + f"0 guests hold the current version, {current + older} need an update "
            f"({event_file()} changed since the last send; the next send updates them)")


def event_file() -> str:
    from .calendar import EVENT_FILE

    return EVENT_FILE


def _deadline(cid: str, event: Event, answers: Mapping[str, int], late: int) -> str:
    from .templates import _long_date

    assert event.rsvp_by is not None and event.deadline is not None
    waiting = answers.get("no answer", 0)
    guests = sum(n for name, n in answers.items() if name != "bounced")
    passed = datetime.now(UTC).isoformat(timespec="seconds") >= event.deadline
    return (f"{cid}: answer by {_long_date(event.rsvp_by, 'en')} (rsvp_by"
            + (", passed" if passed else "") + f"): {waiting} of {guests} guests have not "
            f"answered" + (f", {late} answered late" if late else ""))


def _people(journal: Journal, cid: str, out: IO[str]) -> None:
    """Unsubscribes by mail and soft bounces among a campaign's guests, named."""
    unsubscribed, soft = journal.guest_notes(cid)
    if unsubscribed:
        out.write(f"{cid}: {len(unsubscribed)} unsubscribed by mail (no newsletters or "
                  f"reminders; updates and cancellations of an event they hold still reach "
                  f"them): " + ", ".join(unsubscribed) + "\n")
    if soft:
        out.write(f"{cid}: {len(soft)} soft bounce{'s' if len(soft) != 1 else ''} (delivery "
                  f"delayed or refused for now; not suppressed): " + ", ".join(
                      f"{email} ({printable(status, 40)}, {at[:10]})" for email, status, at in soft)
                  + "\n")


def table(journal: Journal, campaign: str | None, out: IO[str],
          events: Mapping[str, Event | None] | None = None) -> None:
    """Guests per campaign and state, and for an event its versions held (against the
    event file as it is now: ``events``), answers and deadline; unsubscribes and soft
    bounces named."""
    events = events or {}
    counts = journal.counts(campaign)
    width = max([len("campaign"), *(len(c) for c in counts)])
    out.write(f"{'campaign':<{width}}  " + "  ".join(f"{s:>10}" for s in State)
              + f"  {'total':>8}\n")
    for cid, per_state in counts.items():
        out.write(f"{cid:<{width}}  " + "  ".join(f"{per_state[s]:>10}" for s in State)
                  + f"  {sum(per_state.values()):>8}\n")
    for cid in counts:
        uid = journal.event_of(cid)
        if uid is not None:
            event = events.get(cid)
            out.write(_versions(journal, cid, uid, event) + "\n")
            answers = journal.answer_counts(cid) or {}
            comments, late = journal.answer_notes(cid)
            out.write(f"{cid}: answers: " + ", ".join(
                f"{count} {name}" for name, count in answers.items())
                + (f" ({comments} with a comment)" if comments else "") + "\n")
            if event is not None and event.rsvp_by is not None:
                out.write(_deadline(cid, event, answers, late) + "\n")
        _people(journal, cid, out)
    for name, start in journal.notes("not-before:"):
        cid = name.removeprefix("not-before:")
        if campaign is None or cid == campaign:
            out.write(f"{cid}: nothing is sent before {start} (--not-before)\n")
    waiting = journal.unverified()
    if waiting:
        out.write(f"{len(waiting)} unverified unsubscribe{'s' if len(waiting) != 1 else ''} "
                  f"to confirm (mailer forget ADDRESS, or a suppression file): "
                  + ", ".join(f"{email} ({at[:10]})" for _, email, at in waiting) + "\n")


def _text(value: Any) -> Any:
    """A value in a CSV: a flag as true/false."""
    return ("true" if value else "false") if isinstance(value, bool) else _safe(value)


def status(journal: Journal, campaign: str | None, fmt: str, out: IO[str],
           output: Path | None = None, extras: Extras | None = None) -> int | None:
    """Write the status of one campaign (None: all) in ``fmt`` to ``out``, or for xlsx to
    ``output``; the number of guests written to a workbook, else None."""
    extras = extras or Extras()
    if campaign is not None:
        journal.require_campaign(campaign)
    if fmt == "table":
        table(journal, campaign, out, extras.events)
        return None
    fields = (*FIELDS, *extras.columns)
    blank = [""] * len(extras.columns)
    rows = ([*(getattr(e, f) for f in FIELDS),
             *extras.guests.get(e.key, blank)] for e in journal.entries(campaign))
    if fmt == "excel-csv":
        write_excel_csv(out, fields, ([_text(v) for v in row] for row in rows))
    elif fmt == "xlsx":
        if output is None:
            raise ValueError("--format xlsx needs --output FILE")
        return write_workbook(output, fields, rows,
                              (*headers(extras.language), *extras.columns))
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([_text(v) for v in row] for row in rows)
    else:
        counts = journal.counts(campaign)
        document = {"campaigns": [{"id": cid, "counts": {s.value: n for s, n in c.items()}}
                                  for cid, c in counts.items()],
                    "recipients": [dict(zip(fields, map(_safe, row), strict=True))
                                   for row in rows]}
        out.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    return None
