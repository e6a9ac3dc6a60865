"""Excel in and out: .xlsx lists and suppression files, the attendee list as a workbook
and as a CSV that Excel opens in columns, with formulas from the list kept as text."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from pathlib import Path

import openpyxl
import pytest

from tests.conftest import Server, make_template, run, send, smtp_env, write

EVIL = '=HYPERLINK("https://evil.example","Klikk")'


def workbook(path: Path, rows: list[list[object]], sheet: str = "Gjester",
             other: str | None = None) -> Path:
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = sheet
    for row in rows:
        ws.append(row)
    if other is not None:
        book.create_sheet(other).append(["e-post"])
    book.save(path)
    return path


ROWS: list[list[object]] = [
    [None, None],  # row 1 empty: the header is on row 2
    ["Navn", "E-post", "Dato", "Antall", "Påmeldt"],
    ["Kari Nordmann", "kari@example.org", date(2026, 10, 27), 42.0, True],
    [None, None, None, None, None],  # an empty row, skipped
    ["Ola Ødegård", "ola@example.org", datetime(2026, 10, 27, 10, 15), 2.5, False],
    ["Åse", "ase@example.org", None, 7, None],
    ["Per", "per@@example.org", None, None, None],  # row 7: a bad address
]


def test_an_xlsx_list_reads_as_excel_shows_it(tmp_path: Path) -> None:
    from mailer.models import Recipient
    from mailer.recipients import RecipientList

    path = workbook(tmp_path / "gjester.xlsx", ROWS)
    items = list(RecipientList(path).scan())
    people = [i for i in items if isinstance(i, Recipient)]
    assert [p.email for p in people] == ["kari@example.org", "ola@example.org", "ase@example.org"]
    assert [p.line for p in people] == [3, 5, 6]  # the row numbers Excel shows
    kari, ola, _ = (p.fields for p in people)
    assert (kari["Dato"], kari["Antall"], kari["Påmeldt"]) == ("27.10.2026", "42", "TRUE")
    assert (ola["Dato"], ola["Antall"]) == ("27.10.2026 10:15", "2.5")
    result = run("validate", str(path))
    assert result.exit_code == 65
    assert f"{path}:7: invalid address 'per@@example.org'" in result.output
    assert "3 recipients" in result.output


def test_send_from_a_sheet_of_a_workbook(tmp_path: Path, smtp: Server) -> None:
    controller, handler = smtp
    path = workbook(tmp_path / "gjester.xlsx", ROWS[:6], other="Reserve")
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei {{ Navn }}", body_txt="Dato: {{ Dato }}\n")
    result = send(root, path, smtp_env(controller))
    assert result.exit_code == 0, result.output
    kari = next(m.message for m in handler.messages if m.rcpt_tos == ["kari@example.org"])
    assert "Dato: 27.10.2026" in kari.get_body(("plain",)).get_content()
    missing = run("validate", str(path), "--sheet", "Ukjent")
    assert missing.exit_code == 65 and "no sheet 'Ukjent' (sheets: Gjester, Reserve)" in \
        missing.output
    other = run("validate", str(path), "--sheet", "Reserve")
    assert other.exit_code == 0 and "0 recipients" in other.output


def test_an_xlsx_suppression_file(tmp_path: Path) -> None:
    listing = write(tmp_path / "l.csv", "navn;epost\nKari;kari@example.org\nOla;ola@example.org\n")
    supp = workbook(tmp_path / "avmeldt.xlsx", [["E-post"], ["OLA@example.org"]])
    result = run("validate", str(listing), "--suppress", str(supp))
    assert result.exit_code == 0 and "1 suppressed" in result.output


@pytest.fixture
def journal_with_evil_name(tmp_path: Path, smtp: Server) -> dict[str, str]:
    controller, _ = smtp
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt="Hei\n")
    listing = write(tmp_path / "l.csv", f'navn;epost\n"{EVIL.replace(chr(34), chr(34) * 2)}";'
                                        f"evil@example.org\nKari;kari@example.org\n")
    env = smtp_env(controller)
    assert send(root, listing, env).exit_code == 0
    return env


def test_status_as_a_workbook(tmp_path: Path, journal_with_evil_name: dict[str, str]) -> None:
    out = tmp_path / "resultat.xlsx"
    result = run("status", "--format", "xlsx", "--output", str(out), env=journal_with_evil_name)
    assert result.exit_code == 0, result.output
    assert "2 guests written" in result.output
    book = openpyxl.load_workbook(out)
    ws = book.active
    header = [c.value for c in ws[1]]
    assert header[:5] == ["Kampanje", "E-post", "Navn", "Linje", "Status"]  # MAILER_LANGUAGE
    assert ws.auto_filter.ref == "A1:Q3"
    evil = next(row for row in ws.iter_rows(min_row=2) if row[1].value == "evil@example.org")
    assert evil[2].value == EVIL and evil[2].data_type == "s"  # text, never a formula
    assert isinstance(evil[9].value, datetime)  # updated, in local time
    assert ws.column_dimensions["B"].width >= len("kari@example.org")
    assert (out.stat().st_mode & 0o777) == 0o600
    assert run("status", "--format", "xlsx", env=journal_with_evil_name).exit_code == 2


def test_status_as_a_csv_for_excel(journal_with_evil_name: dict[str, str]) -> None:
    result = run("status", "--format", "excel-csv", env=journal_with_evil_name)
    assert result.exit_code == 0
    text = result.output
    assert text.startswith("\ufeffcampaign;email;name;")
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff")), delimiter=";"))
    evil = next(row for row in rows if row[1] == "evil@example.org")
    assert evil[2] == "'" + EVIL  # neutralised as OWASP recommends: a leading '
    assert len(evil[9]) == len("30.11.2026 16:40")  # local time, as Excel shows it
    raw = run("status", "--format", "csv", env=journal_with_evil_name).output
    program = next(r for r in csv.reader(io.StringIO(raw)) if r[1] == "evil@example.org")
    assert program[2] == EVIL  # programs get it raw


def rewrite(path: Path, member: str, edit: object) -> Path:
    """The workbook with one member of its zip changed by ``edit(text) -> text`` (a
    member it lacks starts empty)."""
    import zipfile

    with zipfile.ZipFile(path) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    members[member] = edit(members.get(member, b"").decode()).encode()  # type: ignore[operator]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in members.items():
            target.writestr(name, data)
    return path


def test_a_workbook_with_millions_of_shared_strings_is_refused(tmp_path: Path) -> None:
    """2,000,000 shared strings in a file of some 150 KB took 45 s and 395 MB; such a
    workbook is refused before openpyxl reads it (its count attribute is not trusted)."""
    path = workbook(tmp_path / "gjester.xlsx", [["navn", "e-post"], ["Kari", "k@example.org"]])
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    kind = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"
    rewrite(path, "xl/sharedStrings.xml", lambda _: (
        f'<sst xmlns="{main}" count="1" uniqueCount="1">' + "<si><t>x</t></si>" * 2_000_000
        + "</sst>"))
    rewrite(path, "[Content_Types].xml", lambda text: text.replace(
        "</Types>", f'<Override PartName="/xl/sharedStrings.xml" ContentType="{kind}"/></Types>'))
    rewrite(path, "xl/_rels/workbook.xml.rels", lambda text: text.replace(
        "</Relationships>", f'<Relationship Id="rIdS" Type="{rel}" Target="sharedStrings.xml"'
                            f'/></Relationships>'))
    assert path.stat().st_size < 200_000
    result = run("validate", str(path))
    assert result.exit_code == 65, result.output
    assert "holds over 1,000,000 shared strings, the limit" in result.output


@pytest.mark.parametrize("cell", ['<c r="C3" t="n"><v>abc</v></c>',
                                  '<c r="C3" t="n"><v>NaN</v></c>',
                                  '<c r="ZZZZZZ2000" t="n"><v>2</v></c>'])
def test_a_cell_that_cannot_be_read_is_an_error_on_its_row(tmp_path: Path, cell: str) -> None:
    path = workbook(tmp_path / "gjester.xlsx", [["navn", "e-post", "antall"],
                                                ["Kari", "kari@example.org", 1],
                                                ["Ola", "ola@example.org", 2]])

    def spoil(text: str) -> str:  # row 3's number becomes a cell openpyxl cannot read
        assert '<c r="C3" t="n"><v>2</v></c>' in text
        return text.replace('<c r="C3" t="n"><v>2</v></c>', cell)

    rewrite(path, "xl/worksheets/sheet1.xml", spoil)
    result = run("validate", str(path))
    assert result.exit_code == 65, result.output
    assert "Traceback" not in result.output
    assert f"{path}:3: a cell cannot be read (ValueError" in result.output


@pytest.mark.parametrize("fmt", ["csv", "json", "excel-csv", "table"])
def test_status_output_to_a_file_for_every_format(tmp_path: Path, smtp: Server,
                                                  fmt: str) -> None:
    """--output works for every format (csv and json ignored it and printed), owner-only."""
    import json
    import stat

    controller, _ = smtp
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt="Hei\n")
    env = smtp_env(controller)
    listing = write(tmp_path / "l.csv", "navn;e-post\nKari;kari@example.org\n")
    assert send(root, listing, env).exit_code == 0
    target = tmp_path / f"status.{fmt}"
    result = run("status", "--format", fmt, "--output", str(target), env=env)
    assert result.exit_code == 0, result.output
    assert result.output == f"status ({fmt}) written to {target}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    text = target.read_text(encoding="utf-8")
    assert "kari@example.org" in text or fmt == "table"
    if fmt == "json":
        assert json.loads(text)["recipients"][0]["state"] == "sent"
    if fmt == "table":
        assert text.startswith("campaign") and "t:l.csv" in text
