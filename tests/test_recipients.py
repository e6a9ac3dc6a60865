from __future__ import annotations

from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email

from mailer.address import AddressError, check_address, parse_mailbox
from mailer.errors import InputError
from mailer.recipients import Problem, Recipient, RecipientList, load_suppressions
from tests.conftest import write


def scan(path: Path) -> tuple[list[Recipient], list[Problem]]:
    items = list(RecipientList(path).scan())
    return ([i for i in items if isinstance(i, Recipient)],
            [i for i in items if isinstance(i, Problem)])


def test_excel_export_with_bom_semicolons_and_crlf(tmp_path: Path) -> None:
    raw = ("\ufeffNavn;E-post;Organisasjon;Målform\r\n"
           "Åse Bjørnstad;Ase.Bjornstad@Example.ORG;NTNU;nn\r\n"
           "\"Ærø, Per\";per@example.org;\"Telenor; Fornebu\";NB\r\n"
           ";;;\r\n")
    people, problems = scan(write(tmp_path / "liste.csv", raw))
    assert problems == []
    assert [p.line for p in people] == [2, 3]
    first, second = people
    assert first.name == "Åse Bjørnstad"
    assert first.email == "Ase.Bjornstad@example.org"  # domain normalised, local part kept
    assert first.language == "nn"
    assert first.fields["Organisasjon"] == "NTNU"
    assert second.name == "Ærø, Per"
    assert second.fields["Organisasjon"] == "Telenor; Fornebu"
    assert second.language == "nb"


@pytest.mark.parametrize("sep", [",", "\t"])
def test_comma_and_tab_delimiters(tmp_path: Path, sep: str) -> None:
    raw = sep.join(["email", "name", "lang"]) + "\n" + sep.join(["a@example.org", "A", "en"])
    people, problems = scan(write(tmp_path / "l.csv", raw + "\n"))
    assert not problems
    assert people[0].email == "a@example.org" and people[0].name == "A"


@pytest.mark.parametrize("header", ["email", "E-mail", "E-post", "EPOST", "mail"])
def test_email_column_aliases(tmp_path: Path, header: str) -> None:
    people, _ = scan(write(tmp_path / "l.csv", f"{header};navn\na@example.org;Ola\n"))
    assert people[0].email == "a@example.org"
    assert people[0].name == "Ola"


@pytest.mark.parametrize("blank", ["", "\n\n\n", ";;\r\n\r\n"])
def test_errors_name_the_line_where_the_record_starts(tmp_path: Path, blank: str) -> None:
    raw = (f"{blank}navn;epost;notat\n"
           "Ola;ola@example.org;\"to\nlinjer\"\n"  # lines 2-3: a note typed with Alt+Enter
           "Kari;kari@@example.org;x\n"  # line 4
           "Per;;x\n"  # line 5
           "Bell;bell@example.org;ding\x07\n"  # line 6
           "Lang;lang@example.org;a;b;c\n"  # line 7
           "Ok;ok@example.org;x\n")
    path = write(tmp_path / "l.csv", raw)
    shift = blank.count("\n")  # blank lines before the header shift nothing but the numbers
    people, problems = scan(path)
    assert [p.email for p in people] == ["ola@example.org", "ok@example.org"]
    assert people[0].fields["notat"] == "to\nlinjer" and people[0].multiline == ("notat",)
    assert people[0].line == 2 + shift
    text = [str(p) for p in problems]
    assert text[0].startswith(f"{path}:{4 + shift}: invalid address 'kari@@example.org'")
    assert text[1] == f"{path}:{5 + shift}: missing address in column 'epost'"
    assert text[2] == f"{path}:{6 + shift}: column 'notat' holds control character U+0007"
    assert text[3].startswith(f"{path}:{7 + shift}: 5 fields but the header has 3")


@pytest.mark.parametrize("column", ["name", "email"])
def test_a_line_break_in_a_column_that_reaches_a_header(tmp_path: Path, column: str) -> None:
    row = {"name": '"Ola\rBcc: x@example.org";a@example.org',
           "email": 'Ola;"a@example.org\nBcc: x@example.org"'}[column]
    path = write(tmp_path / "l.csv", f"name;email\r\n{row}\r\nKari;k@example.org\r\n")
    people, problems = scan(path)
    assert [str(p) for p in problems] == [f"{path}:2: column '{column}' holds a line break"]
    assert [p.email for p in people] == ["k@example.org"]


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_any_line_ending_excel_writes(tmp_path: Path, ending: str) -> None:
    raw = ending.join(["navn;epost;notat", "Ola;ola@example.org;\"a" + ending + "b\"",
                       "Kari;kari@example.org;x", "Per;bad;x", ""])
    path = write(tmp_path / "l.csv", raw)
    people, problems = scan(path)
    assert [p.email for p in people] == ["ola@example.org", "kari@example.org"]
    assert people[0].fields["notat"] == "a\nb"
    assert [p.line for p in people] == [2, 4]
    assert [p.line for p in problems] == [5]


def test_a_stray_quote_is_named_and_the_rest_still_read(tmp_path: Path) -> None:
    rows = [f"P{i};p{i}@example.org;Org;nb" for i in range(2, 172)]
    rows.append('Siv Sæther;siv@example.org;"Statens vegvesen;Seksjonssjef;nb')  # line 172
    rows += [f"Q{i};q{i}@example.org;Org;nb" for i in range(173, 301)]
    rows.append("P5 again;p5@example.org;Org;nb")  # line 301: a duplicate of line 5
    path = write(tmp_path / "l.csv", "navn;e-post;organisasjon;målform\n" + "\n".join(rows) + "\n")
    people, problems = scan(path)
    text = [str(p) for p in problems]
    assert text[0] == (f"{path}:172: a quoted field opens on this line and never closes "
                       f"(it swallows lines 172–301): check for a stray '\"'")
    assert text[1] == (f"{path}:301: warning: duplicate address p5@example.org "
                       f"(first on line 5): skipped")
    assert len(people) == 170 + 128


def test_a_field_over_the_csv_limit_is_a_verdict(tmp_path: Path) -> None:
    long = "x" * 200_000  # over Python's csv default limit (131,072): accepted
    path = write(tmp_path / "l.csv", f"navn;epost;notat\nA;a@example.org;{long}\n")
    people, problems = scan(path)
    assert problems == [] and people[0].fields["notat"] == long
    huge = "y" * 1_100_000
    path = write(tmp_path / "m.csv", f'navn;epost\nA;a@example.org\n"{huge}";b@example.org\n')
    people, problems = scan(path)
    assert [p.email for p in people] == ["a@example.org"]
    assert str(problems[0]).startswith(f"{path}:3: a field is longer than 1,000,000 characters")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16"])
def test_utf16_is_named(tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path / "l.csv", "navn;epost\nOla;ola@example.org\n", encoding=encoding)
    with pytest.raises(InputError, match="UTF-16"):
        scan(path)


def test_not_utf8_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "navn;epost\nOla;ola@example.org\nPål;paal@example.org\n",
                 encoding="latin-1")
    people, problems = scan(path)
    assert [p.name for p in people] == ["Ola"]
    assert str(problems[0]).startswith(f"{path}:3: column 'navn' holds bytes that are not UTF-8")
    assert "UTF-8" in problems[0].message


def test_no_email_column_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"l\.csv:1: no email column: expected one of email"):
        scan(write(tmp_path / "l.csv", "navn;telefon\nOla;123\n"))
    with pytest.raises(InputError, match=r"e\.csv:1: the list is empty"):
        scan(write(tmp_path / "e.csv", ""))
    with pytest.raises(InputError, match="empty"):
        scan(write(tmp_path / "b.csv", "\ufeff\r\n\r\n"))


def test_duplicates_warn_naming_both_lines_first_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "email;name\na@example.org;First\nB@x.example.org;B\n"
                                     "A@EXAMPLE.org;Second\n")
    people, problems = scan(path)
    assert [p.name for p in people] == ["First", "B"]
    assert problems[0].warning
    assert str(problems[0]) == (f"{path}:4: warning: duplicate address A@example.org "
                                f"(first on line 2): skipped")


SAMPLES = [
    "ola@example.org", "Ola.Nordmann@Example.ORG", "a+tag@sub.example.co.uk",
    "x@localhost", "x@example", "x@example.invalid", "x@-bad.example.org",
    "x@exa_mple.org", "a..b@example.org", ".a@example.org", "a.@example.org",
    "\"quoted local\"@example.org", "ola@bæ.example.org", "øla@example.org",
    "a@example.123", "a@[127.0.0.1]", "a" * 65 + "@example.org",
    f"a@{'b' * 64}.example.org", "a@example.org.", "a b@example.org", "@example.org",
    "a@", "mari.saether@example.org", "x@xn--b-4fa.example.org", "a@EXAMPLE.ORG",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_fast_address_path_agrees_with_email_validator(text: str) -> None:
    try:
        expected = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        with pytest.raises(AddressError):
            check_address(text)
        return
    got = check_address(text)
    assert got.normalized == expected.normalized
    assert got.ascii == (expected.ascii_email or expected.normalized)


def test_parse_mailbox() -> None:
    box = parse_mailbox("Digdir <invitasjon@Example.org>")
    assert (box.name, box.address.normalized, box.domain) == \
        ("Digdir", "invitasjon@example.org", "example.org")
    with pytest.raises(AddressError):
        parse_mailbox("a@example.org, b@example.org")
    with pytest.raises(AddressError):
        parse_mailbox("Digdir <inv@example.org>\r\nBcc: x@example.org")


def test_suppression_files_text_and_csv(tmp_path: Path) -> None:
    text = write(tmp_path / "avmeldt.txt",
                 "# avmeldte\nOla@Example.org\n\nkari@example.org # sa nei\n")
    table = write(tmp_path / "bounces.csv", "E-post;dato\nper@example.org;2022-10-01\n")
    found = load_suppressions([text, table])
    assert found == {"ola@example.org", "kari@example.org", "per@example.org"}


# Header encoding (the fast RFC 2047 writer) against the email package's parser ----------

@pytest.mark.parametrize("value", [
    "Hei", "Invitasjon: Felles kompetanseløft for digital transformasjon – NOKIOS 27. oktober",
    "ÆØÅ æøå " * 20, "=?utf-8?q?not_a_word?=", "emoji 🎉 og 中文 blandet med ascii " * 3,
    "a" * 200, "ord " * 60, "Tab\there", "under_score and (paren) \"quote\" ?=",
])
def test_headers_round_trip_7bit_and_short_lines(value: str) -> None:
    from email import message_from_string, policy

    from mailer.message import encode_header

    line = encode_header("Subject", value)
    assert line.isascii()
    assert all(len(part) <= 78 for part in line.split("\r\n"))
    parsed = message_from_string(line + "\r\n\r\n", policy=policy.default)
    expected = " ".join(value.replace("\t", " ").split())
    assert " ".join(str(parsed["Subject"]).split()) == expected


@pytest.mark.parametrize("name", ["Åse Bjørnstad", "Nordmann, Ola", "Ødegård-Æsøy " * 8,
                                  "Ola \"Sjefen\" Nordmann", "=?utf-8?q?x?="])
def test_display_names_round_trip(name: str) -> None:
    from email import message_from_string, policy

    from mailer.address import Mailbox, check_address
    from mailer.message import address_header

    line = address_header("To", Mailbox(name, check_address("ola@example.org")))
    assert line.isascii()
    assert all(len(part) <= 78 for part in line.split("\r\n"))
    parsed = message_from_string(line + "\r\n\r\n", policy=policy.default)
    address = parsed["To"].addresses[0]
    assert " ".join(address.display_name.split()) == " ".join(name.split())
    assert address.addr_spec == "ola@example.org"
