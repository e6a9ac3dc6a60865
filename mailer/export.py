"""What ``mailer status`` writes: the counts per campaign and state as a table, and every
guest as csv or json (for programs: values raw, times in UTC), or as an .xlsx workbook or a
CSV that Excel opens as columns (``;``, UTF-8 with BOM) for people: times in the local time
zone, and no cell that a spreadsheet would run as a formula (a guest named
``=HYPERLINK(...)`` stays text)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .files import open_private
from .models import State
from .text import printable

if TYPE_CHECKING:
    from .journal import Journal

FIELDS = ("campaign", "email", "name", "line", "state", "attempts", "code", "reply",
          "message_id", "updated", "answer", "answered_at", "bounce")
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


def write_workbook(path: Path, fields: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """One row per guest, a filter on the header row, columns sized to fit; every string
    written as text, never as a formula. Returns the number of guests."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    book = Workbook()
    sheet = book.active
    sheet.title = "Gjester"
    sheet.append(list(fields))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    widths = [len(f) for f in fields]
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


def table(journal: Journal, campaign: str | None, out: IO[str]) -> None:
    """Guests per campaign and state, and for an event its versions held and answers."""
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
            current, older = journal.holder_counts(uid)
            out.write(f"{cid}: event {uid}: {current} guests hold the current version, "
                      f"{older} need an update\n")
            answers = journal.answer_counts(cid) or {}
            out.write(f"{cid}: answers: " + ", ".join(
                f"{count} {name}" for name, count in answers.items()) + "\n")
    for name, start in journal.notes("not-before:"):
        cid = name.removeprefix("not-before:")
        if campaign is None or cid == campaign:
            out.write(f"{cid}: nothing is sent before {start} (--not-before)\n")
    waiting = journal.unverified()
    if waiting:
        out.write(f"{len(waiting)} unverified unsubscribe{'s' if len(waiting) != 1 else ''} "
                  f"to confirm (mailer forget ADDRESS, or a suppression file): "
                  + ", ".join(f"{email} ({at[:10]})" for _, email, at in waiting) + "\n")


def status(journal: Journal, campaign: str | None, fmt: str, out: IO[str],
           output: Path | None = None) -> int | None:
    """Write the status of one campaign (None: all) in ``fmt`` to ``out``, or for xlsx to
    ``output``; the number of guests written to a workbook, else None."""
    if campaign is not None:
        journal.require_campaign(campaign)
    if fmt == "table":
        table(journal, campaign, out)
        return None
    rows = ([getattr(e, f) for f in FIELDS] for e in journal.entries(campaign))
    if fmt == "excel-csv":
        write_excel_csv(out, FIELDS, rows)
    elif fmt == "xlsx":
        if output is None:
            raise ValueError("--format xlsx needs --output FILE")
        return write_workbook(output, FIELDS, rows)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows([_safe(v) for v in row] for row in rows)
    else:
        counts = journal.counts(campaign)
        document = {"campaigns": [{"id": cid, "counts": {s.value: n for s, n in c.items()}}
                                  for cid, c in counts.items()],
                    "recipients": [dict(zip(FIELDS, map(_safe, row), strict=True))
                                   for row in rows]}
        out.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    return None
