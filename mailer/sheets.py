"""The attendee list for people: an .xlsx workbook or a CSV that Excel opens as columns
(``;``, UTF-8 with BOM), times in the local time zone, and no cell that a spreadsheet would
run as a formula (a guest named ``=HYPERLINK(...)`` stays text)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .files import open_private

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
    return [_local(v) if f in TIME_COLUMNS else v for f, v in zip(fields, row, strict=True)]


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
