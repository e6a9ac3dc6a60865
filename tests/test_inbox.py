"""`mailer inbox`: answers, bounces, auto-replies and unsubscribes read back from a real
Maildir (and mbox) after a real send, and what the next send does with them."""

from __future__ import annotations

import mailbox
import shutil
from collections import Counter
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests import dovecot
from tests.conftest import ROOT, Server, run, smtp_env, write
from tests.test_journal import status_json

UID = "nokios-2027-kompetanseloft@example.org"
GUESTS = ("navn;e-post;organisasjon;målform\n"
          "Kari Nordmann;kari@example.org;Trondheim kommune;nb\n"
          "Åse Bjørnstad;ase@example.org;NTNU;nn\n"
          "Emma Larsen;emma@example.org;Equinor;en\n"
          "Ola Ødegård;ola@example.org;Digdir;nb\n"
          "Per Ærøy;per@example.org;Sintef;nb\n"
          "Mari Sæther;mari@example.org;KS;nb\n")


def reply_ics(attendee: str, partstat: str, prodid: str, stamp: str = "20261201T090000Z",
              uid: str = UID, extra: str = "") -> bytes:
    return (f"BEGIN:VCALENDAR\r\nPRODID:{prodid}\r\nVERSION:2.0\r\nMETHOD:REPLY\r\n"
            f"BEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:0\r\nDTSTAMP:{stamp}\r\n"
            f"DTSTART;TZID=Europe/Oslo:20271027T101500\r\n"
            f"ORGANIZER;CN=Digdir:mailto:invitasjon@example.org\r\n"
            f"ATTENDEE;{extra}PARTSTAT={partstat};CN=Gjest:mailto:{attendee}\r\n"
            f"SUMMARY:Felles kompetanseløft\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").encode()


AUTHSERV = "mx.example.org"  # the organiser's own mail server, as the tests name it


def vouched(domain: str, dmarc: str = "pass", server: str = AUTHSERV) -> str:
    """An Authentication-Results header as Microsoft 365 or Gmail write it."""
    return (f"{server}; spf=pass (sender IP is 192.0.2.1) smtp.mailfrom={domain}; "
            f"dkim=pass (signature was verified) header.d={domain}; dmarc={dmarc} "
            f"action=none header.from={domain}")


def base(sender: str, subject: str, msgid: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Digdir <invitasjon@example.org>"
    msg["Subject"] = subject
    msg["Message-ID"] = msgid
    msg["Date"] = "Tue, 01 Dec 2026 10:00:00 +0100"
    return msg


def outlook(attendee: str, partstat: str, stamp: str = "20261201T090000Z") -> EmailMessage:
    """Outlook/Exchange: multipart/alternative, the REPLY as its text/calendar part."""
    msg = base(attendee, "Godtatt: Felles kompetanseløft", f"<outlook.{attendee}.{stamp}>")
    msg.set_content("Kari Nordmann har godtatt.")
    msg.add_alternative("<p>Kari Nordmann har godtatt.</p>", subtype="html")
    msg.add_alternative(reply_ics(attendee, partstat, "Microsoft Exchange Server 2010", stamp),
                        maintype="text", subtype="calendar", params={"method": "REPLY"},
                        cte="base64")
    return msg


def gmail(attendee: str, partstat: str) -> EmailMessage:
    """Gmail: the REPLY inline in the alternative and again as application/ics."""
    ics = reply_ics(attendee, partstat, "-//Google Inc//Google Calendar 70.9054//EN",
                    extra="CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;X-NUM-GUESTS=0;")
    msg = base(attendee, "Avslått: Felles kompetanseløft", f"<gmail.{attendee}>")
    msg.set_content("Åse har avslått denne invitasjonen.")
    msg.add_alternative(ics, maintype="text", subtype="calendar",
                        params={"method": "REPLY", "charset": "UTF-8"})
    msg.add_attachment(ics, maintype="application", subtype="ics", filename="invite.ics")
    return msg


def apple(attendee: str, partstat: str) -> EmailMessage:
    """Apple Calendar: a plain text part and the REPLY as an attached .ics only."""
    msg = base(attendee, "Invitation: Felles kompetanseløft (Tentative)", f"<apple.{attendee}>")
    msg.set_content("")
    msg.add_attachment(reply_ics(attendee, partstat, "-//Apple Inc.//macOS 14.5//EN"),
                       maintype="text", subtype="calendar", filename="iCal-20261201.ics",
                       params={"method": "REPLY"})
    return msg


def thunderbird(attendee: str, partstat: str) -> EmailMessage:
    """Thunderbird: text, the REPLY as an 8-bit text/calendar part, and invite.ics."""
    ics = reply_ics(attendee, partstat, "-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN")
    msg = base(attendee, "Godtatt: Felles kompetanseløft", f"<tb.{attendee}>")
    msg.set_content("Per har godtatt.")
    msg.add_attachment(ics.decode(), subtype="calendar", params={"method": "REPLY"},
                       disposition="inline", cte="8bit")
    msg.add_attachment(ics, maintype="application", subtype="ics", filename="invite.ics")
    return msg


def dsn(recipient: str, action: str, status: str, original: str | None,
        sender: str = "MAIL-DAEMON <MAILER-DAEMON@mx.example.net>",
        returned: str = "text/rfc822-headers") -> EmailMessage:
    """A delivery status notification as Postfix writes it (RFC 3464)."""
    from email import message_from_bytes, policy

    headers = f"Message-ID: {original}\n" if original else ""
    raw = f"""From: {sender}
To: Digdir <invitasjon@example.org>
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn.{recipient}.{action}>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0"

--B0
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--B0
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Tue,  1 Dec 2026 10:00:00 +0100 (CET)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected

--B0
Content-Description: Undelivered Message Headers
Content-Type: {returned}

From: Digdir <invitasjon@example.org>
To: {recipient}
{headers}Subject: Invitasjon

Hei

--B0--
""".replace("\n", "\r\n").encode()
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def exchange_dsn(recipient: str, original: str) -> EmailMessage:
    """A DSN as Exchange Online writes it: the whole original as message/rfc822."""
    return dsn(recipient, "failed", "5.1.10", original, sender="Microsoft Outlook "
               "<postmaster@example.net>", returned="message/rfc822")


def qmail_bounce(recipient: str) -> EmailMessage:
    """A non-standard bounce (qmail), recognised by flufl.bounce."""
    msg = base("MAILER-DAEMON@mx2.example.net", "failure notice", f"<qmail.{recipient}>")
    msg.set_content("Hi. This is the qmail-send program at mx2.example.net.\n"
                    "I'm afraid I wasn't able to deliver your message to the following "
                    "addresses.\nThis is a permanent error; I've given up. Sorry it didn't "
                    f"work out.\n\n<{recipient}>:\nSorry, no mailbox here by that name. "
                    "(#5.1.1)\n\n--- Below this line is a copy of the message.\n")
    return msg


def out_of_office(sender: str) -> EmailMessage:
    msg = base(sender, "Fraværsmelding: Invitasjon: Felles kompetanseløft", f"<ooo.{sender}>")
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content("Jeg er på ferie til 15. desember.")
    return msg


def to_maildir(folder: Path, messages: list[EmailMessage]) -> Path:
    box = mailbox.Maildir(folder, create=True)
    for msg in messages:
        box.add(msg.as_bytes())
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def sent(tmp_path: Path, smtp: Server) -> tuple[Path, Path, dict[str, str]]:
    """The shipped invitation sent to six guests through a real SMTP server."""
    controller, handler = smtp
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    env = smtp_env(controller, MAILER_UNSUBSCRIBE_MAILTO="avmelding@example.org",
                   MAILER_INBOX_TRUSTED_AUTHSERV=AUTHSERV)
    listing = write(tmp_path / "gjester.csv", GUESTS)
    result = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
                 str(templates), env=env)
    assert result.exit_code == 0, result.output
    unsubscribe = handler.messages[0].message["List-Unsubscribe"]
    assert "<mailto:avmelding@example.org?subject=unsubscribe>" in unsubscribe
    ola_id = next(m.message["Message-ID"] for m in handler.messages
                  if m.rcpt_tos == ["ola@example.org"])
    env["OLA_ID"] = ola_id
    for guest in ("mari", "emma"):
        env[f"{guest.upper()}_ID"] = next(m.message["Message-ID"] for m in handler.messages
                                          if m.rcpt_tos == [f"{guest}@example.org"])
    return templates, listing, env


def mailbox_of(env: dict[str, str]) -> list[EmailMessage]:
    unsubscribe = base("Emma Larsen <emma@example.org>", "unsubscribe", "<unsub.emma>")
    unsubscribe.replace_header("To", "avmelding@example.org")
    unsubscribe["Authentication-Results"] = vouched("example.org")
    unsubscribe.set_content("")
    unrelated = base("Nils <nils@example.com>", "Spørsmål om parkering", "<other.nils>")
    unrelated.set_content("Er det parkering ved Trondheim Spektrum?")
    return [
        outlook("kari@example.org", "ACCEPTED", "20261201T090000Z"),
        gmail("ase@example.org", "DECLINED"),
        apple("mari@example.org", "TENTATIVE"),
        thunderbird("per@example.org", "ACCEPTED"),
        outlook("kari@example.org", "DECLINED", "20261202T090000Z"),  # she changed her mind
        outlook("stranger@example.com", "ACCEPTED"),  # not invited
        dsn("ola@example.org", "failed", "5.1.1", env["OLA_ID"]),
        exchange_dsn("mari@example.org", env["MARI_ID"]),
        qmail_bounce("nobody@example.net"),  # a hard bounce for someone never sent to
        dsn("emma@example.org", "delayed", "4.2.2", env["EMMA_ID"]),  # soft: noted only
        out_of_office("per@example.org"),
        unsubscribe,
        unrelated,
    ]


def test_answers_bounces_and_unsubscribes_land_on_the_right_guests(
        tmp_path: Path, sent: tuple[Path, Path, dict[str, str]], smtp: Server) -> None:
    templates, listing, env = sent
    _, handler = smtp
    folder = to_maildir(tmp_path / "Maildir", mailbox_of(env))
    before = snapshot(folder)
    dry = run("inbox", "--maildir", str(folder), "--dry-run", env=env)
    assert dry.exit_code == 0, dry.output
    assert "would record: kari@example.org declined" in dry.output
    assert all(r["answer"] is None for r in status_json(env)["recipients"])  # nothing kept

    result = run("inbox", "--maildir", str(folder), env=env)
    assert result.exit_code == 0, result.output
    assert ("inbox: 13 read: 5 answers from 4 guests (2 accepted, 2 declined, 1 tentative), "
            "4 bounces "
            "(3 hard, 1 soft), 1 auto-reply, 1 unsubscribe, 1 other, 2 not recorded: 1 not "
            "invited, 1 unverified bounce (named above)") in result.output
    assert "not recorded (not invited): an answer for stranger@example.com (accepted) from " \
           "stranger@example.com" in result.output
    assert "not recorded (unverified bounce): a bounce for nobody@example.net (5.0.0) " \
           "returns no Message-ID this journal sent them" in result.output
    assert "soft bounce: emma@example.org (4.2.2); noted for status, not suppressed" \
        in result.output
    rows = {r["email"]: r for r in status_json(env)["recipients"]}
    assert rows["kari@example.org"]["answer"] == "declined"  # the later answer wins
    assert rows["ase@example.org"]["answer"] == "declined"
    assert rows["mari@example.org"]["answer"] == "tentative"
    assert rows["mari@example.org"]["state"] == "bounced"  # Exchange's DSN, by Message-ID
    assert rows["mari@example.org"]["bounce"] == "hard"
    assert rows["mari@example.org"]["bounce_status"] == "5.1.10"
    assert rows["per@example.org"]["answer"] == "accepted"
    assert rows["ola@example.org"]["state"] == "bounced"
    assert rows["ola@example.org"]["bounce_status"] == "5.1.1"
    emma = rows["emma@example.org"]
    assert emma["answer"] is None and emma["state"] == "sent"  # a soft bounce: noted only
    assert emma["bounce"] == "soft" and emma["bounce_status"] == "4.2.2"
    assert emma["unsubscribed"] is True
    table = run("status", env=env).output
    assert "answers: 1 accepted, 2 declined, 0 tentative, 1 no answer, 2 bounced" in table
    assert "invitasjon:gjester.csv: 1 unsubscribed by mail (no newsletters or reminders; " \
           "updates and cancellations of an event they hold still reach them): " \
           "emma@example.org" in table
    assert "invitasjon:gjester.csv: 1 soft bounce (delivery delayed or refused for now; not " \
           "suppressed): emma@example.org (4.2.2, " in table

    again = run("inbox", "--maildir", str(folder), "--quiet", env=env)
    assert again.output == ""  # each message is read once; quiet: nothing to say
    assert snapshot(folder) == before  # nothing in the mailbox changed

    # The reminder goes to those who have not answered, never to a bounced or
    # unsubscribed address.
    result = run("send", str(listing), "--template", "invitasjon/paminnelse",
                 "--templates-dir", str(templates), "--where", "answer is none", env=env)
    assert result.exit_code == 0, result.output
    reminders = Counter(m.rcpt_tos[0] for m in handler.messages[6:])
    assert reminders == Counter()  # emma unsubscribed, ola bounced: nobody without an answer
    listing.write_text(GUESTS + "Nora Berg;nora@example.org;NAV;nb\n")
    result = run("send", str(listing), "--template", "invitasjon/paminnelse",
                 "--templates-dir", str(templates), "--where", "answer is none", env=env)
    assert result.exit_code == 0, result.output
    assert [m.rcpt_tos for m in handler.messages[6:]] == [["nora@example.org"]]
    check = run("validate", str(listing), "--template", "invitasjon", "--templates-dir",
                str(templates), "--where", "answer == 'accepted'", env=env)
    assert "1 match --where" in check.output  # per (kari changed her mind)
    dry = run("send", str(listing), "--template", "invitasjon/paminnelse", "--templates-dir",
              str(templates), "--where", "answer == 'accepted'", "--dry-run", env=env)
    assert "dry run: 1 messages (1 reminder, those that match --where)" in dry.output
    purged = run("purge", "--campaign", "invitasjon:gjester.csv", env=env)
    assert purged.exit_code == 0, purged.output
    import sqlite3

    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == 4  # the reminder's
    run("purge", "--campaign", "invitasjon/paminnelse:gjester.csv", env=env)
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == 0  # gone with both


def test_the_same_mailbox_as_mbox(tmp_path: Path, sent: tuple[Path, Path, dict[str, str]]
                                  ) -> None:
    _, _, env = sent
    box = mailbox.mbox(tmp_path / "svar.mbox", create=True)
    for msg in mailbox_of(env)[:4]:
        box.add(msg.as_bytes())
    box.close()
    result = run("inbox", "--mbox", str(tmp_path / "svar.mbox"), env=env)
    assert result.exit_code == 0, result.output
    assert "inbox: 4 read: 4 answers from 4 guests (2 accepted, 1 declined, 1 tentative)" \
        in result.output


def test_where_only_and_forget(tmp_path: Path, sent: tuple[Path, Path, dict[str, str]],
                               smtp: Server) -> None:
    templates, listing, env = sent
    _, handler = smtp
    bad = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
              str(templates), "--where", "answer ==", env=env)
    assert bad.exit_code == 2 and "--where 'answer =='" in bad.output
    only = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
               str(templates), "--only", "ase@example.org", env=env)
    assert only.exit_code == 0, only.output
    assert [m.rcpt_tos for m in handler.messages[6:]] == [["ase@example.org"]]  # a resend
    stranger = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
                   str(templates), "--only", "x@example.com", env=env)
    assert stranger.exit_code == 65 and "x@example.com" in stranger.output
    forgot = run("forget", "Ase@Example.org", env=env)
    assert forgot.exit_code == 0, forgot.output
    journal = (tmp_path / ".mailer" / "journal.sqlite3").read_bytes()
    assert b"ase@example.org" not in journal
    assert all(r["email"] != "ase@example.org" for r in status_json(env)["recipients"])


def test_inbox_without_a_source_or_journal(tmp_path: Path) -> None:
    result = run("inbox", env={})
    assert result.exit_code == 78 and "MAILER_IMAP_HOST is not set" in result.output
    folder = to_maildir(tmp_path / "Maildir", [])
    result = run("inbox", "--maildir", str(folder), env={})
    assert result.exit_code == 78 and "no journal" in result.output
    result = run("inbox", "--maildir", str(tmp_path), env={"MAILER_JOURNAL": "x"})
    assert result.exit_code == 65 and "not a Maildir (no cur/ or new/ folder)" in result.output
    plain = run("inbox", env={"MAILER_IMAP_HOST": "imap.example.org", "MAILER_IMAP_SECURITY":
                              "none", "MAILER_IMAP_USERNAME": "digdir",
                              "MAILER_IMAP_PASSWORD": "hemmelig"})
    assert plain.exit_code == 78 and "plain text" in plain.output
    assert "hemmelig" not in plain.output


def test_reply_fixtures_are_what_they_claim() -> None:
    """The fixtures carry METHOD:REPLY where each client puts it."""
    from mailer.inbox import classify

    for make in (outlook, gmail, apple, thunderbird):
        finding = classify(make("kari@example.org", "ACCEPTED").as_bytes())
        assert finding.kind == "answer"
        assert [(a.email, a.answer) for a in finding.answers] == [("kari@example.org",
                                                                    "accepted")]
    calendar = [p for p in outlook("kari@example.org", "ACCEPTED").walk()
                if p.get_content_type() == "text/calendar"]
    assert calendar[0]["Content-Transfer-Encoding"] == "base64"  # as Outlook sends it


@pytest.mark.skipif(not dovecot.available(), reason="needs root and Debian's dovecot-imapd")
def test_a_real_imap_server_read_only_once_and_its_failures(
        tmp_path: Path, sent: tuple[Path, Path, dict[str, str]], ca: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import imaplib
    import ssl

    _, _, env = sent
    with dovecot.Dovecot(ca) as imap:
        for msg in mailbox_of(env):
            imap.deliver(msg.as_bytes())
        imap_env = imap.settings(env, tmp_path, monkeypatch)
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

        def flags() -> dict[bytes, bytes]:
            conn = imaplib.IMAP4_SSL("127.0.0.1", imap.imaps, ssl_context=context)
            conn.login(dovecot.USER, dovecot.PASSWORD)
            conn.select("INBOX", readonly=True)
            _, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            conn.logout()
            return {line.split()[2]: line for line in data if isinstance(line, bytes)}

        before = flags()
        result = run("inbox", env=imap_env)
        assert result.exit_code == 0, result.output
        assert "inbox: 13 read: 5 answers from 4 guests (2 accepted, 2 declined, " \
               "1 tentative)" in result.output
        assert run("inbox", env=imap_env).output.startswith("inbox: 0 read")  # once
        assert flags() == before and len(before) == 13  # same UIDs, no flag set (PEEK)
        rows = {r["email"]: r for r in status_json(env)["recipients"]}
        assert rows["kari@example.org"]["answer"] == "declined"
        starttls = dict(imap_env, MAILER_IMAP_PORT=str(imap.imap), MAILER_IMAP_SECURITY="starttls")
        assert run("inbox", env=starttls).output.startswith("inbox: 0 read")
        wrong = run("inbox", env=dict(imap_env, MAILER_IMAP_PASSWORD="wrong-Pa55"))
        assert wrong.exit_code == 78 and "wrong-Pa55" not in wrong.output
        assert "login or folder" in wrong.output
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = run("inbox", env=imap_env)
        assert untrusted.exit_code == 78 and "TLS" in untrusted.output
        port = imap.imaps
    down = run("inbox", env=dict(imap_env, MAILER_IMAP_PORT=str(port)))
    assert down.exit_code == 75 and "cannot reach IMAP server" in down.output
