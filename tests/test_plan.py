"""One plan, one queue: the list read once (so it may come from standard input or a pipe),
one rule for what each guest gets, and the counts that follow from it agreeing everywhere:
the dry run, the real run, the remaining count and ``status``."""

from __future__ import annotations

import mailbox
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mailer
from mailer.models import EventRun, Kind, Skip, State
from mailer.plan import decide
from tests.conftest import Server, people, run, send, smtp_env, write
from tests.daemons import wait_until
from tests.test_events import GUESTS, edit_event, received, shipped  # noqa: F401
from tests.test_inbox import AUTHSERV, base, vouched
from tests.test_journal import counts, spawn, status_json


def mailer_process(args: list[str], env: dict[str, str], stdin: bytes | None = None,
                   cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "mailer", *args], input=stdin, env=full,
                          capture_output=True, cwd=cwd, timeout=120, check=False,
                          text=False)  # type: ignore[call-overload]


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return (proc.stdout + proc.stderr).decode()


# The rule -------------------------------------------------------------------------------

EVENT = EventRun("u@example.org", 2, cancelled=False, keeps_calendars=True)
REMINDER = EventRun("u@example.org", 2, cancelled=False, keeps_calendars=False)
CANCELLED = EventRun("u@example.org", 3, cancelled=True, keeps_calendars=True)


@pytest.mark.parametrize(("state", "held", "event", "more", "expected"), [
    (None, None, None, {}, Kind.MESSAGE),
    (State.SENT, None, None, {}, Skip.SENT_BEFORE),
    (State.SENDING, None, None, {}, Kind.MESSAGE),  # unconfirmed: sent again
    (State.DEFERRED, None, None, {}, Kind.MESSAGE),
    (State.DEFERRED, None, None, {"expired": True}, Skip.EXPIRED),
    (State.FAILED, None, None, {}, Skip.FAILED),
    (State.FAILED, None, None, {"retry_failed": True}, Kind.MESSAGE),
    (State.SUPPRESSED, None, None, {}, Kind.MESSAGE),  # no longer on a suppression list
    (None, None, None, {"suppressed": True}, Skip.SUPPRESSED),
    (State.BOUNCED, None, None, {"only": True}, Skip.BOUNCED),
    (None, None, None, {"matches": False}, Skip.EXCLUDED),
    (None, None, None, {"only": False}, Skip.NOT_ONLY),
    (State.SENT, None, None, {"only": True}, Kind.MESSAGE),  # --only sends again
    (None, None, EVENT, {}, Kind.INVITATION),
    (State.SENT, 1, EVENT, {}, Kind.UPDATE),
    (State.SENT, 2, EVENT, {}, Skip.UP_TO_DATE),
    (State.SENT, 2, EVENT, {"only": True}, Kind.INVITATION),
    (State.SENT, 2, CANCELLED, {}, Kind.CANCELLATION),
    (None, None, CANCELLED, {}, Skip.NOT_HELD),
    (None, 2, REMINDER, {}, Kind.REMINDER),
    (State.SENT, 2, REMINDER, {}, Skip.SENT_BEFORE),
    (State.SENT, 2, REMINDER, {"only": True}, Kind.REMINDER),
    (State.SENT, 1, EVENT, {"unsubscribed": True}, Kind.UPDATE),  # a service message
    (State.SENT, 2, CANCELLED, {"unsubscribed": True}, Kind.CANCELLATION),
    (None, None, EVENT, {"unsubscribed": True}, Skip.SUPPRESSED),
    (None, 2, REMINDER, {"unsubscribed": True}, Skip.SUPPRESSED),
])
def test_the_one_rule(state: State | None, held: int | None, event: EventRun | None,
                      more: dict[str, bool], expected: Kind | Skip) -> None:
    decision = decide(state, held, event=event, **more)  # type: ignore[arg-type]
    assert (decision.kind or decision.skip) is expected
    assert decision.state is state and decision.held == held


# The list read once: standard input and pipes ------------------------------------------

def test_a_list_on_standard_input_or_from_a_pipe_sends_like_a_file(
        tmp_path: Path, shipped: Path, smtp: Server) -> None:  # noqa: F811
    controller, handler = smtp
    env = smtp_env(controller)
    guests = GUESTS.encode()
    args = ["--template", "invitasjon", "--templates-dir", str(shipped)]
    checked = mailer_process(["validate", "-", *args], env, stdin=guests, cwd=tmp_path)
    assert checked.returncode == 0, out(checked)
    assert "<stdin>: 3 rows read, 3 recipients, 0 errors" in out(checked)

    first = mailer_process(["send", "-", *args, "--where", "organisasjon != 'NTNU'"], env,
                           stdin=guests, cwd=tmp_path)
    assert first.returncode == 0, out(first)
    assert sorted(received(handler)) == ["emma@example.org", "kari@example.org"]
    data = status_json(env)
    assert data["campaigns"] == [{"id": "invitasjon:stdin", "counts": {
        "queued": 0, "sending": 0, "sent": 2, "deferred": 0, "failed": 0, "suppressed": 0,
        "bounced": 0}}]  # Åse, whom --where left out, is not counted as queued

    fifo = tmp_path / "gjester.fifo"  # what `<(psql …)` gives a program: a pipe's name
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(guests,))
    writer.start()
    second = mailer_process(["send", str(fifo), *args], env, cwd=tmp_path)
    writer.join(10)
    assert second.returncode == 0, out(second)
    assert [m.rcpt_tos for m in handler.messages[2:]] == [["ase@example.org"]]
    assert "sending 1 message" in out(second)
    assert "skipped 2 (2 done before, 0 suppressed)" in out(second)
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        assert db.execute("SELECT count(*), min(state) FROM deliveries").fetchone() == \
            (3, "sent")
        assert db.execute("SELECT count(*) FROM holders").fetchone()[0] == 3


def test_a_workbook_on_standard_input_is_refused_with_a_reason(tmp_path: Path) -> None:
    from openpyxl import Workbook

    book = Workbook()
    book.active.append(["navn", "epost"])
    book.save(tmp_path / "gjester.xlsx")
    proc = mailer_process(["validate", "-"], {}, stdin=(tmp_path / "gjester.xlsx").read_bytes(),
                          cwd=tmp_path)
    assert proc.returncode == 65
    assert "<stdin>:1: a workbook (.xlsx) must be given as a file named .xlsx" in out(proc)


# The counts agree ----------------------------------------------------------------------

def test_holders_who_unsubscribed_get_the_update_suppressed_ones_leave_nothing_remaining(
        tmp_path: Path, shipped: Path, smtp: Server) -> None:  # noqa: F811
    """Emma unsubscribed by mail and holds the invitation: the time change is a service
    message, so her calendar gets it. Åse is on a suppression file: she gets nothing, and
    no run says she remains (before: "1 remain for the next run", forever). The dry run of
    the update counts what the real run sends."""
    controller, handler = smtp
    env = smtp_env(controller, MAILER_UNSUBSCRIBE_MAILTO="avmelding@example.org",
                   MAILER_INBOX_TRUSTED_AUTHSERV=AUTHSERV)
    listing = write(tmp_path / "gjester.csv", GUESTS)
    first = send(shipped, listing, env, template="invitasjon")
    assert first.exit_code == 0 and len(handler.messages) == 3, first.output
    unsubscribe = base("Emma Larsen <emma@example.org>", "unsubscribe", "<unsub.emma>")
    unsubscribe.replace_header("To", "avmelding@example.org")
    unsubscribe["Authentication-Results"] = vouched("example.org")
    box = mailbox.mbox(tmp_path / "inn.mbox")
    box.add(unsubscribe)
    box.close()
    read = run("inbox", "--mbox", str(tmp_path / "inn.mbox"), env=env)
    assert read.exit_code == 0 and "unsubscribed: emma@example.org" in read.output
    stop = write(tmp_path / "stopp.txt", "ase@example.org\n")

    edit_event(shipped, "start = 2027-10-27T10:15:00", "start = 2027-10-27T10:45:00")
    dry = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
              str(shipped), "--suppress", str(stop), "--dry-run", "--outbox",
              str(tmp_path / "ut"), env=env)
    assert dry.exit_code == 0, dry.output
    assert "dry run: 2 messages (2 updates)" in dry.output
    update = send(shipped, listing, env, "--suppress", str(stop), template="invitasjon")
    assert update.exit_code == 0, update.output
    assert "sending 2 messages" in update.output and "remain" not in update.output
    assert sorted(received(handler, 3)) == ["emma@example.org", "kari@example.org"]
    again = send(shipped, listing, env, "--suppress", str(stop), template="invitasjon")
    assert again.exit_code == 0 and "remain" not in again.output
    assert "sending" not in again.output and len(handler.messages) == 5
    # A reminder is no service message: the guest who unsubscribed does not get it.
    reminder = send(shipped, listing, env, "--suppress", str(stop),
                    template="invitasjon/paminnelse")
    assert reminder.exit_code == 0, reminder.output
    assert sorted(received(handler, 5)) == ["kari@example.org"]


def test_status_counts_as_queued_only_the_guests_the_plan_sends(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 6)
    where = ("--where", "navn in ['Person 1', 'Person 2', 'Person 3']")
    one = send(tpl, path, env, "--max-messages", "1")  # Person 0 sent, five queued
    assert one.exit_code == 0 and "5 remain for the next run" in one.output
    assert status_json(env)["campaigns"][0]["counts"]["queued"] == 5
    capped = send(tpl, path, env, *where, "--max-messages", "1")
    assert capped.exit_code == 0 and "2 remain for the next run" in capped.output
    # planned and not sent: 2; Persons 4 and 5, whom --where leaves out, are not queued
    assert status_json(env)["campaigns"][0]["counts"]["queued"] == 2
    rest = send(tpl, path, env, *where)
    assert rest.exit_code == 0 and "remain" not in rest.output
    counts_now = status_json(env)["campaigns"][0]["counts"]
    assert counts_now["queued"] == 0 and counts_now["sent"] == 4
    assert sorted(counts(handler)) == ["p0@example.org", "p1@example.org", "p2@example.org",
                                       "p3@example.org"]
    everyone = send(tpl, path, env)  # the campaign without --where: the others now
    assert everyone.exit_code == 0 and "sending 2 messages" in everyone.output
    assert status_json(env)["campaigns"][0]["counts"]["sent"] == 6


def test_the_list_edited_during_a_run_changes_nothing_in_it(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    """The list is read once, before the first message: a file saved over it while the run
    sends neither crashes the run nor leaves a guest ``sending``."""
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 5)
    handler.gate.clear()  # the first message is held in DATA while the list changes
    proc = spawn(tpl, path, env, "--concurrency", "1")
    try:
        wait_until(lambda: handler.in_data >= 1)
        write(path, "navn;epost\nNy;ny@example.org\nPerson 4;p4@example.org\n")
    finally:
        handler.gate.set()
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert counts(handler) == {f"p{i}@example.org": 1 for i in range(5)}
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        assert db.execute("SELECT DISTINCT state FROM deliveries").fetchall() == [("sent",)]


# A library under the CLI ---------------------------------------------------------------

def test_every_command_is_a_library_call(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    assert sorted(mailer.__all__) == sorted(
        ["ListOptions", "MailerError", "SendOptions", "Settings", "dkim_key", "doctor",
         "dry_run", "forget", "load_settings", "login", "login_check", "logout", "purge",
         "read_inbox", "send", "status", "test_send", "validate"])
    for name in mailer.__all__:
        assert callable(getattr(mailer, name))
    settings = mailer.Settings(templates_dir=tpl, sender="Digdir <invitasjon@example.org>",
                               smtp_host="127.0.0.1", smtp_port=controller.port,
                               smtp_security="none", journal=tmp_path / "j.sqlite3")
    path = people(tmp_path, 2)
    report = mailer.validate(path, "t", settings=settings)
    assert report.ok and report.recipients == 2
    result = mailer.send(path, "t", settings=settings)
    assert result.exit_code == 0 and result.stats.sent == 2 and result.plan.due == 2
    assert sorted(counts(handler)) == ["p0@example.org", "p1@example.org"]
    target = tmp_path / "status.csv"
    with target.open("w") as handle:
        mailer.status("t:liste.csv", "csv", out=handle, settings=settings)
    assert target.read_text().count("sent") == 2
    assert mailer.forget("p0@example.org", settings=settings) == 1
    assert mailer.purge("t:liste.csv", settings=settings) == 1
    with pytest.raises(mailer.MailerError) as failed:
        mailer.status("t:liste.csv", settings=settings)
    assert failed.value.exit_code == 65


def test_validate_of_standard_input_in_process_reads_it_in_bulk(tmp_path: Path) -> None:
    """Standard input that is no file (a Python caller's, CliRunner's) is read too, on the
    bulk path of a check of a list alone."""
    rows = "".join(f"P{i};p{i}@example.org\n" for i in range(3000))
    result = run("validate", "-", input="navn;epost\n" + rows + "Dup;p7@example.org\n")
    assert result.exit_code == 0, result.output
    assert "<stdin>:3002: warning: duplicate address p7@example.org (first on line 9)" \
        in result.output
    assert "<stdin>: 3001 rows read, 3000 recipients, 0 errors, 1 warning" in result.output
