"""Campaigns safe to run from cron: journal, re-runs, crash resume, lock, status, purge."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, make_template, people, run, send, smtp_env, write
from tests.daemons import wait_until as wait_for
from tests.smtpserver import Recorder


def counts(handler: Recorder) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in handler.messages)


def status_json(env: dict[str, str], *extra: str) -> dict[str, Any]:
    result = run("status", "--format", "json", *extra, env=env)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


def test_rerun_sends_nothing_twice_and_picks_up_new_rows(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 5)
    assert send(tpl, path, env).exit_code == 0
    connections = handler.connections
    again = send(tpl, path, env)
    assert again.exit_code == 0
    assert "sent 0" in again.output and "5 done before" in again.output
    assert len(handler.messages) == 5
    assert handler.connections == connections  # nothing to do: no connection at all
    people(tmp_path, 7)  # two rows added to the same file
    assert send(tpl, path, env).exit_code == 0
    assert counts(handler) == Counter({f"p{i}@example.org": 1 for i in range(7)})


def test_two_campaigns_are_independent(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 3)
    assert send(tpl, path, env, "--campaign", "invitasjon").exit_code == 0
    assert send(tpl, path, env, "--campaign", "paaminnelse").exit_code == 0
    assert send(tpl, path, env, "--campaign", "paaminnelse").exit_code == 0
    assert counts(handler) == Counter({f"p{i}@example.org": 2 for i in range(3)})
    table = run("status", env=env)
    assert "invitasjon" in table.output and "paaminnelse" in table.output


def test_permanent_failure_not_retried_unless_asked(tmp_path: Path, tpl: Path,
                                                    smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    handler.reject["p1@example.org"] = "550 5.1.1 unknown"
    path = people(tmp_path, 3)
    assert send(tpl, path, env).exit_code == 1
    rerun = send(tpl, path, env)
    assert rerun.exit_code == 0  # the exit code speaks of this run
    assert len(handler.messages) == 2
    del handler.reject["p1@example.org"]
    assert send(tpl, path, env, "--retry-failed").exit_code == 0
    assert counts(handler)["p1@example.org"] == 1


def test_deferred_retried_by_the_next_run(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    handler.rcpt_codes["p0@example.org"] = ["421 4.7.0 try later"] * 2
    path = people(tmp_path, 2)
    first = send(tpl, path, env, "--retries", "1")
    assert first.exit_code == 75
    data = status_json(env)
    row = next(r for r in data["recipients"] if r["email"] == "p0@example.org")
    assert row["state"] == "deferred" and row["code"] == 421
    assert row["reply"] == "4.7.0 try later"
    second = send(tpl, path, env)
    assert second.exit_code == 0
    assert counts(handler) == Counter({"p0@example.org": 1, "p1@example.org": 1})


def test_a_deferred_guest_is_named_then_expires_like_an_mta_gives_up(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    handler.rcpt_codes["p0@example.org"] = ["452 4.2.2 mailbox full"] * 100
    path = people(tmp_path, 2)
    first = send(tpl, path, env, "--retries", "0", "--quiet")
    assert first.exit_code == 75
    assert first.output.splitlines()[0] == "deferred: p0@example.org: 452 4.2.2 mailbox full"
    second = send(tpl, path, env, "--retries", "0", "--quiet")  # still within the 3 days
    assert second.exit_code == 75 and "deferred: p0@example.org" in second.output
    # Three days and a minute later (the first attempt moved back: the clock is the journal's)
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        db.execute("UPDATE deliveries SET first_attempt = strftime('%Y-%m-%dT%H:%M:%S+00:00', "
                   "'now', '-3 days', '-1 minute') WHERE key = 'p0@example.org'")
    tries = len(handler.rcpt_codes["p0@example.org"])
    third = send(tpl, path, env, "--quiet")
    assert third.exit_code == 1
    assert third.output.splitlines()[0] == (
        "expired: p0@example.org: expired: still deferred 3d after the first attempt "
        "(last reply: 452 4.2.2 mailbox full)")
    assert len(handler.rcpt_codes["p0@example.org"]) == tries  # not tried again
    row = next(r for r in status_json(env)["recipients"] if r["email"] == "p0@example.org")
    assert row["state"] == "failed" and row["reply"].startswith("expired")
    fourth = send(tpl, path, env, "--quiet")  # nothing else due: quiet and 0
    assert fourth.exit_code == 0 and fourth.output == ""
    assert send(tpl, path, env, "--retry-for", "soon").exit_code == 2  # a usage error
    assert send(tpl, path, dict(env, MAILER_RETRY_FOR="soon")).exit_code == 78


def test_max_messages_drips_to_the_end(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 7)
    outputs = []
    for _ in range(3):
        result = send(tpl, path, env, "--max-messages", "3")
        assert result.exit_code == 0
        outputs.append(result.output)
    assert "4 remain" in outputs[0] and "1 remain" in outputs[1]
    assert "remain" not in outputs[2]
    assert counts(handler) == Counter({f"p{i}@example.org": 1 for i in range(7)})


def test_status_formats(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    handler.reject["p2@example.org"] = "550 5.1.1 unknown user"
    supp = write(tmp_path / "avmeldt.txt", "p3@example.org\n")
    send(tpl, people(tmp_path, 4), env, "--suppress", str(supp))
    data = status_json(env, "--campaign", "t:liste.csv")
    assert data["campaigns"][0]["counts"] == {"queued": 0, "sending": 0, "sent": 2,
                                              "deferred": 0, "failed": 1, "suppressed": 1,
                                              "bounced": 0}
    failed = next(r for r in data["recipients"] if r["state"] == "failed")
    assert failed["email"] == "p2@example.org" and failed["reply"] == "5.1.1 unknown user"
    assert failed["attempts"] == 1 and failed["updated"]
    csv_out = run("status", "--format", "csv", env=env).output.splitlines()
    assert csv_out[0].startswith("campaign,email,name,line,state,attempts,code,reply")
    assert len(csv_out) == 5
    table = run("status", env=env).output
    assert "t:liste.csv" in table and "suppressed" in table
    missing = run("status", "--campaign", "nope", env=env)
    assert missing.exit_code != 0 and "no campaign 'nope'" in missing.output


def test_dry_run_never_touches_the_journal(tmp_path: Path, tpl: Path) -> None:
    result = send(tpl, people(tmp_path, 2), {"MAILER_SENDER": "a@example.org"}, "--dry-run")
    assert result.exit_code == 0
    assert not (tmp_path / ".mailer").exists()


def test_files_are_owner_only_whatever_the_umask(tmp_path: Path, tpl: Path,
                                                 smtp: Server) -> None:
    controller, _ = smtp
    env = smtp_env(controller, MAILER_JOURNAL=str(tmp_path / "j" / "journal.sqlite3"))
    old = os.umask(0o022)
    try:
        assert send(tpl, people(tmp_path, 2), env).exit_code == 0
        assert send(tpl, people(tmp_path, 2), env, "--dry-run", "--outbox", "ut").exit_code == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "j") == 0o700
    journal_files = list((tmp_path / "j").glob("journal.sqlite3*"))
    assert journal_files
    for path in journal_files:
        assert mode(path) == 0o600, path
    assert mode(tmp_path / "ut") == 0o700
    for path in (tmp_path / "ut").iterdir():
        assert mode(path) == 0o600, path


def test_purge_removes_the_addresses_from_the_file(tmp_path: Path, tpl: Path,
                                                   smtp: Server) -> None:
    controller, _ = smtp
    env = smtp_env(controller)
    assert send(tpl, people(tmp_path, 3), env, "--campaign", "gammel").exit_code == 0
    assert send(tpl, people(tmp_path, 1, start=10, name="b.csv"), env).exit_code == 0
    result = run("purge", "--campaign", "gammel", env=env)
    assert result.exit_code == 0 and "3 recipients deleted" in result.output
    data = status_json(env)
    assert [c["id"] for c in data["campaigns"]] == ["t:b.csv"]
    raw = b"".join(p.read_bytes() for p in (tmp_path / ".mailer").glob("journal.sqlite3*"))
    assert b"p0@example.org" not in raw and b"p10@example.org" in raw


# Signals, crashes and the lock: the CLI as a real process ------------------------------

def spawn(tpl: Path, path: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "send", str(path), "--template", "t",
         "--templates-dir", str(tpl), "--retry-delay", "0.05", *extra],
        env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def slow_run_under_way(tpl: Path, path: Path, env: dict[str, str], handler: Recorder,
                       received: int) -> subprocess.Popen[str]:
    """A run on 4 connections that the server holds in DATA once it has ``received``
    messages: the run cannot finish until the test opens the gate."""
    handler.hold_after = received
    proc = spawn(tpl, path, env, "--concurrency", "4")
    wait_for(lambda: len(handler.messages) >= received and handler.in_data >= 1)
    return proc


def test_sigkill_mid_run_then_resume(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 80)
    proc = slow_run_under_way(tpl, path, env, handler, 20)
    proc.kill()
    proc.wait(10)
    wait_for(lambda: handler.active == 0)  # every connection gone: no process outlived it
    assert len(handler.messages) < 80
    handler.hold_after = None
    handler.gate.set()
    result = send(tpl, path, env, "--concurrency", "4")
    assert result.exit_code == 0, result.output
    got = counts(handler)
    assert set(got) == {f"p{i}@example.org" for i in range(80)}  # nobody lost
    assert sum(n - 1 for n in got.values()) <= 4  # at most the messages in flight
    for address, n in got.items():  # a duplicate keeps its Message-ID
        if n > 1:
            assert len({m.message["Message-ID"] for m in handler.to(address)}) == 1


@pytest.mark.parametrize("second", ["send", "purge"])
def test_a_second_run_or_a_purge_is_refused_by_the_lock(tmp_path: Path, tpl: Path,
                                                        smtp: Server, second: str) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 30)
    handler.gate_only = {"p0@example.org"}
    handler.gate.clear()  # the first run's first message is held in DATA
    proc = spawn(tpl, path, env, "--concurrency", "1")
    try:
        wait_for(lambda: handler.in_data >= 1)
        if second == "send":
            result = send(tpl, path, env)
        else:
            result = run("purge", "--campaign", "t:liste.csv", env=env)
        assert result.exit_code == 75
        assert f"process {proc.pid}" in result.output
        assert proc.poll() is None and handler.messages == []  # the first still runs
        other = send(tpl, people(tmp_path, 1, start=50, name="b.csv"), env, "--campaign",
                     "annen")
        assert other.exit_code == 0  # another campaign is not locked
        assert [m.rcpt_tos for m in handler.messages] == [["p50@example.org"]]
    finally:
        proc.kill()
        proc.wait(10)
    handler.gate.set()
    after = send(tpl, path, env)  # the lock did not outlive the killed process
    assert after.exit_code == 0, after.output
    assert status_json(env, "--campaign", "t:liste.csv")["campaigns"][0]["counts"]["sent"] == 30
    assert len(handler.messages) == 31


def test_sending_row_written_before_data(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 3)
    handler.gate.clear()  # the server holds DATA until the test has looked
    proc = spawn(tpl, path, env, "--concurrency", "1")
    try:
        journal = tmp_path / ".mailer" / "journal.sqlite3"
        wait_for(lambda: journal.exists())

        def states() -> list[str]:
            try:
                with sqlite3.connect(journal) as db:
                    return [r[0] for r in db.execute("SELECT state FROM deliveries")]
            except sqlite3.OperationalError:
                return []
        wait_for(lambda: handler.in_data >= 1)
        assert states().count("sending") == 1  # marked sending while the server holds DATA
        assert handler.messages == []
    finally:
        proc.kill()
        proc.wait(10)
        handler.gate.set()


def test_a_rejected_guest_is_named_and_a_rerun_sends_nothing(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    handler.reject["p5@example.org"] = "550 5.1.1 unknown"
    path = people(tmp_path, 50)
    first = send(tpl, path, env, "--concurrency", "4")
    assert first.exit_code == 1
    assert "rejected: p5@example.org: 550 5.1.1 unknown" in first.output
    assert "sent 49, failed 1 (permanent), deferred 0" in first.output
    assert handler.max_active <= 4
    assert send(tpl, path, env).exit_code == 0
    got = counts(handler)
    assert got == Counter({f"p{i}@example.org": 1 for i in range(50) if i != 5})
    assert status_json(env)["campaigns"][0]["counts"]["sent"] == 49


def test_a_template_error_is_named_once_with_its_count(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt="{{ recipient['x'] | int // 1 }}\n"
                                                          "{{ 1 // (recipient['x'] | int) }}\n")
    rows = "".join(f"p{i}@example.org;{0 if i % 3 == 0 else 1}\n" for i in range(30))
    path = write(tmp_path / "l.csv", "email;x\n" + rows + "bad;1\np1@example.org;1\n")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env={"MAILER_SENDER": "a@example.org"})
    assert result.exit_code == 65
    lines = result.output.splitlines()
    assert sum("invalid address 'bad'" in line for line in lines) == 1
    assert sum("duplicate address p1@example.org" in line for line in lines) == 1
    division = [line for line in lines if "ZeroDivisionError" in line]
    assert len(division) == 1
    assert f"{root}/t/body.txt.j2:2: ZeroDivisionError" in division[0]
    assert "(recipient on line 2; and 9 more)" in division[0]


def test_sigterm_while_checking_exits_75_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    # a slow template: rendering 2,000 of these takes long enough to be interrupted
    make_template(root, "t", subject_txt="Hei", body_txt="{% for i in range(3000) %}"
                                                         "{{ i }}{% endfor %}\n")
    # The list comes through a FIFO: once our open() for writing returns, mailer has opened
    # it (its handlers are installed) and is reading the list; it cannot get further.
    path = tmp_path / "liste.csv"
    os.mkfifo(path)
    proc = spawn(root, path, {"MAILER_SENDER": "a@example.org", "MAILER_SMTP_PORT": "9"})
    with path.open("w") as fifo:
        fifo.write("navn;epost\n" + "".join(f"P{i};p{i}@example.org\n" for i in range(50)))
        fifo.flush()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert "interrupted" in out and "Traceback" not in out
    assert not (tmp_path / ".mailer" / "journal.sqlite3").exists()


def test_a_journal_from_a_newer_mailer_is_refused(tmp_path: Path, tpl: Path) -> None:
    journal = tmp_path / "j.sqlite3"
    with sqlite3.connect(journal) as db:
        db.execute("PRAGMA user_version = 99")
    result = run("status", "--journal", str(journal))
    assert result.exit_code == 78
    assert "newer mailer" in result.output
    garbage = write(tmp_path / "not.sqlite3", "this is not a database\n" * 100)
    result = run("status", "--journal", str(garbage))
    assert result.exit_code == 78 and "not a usable journal" in result.output


def test_sigterm_while_waiting_for_the_rate_limit_stops_at_once(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 20)
    # One message a minute: the second slot is a minute away, so a run that waited for the
    # slots it had queued would outlast the (generous) bound below.
    proc = spawn(tpl, path, env, "--rate-limit", "1/min", "--concurrency", "4")
    wait_for(lambda: len(handler.messages) >= 1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=45)
    assert proc.returncode == 75, out
    assert len(handler.messages) == 1
    data = status_json(env)
    assert data["campaigns"][0]["counts"]["sent"] == len(handler.messages)
    assert data["campaigns"][0]["counts"]["sending"] == 0


def test_existing_folders_keep_their_mode(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, _ = smtp
    os.chmod(tmp_path, 0o755)
    env = smtp_env(controller, MAILER_JOURNAL="journal.sqlite3")  # in the working folder
    assert send(tpl, people(tmp_path, 1), env).exit_code == 0
    (tmp_path / "ut").mkdir(mode=0o755)
    assert send(tpl, people(tmp_path, 1), env, "--dry-run", "--outbox", "ut").exit_code == 0
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "ut").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "journal.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ut" / "index.html").stat().st_mode) == 0o600


def test_a_row_removed_from_the_list_is_not_sent_nor_counted(tmp_path: Path, tpl: Path,
                                                             smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    handler.rcpt_codes["p2@example.org"] = ["451 4.3.0 later"] * 10
    path = people(tmp_path, 3)
    assert send(tpl, path, env, "--retries", "0").exit_code == 75
    people(tmp_path, 2)  # p2 taken off the list by the organiser
    again = send(tpl, path, env, "--max-messages", "5")
    assert again.exit_code == 0, again.output
    assert "remain" not in again.output
    assert counts(handler) == Counter({"p0@example.org": 1, "p1@example.org": 1})
    row = next(r for r in status_json(env)["recipients"] if r["email"] == "p2@example.org")
    assert row["state"] == "deferred" and row["line"] is None  # history kept, not listed


def test_status_and_purge_of_what_is_not_there(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, _ = smtp
    env = smtp_env(controller)
    nothing = run("status", env=env)
    assert nothing.exit_code == 78 and "no journal here" in nothing.output
    assert send(tpl, people(tmp_path, 2), env).exit_code == 0
    typo = run("purge", "--campaign", "t:liste.cvs", env=env)
    assert typo.exit_code == 65
    assert "no campaign 't:liste.cvs' (known: t:liste.csv)" in typo.output
    assert status_json(env)["campaigns"][0]["counts"]["sent"] == 2  # nothing was purged


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8])
def test_a_journal_of_every_earlier_release_upgrades_with_its_rows(
        tmp_path: Path, tpl: Path, smtp: Server, version: int) -> None:
    """tests/journals/vN.sql is a journal as release N wrote it (its schema taken from that
    release's code): p0 sent, p1 failed, and from version 4 an event p0 holds, from 5 an
    answer and a suppression."""
    from mailer.journal import SCHEMA_VERSION

    controller, handler = smtp
    journal = tmp_path / ".mailer" / "journal.sqlite3"
    journal.parent.mkdir()
    with sqlite3.connect(journal) as db:
        db.executescript((Path(__file__).parent / "journals" / f"v{version}.sql").read_text())
        assert db.execute("PRAGMA user_version").fetchone()[0] == version
    result = send(tpl, people(tmp_path, 3), smtp_env(controller))
    assert result.exit_code == 0, result.output
    # p0 kept as sent, p1 as failed: only the new guest is sent
    assert [m.rcpt_tos for m in handler.messages] == [["p2@example.org"]]
    assert "skipped 2 (2 done before, 0 suppressed)" in result.output
    with sqlite3.connect(journal) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        states = dict(db.execute("SELECT key, state FROM deliveries").fetchall())
        assert states == {"p0@example.org": "sent", "p1@example.org": "failed",
                          "p2@example.org": "sent"}
        assert db.execute("SELECT first_attempt IS NOT NULL FROM deliveries WHERE key = "
                          "'p2@example.org'").fetchone()[0] == 1
        if version >= 4:
            assert db.execute("SELECT key, sequence FROM holders").fetchall() == \
                [("p0@example.org", 0)]
        if version >= 5:
            assert db.execute("SELECT answer FROM answers").fetchall() == [("accepted",)]
            assert db.execute("SELECT key FROM suppressions").fetchall() == \
                [("p9@example.org",)]
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'deliveries_state'"
                          ).fetchone() is None
        db.execute("UPDATE deliveries SET state = 'bounced' WHERE key = 'p0@example.org'")
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK holds every state, no more
            db.execute("UPDATE deliveries SET state = 'lost' WHERE key = 'p0@example.org'")


def test_the_state_check_is_made_from_the_enum() -> None:
    from mailer.journal.schema import BASE
    from mailer.models import State

    db = sqlite3.connect(":memory:")
    db.executescript(BASE)
    for state in State:
        db.execute("INSERT INTO deliveries (campaign, key, email, state, created, updated) "
                   "VALUES ('c', ?, 'a@example.org', ?, 'x', 'x')", (state.value, state.value))
    assert len(list(State)) == db.execute("SELECT count(*) FROM deliveries").fetchone()[0]


def test_a_database_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    result = run("status", "--journal", str(path), env={})
    assert result.exit_code == 78
    assert "not a mailer journal" in result.output
    with sqlite3.connect(path) as db:  # untouched
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0


def test_guests_sent_before_events_were_tracked_are_not_invited_twice(
        tmp_path: Path, smtp: Server) -> None:
    """A journal of release 3 (no events yet) whose campaign now has an event.toml: the
    guest it records as sent holds the invitation; only the new guest is invited."""
    controller, handler = smtp
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei {{ name }}", body_txt="Hei {{ name }}\n")
    (root / "t" / "event.toml").write_text(
        (Path(__file__).resolve().parent.parent / "templates" / "invitasjon" / "event.toml")
        .read_text())
    journal = tmp_path / ".mailer" / "journal.sqlite3"
    journal.parent.mkdir()
    with sqlite3.connect(journal) as db:
        db.executescript((Path(__file__).parent / "journals" / "v3.sql").read_text())
    result = send(root, people(tmp_path, 3), smtp_env(controller))
    assert result.exit_code == 0, result.output
    assert [m.rcpt_tos for m in handler.messages] == [["p2@example.org"]]
    with sqlite3.connect(journal) as db:
        assert sorted(db.execute("SELECT key, sequence FROM holders")) == [
            ("p0@example.org", 0), ("p2@example.org", 0)]
