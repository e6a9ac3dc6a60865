"""The engine's work done once: the check pass's messages kept in a spool for the send,
quoted-printable encoded line by line, and one journal commit for the workers ready at
once (without holding a worker up behind a slow reply)."""

from __future__ import annotations

import email.utils
import os
import quopri
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer import spool as spool_module
from mailer.address import check_address
from mailer.message import _qp, fresh_date
from mailer.models import Outgoing, Recipient
from mailer.run import SendOptions, _spool
from mailer.spool import Spool, holds_message
from tests.conftest import EXAMPLE, Server, parse, people, run, send, smtp_env, write
from tests.daemons import wait_until
from tests.test_journal import counts, spawn


def outgoing(line: int, size: int = 100, date: str = "Mon, 30 Nov 2026 10:00:00 +0100"
             ) -> Outgoing:
    data = (f"From: a@example.org\r\nTo: p{line}@example.org\r\nSubject: x\r\n"
            f"Date: {date}\r\nMessage-ID: <{line}@example.org>\r\n\r\n"
            + "x" * size + "\r\n").encode()
    return Outgoing(line=line, key=f"p{line}@example.org", email=f"p{line}@example.org",
                    name=f"Person {line}", envelope_from="a@example.org",
                    envelope_to=f"p{line}@example.org", message_id=f"<{line}@example.org>",
                    data=data, wire=b"", subject="x", lang="nb")


def kept(spool: Spool) -> int:
    """The messages a spool holds."""
    return sum(1 for record in spool.records() if holds_message(record))


def guest(line: int) -> Recipient:
    return Recipient(line=line, address=check_address(f"p{line}@example.org"),
                     name=f"Person {line}", language=None)


def test_a_spool_gives_back_what_it_kept_in_list_order(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        for line in range(2, 40):
            if line == 7:
                spool.suppressed(guest(line))
            else:  # some larger than a read: a record may span reads
                spool.put(outgoing(line, size=300_000 if line % 10 == 0 else 100))
        assert spool.complete and kept(spool) == 37
        rows = list(spool.rows())
        assert [r[3] for r in rows] == list(range(2, 40))
        assert rows[5] == ("p7@example.org", "p7@example.org", "Person 7", 7, True)
        assert rows[0] == ("p2@example.org", "p2@example.org", "Person 2", 2, False)
        assert spool.take(3, "p3@example.org") is not None  # 2 was passed over
        assert spool.take(7, "p7@example.org") is None  # suppressed: no message
        assert spool.take(9, "someone@example.org") is None  # not the guest it kept
        taken = spool.take(10, "p10@example.org")
        assert taken is not None and len(taken.data) > 300_000
        assert taken.wire.endswith(b"\r\n.\r\n") and taken.name == "Person 10"
        assert spool.take(41, "p41@example.org") is None
        assert [r[0] for r in spool.records()] == list(range(2, 40))  # read anew each time
    assert not list(tmp_path.iterdir())  # nothing was ever named in the folder


def test_a_spool_at_its_limit_keeps_what_fits_and_says_it_is_not_complete(
        tmp_path: Path) -> None:
    with Spool(tmp_path, limit=1500) as spool:  # room for a few records of ~450 bytes
        for line in range(1, 10):
            spool.put(outgoing(line))
        count = kept(spool)
        assert not spool.complete and 1 < count < 9
        for line in range(1, count + 1):
            assert spool.take(line, f"p{line}@example.org") is not None
        assert spool.take(count + 1, f"p{count + 1}@example.org") is None  # built again
    with Spool(tmp_path) as spool:
        spool.put(outgoing(1, size=spool_module.LARGEST + 1))  # attachments: built again
        assert not spool.complete and kept(spool) == 0


def test_a_spool_on_a_full_disk_keeps_the_records_written_whole(tmp_path: Path) -> None:
    """Writes that fail (a file size limit stands in for a full disk: EFBIG) end the
    spool at the last whole record; the messages after it are built again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with Spool(tmp_path) as spool:
            resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, hard))
            try:
                for line in range(1, 30):
                    spool.put(outgoing(line, size=100_000))  # a write every ~3 records
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            assert not spool.complete
            kept = [r[0] for r in spool.records()]
            assert kept == list(range(1, len(kept) + 1)) and 0 < len(kept) < 29
            message = spool.take(kept[-1], f"p{kept[-1]}@example.org")
            assert message is not None and len(message.data) > 100_000
            assert spool.take(kept[-1] + 1, f"p{kept[-1] + 1}@example.org") is None
    finally:
        signal.signal(signal.SIGXFSZ, previous)


def test_a_kept_message_gets_the_date_it_is_sent_and_nothing_else_changes() -> None:
    old = outgoing(1, date="Mon, 30 Nov 2026 10:00:00 +0100").data
    before = int(time.time())  # the header has whole seconds
    new = fresh_date(old)
    after = time.time()
    assert new != old
    head, _, tail = new.partition(b"\r\nDate: ")
    value, _, rest = tail.partition(b"\r\n")
    sent = email.utils.parsedate_to_datetime(value.decode())
    assert before <= sent.timestamp() <= after
    assert head + b"\r\n" + rest == old.replace(b"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n",
                                                b"")


def test_only_a_run_that_sends_the_whole_list_for_the_first_time_spools(
        tmp_path: Path, tpl: Path) -> None:
    from mailer.campaign import Campaign
    from mailer.settings import Settings

    settings = Settings(templates_dir=tpl, sender="Digdir <invitasjon@example.org>")
    listing = people(tmp_path, 3)
    journal = tmp_path / "journal.sqlite3"
    campaign = Campaign(settings, listing, "t")
    made = _spool(campaign, journal, SendOptions(), started=False)
    assert made is not None
    made.__exit__()  # closed: the spool's file goes with it
    assert _spool(campaign, journal, SendOptions(), started=True) is None  # a rerun
    assert _spool(campaign, journal, SendOptions(max_messages=1), started=False) is None
    assert _spool(campaign, journal, SendOptions(only=frozenset({"p1@example.org"})),
                  started=False) is None
    narrowed = Campaign(settings, listing, "t", where=["navn == 'Person 1'"])
    assert _spool(narrowed, journal, SendOptions(), started=False) is None


def test_the_spool_has_no_name_and_lives_beside_the_journal(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 5)
    handler.gate.clear()  # the first message is held in DATA while the test looks
    proc = spawn(tpl, path, env, "--concurrency", "1")
    try:
        wait_until(lambda: handler.in_data >= 1)
        folder = tmp_path / ".mailer"
        assert sorted(p.name for p in folder.iterdir() if "spool" in p.name) == []
        links = [os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                 for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        spools = [link for link in links if link.startswith(str(folder.resolve()))
                  and "(deleted)" in link]
        assert len(spools) == 1, links  # open, in the journal's folder, never named
    finally:
        handler.gate.set()
    assert proc.wait(30) == 0
    assert sorted(counts(handler).values()) == [1] * 5


def test_a_spool_over_its_limit_still_sends_everyone_once(
        tmp_path: Path, tpl: Path, smtp: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    controller, handler = smtp
    monkeypatch.setattr(spool_module, "MAX_BYTES", 2500)  # room for a few messages
    path = people(tmp_path, 12, extra="Stoppet;stopp@example.org\n")
    suppress = write(tmp_path / "stopp.csv", "epost\nstopp@example.org\n")
    result = send(tpl, path, smtp_env(controller), "--suppress", str(suppress))
    assert result.exit_code == 0, result.output
    got = counts(handler)
    assert got == {f"p{i}@example.org": 1 for i in range(12)}
    for i in (0, 11):  # one kept in the spool, one built again: the same message
        message = parse(handler.to(f"p{i}@example.org")[0].data)
        assert message["To"].addresses[0].display_name == f"Person {i}"
        assert message.get_body(("plain",)).get_content().rstrip() == f"Hei Person {i}"
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        states = dict(db.execute("SELECT key, state FROM deliveries"))
    assert states.pop("stopp@example.org") == "suppressed"
    assert set(states.values()) == {"sent"} and len(states) == 12


def test_a_suppressed_guest_from_the_spool_is_recorded_and_never_sent(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    path = people(tmp_path, 4, extra="Stoppet;stopp@example.org\n")
    suppress = write(tmp_path / "stopp.csv", "epost\nstopp@example.org\n")
    result = send(tpl, path, smtp_env(controller), "--suppress", str(suppress))
    assert result.exit_code == 0, result.output
    assert "stopp@example.org" not in counts(handler) and len(handler.messages) == 4
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        rows = dict(db.execute("SELECT key, line FROM deliveries WHERE state = 'suppressed'"))
    assert rows == {"stopp@example.org": 6}


def test_a_slow_reply_on_one_connection_does_not_hold_up_the_others(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    """The group commit waits for the other workers' replies only briefly: while the
    server holds one guest's message, the other connection sends everyone else."""
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 20)
    handler.gate_only = {"p0@example.org"}
    handler.gate.clear()
    proc = spawn(tpl, path, env, "--concurrency", "2")
    try:
        wait_until(lambda: len(handler.messages) == 19)
        assert handler.in_data == 1 and "p0@example.org" not in counts(handler)
    finally:
        handler.gate.set()
    assert proc.wait(30) == 0
    assert counts(handler) == {f"p{i}@example.org": 1 for i in range(20)}


def test_quoted_printable_keeps_every_line_within_76_characters() -> None:
    # b2a_qp over a whole text wrote this line with 78 characters (an encoded space last)
    text = "x" * 73 + " \nnext"
    encoded = _qp(text)
    assert max(len(line) for line in encoded.split("\r\n")) <= 76
    assert quopri.decodestring(encoded.encode()) == text.replace("\n", "\r\n").encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab æøå=.\t –€😀\x00\x0cx"), max_size=200),
                max_size=6))
def test_quoted_printable_round_trips_whatever_the_text(lines: list[str]) -> None:
    text = "\n".join(lines)
    for _ in range(2):  # the second time from the memo of encoded lines
        encoded = _qp(text)
        assert encoded.isascii()
        for line in encoded.split("\r\n"):
            assert len(line) <= 76 and not line.endswith((" ", "\t"))
        assert quopri.decodestring(encoded.encode()) == text.replace("\n", "\r\n").encode()


def test_a_spooled_send_delivers_exactly_what_a_dry_run_builds(
        tmp_path: Path, templates: Path, smtp: Server) -> None:
    """The shipped newsletter (Markdown in MJML, an inline logo, three languages) sent from
    the spool: byte for byte the message a dry run builds, but for its Date."""
    controller, handler = smtp
    env = smtp_env(controller, MAILER_UNSUBSCRIBE_URL="https://example.org/a?e={{ email }}")
    args = ("send", str(EXAMPLE), "--template", "nyhetsbrev", "--templates-dir",
            str(templates))
    built = run(*args, "--dry-run", "--outbox", str(tmp_path / "outbox"), env=env)
    assert built.exit_code == 0, built.output
    sent = run(*args, "--journal", str(tmp_path / "j.sqlite3"), env=env)
    assert sent.exit_code == 0, sent.output

    def without_date(data: bytes) -> bytes:
        head, _, rest = data.partition(b"\r\nDate: ")
        return head + rest.partition(b"\r\n")[2]

    expected = {parse(p)["To"].addresses[0].addr_spec: without_date(p.read_bytes())
                for p in (tmp_path / "outbox").glob("*.eml")}
    assert len(expected) == 7 and len(handler.messages) == 7
    for received in handler.messages:
        data = received.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert without_date(data) == expected[received.rcpt_tos[0]]


def test_a_check_of_a_list_alone_starts_without_jinja_or_the_smtp_client(tmp_path: Path) -> None:
    """`validate` of a list loads only what a check of the list needs (start-up is most
    of a check of 100,000 rows)."""
    listing = people(tmp_path, 3)
    code = ("import sys\nfrom mailer.cli import main\n"
            f"sys.argv = ['mailer', 'validate', {str(listing)!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None)\n"
            "print(sorted(m for m in ('jinja2', 'aiosmtplib', 'mailer.pool', 'mailer.smtp',"
            " 'mailer.calendar', 'mailer.render') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60, check=True).stdout
    assert "3 recipients" in out
    assert out.strip().splitlines()[-1] == "[]"
