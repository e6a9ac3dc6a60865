"""Invitations that calendars answer, kept up to date: iTIP REQUEST per guest, updates when
the event changes, cancellations, guests who left the list, reminders (sub-templates).
Every message is received by a real SMTP server and parsed back."""

from __future__ import annotations

import shutil
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import icalendar
import pytest

from tests import conftest
from tests.conftest import ENV, EXAMPLE, ROOT, Server, parse, run, smtp_env, write
from tests.test_invitations import calendar_of
from tests.test_journal import spawn, status_json, wait_for

GUESTS = ("navn;e-post;organisasjon;målform\n"
          "Kari Nordmann;kari@example.org;Trondheim kommune;nb\n"
          "Åse Bjørnstad;ase@example.org;NTNU;nn\n"
          "Emma Larsen;emma@example.org;Equinor;en\n")


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def send(templates: Path, listing: Path, env: dict[str, str], *extra: str,
         template: str = "invitasjon") -> str:
    """conftest's send of the event's template, which must succeed; its output."""
    result = conftest.send(templates, listing, env, *extra, template=template)
    assert result.exit_code == 0, result.output
    return result.output


def edit_event(templates: Path, old: str, new: str) -> None:
    toml = templates / "invitasjon" / "event.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new))


def event_of(msg: EmailMessage, method: str = "REQUEST") -> icalendar.Event:
    return calendar_of(msg, method).walk("VEVENT")[0]


def received(handler: object, start: int = 0) -> dict[str, EmailMessage]:
    """Messages received since ``start``, by recipient (each at most once)."""
    messages = handler.messages[start:]  # type: ignore[attr-defined]
    counts = Counter(m.rcpt_tos[0] for m in messages)
    assert all(n == 1 for n in counts.values()), counts  # nobody twice
    return {m.rcpt_tos[0]: m.message for m in messages}


def test_invite_update_rerun_new_guest_and_status(tmp_path: Path, shipped: Path,
                                                  smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    listing = write(tmp_path / "gjester.csv", GUESTS)
    send(shipped, listing, env)
    first = received(handler)
    assert set(first) == {"kari@example.org", "ase@example.org", "emma@example.org"}
    uid = str(event_of(first["kari@example.org"])["uid"])
    for address, msg in first.items():
        event = event_of(msg)
        assert int(event["sequence"]) == 0 and str(event["uid"]) == uid
        assert str(event["attendee"]) == f"mailto:{address}"
    assert first["kari@example.org"]["Subject"].startswith("Invitasjon:")

    assert "sent 0," in send(shipped, listing, env)  # a re-run sends nothing
    assert len(handler.messages) == 3

    # The room changes: the same command brings every calendar up to date, once.
    edit_event(shipped, "Trondheim Spektrum", "Clarion Hotel Trondheim")
    out = send(shipped, listing, env)
    assert "sent 3," in out
    update = received(handler, 3)
    assert set(update) == set(first)
    for msg in update.values():
        event = event_of(msg)
        assert int(event["sequence"]) == 1 and str(event["uid"]) == uid
        assert "Clarion" in str(event["location"])
    kari = update["kari@example.org"]
    assert kari["Subject"].startswith("Endret:")
    assert "Vi har endret sted." in kari.get_body(("plain",)).get_content()
    assert update["emma@example.org"]["Subject"].startswith("Changed:")
    assert kari["Message-ID"] != first["kari@example.org"]["Message-ID"]
    assert "sent 0," in send(shipped, listing, env)  # the version is kept, not raised again
    assert len(handler.messages) == 6

    # A guest added after the update gets one message, at the current version.
    listing.write_text(GUESTS + "Per Ærøy;per@example.org;Digdir;nb\n")
    send(shipped, listing, env)
    late = received(handler, 6)
    assert list(late) == ["per@example.org"]
    assert int(event_of(late["per@example.org"])["sequence"]) == 1
    assert late["per@example.org"]["Subject"].startswith("Invitasjon:")

    table = run("status", env=env).output
    assert f"invitasjon:gjester.csv: event {uid}: 4 guests hold the current version, " \
           f"0 need an update" in table
    # status compares with event.toml as it is now, before any send
    edit_event(shipped, "Clarion Hotel Trondheim", "Scandic Nidelven")
    table = run("status", "--templates-dir", str(shipped), env=env).output
    assert f"invitasjon:gjester.csv: event {uid}: 0 guests hold the current version, " \
           f"4 need an update (event.toml changed since the last send; the next send " \
           f"updates them)" in table


def test_a_cancellation_reaches_every_holder_once_and_nobody_else(
        tmp_path: Path, shipped: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    handler.reject["emma@example.org"] = "550 5.1.1 no such user"
    listing = write(tmp_path / "gjester.csv", GUESTS)
    result = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
                 str(shipped), env=env)
    assert result.exit_code == 1  # emma was rejected: she never held the invitation
    del handler.reject["emma@example.org"]
    edit_event(shipped, 'status = "confirmed"', 'status = "cancelled"')
    table = run("status", "--templates-dir", str(shipped), env=env).output
    assert "cancelled in event.toml: the next send cancels it for 2 guests who hold it" \
        in table
    send(shipped, listing, env)
    table = run("status", "--templates-dir", str(shipped), env=env).output
    assert "cancelled: 2 guests were sent the cancellation" in table
    assert "hold the current version" not in table
    cancel = received(handler, 2)
    assert set(cancel) == {"kari@example.org", "ase@example.org"}
    for msg in cancel.values():
        event = event_of(msg, "CANCEL")
        assert str(event["status"]) == "CANCELLED" and int(event["sequence"]) == 1
    assert cancel["kari@example.org"]["Subject"].startswith("Avlyst:")
    assert "avlyst" in cancel["ase@example.org"].get_body(("plain",)).get_content()
    out = send(shipped, listing, env, "--retry-failed")
    assert "sent 0," in out and len(handler.messages) == 4  # once, and never to emma


def test_guests_taken_off_the_list_are_named_and_can_be_cancelled(
        tmp_path: Path, shipped: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    listing = write(tmp_path / "gjester.csv", GUESTS)
    send(shipped, listing, env)
    listing.write_text(GUESTS.replace("Emma Larsen;emma@example.org;Equinor;en\n", ""))
    out = send(shipped, listing, env, "--quiet")
    notice = "1 guest holds this invitation but is no longer on the list: emma@example.org; "
    assert notice + "--cancel-removed sends each a cancellation" in out  # even with --quiet
    assert len(handler.messages) == 3
    again = send(shipped, listing, env, "--quiet")  # cron, ten minutes later: said once
    assert again == ""
    dry = conftest.run("send", str(listing), "--template", "invitasjon", "--templates-dir",
                       str(shipped), "--dry-run", "--cancel-removed", "--outbox",
                       str(tmp_path / "ut"), env=env)
    assert dry.exit_code == 0, dry.output
    assert notice + "each is sent a cancellation (--cancel-removed)" in dry.output
    assert "dry run: 1 messages (1 cancellation)" in dry.output  # as the real run will
    send(shipped, listing, env, "--cancel-removed")
    cancel = received(handler, 3)
    assert list(cancel) == ["emma@example.org"]
    event = event_of(cancel["emma@example.org"], "CANCEL")
    assert str(event["attendee"]) == "mailto:emma@example.org"
    # In Emma's language (the list no longer says it), and true: the event goes ahead.
    emma = cancel["emma@example.org"]
    assert emma["Subject"].startswith("No longer on the guest list: ")
    text = emma.get_body(("plain",)).get_content()
    assert "You are no longer on the guest list for this event, which goes ahead" in text
    assert "cancelled" not in text
    out = send(shipped, listing, env, "--cancel-removed")
    assert "no longer on the list" not in out and len(handler.messages) == 4


def test_a_reminder_belongs_to_the_same_event_and_is_sent_once(
        tmp_path: Path, shipped: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    listing = write(tmp_path / "gjester.csv", GUESTS)
    send(shipped, listing, env)
    uid = str(event_of(handler.messages[0].message)["uid"])
    edit_event(shipped, "10:15:00", "10:30:00")  # moved: the reminder carries version 1
    send(shipped, listing, env, template="invitasjon/paminnelse")
    reminders = received(handler, 3)
    assert set(reminders) == {"kari@example.org", "ase@example.org", "emma@example.org"}
    kari = reminders["kari@example.org"]
    assert kari["Subject"].startswith("Påminnelse:")
    assert "tidspunkt eller sted er endret" in kari.get_body(("plain",)).get_content()
    event = event_of(kari)
    assert str(event["uid"]) == uid and int(event["sequence"]) == 1
    assert "sent 0," in send(shipped, listing, env, template="invitasjon/paminnelse")
    # The guests hold version 1 now: the invitation campaign has nothing left to send.
    assert "sent 0," in send(shipped, listing, env)
    assert len(handler.messages) == 6


def test_a_dry_run_says_what_each_guest_would_get(tmp_path: Path, shipped: Path,
                                                  smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    listing = write(tmp_path / "gjester.csv", GUESTS)
    send(shipped, listing, env, "--max-messages", "2")
    edit_event(shipped, "11:30:00", "12:00:00")
    result = run("send", str(listing), "--template", "invitasjon", "--templates-dir",
                 str(shipped), "--dry-run", env=env)
    assert result.exit_code == 0, result.output
    assert "dry run: 3 messages (2 updates, 1 invitation)" in result.output
    files = sorted(Path("outbox").glob("*.eml"))
    subjects = sorted(parse(p)["Subject"].split(":")[0] for p in files)
    assert subjects == ["Endra", "Endret", "Invitation"]  # updates (nn, nb), invitation (en)
    assert status_json(env)["campaigns"][0]["counts"]["sent"] == 2  # untouched
    assert len(handler.messages) == 2


def test_validate_warns_when_the_event_has_started(shipped: Path) -> None:
    edit_event(shipped, "start = 2027-10-27T10:15:00", "start = 2020-10-27T10:15:00")
    result = run("validate", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                 str(shipped), env=ENV)
    assert result.exit_code == 0
    assert "warning: the event started 2020-10-27 10:15 (Europe/Oslo)" in result.output
    shipped_ok = run("validate", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                     str(ROOT / "templates"), env=ENV)
    assert "warning:" not in shipped_ok.output and "0 warnings" in shipped_ok.output


def test_sigkill_during_an_update_run_loses_nobodys_update(tmp_path: Path, shipped: Path,
                                                           smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    rows = "".join(f"Gjest {i};g{i}@example.org;Org;nb\n" for i in range(40))
    listing = write(tmp_path / "gjester.csv", "navn;e-post;organisasjon;målform\n" + rows)
    send(shipped, listing, env)
    edit_event(shipped, "10:15:00", "09:00:00")
    handler.hold_after = 40 + 12  # hold the update run after a dozen updates
    proc = spawn(shipped, listing, env, "--template", "invitasjon", "--concurrency", "4")
    wait_for(lambda: len(handler.messages) >= 52 and handler.in_data >= 1)
    proc.kill()
    proc.wait(10)
    wait_for(lambda: handler.active == 0)
    handler.hold_after = None
    handler.gate.set()
    send(shipped, listing, env)
    updates = [m for m in handler.messages[40:]]
    got = Counter(m.rcpt_tos[0] for m in updates)
    assert set(got) == {f"g{i}@example.org" for i in range(40)}  # nobody lost
    assert sum(n - 1 for n in got.values()) <= 4  # at most those in flight, twice
    assert all(int(event_of(m.message)["sequence"]) == 1 for m in updates)
    table = run("status", env=env).output
    assert "40 guests hold the current version, 0 need an update" in table
