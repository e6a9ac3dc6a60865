"""A list read in bulk (a check without a template: plain rows as runs of keys, no
Recipient objects) says exactly what the same list read record by record says: the same
recipients on the same lines, the same problems in the same order; and the blocks it is
read in split its lines exactly as Python's text reader does."""

from __future__ import annotations

import io
from itertools import pairwise
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.address import check_address, plain_keys
from mailer.errors import InputError
from mailer.models import Plain, Recipient
from mailer.recipients import RecipientList, _Feed
from tests.conftest import run, write

# Most rows are plain (the bulk path): addresses from a small pool, so that some are
# duplicates, in other cases too. Now and then a row has one thing that the bulk path
# must leave to the record-by-record read.
PLAIN = st.from_regex(r"[a-c]{1,2}(\.[a-z])?@(example\.org|Example\.ORG|example\.com)",
                      fullmatch=True)
ODD_ADDRESSES = st.sampled_from([
    " kari@example.org", "kari@example.org\xa0", "per@øvelse.example.org", "not-an-address",
    "", "a..b@example.org", "å@example.org", "a@b", '"sitat"@example.org',
    "x" * 65 + "@example.org", "a@" + "d" * 250 + ".org", "a@-bad-.example.org",
    "two@@example.org", "nfd@o\u0308velse.example.org", "nfc@\u00f6velse.example.org"])
NAMES = st.sampled_from(["Ola Nordmann", "", "Kari  Nordmann ", "Ødegård", "Åse Ørnes"])
ODD_NAMES = st.sampled_from([
    "Per; Pål", "Per, Pål", 'Anne "A" Berg', "to\nlinjer", "tab\there", "bell\x07",
    "del\x7f", "c1\x85", "sep\u2028", "unit\x1f", "nbsp\xa0"])
LANGUAGES = st.sampled_from(["nb", "nn", "en", "", "Nynorsk", "nb-NO", "se", "klingon!"])
ENDS = st.sampled_from(["\n", "\r\n", "\r"])
ODDITIES = ("address", "name", "quoted", "short", "long", "empty", "unclosed", "bytes", "end",
            "cr")
BYTES = st.sampled_from([b"\xff", b"\xc3", b"\xe2\x80\xa8", b"\xc2\x9f", b"\x00"])


def cell(value: str, delimiter: str, quote: bool = False) -> str:
    if quote or any(c in value for c in f'{delimiter}"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def lists(draw: st.DrawFn) -> bytes:
    delimiter = draw(st.sampled_from([";", ",", "\t"]))
    columns = draw(st.permutations(["e-post", "navn", "språk"]))[:draw(st.integers(1, 3))]
    if "e-post" not in columns:
        columns = ["e-post", *columns]
    end = draw(ENDS)  # as the tool that wrote the file does
    out = [(draw(st.sampled_from(["", "\ufeff", end])) + delimiter.join(columns)
            + end).encode()]
    for _ in range(draw(st.integers(0, 80))):
        odd = draw(st.sampled_from(ODDITIES)) if draw(st.integers(0, 12)) == 0 else None
        values = [draw(ODD_ADDRESSES if odd == "address" else PLAIN) if c == "e-post"
                  else draw(LANGUAGES) if c == "språk"
                  else draw(ODD_NAMES if odd == "name" else NAMES) for c in columns]
        if odd == "short":
            values = values[:-1]
        elif odd == "long":
            values.append("extra")
        elif odd == "empty":
            values = [""] * len(values)
        quoted = draw(st.integers(0, len(values) - 1)) if odd == "quoted" else -1
        row = delimiter.join(cell(v, delimiter, i == quoted) for i, v in enumerate(values))
        if odd == "unclosed":
            row += '"unclosed'
        elif odd == "cr":
            row += "\rx"  # a CR alone, unquoted, in the last field: a line end
        raw = draw(BYTES) if odd == "bytes" else b""
        out.append(raw + (row + (draw(ENDS) if odd == "end" else end)).encode())
    data = b"".join(out)
    if draw(st.booleans()):
        data = data.rstrip(b"\r\n")  # no line end at the end of the file
    return data


def outcome(path: Path, block: int, *, bulk: bool) -> list[tuple[object, ...]] | str:
    """What a read of the list gives, a guest or a problem a row; or why it cannot be read."""
    try:
        items = list(RecipientList(path, block_size=block).scan(bulk=bulk))
    except InputError as exc:
        return str(exc)
    out: list[tuple[object, ...]] = []
    for item in items:
        if isinstance(item, Plain):
            languages = item.languages or [None] * len(item.keys)
            out.extend(("guest", item.line + i, key, language)
                       for i, (key, language) in enumerate(zip(item.keys, languages,
                                                               strict=True)))
        elif isinstance(item, Recipient):
            out.append(("guest", item.line, item.address.key, item.language))
        else:
            out.append(("problem", str(item)))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=lists(), block=st.integers(1, 300))
def test_a_list_read_in_bulk_says_what_it_says_record_by_record(
        tmp_path: Path, data: bytes, block: int) -> None:
    path = tmp_path / "gjester.csv"
    path.write_bytes(data)
    expected = outcome(path, 1 << 16, bulk=False)
    assert outcome(path, block, bulk=False) == expected
    for size in (block, 1 << 16):
        assert outcome(path, size, bulk=True) == expected


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.sampled_from([b"a", b";", b'"', b"\n", b"\r", b"\r\n", b"\xc3\xb8",
                                      b"\xff", b"\xe2\x80\xa8", b"\x00"]),
                     max_size=80).map(b"".join),
       sizes=st.lists(st.integers(1, 20), min_size=1, max_size=10),
       again=st.lists(st.booleans(), min_size=1, max_size=10))
def test_the_blocks_of_a_list_split_its_lines_as_python_reads_text(
        data: bytes, sizes: list[int], again: list[bool]) -> None:
    python = list(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8",
                                   errors="surrogateescape", newline=""))
    assert list(_Feed(io.BytesIO(data), sizes[0]).lines()) == python
    # Blocks of changing sizes, some given back and read again in other sizes.
    feed, parts, step, given_back = _Feed(io.BytesIO(data), sizes[0]), [], 0, False
    while True:
        step += 1
        feed.size = sizes[step % len(sizes)]
        raw = feed.block()
        if raw is None:
            break
        if again[step % len(again)] and not given_back:
            feed.unread(raw)
            given_back = True
            continue
        given_back = False
        lines = list(io.StringIO(raw.decode("utf-8", "surrogateescape"), newline=""))
        assert len(raw) <= feed.size + 1 or len(lines) == 1  # longer: one long line
        parts.append(raw)
    assert b"".join(parts) == data
    assert all(raw.endswith((b"\n", b"\r")) for raw in parts[:-1])  # whole lines
    assert not any(a.endswith(b"\r") and b.startswith(b"\n") for a, b in pairwise(parts))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(PLAIN, ODD_ADDRESSES, st.from_regex(
    r"[a-zA-Z0-9.+_-]{1,70}@[a-zA-Z0-9.ÆØÅæøåöü\u0308-]{1,20}", fullmatch=True)), max_size=8))
def test_addresses_checked_at_once_have_the_keys_they_have_checked_one_by_one(
        addresses: list[str]) -> None:
    found = plain_keys(addresses)
    if found is None:
        return
    keys, domains = found
    assert keys == [check_address(a).key for a in addresses]
    for address in addresses:
        local, _, domain = address.rpartition("@")
        assert f"{local}@{domains[domain]}" == check_address(address).normalized


def test_a_domain_email_validator_normalises_is_not_taken_at_once() -> None:
    """NFD ö is normalised to NFC by email-validator: the key must be the NFC one."""
    assert plain_keys(["nfd@o\u0308velse.example.org"]) is None
    assert plain_keys(["Ola@Example.ORG", "kari@example.org"]) == (
        ["ola@example.org", "kari@example.org"],
        {"Example.ORG": "example.org", "example.org": "example.org"})
    assert plain_keys(["ola@example.org", "not-an-address"]) is None


def test_a_plain_list_in_many_blocks_is_checked_like_one_read_record_by_record(
        tmp_path: Path) -> None:
    """Through the CLI: a duplicate in a later block names its first line; a bad row, a
    quoted field with a line break and an unknown language are found on their lines;
    suppressed guests are counted."""
    rows = [f"Person {i};p{i}@example.org;nb" for i in range(2, 6002)]
    rows[4000 - 2] = "Person 4000;P2@Example.ORG;nb"  # a duplicate of line 2
    rows[4500 - 2] = "Person 4500;ikke-en-adresse;nb"
    rows[5000 - 2] = "Person 5000;p5000@example.org;klingon"
    rows[5990 - 2] = 'Person 5990;p5990@example.org;"nb\n"'  # a line break in språk
    text = "navn;e-post;språk\n" + "\n".join(rows) + "\n"
    write(tmp_path / "gjester.csv", text)
    write(tmp_path / "sperret.txt", "p10@example.org\np5999@example.org\n")
    result = run("validate", str(tmp_path / "gjester.csv"), "--suppress",
                 str(tmp_path / "sperret.txt"))
    out = result.output.splitlines()
    shown = str(tmp_path / "gjester.csv")
    assert f"{shown}:5990: column 'språk' holds a line break" in out
    assert f"{shown}:4500: invalid address 'ikke-en-adresse': An email address must have " \
           f"an @-sign." in out
    assert f"{shown}:4000: warning: duplicate address P2@example.org (first on line 2): " \
           f"skipped" in out
    assert any(line.startswith(f"{shown}:5000: warning: unknown language 'klingon'")
               for line in out)
    assert out[-1].startswith(f"{shown}: 6000 rows read, 5997 recipients, 2 errors, ")
    assert "2 suppressed" in out[-1]
    assert result.exit_code == 65
