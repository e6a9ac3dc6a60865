"""Property tests for the hand-written encoders: whatever text comes from a list or a
template, the wire form is 7-bit, short-lined, and parses back to the same text."""

from __future__ import annotations

import csv
import io
from email import message_from_bytes, message_from_string, policy
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.address import Mailbox, check_address
from mailer.message import MessageFactory, address_header, encode_header, encoded_words
from mailer.models import Rendered
from mailer.recipients import Recipient, RecipientList

# Printable text as people type it: letters of any script, digits, punctuation, spaces.
TEXT = st.text(st.characters(categories=("L", "N", "P", "S", "Zs"),
                             exclude_characters="\u2028\u2029\x85"), min_size=1, max_size=200)


def squash(text: str) -> str:
    return " ".join(text.split())


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_any_subject_round_trips(value: str) -> None:
    line = encode_header("Subject", value)
    assert line.isascii()
    assert all(len(part) <= 78 for part in line.split("\r\n"))
    parsed = message_from_string(line + "\r\n\r\n", policy=policy.default)
    assert squash(str(parsed["Subject"])) == squash(value)


@settings(max_examples=300, deadline=None)
@given(TEXT.filter(lambda t: t.strip()))
def test_any_display_name_round_trips(name: str) -> None:
    line = address_header("To", Mailbox(name, check_address("ola@example.org")))
    assert line.isascii()
    assert all(len(part) <= 78 for part in line.split("\r\n"))
    parsed = message_from_string(line + "\r\n\r\n", policy=policy.default)
    addresses = parsed["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].addr_spec == "ola@example.org"
    got = addresses[0].display_name
    assert got.replace(" ", "") == "".join(name.split())
    if max(len(encoded_words(word, 10_000)) for word in name.split()) <= 55:
        # Words are cut at spaces. Only a run of text too long for one encoded word must
        # be cut elsewhere; RFC 2047 (6.2) says the space between two encoded words is
        # then ignored, but Python's parser keeps it in address headers.
        assert squash(got) == squash(name)


@settings(max_examples=150, deadline=None)
@given(subject=TEXT, text=st.text(max_size=2000), html=st.text(max_size=2000))
def test_any_bodies_round_trip(subject: str, text: str, html: str) -> None:
    factory = MessageFactory(Mailbox("Digdir", check_address("invitasjon@example.org")))
    data = factory.build(Rendered(subject, text, html, "nb"),
                         Mailbox("Åse", check_address("ase@example.org")), "<id@example.org>")
    assert data.isascii()
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    msg = message_from_bytes(data, policy=policy.default)
    normal = text.replace("\r\n", "\n").replace("\r", "\n")
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == normal
    normal_html = html.replace("\r\n", "\n").replace("\r", "\n")
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == normal_html


FIELD = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=30)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(FIELD, FIELD), min_size=1, max_size=20),
       delimiter=st.sampled_from([";", ",", "\t"]))
def test_any_csv_written_by_the_csv_module_reads_back(tmp_path: Path,
                                                      rows: list[tuple[str, str]],
                                                      delimiter: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(["navn", "e-post", "notat"])
    for i, (name, note) in enumerate(rows):
        writer.writerow([name, f"p{i}@example.org", note])
    path = tmp_path / "l.csv"
    path.write_text("\ufeff" + out.getvalue(), encoding="utf-8", newline="")
    people = [r for r in RecipientList(path).scan() if isinstance(r, Recipient)]
    expected = [(" ".join(name.split()), f"p{i}@example.org", note)
                for i, (name, note) in enumerate(rows)]
    assert [(p.name, p.email, p.fields["notat"]) for p in people] == expected
