"""Answers from every guest: answer links (mailto: with a token) read back through a real
Dovecot, comments, a deadline, REPLY comments, and the attendee list from `status --list`."""

from __future__ import annotations

import csv
import io
import json
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import openpyxl
import pytest

from mailer import rsvp
from tests import dovecot, test_inbox
from tests.conftest import Server, run
from tests.test_inbox import UID, base, outlook, reply_ics, to_maildir
from tests.test_journal import status_json

sent = test_inbox.sent  # the fixture: the shipped invitation sent to six guests


def links(handler: Any, guest: str) -> dict[str, str]:
    """The answer links of the message a guest got, from its text part."""
    msg = next(m.message for m in handler.messages if m.rcpt_tos == [guest])
    text = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    body = text.get_payload(decode=True).decode().replace("\r\n", "\n")
    found = dict(re.findall(r"^(Ja, jeg kommer|Ja, eg kjem|Yes, I will attend|Nei|No|Kanskje|"
                            r"Maybe): (mailto:\S+)$", body, re.M))
    assert len(found) == 3, body
    names = {"Ja, jeg kommer": "yes", "Ja, eg kjem": "yes", "Yes, I will attend": "yes",
             "Nei": "no", "No": "no", "Kanskje": "maybe", "Maybe": "maybe"}
    return {names[k]: v for k, v in found.items()}


def compose(link: str, sender: str, comment: str = "", msgid: str = "",
            edit: Any = None) -> EmailMessage:
    """The message a mail client makes from a mailto: link (RFC 6068): its To, Subject and
    body, with the guest's comment typed in the empty lines above the marker."""
    parts = urlsplit(link)
    assert parts.scheme == "mailto"
    query = parse_qs(parts.query)
    body = query["body"][0]
    if comment:
        body = body.replace("\r\n\r\n\r\n", f"\r\n{comment}\r\n\r\n", 1)
    if edit is not None:
        body = edit(body)
    msg = base(sender, query["subject"][0], msgid or f"<link.{sender}.{len(body)}>")
    msg.replace_header("To", unquote(parts.path))
    msg.set_content(body.replace("\r\n", "\n"))
    return msg


def test_the_links_are_mailto_with_the_subject_and_body_in_the_guests_language(
        sent: tuple[Path, Path, dict[str, str]], smtp: Server) -> None:
    _, handler = smtp
    kari, emma = links(handler, "kari@example.org"), links(handler, "emma@example.org")
    ase = links(handler, "ase@example.org")
    subject = parse_qs(urlsplit(kari["yes"]).query)["subject"][0]
    assert subject == "Ja, jeg kommer – Felles kompetanseløft for digital transformasjon"
    assert urlsplit(kari["yes"]).path == "invitasjon@example.org"  # the organizer
    assert parse_qs(urlsplit(ase["yes"]).query)["subject"][0].startswith("Ja, eg kjem – ")
    assert parse_qs(urlsplit(emma["no"]).query)["subject"][0].startswith("No, I cannot attend")
    body = parse_qs(urlsplit(kari["maybe"]).query)["body"][0]
    assert body.startswith(rsvp.WORDING["nb"].prompt)
    assert re.search(r"^RSVP maybe kari@example\.org [A-Z2-7]{16}\r$", body, re.M)
    # the buttons are in the HTML part, next to the calendar answer, and say the deadline
    msg = next(m.message for m in handler.messages if m.rcpt_tos == ["kari@example.org"])
    html = next(p for p in msg.walk() if p.get_content_type() == "text/html")
    page = html.get_payload(decode=True).decode()
    assert page.count('href="mailto:invitasjon@example.org?subject=') == 3
    assert "Svar innen 1. oktober 2027" in page and "Godta, Avslå" in page
    # a token for another guest or another answer differs
    tokens = {re.search(r"RSVP \S+ \S+ (\S+)", parse_qs(urlsplit(u).query)["body"][0])
              .group(1) for u in (*kari.values(), *emma.values())}  # type: ignore[union-attr]
    assert len(tokens) == 6


def test_comments_keep_the_guests_own_text_only() -> None:
    words = rsvp.WORDING["nb"]
    body = (f"Vi kommer to.\nAllergi: nøtter\n\n{words.prompt}\n\n> sitert tekst\n"
            f"Den 1. des. 2026 skrev Digdir:\n\n{words.marker}\nRSVP yes kari@example.org "
            f"AAAAAAAAAAAAAAAA\n\n-- \nKari Nordmann\n")
    found = rsvp.find(body)
    assert found is not None and found.answer == "yes" and found.guest == "kari@example.org"
    assert found.comment == "Vi kommer to.\nAllergi: nøtter"
    quoted = rsvp.find(f"Takk!\n> RSVP yes kari@example.org {'A' * 16}\n")
    assert quoted is None  # a token in quoted text never counts
    long = rsvp.find("x" * 5000 + f"\n{words.marker}\nRSVP no a@example.org {'B' * 16}\n")
    assert long is not None and long.comment is not None and len(long.comment) == 1000
    empty = rsvp.find(f"{words.prompt}\n\n\n{words.marker}\nRSVP no a@example.org {'B' * 16}")
    assert empty is not None and empty.comment is None


@pytest.mark.skipif(not dovecot.available(), reason="needs root and Debian's dovecot-imapd")
def test_link_answers_through_a_real_dovecot(
        tmp_path: Path, sent: tuple[Path, Path, dict[str, str]], smtp: Server, ca: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, handler = smtp
    _, _, env = sent
    kari, ase = links(handler, "kari@example.org"), links(handler, "ase@example.org")
    emma, per = links(handler, "emma@example.org"), links(handler, "per@example.org")
    mari = links(handler, "mari@example.org")

    def one_char(body: str) -> str:  # the last character of the token changed
        return re.sub(r"(RSVP \S+ \S+ \S+)(\S)", lambda m: m.group(1)
                      + ("A" if m.group(2) != "A" else "B"), body)

    def other_answer(body: str) -> str:  # per's "no" token with the answer made "yes"
        return body.replace("RSVP no ", "RSVP yes ")

    def other_guest(body: str) -> str:  # mari's token, copied for ola
        return body.replace("mari@example.org", "ola@example.org")

    messages = [
        compose(kari["yes"], "Kari Nordmann <kari@example.org>", "Allergi: nøtter. Vi kommer to."),
        # ase's answer sent by her assistant, from another address: counts for ase
        compose(ase["no"], "Assistent <assistent@example.com>", "Åse er bortreist."),
        compose(emma["maybe"], "Emma Larsen <emma@example.org>"),
        compose(per["no"], "Per <per@example.org>", edit=other_answer),
        compose(mari["yes"], "Ola <ola@example.org>", edit=other_guest),
        compose(kari["no"], "Kari <kari@example.org>", "Likevel ikke", msgid="<kari.edited>",
                edit=one_char),
    ]
    with dovecot.Dovecot(ca) as imap:
        for msg in messages:
            imap.deliver(msg.as_bytes())
        imap_env = imap.settings(env, tmp_path, monkeypatch)
        result = run("inbox", env=imap_env)
    assert result.exit_code == 0, result.output
    assert "3 answers from 3 guests (1 accepted, 1 declined, 1 tentative)" in result.output
    assert "3 not recorded: 3 forged answer link" in result.output
    assert "not recorded (forged answer link): an answer link for per@example.org (yes) " \
           "from per@example.org: its token does not verify" in result.output
    assert "an answer link for ola@example.org (yes) from ola@example.org" in result.output
    assert "an answer link for kari@example.org (no) from kari@example.org" in result.output
    assert "ase@example.org declined by answer link (sent by assistent@example.com)" \
        in result.output
    rows = {r["email"]: r for r in status_json(env)["recipients"]}
    assert rows["kari@example.org"]["answer"] == "accepted"  # the edited "no" did not count
    assert rows["kari@example.org"]["comment"] == "Allergi: nøtter. Vi kommer to."
    assert rows["ase@example.org"]["answer"] == "declined"
    assert rows["ase@example.org"]["comment"] == "Åse er bortreist."
    assert rows["emma@example.org"]["answer"] == "tentative"
    assert rows["emma@example.org"]["comment"] is None
    assert rows["per@example.org"]["answer"] is None and rows["ola@example.org"]["answer"] is None
    assert rows["mari@example.org"]["answer"] is None
    assert all(r["late"] in (False, None) for r in rows.values())


def test_a_link_answer_with_another_secret_or_for_an_unknown_guest(
        tmp_path: Path, sent: tuple[Path, Path, dict[str, str]], smtp: Server) -> None:
    """MAILER_RSVP_SECRET keys the tokens: a link made with the journal's secret no longer
    verifies; a verified token of a guest who was forgotten names an unknown guest."""
    _, handler = smtp
    _, _, env = sent
    kari, ola = links(handler, "kari@example.org"), links(handler, "ola@example.org")
    other = dict(env, MAILER_RSVP_SECRET="another-secret-of-the-organiser")
    box = to_maildir(tmp_path / "a", [compose(kari["yes"], "kari@example.org")])
    result = run("inbox", "--maildir", str(box), env=other)
    assert "1 forged answer link" in result.output, result.output
    assert run("forget", "ola@example.org", env=env).exit_code == 0
    box = to_maildir(tmp_path / "b", [compose(ola["yes"], "ola@example.org")])
    result = run("inbox", "--maildir", str(box), env=env)
    assert "not recorded (unknown guest): an answer link for ola@example.org (yes) from " \
           f"ola@example.org: ola@example.org holds no invitation to {UID}" in result.output


def test_a_reply_comment_and_an_answer_after_the_deadline(
        tmp_path: Path, sent: tuple[Path, Path, dict[str, str]], smtp: Server) -> None:
    templates, listing, env = sent
    _, handler = smtp
    event = templates / "invitasjon" / "event.toml"
    event.write_text(event.read_text().replace("rsvp_by = 2027-10-01", "rsvp_by = 2026-11-30"))
    again = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
                str(templates), env=env)  # the deadline is no calendar change: nothing sent
    assert again.exit_code == 0 and len(handler.messages) == 6, again.output
    reply = outlook("kari@example.org", "ACCEPTED", "20261201T090000Z")
    for part in reply.walk():
        if part.get_content_type() == "text/calendar":
            ics = reply_ics("kari@example.org", "ACCEPTED", "Microsoft Exchange Server 2010",
                            "20261201T090000Z").replace(
                b"SUMMARY:", b"COMMENT:Jeg tar med en kollega\\, Ola.\r\nSUMMARY:")
            part.set_content(ics, maintype="text", subtype="calendar",
                             params={"method": "REPLY"}, cte="base64")
    early = outlook("per@example.org", "DECLINED", "20261129T090000Z")
    box = to_maildir(tmp_path / "Maildir", [reply, early])
    result = run("inbox", "--maildir", str(box), env=env)
    assert result.exit_code == 0, result.output
    assert "kari@example.org accepted with a comment (" + UID + "): after the deadline " \
           "(rsvp_by), marked late" in result.output
    assert ", 1 late" in result.output
    rows = {r["email"]: r for r in status_json(env)["recipients"]}
    assert rows["kari@example.org"]["comment"] == "Jeg tar med en kollega, Ola."
    assert rows["kari@example.org"]["late"] is True
    assert rows["per@example.org"]["late"] is False and rows["per@example.org"]["answer"] \
        == "declined"
    table = run("status", "--templates-dir", str(templates), env=env).output
    assert "answers: 1 accepted, 1 declined, 0 tentative, 4 no answer, 0 bounced " \
           "(1 with a comment)" in table
    assert "answer by 30 November 2026 (rsvp_by, passed): 4 of 6 guests have not " \
           "answered, 1 answered late" in table


def test_the_attendee_list_in_every_format(
        tmp_path: Path, sent: tuple[Path, Path, dict[str, str]]) -> None:
    _, listing, env = sent
    box = to_maildir(tmp_path / "Maildir", [outlook("kari@example.org", "ACCEPTED")])
    assert run("inbox", "--maildir", str(box), env=env).exit_code == 0
    book = tmp_path / "deltakere.xlsx"
    result = run("status", "--list", str(listing), "--format", "xlsx", "--output", str(book),
                 env=env)
    assert result.exit_code == 0, result.output
    sheet = openpyxl.load_workbook(book).active
    header = [c.value for c in sheet[1]]
    assert header[:3] == ["Kampanje", "E-post", "Navn"]
    assert {"Svar", "Svart", "Kommentar", "For sent", "Avmeldt", "Avvist"} <= set(header)
    assert header[-2:] == ["organisasjon", "målform"]  # the list's own columns
    kari = next(r for r in sheet.iter_rows(min_row=2, values_only=True)
                if r[1] == "kari@example.org")
    assert kari[header.index("Svar")] == "accepted" and kari[-2] == "Trondheim kommune"
    english = run("status", "--list", str(listing), "--format", "xlsx", "--output",
                  str(book), env=dict(env, MAILER_LANGUAGE="en"))
    assert english.exit_code == 0
    assert [c.value for c in openpyxl.load_workbook(book).active[1]][:3] == \
        ["Campaign", "Email", "Name"]

    out = tmp_path / "deltakere.csv"
    assert run("status", "--list", str(listing), "--format", "csv", "--output", str(out),
               env=env).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {"answer", "answered_at", "comment", "late", "unsubscribed", "bounce",
            "organisasjon"} <= set(rows[0])
    ase = next(r for r in rows if r["email"] == "ase@example.org")
    assert ase["organisasjon"] == "NTNU" and ase["unsubscribed"] == "false"
    assert ase["late"] == ""  # no answer
    out = tmp_path / "deltakere.json"
    assert run("status", "--list", str(listing), "--format", "json", "--output", str(out),
               env=env).exit_code == 0
    recipients = json.loads(out.read_text())["recipients"]
    assert next(r for r in recipients if r["email"] == "kari@example.org")["målform"] == "nb"
