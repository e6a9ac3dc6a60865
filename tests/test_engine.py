"""The engine's work done once: the pass's messages kept in the queue for delivery,
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

from mailer import queue as queue_module
from mailer.address import check_address
from mailer.errors import TemporaryError
from mailer.message import _qp, fresh_date
from mailer.models import Decision, Kind, Outgoing, Recipient, State
from mailer.queue import Queue
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


def guest(line: int) -> Recipient:
    return Recipient(line=line, address=check_address(f"p{line}@example.org"),
                     name=f"Person {line}", language=None, headers=("navn", "epost"),
                     row=(f"Person {line}", f"p{line}@example.org"))


DUE = Decision(Kind.MESSAGE, None, State.DEFERRED, None)


def built_again(recipient: Recipient, kind: Kind, held: int | None) -> Outgoing:
    """What the queue asks for a message it kept as its recipe."""
    message = outgoing(recipient.line, size=7)
    message.subject = f"built again as {kind} for {recipient.row[0]}"
    return message


def test_the_queue_gives_back_every_guest_and_message_in_list_order(tmp_path: Path) -> None:
    with Queue(tmp_path) as queue:
        for line in range(2, 40):
            if line == 7:
                queue.guest(guest(line), 1)  # suppressed: no message
            else:  # some larger than a read: a record may span reads
                queue.put(guest(line), DUE, outgoing(line, size=300_000 if line % 10 == 0
                                                     else 100))
        assert queue.due == 37
        rows = list(queue.guests())
        assert [r[3] for r in rows] == list(range(2, 40))
        assert rows[5] == ("p7@example.org", "p7@example.org", "Person 7", 7, 1)
        assert rows[0] == ("p2@example.org", "p2@example.org", "Person 2", 2, 0)
        messages = list(queue.messages(built_again))
        assert [m.line for m in messages] == [n for n in range(2, 40) if n != 7]
        big = messages[[m.line for m in messages].index(10)]
        assert len(big.data) > 300_000 and big.name == "Person 10"
        for message in messages:  # finished on the way out: the wire form, the state before
            assert message.wire.endswith(b"\r\n.\r\n") and message.prior is State.DEFERRED
            assert message.kind is Kind.MESSAGE and message.subject == "x"
        assert [r[0] for r in queue.records()] == list(range(2, 40))  # read anew each time
    assert not list(tmp_path.iterdir())  # nothing was ever named in the folder


def test_a_large_message_or_one_past_the_limit_is_kept_as_its_recipe(tmp_path: Path) -> None:
    with Queue(tmp_path, limit=1500) as queue:  # room for a few records of ~450 bytes
        for line in range(1, 10):
            queue.put(guest(line), DUE, outgoing(line))
        messages = list(queue.messages(built_again))
        assert [m.line for m in messages] == list(range(1, 10))  # every one, in order
        again = [m for m in messages if m.subject.startswith("built again")]
        assert 1 < len(again) < 9 and again[0].subject == \
            f"built again as message for Person {again[0].line}"
        assert all(m.wire.endswith(b"\r\n.\r\n") for m in messages)
    with Queue(tmp_path) as queue:
        queue.put(guest(1), DUE, outgoing(1, size=queue_module.LARGEST + 1))  # attachments
        (message,) = queue.messages(built_again)
        assert message.subject == "built again as message for Person 1"


def test_a_queue_on_a_full_disk_is_a_temporary_failure(tmp_path: Path) -> None:
    """Writes that fail (a file size limit stands in for a full disk: EFBIG) end the run
    before anything is sent."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with Queue(tmp_path) as queue:
            resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, hard))
            try:
                def fill() -> None:
                    for line in range(1, 30):
                        queue.put(guest(line), DUE, outgoing(line, size=100_000))

                with pytest.raises(TemporaryError, match="no room for the queue of this run: "
                                                         "File too large"):
                    fill()
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
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


def test_the_queue_has_no_name_and_lives_beside_the_journal(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    path = people(tmp_path, 5)
    handler.gate.clear()  # the first message is held in DATA while the test looks
    proc = spawn(tpl, path, env, "--concurrency", "1")
    try:
        wait_until(lambda: handler.in_data >= 1)
        folder = tmp_path / ".mailer"
        assert sorted(p.name for p in folder.iterdir() if "queue" in p.name) == []
        links = [os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                 for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        queues = [link for link in links if link.startswith(str(folder.resolve()))
                  and "(deleted)" in link]
        assert len(queues) == 1, links  # open, in the journal's folder, never named
    finally:
        handler.gate.set()
    assert proc.wait(30) == 0
    assert sorted(counts(handler).values()) == [1] * 5


def test_a_queue_over_its_limit_still_sends_everyone_once(
        tmp_path: Path, tpl: Path, smtp: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    controller, handler = smtp
    monkeypatch.setattr(queue_module, "MAX_BYTES", 2500)  # room for a few messages
    path = people(tmp_path, 12, extra="Stoppet;stopp@example.org\n")
    suppress = write(tmp_path / "stopp.csv", "epost\nstopp@example.org\n")
    result = send(tpl, path, smtp_env(controller), "--suppress", str(suppress))
    assert result.exit_code == 0, result.output
    got = counts(handler)
    assert got == {f"p{i}@example.org": 1 for i in range(12)}
    for i in (0, 11):  # one kept whole in the queue, one built again: the same message
        message = parse(handler.to(f"p{i}@example.org")[0].data)
        assert message["To"].addresses[0].display_name == f"Person {i}"
        assert message.get_body(("plain",)).get_content().rstrip() == f"Hei Person {i}"
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        states = dict(db.execute("SELECT key, state FROM deliveries"))
    assert states.pop("stopp@example.org") == "suppressed"
    assert set(states.values()) == {"sent"} and len(states) == 12


def test_a_suppressed_guest_from_the_queue_is_recorded_and_never_sent(
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


def test_a_send_delivers_exactly_what_a_dry_run_builds(
        tmp_path: Path, templates: Path, smtp: Server) -> None:
    """The shipped newsletter (Markdown in MJML, an inline logo, three languages) sent from
    the queue: byte for byte the message a dry run builds, but for its Date."""
    controller, handler = smtp
    env = smtp_env(controller, MAILER_UNSUBSCRIBE_URL="https://example.org/a?e={{ email }}")
    from mailer.journal import Journal

    journal = tmp_path / "j.sqlite3"
    Journal(journal).close()  # its secret keys the Message-IDs (and so the boundaries)
    args = ("send", str(EXAMPLE), "--template", "nyhetsbrev", "--templates-dir",
            str(templates), "--journal", str(journal))
    built = run(*args, "--dry-run", "--outbox", str(tmp_path / "outbox"), env=env)
    assert built.exit_code == 0, built.output
    sent = run(*args, env=env)
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
            "print(sorted(m for m in ('jinja2', 'aiosmtplib', 'mailer.pool',"
            " 'mailer.connections.smtp', 'mailer.journal', 'mailer.queue',"
            " 'mailer.calendar', 'mailer.render') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60, check=True).stdout
    assert "3 recipients" in out
    assert out.strip().splitlines()[-1] == "[]"
