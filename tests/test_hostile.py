"""The inbox reads mail from strangers: one bad message never stops it, a forged one never
changes a guest, and a send and an inbox on one journal both finish."""

from __future__ import annotations

import mailbox
import os
import sqlite3
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests import dovecot
from tests.conftest import Server, people, run, smtp_env
from tests.daemons import wait_until
from tests.test_inbox import (
    UID,
    base,
    dsn,
    outlook,
    sent,  # noqa: F401 (a fixture)
    to_maildir,
    vouched,
)
from tests.test_journal import spawn, status_json

Sent = tuple[Path, Path, dict[str, str]]


def raw(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def parens_in_from() -> bytes:
    return raw(b"From: " + b"(" * 1000 + b"x@example.org\nTo: invitasjon@example.org\n"
               b"Subject: hei\nMessage-ID: <parens@example.net>\n\nhei\n")


def nested_multiparts(depth: int = 1000) -> bytes:
    head = [b"From: a@example.net\nTo: invitasjon@example.org\nMessage-ID: <nested@example.net>"
            b"\nMIME-Version: 1.0\n"]
    head += [b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i)
             for i in range(depth)]
    return raw(b"".join(head) + b"Content-Type: text/plain\n\nx\n")


def reply_with_stamp(attendee: str, partstat: str, stamp_line: str, sequence: int = 0,
                     attendees: int = 1, sender: str | None = None) -> EmailMessage:
    ics = (f"BEGIN:VCALENDAR\r\nPRODID:-//Test//EN\r\nVERSION:2.0\r\nMETHOD:REPLY\r\n"
           f"BEGIN:VEVENT\r\nUID:{UID}\r\nSEQUENCE:{sequence}\r\n{stamp_line}\r\n"
           + "".join(f"ATTENDEE;PARTSTAT={partstat}:mailto:{address}\r\n" for address in
                     [attendee, *(f"x{i}@example.org" for i in range(1, attendees))])
           + "END:VEVENT\r\nEND:VCALENDAR\r\n").encode()
    msg = base(sender or attendee, "Svar", f"<reply.{attendee}.{stamp_line[-8:]}.{sequence}>")
    msg.set_content("svar")
    msg.add_alternative(ics, maintype="text", subtype="calendar", params={"method": "REPLY"})
    return msg


def big_message(megabytes: int = 50) -> bytes:
    return raw(b"From: Nils <nils@example.com>\nTo: invitasjon@example.org\nSubject: Foto\n"
               b"Message-ID: <big@example.com>\nContent-Type: application/octet-stream\n\n"
               ) + b"A" * (megabytes << 20)


# One bad message never stops the rest ---------------------------------------------------

@pytest.mark.skipif(not dovecot.available(), reason="Dovecot is not installed")
def test_a_hostile_mailbox_over_imap(tmp_path: Path, sent: Sent, ca: Any,  # noqa: F811
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, env = sent
    with dovecot.Dovecot(ca) as imap:
        for data in (parens_in_from(), nested_multiparts(),
                     outlook("kari@example.org", "ACCEPTED").as_bytes(),
                     reply_with_stamp("ase@example.org", "DECLINED",
                                      "DTSTAMP;VALUE=DATE:20261201").as_bytes(),
                     reply_with_stamp("per@example.org", "TENTATIVE",
                                      "DTSTAMP:garbage").as_bytes(),
                     big_message(),
                     dsn("ola@example.org", "failed", "5.1.1", env["OLA_ID"]).as_bytes()):
            imap.deliver(data)
        imap_env = imap.settings(env, tmp_path, monkeypatch)
        result = run("inbox", env=imap_env)
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        assert ("inbox: 7 read: 3 answers from 3 guests (1 accepted, 1 declined, 1 tentative), "
                "1 bounce "
                "(1 hard, 0 soft), 0 auto-replies, 0 unsubscribes, 1 other, 2 unreadable"
                ) in result.output
        assert "not read: message UID 1 <parens@example.net>: nested too deep to read" \
            in result.output
        assert "not read: message UID 2 <nested@example.net>: more than 100 nested MIME " \
               "parts" in result.output
        again = run("inbox", env=imap_env)
        assert again.exit_code == 0 and again.output.startswith("inbox: 0 read"), again.output
        other = run("inbox", env=dict(imap_env, MAILER_IMAP_PASSWORD='blåbær "\\ hemmelig'))
        assert other.exit_code == 78 and "Traceback" not in other.output, other.output
        assert "the password is not ASCII" in other.output
        assert "blåbær" not in other.output and "å" not in other.output
    rows = {r["email"]: r for r in status_json(env)["recipients"]}
    assert rows["kari@example.org"]["answer"] == "accepted"
    assert rows["ase@example.org"]["answer"] == "declined"
    assert rows["ase@example.org"]["answered_at"] == "2026-12-01T00:00:00+00:00"
    assert rows["per@example.org"]["answer"] == "tentative"  # a garbage DTSTAMP: read time
    assert rows["ola@example.org"]["state"] == "bounced"


def test_a_big_message_costs_no_more_memory_than_a_small_one(tmp_path: Path,
                                                             sent: Sent) -> None:  # noqa: F811
    """A 50 MB message in a Maildir: only its first megabyte is read and parsed."""
    _, _, env = sent
    folder = tmp_path / "Maildir"
    (folder / "new").mkdir(parents=True)  # a Maildir without cur/ is a Maildir too
    (folder / "new" / "1.big").write_bytes(big_message(50))
    # VmHWM, the peak of this process's own memory (ru_maxrss would count the pages of
    # the test process it was forked from)
    code = ("import re, sys\nfrom mailer.cli import main\n"
            f"sys.argv = ['mailer', 'inbox', '--maildir', {str(folder)!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None)\n"
            "status = open('/proc/self/status').read()\n"
            "print('peak', int(re.search(r'VmHWM:\\s*(\\d+)', status).group(1)) // 1024)")
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, cwd=tmp_path, timeout=120, check=True)
    assert "inbox: 1 read: 0 answers" in done.stdout and "1 other" in done.stdout
    peak = int(done.stdout.rsplit("peak", 1)[1])
    assert peak < 120, done.stdout  # MB: the message alone is 50


# A forged message never changes a guest ---------------------------------------------

def test_the_forged_set_is_named_and_never_recorded(tmp_path: Path, sent: Sent) -> None:  # noqa: F811
    _, _, env = sent
    forged_dsn = dsn("kari@example.org", "failed", "5.1.1", None,
                     sender="Postmaster <postmaster@attacker.example.net>")
    # Ola's real Message-ID, but the DSN names Kari
    borrowed = dsn("kari@example.org", "failed", "5.1.1", env["OLA_ID"])
    # a guessable Message-ID of the old form: sha256(campaign, key)
    import hashlib

    guess = "<" + hashlib.sha256(b"invitasjon:gjester.csv\x00kari@example.org").hexdigest()[
        :32] + "@example.org>"
    guessed = dsn("kari@example.org", "failed", "5.1.1", guess)
    evil = reply_with_stamp("kari@example.org", "DECLINED", "DTSTAMP:20261201T090000Z",
                            sender="evil@attacker.example.net")
    three = reply_with_stamp("kari@example.org", "DECLINED", "DTSTAMP:20261201T090000Z",
                             attendees=3)
    unsub_plain = base("Per Ærøy <per@example.org>", "unsubscribe", "<unsub.per>")
    unsub_plain.replace_header("To", "avmelding@example.org")
    unsub_plain.set_content("")
    unsub_other_server = base("Åse <ase@example.org>", "unsubscribe", "<unsub.ase>")
    unsub_other_server.replace_header("To", "avmelding@example.org")
    unsub_other_server["Authentication-Results"] = vouched("example.org",
                                                           server="mx.attacker.example.net")
    unsub_other_server.set_content("")
    for n, message in enumerate((forged_dsn, borrowed, guessed, three)):
        message.replace_header("Message-ID", f"<forged.{n}@attacker.example.net>")
    failed_dmarc = reply_with_stamp("mari@example.org", "ACCEPTED", "DTSTAMP:20261201T090000Z")
    failed_dmarc["Authentication-Results"] = vouched("example.org", dmarc="fail")
    folder = to_maildir(tmp_path / "Maildir", [forged_dsn, borrowed, guessed, evil, three,
                                                unsub_plain, unsub_other_server,
                                                failed_dmarc])
    result = run("inbox", "--maildir", str(folder), env=env)
    assert result.exit_code == 0, result.output
    output = result.output
    assert output.count("not recorded (unverified bounce): a bounce for kari@example.org") == 3
    assert "not recorded (unverified): an answer for kari@example.org (declined) from " \
           "evil@attacker.example.net: not sent by the guest" in output
    assert "not recorded (unreadable answer): a REPLY with 3 ATTENDEEs" in output
    assert "not recorded (unverified): an unsubscribe from per@example.org" in output
    assert "not recorded (unverified): an unsubscribe from ase@example.org" in output
    assert "not recorded (unverified): an answer for mari@example.org (accepted) from " \
           "mari@example.org: the sender failed DMARC" in output
    assert "8 not recorded: 1 unreadable answer, 4 unverified, 3 unverified bounce" in output
    rows = {r["email"]: r for r in status_json(env)["recipients"]}
    assert all(r["state"] == "sent" and r["answer"] is None for r in rows.values())
    table = run("status", env=env).output
    assert "2 unverified unsubscribes to confirm (mailer forget ADDRESS, or a suppression " \
           "file): " in table and "per@example.org" in table and "ase@example.org" in table
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM suppressions").fetchone()[0] == 0
    # A real guest's answer still counts, and a reminder still reaches per
    real = to_maildir(tmp_path / "Maildir2", [outlook("kari@example.org", "ACCEPTED")])
    assert "1 accepted" in run("inbox", "--maildir", str(real), env=env).output


def test_answers_in_time_and_version_order(tmp_path: Path, sent: Sent) -> None:  # noqa: F811
    """A DTSTAMP in the future is the time it was read (it cannot lock an answer); an
    answer to an older version is history and never replaces one to the current."""
    templates, listing, env = sent
    future = reply_with_stamp("kari@example.org", "DECLINED", "DTSTAMP:20991231T000000Z")
    first = to_maildir(tmp_path / "A", [future])
    assert "1 declined" in run("inbox", "--maildir", str(first), env=env).output
    later = to_maildir(tmp_path / "B", [outlook("kari@example.org", "ACCEPTED",
                                                "20261215T090000Z")])
    assert "1 accepted" in run("inbox", "--maildir", str(later), env=env).output
    rows = {r["email"]: r for r in status_json(env)["recipients"]}
    assert rows["kari@example.org"]["answer"] == "accepted"  # the 2099 stamp did not lock it
    # The event changes: every guest now holds version 1.
    toml = templates / "invitasjon" / "event.toml"
    toml.write_text(toml.read_text().replace("10:15:00", "10:45:00"))
    update = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
                 str(templates), env=env)
    assert update.exit_code == 0, update.output
    current = reply_with_stamp("ase@example.org", "ACCEPTED", "DTSTAMP:20261210T090000Z",
                               sequence=1)
    stale = reply_with_stamp("ase@example.org", "DECLINED", "DTSTAMP:20261211T090000Z",
                             sequence=0)  # later, but to the old version
    both = to_maildir(tmp_path / "C", [current, stale])
    result = run("inbox", "--maildir", str(both), env=env)
    assert "ase@example.org declined to an earlier version" in result.output
    rows = {r["email"]: r for r in status_json(env)["recipients"]}
    assert rows["ase@example.org"]["answer"] == "accepted"
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        history = db.execute("SELECT sequence, answer FROM answer_history WHERE key = "
                             "'ase@example.org' ORDER BY sequence").fetchall()
    assert history == [(0, "declined"), (1, "accepted")]


def test_a_calendar_reply_marked_auto_generated_is_an_answer(tmp_path: Path,
                                                            sent: Sent) -> None:  # noqa: F811
    _, _, env = sent
    msg = outlook("kari@example.org", "ACCEPTED")
    msg["Auto-Submitted"] = "auto-generated"  # as server-side calendars send it
    folder = to_maildir(tmp_path / "Maildir", [msg])
    result = run("inbox", "--maildir", str(folder), env=env)
    assert "1 answer from 1 guest (1 accepted" in result.output
    assert "0 auto-replies" in result.output


def test_control_characters_from_mail_are_never_printed_raw(tmp_path: Path,
                                                            sent: Sent) -> None:  # noqa: F811
    _, _, env = sent
    hostile = dsn("nobody@example.net", "failed", "5.1.1\x1b]0;pwned\x07", None)
    folder = to_maildir(tmp_path / "Maildir", [hostile])
    result = run("inbox", "--maildir", str(folder), env=env)
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "5.1.1\\x1b]0;pwned\\x07" in result.output


# A send and an inbox on one journal -------------------------------------------------

def test_a_send_and_an_inbox_on_one_journal_both_finish(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    """The inbox writes a batch at a time and classifies outside its transactions, so a
    send on the same journal never waits long: both finish, and the journal is exact."""
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 400)
    journal = tmp_path / ".mailer" / "journal.sqlite3"
    assert run("send", str(people(tmp_path, 1, name="forrige.csv")), "--template", "t",
               "--templates-dir", str(tpl), env=env).exit_code == 0  # the journal exists
    box = mailbox.mbox(tmp_path / "inn.mbox")
    for i in range(3000):
        msg = base(f"Person {i} <p{i}@example.org>", "Spørsmål", f"<q{i}@example.org>")
        msg.set_content("Er det parkering?\n" * 20)
        box.add(msg)
    box.close()
    handler.hold_after = 20  # the send waits here until the inbox is writing
    proc = spawn(tpl, path, env, "--concurrency", "2")
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update(env)
    try:
        wait_until(lambda: len(handler.messages) >= 20)
        reader = subprocess.Popen([sys.executable, "-m", "mailer", "inbox", "--mbox",
                                   str(tmp_path / "inn.mbox")], env=full, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def inbox_writing() -> bool:
            assert reader.poll() is None or reader.returncode == 0, reader.communicate()[0]
            with sqlite3.connect(journal, timeout=30) as db:
                return bool(db.execute("SELECT count(*) FROM inbox_seen").fetchone()[0])

        wait_until(inbox_writing)
    finally:
        handler.hold_after = None
        handler.gate.set()
    read_out = reader.communicate(timeout=120)[0]
    send_out = proc.communicate(timeout=120)[0]
    assert reader.returncode == 0, read_out
    assert proc.returncode == 0, send_out
    assert "inbox: 3000 read" in read_out
    with sqlite3.connect(journal) as db:
        assert db.execute("SELECT count(*) FROM inbox_seen").fetchone()[0] == 3000
        states = dict(db.execute("SELECT state, count(*) FROM deliveries WHERE campaign = "
                                 "'t:liste.csv' GROUP BY state").fetchall())
    assert states == {"sent": 400}
    assert len(handler.messages) == 401


# A closed output ----------------------------------------------------------------------

def test_output_into_a_closed_pipe_changes_nothing_that_is_sent(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    """``mailer send … 2>&1 | head -1``: the reader goes after the first line; the run
    keeps sending, stays silent, and exits with its own code."""
    controller, handler = smtp
    handler.hold_after = 5
    handler.reject["p150@example.org"] = "550 5.1.1 no such user"  # the run's code: 1
    proc = spawn(tpl, people(tmp_path, 200), smtp_env(controller), "--concurrency", "2")
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().startswith("sending 200 messages")
        proc.stdout.close()  # head -1 has what it wanted
    finally:
        handler.hold_after = None
        handler.gate.set()
    assert proc.wait(60) == 1
    assert len({m.rcpt_tos[0] for m in handler.messages}) == 199 == len(handler.messages)
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        assert dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state")) == \
            {"sent": 199, "failed": 1}


def test_sigterm_is_honoured_with_stderr_closed(tmp_path: Path, tpl: Path,
                                                smtp: Server) -> None:
    controller, handler = smtp
    handler.hold_after = 5
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update(smtp_env(controller))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "send", str(people(tmp_path, 200)), "--template",
         "t", "--templates-dir", str(tpl), "--concurrency", "2"],
        env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    proc.stderr.close()  # nobody reads stderr any more
    try:
        wait_until(lambda: len(handler.messages) >= 5 and handler.in_data >= 1)
        proc.terminate()  # SIGTERM while the server holds a message in DATA
    finally:
        handler.hold_after = None
        handler.gate.set()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 75, out
    assert "sent " in out  # the summary on stdout
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        states = dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
    assert "sending" not in states and states["sent"] < 200


def test_control_characters_in_a_reply_reach_no_terminal_and_no_sheet(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    handler.reject["p1@example.org"] = "550 5.1.1 \x1b]0;pwned\x07 no such user"
    env = smtp_env(controller)
    result = run("send", str(people(tmp_path, 2)), "--template", "t", "--templates-dir",
                 str(tpl), env=env)
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\\x1b]0;pwned\\x07" in result.output
    for fmt in ("csv", "excel-csv", "json", "table"):
        shown = run("status", "--format", fmt, env=env)
        assert shown.exit_code == 0 and "\x1b" not in shown.output and "\x07" not in shown.output
    sheet = run("status", "--format", "xlsx", "--output", str(tmp_path / "s.xlsx"), env=env)
    assert sheet.exit_code == 0, sheet.output


def test_a_password_echoed_by_a_server_in_any_form_is_never_shown() -> None:
    """A server may quote the password back (IMAP's quoted string escapes " and \\), or
    echo its base64 or the SASL PLAIN string."""
    import base64

    from pydantic import SecretStr

    from mailer.connections.credentials import Login

    secret = 'pa"ss\\word-ø'
    login = Login("digdir", SecretStr(secret))
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
    plain = base64.b64encode(f"\0digdir\0{secret}".encode()).decode()
    said = (f'NO [AUTHENTICATIONFAILED] LOGIN digdir "{quoted}" failed; raw {secret}; '
            f"b64 {base64.b64encode(secret.encode()).decode()}; plain {plain}")
    shown = login.redact(said)
    assert secret not in shown and quoted not in shown and plain not in shown
    assert "ss\\\\word" not in shown and shown.count("***") == 4


def test_a_message_that_vanishes_while_the_maildir_is_read_is_passed_over(
        tmp_path: Path) -> None:
    from mailer.inbox import maildir_items

    folder = tmp_path / "Maildir"
    (folder / "cur").mkdir(parents=True)
    for name in ("1.a", "2.b", "3.c"):
        (folder / "cur" / name).write_bytes(b"Message-ID: <%s@example.org>\r\n\r\nx\r\n"
                                            % name.encode())
    items = maildir_items(folder)  # listed now, read as iterated
    (folder / "cur" / "2.b").unlink()  # another client moved it away
    assert [item.ident for item in items] == ["<1.a@example.org>", "<3.c@example.org>"]


def test_an_unreadable_message_in_a_maildir_is_named_by_its_file(tmp_path: Path,
                                                                 sent: Sent) -> None:  # noqa: F811
    _, _, env = sent
    folder = tmp_path / "Maildir"
    (folder / "cur").mkdir(parents=True)
    (folder / "cur" / "1700000000.M1.host:2,S").write_bytes(nested_multiparts())
    result = run("inbox", "--maildir", str(folder), env=env)
    assert result.exit_code == 0, result.output
    assert "not read: message file cur/1700000000.M1.host:2,S <nested@example.net>: more " \
           "than 100 nested MIME parts" in result.output
