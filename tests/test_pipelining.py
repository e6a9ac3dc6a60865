"""SMTP PIPELINING (RFC 2920) against a real server (aiosmtpd) that records how commands
arrive and refuses or drops at each step of a transaction."""

from __future__ import annotations

import re
import signal
import socket
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests import postfix
from tests.conftest import Server, people, send, smtp_env
from tests.smtpserver import Recorder, authenticator, start_server
from tests.test_journal import spawn, status_json, wait_for

COMMAND = re.compile(rb"(MAIL FROM:|RCPT TO:|DATA\r?$|RSET\r?$|QUIT\r?$|EHLO )", re.M)


def command_writes(handler: Recorder) -> list[list[bytes]]:
    """The SMTP commands of each chunk the server read (a message body is not one)."""
    found = []
    for chunk in handler.chunks:
        if COMMAND.match(chunk):
            found.append([m.group(1).rstrip(b"\r") for m in COMMAND.finditer(chunk)])
    return found


def state_of(tmp_path: Path, address: str) -> tuple[str, int]:
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        row = db.execute("SELECT state, attempts FROM deliveries WHERE key = ?",
                         (address,)).fetchone()
    return str(row[0]), int(row[1])


def test_a_pipelined_transaction_is_one_write_then_the_body(tmp_path: Path, tpl: Path,
                                                            smtp: Server) -> None:
    controller, handler = smtp
    handler.pipelining = True
    env = smtp_env(controller, MAILER_MESSAGES_PER_CONNECTION="50")
    result = send(tpl, people(tmp_path, 120), env, "--concurrency", "1")
    assert result.exit_code == 0, result.output
    assert len(handler.messages) == 120
    writes = command_writes(handler)
    envelopes = [w for w in writes if w[0] == b"MAIL FROM:"]
    assert len(envelopes) == 120
    assert all(w == [b"MAIL FROM:", b"RCPT TO:", b"DATA"] for w in envelopes)
    assert handler.connections == 3  # many messages a connection, renewed after 50


def test_without_pipelining_one_command_per_write(tmp_path: Path, tpl: Path,
                                                  smtp: Server) -> None:
    controller, handler = smtp
    handler.pipelining = False
    result = send(tpl, people(tmp_path, 20), smtp_env(controller), "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert len(handler.messages) == 20
    writes = command_writes(handler)
    assert sum(w == [b"MAIL FROM:"] for w in writes) == 20
    assert all(len(w) == 1 for w in writes)  # never two commands in one write


def _mail_451(h: Recorder) -> None:
    h.mail_reply = "451 4.3.0 try again later"


FAULTS: dict[str, tuple[Any, int, int, str]] = {
    # fault at the server → (exit code, copies of p3's message received, p3's journal state)
    "RCPT 550": (lambda h: h.reject.update({"p3@example.org": "550 5.1.1 no such user"}),
                 1, 0, "failed"),
    "RCPT 451 once": (lambda h: h.rcpt_codes.update({"p3@example.org": ["451 4.3.0 busy"]}),
                      0, 1, "sent"),
    "RCPT 451 always": (lambda h: h.rcpt_codes.update({"p3@example.org": ["451 4.3.0 x"] * 9}),
                        75, 0, "deferred"),
    "end of message 554": (lambda h: h.end_reply.update({"p3@example.org": "554 5.6.0 spam"}),
                           1, 0, "failed"),
    "drop after RCPT": (lambda h: h.drop_after_rcpt.update({"p3@example.org": 1}), 0, 1, "sent"),
    # after the final dot, before the reply: it may have arrived, so not sent again in the run
    "drop in the body": (lambda h: h.drop_in_data.update({"p3@example.org": 1}), 75, 0,
                         "sending"),
    "slow reply": (lambda h: setattr(h, "data_delay", 0.3), 0, 1, "sent"),
}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one at a time"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_at_each_step(tmp_path: Path, tpl: Path, smtp: Server, fault: str,
                              pipelining: bool) -> None:
    controller, handler = smtp
    handler.pipelining = pipelining
    inject, exit_code, copies, state = FAULTS[fault]
    inject(handler)
    result = send(tpl, people(tmp_path, 8), smtp_env(controller), "--concurrency", "1",
                  "--retries", "2")
    assert result.exit_code == exit_code, result.output
    got = Counter(m.rcpt_tos[0] for m in handler.messages)
    assert got["p3@example.org"] == copies
    assert all(got[f"p{i}@example.org"] == 1 for i in range(8) if i != 3)  # nothing twice
    assert state_of(tmp_path, "p3@example.org")[0] == state
    if state == "failed":
        assert f"rejected: p3@example.org: {fault.split()[-1]}" in result.output
    if fault.startswith(("RCPT", "end")):  # refusals keep the connection: one for all
        assert handler.connections == 1


def test_a_refused_sender_stops_the_run_and_changes_no_guest(tmp_path: Path, tpl: Path,
                                                             smtp: Server) -> None:
    controller, handler = smtp
    handler.pipelining = True
    handler.mail_reply = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
    env = smtp_env(controller)
    result = send(tpl, people(tmp_path, 6), env, "--concurrency", "3")
    assert result.exit_code == 78, result.output
    assert "refused the sender <invitasjon@example.org>: 550 5.7.60" in result.output
    assert "no recipient changed state" in result.output
    counts = status_json(env)["campaigns"][0]["counts"]
    assert counts["queued"] == 6 and counts["failed"] == 0 and counts["sending"] == 0
    assert all(state_of(tmp_path, f"p{i}@example.org") == ("queued", 0) for i in range(6))
    handler.mail_reply = None  # the relay fixed: the next run sends to everyone
    again = send(tpl, people(tmp_path, 6), env)
    assert again.exit_code == 0, again.output
    assert len(handler.messages) == 6


def test_a_mail_from_451_is_temporary_for_the_guest(tmp_path: Path, tpl: Path,
                                                    smtp: Server) -> None:
    controller, handler = smtp
    handler.pipelining = True
    _mail_451(handler)
    result = send(tpl, people(tmp_path, 2), smtp_env(controller), "--retries", "0")
    assert result.exit_code == 75
    assert "deferred: p0@example.org: 451 4.3.0 try again later" in result.output


def test_no_reply_to_the_end_of_a_message_leaves_it_unconfirmed(tmp_path: Path, tpl: Path,
                                                                smtp: Server) -> None:
    controller, handler = smtp
    handler.pipelining = True
    handler.gate_only = {"p1@example.org"}
    handler.gate.clear()  # the server never answers p1's message until the test says so
    env = smtp_env(controller, MAILER_SMTP_DATA_TIMEOUT="1", MAILER_SMTP_TIMEOUT="5")
    path = people(tmp_path, 4)
    result = send(tpl, path, env, "--concurrency", "1")
    assert result.exit_code == 75, result.output
    assert "unconfirmed: p1@example.org: no reply to the end of the message within 1 s" \
        in result.output
    assert "sent 3, failed 0 (permanent), deferred 0 (temporary)" in result.output
    assert state_of(tmp_path, "p1@example.org")[0] == "sending"  # unknown: not 'deferred'
    handler.gate.set()
    again = send(tpl, path, env)
    assert again.exit_code == 0, again.output
    copies = handler.to("p1@example.org")
    assert 1 <= len(copies) <= 2  # resent; if the first arrived after all, a twin of it
    assert len({m.message["Message-ID"] for m in copies}) == 1
    assert sum(len(handler.to(f"p{i}@example.org")) for i in (0, 2, 3)) == 3


def test_starttls_and_auth_then_pipelined_transactions(tmp_path: Path, tpl: Path,
                                                       tls_files: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    controller, handler = start_server(
        tls_context=tls_files["server_ctx"], require_starttls=True,
        authenticator=authenticator("digdir", "s3cret-Pa55"), auth_require_tls=True)
    try:
        handler.pipelining = True
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["ca_file"]))
        env = smtp_env(controller, MAILER_SMTP_SECURITY="starttls",
                       MAILER_SMTP_USERNAME="digdir", MAILER_SMTP_PASSWORD="s3cret-Pa55")
        result = send(tpl, people(tmp_path, 30), env, "--concurrency", "2")
        assert result.exit_code == 0, result.output
        assert len(handler.messages) == 30
        envelopes = [w for w in command_writes(handler) if w[0] == b"MAIL FROM:"]
        assert envelopes == [[b"MAIL FROM:", b"RCPT TO:", b"DATA"]] * 30
    finally:
        controller.stop()


def test_a_sigterm_while_sending_is_heard_at_once_and_ends_gracefully(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    handler.pipelining = True
    env = smtp_env(controller)
    path = people(tmp_path, 80)
    handler.hold_after = 10  # the server holds every message after the tenth
    proc = spawn(tpl, path, env, "--concurrency", "4")
    assert proc.stdout is not None
    wait_for(lambda: len(handler.messages) >= 10 and handler.in_data >= 1)
    proc.send_signal(signal.SIGTERM)
    lines = []
    while not lines or not lines[-1].startswith("stopping (SIGTERM)"):
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    handler.hold_after = None
    handler.gate.set()  # the messages in flight may now finish
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert "stopped: interrupted by SIGTERM" in out
    assert len(handler.messages) <= 14  # the ten, and at most one in flight per connection
    counts = status_json(env)["campaigns"][0]["counts"]
    assert counts["sent"] == len(handler.messages) and counts["sending"] == 0
    result = send(tpl, path, env)
    assert result.exit_code == 0, result.output
    assert Counter(m.rcpt_tos[0] for m in handler.messages) == \
        Counter({f"p{i}@example.org": 1 for i in range(80)})


def test_dot_stuffing_is_done_once_and_survives_a_retry(tmp_path: Path, smtp: Server) -> None:
    from tests.conftest import make_template

    controller, handler = smtp
    handler.pipelining = True
    handler.drop_after_rcpt["p0@example.org"] = 1
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt=".\n..\n.Punktum først\nslutt\n.")
    result = send(root, people(tmp_path, 1), smtp_env(controller))
    assert result.exit_code == 0, result.output
    text = handler.messages[0].message.get_body(("plain",)).get_content()
    assert text.replace("\r\n", "\n") == ".\n..\n.Punktum først\nslutt\n.\n"
    assert len(handler.messages) == 1 and handler.connections == 2  # resent after the drop


@pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix")
def test_a_real_postfix_accepts_pipelined_transactions_without_complaint(
        tmp_path: Path, tpl: Path) -> None:
    with postfix.Postfix() as mx:
        env = {"MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": str(mx.port),
               "MAILER_SMTP_SECURITY": "none", "MAILER_SENDER": "Digdir <invitasjon@example.org>",
               "MAILER_SMTP_HELO": "client.example.org"}
        result = send(tpl, people(tmp_path, 200), env, "--concurrency", "4")
        assert result.exit_code == 0, result.output
        assert "sent 200, failed 0" in result.output
        log = mx.wait_for_log(lambda text: text.count("status=sent") == 200
                              and text.count("disconnect from") >= 4, "200 deliveries")
        assert "improper command pipelining" not in log
        sessions = re.findall(r"disconnect from \S+ ehlo=1 mail=(\d+) rcpt=(\d+) data=(\d+)", log)
        assert sum(int(m) for m, _, _ in sessions) == 200
        assert all(m == r == d for m, r, d in sessions)
        # The control: a client that writes a command Postfix does not allow to be pipelined
        # (MAIL right behind EHLO) is logged, so the check above can fail.
        with socket.create_connection(("127.0.0.1", mx.port), timeout=10) as raw:
            raw.recv(200)
            raw.sendall(b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n")
            raw.recv(1000)
        mx.wait_for_log(lambda text: "improper command pipelining after EHLO" in text,
                        "the control's complaint")
