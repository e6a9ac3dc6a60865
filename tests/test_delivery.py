"""Delivery over real SMTP (aiosmtpd on 127.0.0.1) with faults injected at the server."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mailer.connections.smtp import helo_name
from tests.conftest import Server, people, run, send, smtp_env
from tests.smtpserver import authenticator, start_server


def test_one_transaction_per_recipient_over_reused_connections(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    listing = people(tmp_path, 40, "Dup;P1@example.org\n")
    result = send(tpl, listing, smtp_env(controller), "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert len(handler.messages) == 40
    for msg in handler.messages:
        assert len(msg.rcpt_tos) == 1  # nobody sees anyone else
        assert msg.message["To"].addresses[0].addr_spec == msg.rcpt_tos[0]
        assert msg.mail_from == "invitasjon@example.org"
        assert msg.message["Bcc"] is None and msg.message["Cc"] is None
    assert sorted(m.rcpt_tos[0] for m in handler.messages) == \
        sorted(f"p{i}@example.org" for i in range(40))
    assert handler.connections <= 2  # reused, not one per message
    assert handler.helos[0] == "client.example.org"
    assert "sent 40, failed 0 (permanent), deferred 0 (temporary)" in result.output


def test_reconnects_after_messages_per_connection(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller, MAILER_MESSAGES_PER_CONNECTION="5")
    result = send(tpl, people(tmp_path, 20), env, "--concurrency", "1")
    assert result.exit_code == 0, result.output
    assert len(handler.messages) == 20
    assert handler.connections == 4
    assert len({m.session for m in handler.messages}) == 4


def test_temporary_4xx_is_retried_then_succeeds(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    handler.rcpt_codes["p1@example.org"] = ["451 4.7.1 greylisted", "451 4.7.1 greylisted"]
    result = send(tpl, people(tmp_path, 3), smtp_env(controller))
    assert result.exit_code == 0, result.output
    assert len(handler.to("p1@example.org")) == 1
    assert len(handler.messages) == 3


def test_permanent_5xx_not_retried_named_exit_1(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    handler.reject["p2@example.org"] = "550 5.1.1 <p2@example.org>: mailbox unknown"
    result = send(tpl, people(tmp_path, 4), smtp_env(controller), "--quiet")
    assert result.exit_code == 1
    assert len(handler.messages) == 3  # one failure never stops the others
    assert "rejected: p2@example.org: 550 5.1.1 <p2@example.org>: mailbox unknown" in result.output
    assert "sent 3, failed 1 (permanent), deferred 0" in result.output


def test_temporary_after_all_retries_exit_75_wins(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    handler.rcpt_codes["p0@example.org"] = ["452 4.2.2 mailbox full"] * 10
    handler.reject["p1@example.org"] = "554 5.7.1 rejected"
    result = send(tpl, people(tmp_path, 3), smtp_env(controller), "--retries", "2")
    assert result.exit_code == 75, result.output
    assert "rejected: p1@example.org: 554 5.7.1 rejected" in result.output
    assert "sent 1, failed 1 (permanent), deferred 1 (temporary)" in result.output
    assert handler.rcpt_codes["p0@example.org"] == ["452 4.2.2 mailbox full"] * 7  # 1 + 2 retries


def test_a_connection_dropped_after_the_body_leaves_the_guest_unconfirmed(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    """The server may have taken the message: it is not sent again in the same run (that
    made 55 duplicates in 6,000), but named, and the next run sends it with the same
    Message-ID."""
    controller, handler = smtp
    handler.drop_in_data["p3@example.org"] = 1
    env = smtp_env(controller)
    result = send(tpl, people(tmp_path, 6), env, "--concurrency", "1")
    assert result.exit_code == 75, result.output
    assert "unconfirmed: p3@example.org: the connection was lost before the reply to the end " \
           "of the message" in result.output
    assert "1 unconfirmed (sent again by the next run)" in result.output
    assert len(handler.to("p3@example.org")) == 0 and len(handler.messages) == 5
    assert handler.connections == 2  # a fresh connection for the others
    journal = tmp_path / ".mailer" / "journal.sqlite3"
    with sqlite3.connect(journal) as db:
        state, first_id = db.execute("SELECT state, message_id FROM deliveries WHERE key = "
                                     "'p3@example.org'").fetchone()
    assert state == "sending"
    again = send(tpl, people(tmp_path, 6), env)
    assert again.exit_code == 0, again.output
    (resent,) = handler.to("p3@example.org")
    assert resent.message["Message-ID"] == first_id and len(handler.messages) == 6


def test_slow_server_connections_run_in_parallel_never_more_than_n(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    handler.data_gate = 3  # the server holds DATA until three transactions are in it at once
    result = send(tpl, people(tmp_path, 24), smtp_env(controller), "--concurrency", "3")
    assert result.exit_code == 0, result.output
    assert len(handler.messages) == 24
    assert handler.max_active == 3  # never more connections than asked for
    assert handler.max_in_data == 3  # and they did work at the same time


def test_rate_limit_spaces_messages_on_the_server_clock(
        tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    result = send(tpl, people(tmp_path, 6), smtp_env(controller), "--concurrency", "3",
                  "--rate-limit", "10/s")
    assert result.exit_code == 0, result.output
    times = sorted(m.at for m in handler.messages)
    assert times[-1] - times[0] >= 0.45  # 5 gaps of 0.1 s, with margin for scheduling
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(1 for g in gaps if g < 0.05) <= 1  # no burst


@pytest.mark.parametrize(("rate", "ok"), [("30/min", True), ("2.5", True), ("100/h", True),
                                          ("fast", False), ("10/day", False)])
def test_rate_option_parsing(tmp_path: Path, tpl: Path, rate: str, ok: bool) -> None:
    result = run("send", str(people(tmp_path, 1)), "--template", "t", "--templates-dir", str(tpl),
                 "--rate-limit", rate, "--dry-run", env={"MAILER_SENDER": "a@example.org"})
    assert (result.exit_code == 0) is ok
    if not ok:
        assert result.exit_code == 2


def test_server_down_exit_75_nothing_sent(tmp_path: Path, tpl: Path) -> None:
    from tests.smtpserver import free_port

    env = smtp_env(type("C", (), {"port": free_port()})())  # nothing listens there
    result = send(tpl, people(tmp_path, 2), env)
    assert result.exit_code == 75
    assert "cannot reach SMTP server" in result.output


def test_invalid_list_makes_no_connection(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    listing = people(tmp_path, 3, "Bad;not-an-address\n")
    result = send(tpl, listing, smtp_env(controller))
    assert result.exit_code == 65
    assert handler.connections == 0


def test_starttls_required_but_not_offered_exit_78(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller, MAILER_SMTP_SECURITY="starttls")
    result = send(tpl, people(tmp_path, 2), env)
    assert result.exit_code == 78
    assert "does not offer STARTTLS" in result.output
    assert handler.messages == []


@pytest.fixture
def tls_server(tls_files: dict[str, Any]) -> Any:
    controller, handler = start_server(
        tls_context=tls_files["server_ctx"], require_starttls=True,
        authenticator=authenticator("digdir", "s3cret-Pa55"), auth_require_tls=True)
    yield controller, handler, tls_files["ca_file"]
    controller.stop()


@pytest.mark.parametrize(("password", "exit_code", "delivered"),
                         [("s3cret-Pa55", 0, 3), ("wrong-Pa55word", 78, 0)])
def test_starttls_with_a_trusted_cert_and_auth(tmp_path: Path, tpl: Path, tls_server: Any,
                                               monkeypatch: pytest.MonkeyPatch, password: str,
                                               exit_code: int, delivered: int) -> None:
    controller, handler, ca_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    env = smtp_env(controller, MAILER_SMTP_SECURITY="starttls", MAILER_SMTP_USERNAME="digdir",
                   MAILER_SMTP_PASSWORD=password)
    result = send(tpl, people(tmp_path, 3), env)
    assert result.exit_code == exit_code, result.output
    assert len(handler.messages) == delivered
    assert password not in result.output  # never shown, whatever happened
    if exit_code:
        assert "authentication failed at 127.0.0.1" in result.output


def test_untrusted_certificate_refused_exit_78(tmp_path: Path, tpl: Path, tls_server: Any) -> None:
    controller, handler, _ = tls_server  # SSL_CERT_FILE not set: the test CA is unknown
    env = smtp_env(controller, MAILER_SMTP_SECURITY="starttls")
    result = send(tpl, people(tmp_path, 2), env)
    assert result.exit_code == 78
    assert "TLS" in result.output and "certificate" in result.output.lower()
    assert handler.messages == []


def test_implicit_tls(tmp_path: Path, tpl: Path, tls_files: dict[str, Any],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    controller, handler = start_server(ssl_context=tls_files["server_ctx"])
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["ca_file"]))
        result = send(tpl, people(tmp_path, 2), smtp_env(controller, MAILER_SMTP_SECURITY="tls"))
        assert result.exit_code == 0, result.output
        assert len(handler.messages) == 2
    finally:
        controller.stop()


def test_helo_name_falls_back_to_sender_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(socket, "getfqdn", lambda: "vm")
    assert helo_name(None, "example.org") == "example.org"
    monkeypatch.setattr(socket, "getfqdn", lambda: "mail.example.net")
    assert helo_name(None, "example.org") == "mail.example.net"
    assert helo_name("relay.example.com", "example.org") == "relay.example.com"


def test_quiet_prints_nothing_on_success(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, _ = smtp
    listing = people(tmp_path, 2, "Dup;p0@example.org\n")  # a warning, also silenced
    result = send(tpl, listing, smtp_env(controller), "--quiet")
    assert result.exit_code == 0
    assert result.output == ""


def test_plain_progress_without_a_terminal(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, _ = smtp
    result = send(tpl, people(tmp_path, 3), smtp_env(controller))
    assert "\x1b[" not in result.output and "\r" not in result.output


def test_progress_bar_on_a_terminal(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    import os
    import pty
    import select
    import subprocess
    import sys

    controller, _ = smtp
    listing = people(tmp_path, 40)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(smtp_env(controller), COLUMNS="120")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mailer", "send", str(listing), "--template",
                             "t", "--templates-dir", str(tpl)], env=env, stdin=follower,
                            stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 10)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    proc.wait(10)
    os.close(leader)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "\x1b[" in text and "sending" in text and "40/40" in text  # the rich bar
    assert "sent 40, failed 0 (permanent), deferred 0 (temporary)" in text
    assert "sending 40 messages" not in text  # the plain start line is for cron only


def test_test_send_names_a_rejected_test_address(tmp_path: Path, tpl: Path,
                                                 smtp: Server) -> None:
    controller, handler = smtp
    handler.reject["sjekk@example.net"] = "550 5.1.1 no such user"
    result = send(tpl, people(tmp_path, 2), smtp_env(controller), "--test-to",
                  "sjekk@example.net")
    assert result.exit_code == 1
    assert "rejected: sjekk@example.net: 550 5.1.1 no such user" in result.output
    assert "0 sent, 1 failed" in result.output


def test_rate_limiter_never_bursts_even_after_the_loop_stalls() -> None:
    import asyncio
    import time

    from mailer.ratelimit import RateLimiter

    async def main() -> list[float]:
        limiter = RateLimiter(20.0)  # one start every 0.05 s
        starts: list[float] = []

        async def caller() -> None:
            for _ in range(3):
                await limiter.wait()
                starts.append(time.monotonic())

        async def staller() -> None:
            await asyncio.sleep(0.06)
            time.sleep(0.3)  # the event loop is blocked: every waiter's time passes

        await asyncio.gather(*(caller() for _ in range(4)), staller())
        return starts

    starts = asyncio.run(main())
    assert len(starts) == 12
    gaps = [b - a for a, b in itertools.pairwise(sorted(starts))]
    assert min(gaps) >= 0.045, gaps  # measured between real starts: no catch-up burst


def test_plain_output_names_the_work_then_sums_up(tmp_path: Path, tpl: Path,
                                                  smtp: Server) -> None:
    controller, _ = smtp
    result = send(tpl, people(tmp_path, 3), smtp_env(controller))
    lines = result.output.splitlines()
    assert lines[0] == "sending 3 messages"
    assert lines[-1] == ("sent 3, failed 0 (permanent), deferred 0 (temporary), skipped 0")


def test_a_password_of_bytes_that_are_not_utf8_is_one_line(
        tmp_path: Path, tpl: Path, tls_server: Any) -> None:
    """A password from the environment in Latin-1 (a shell in an old locale): one line,
    exit 78, no traceback, no character of it shown."""
    import os
    import subprocess
    import sys

    controller, handler, ca_file = tls_server
    env = {k.encode(): v.encode() for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update({k.encode(): v.encode() for k, v in smtp_env(
        controller, MAILER_SMTP_SECURITY="starttls", MAILER_SMTP_USERNAME="digdir").items()})
    env[b"MAILER_SMTP_PASSWORD"] = "hemmelig-blåbær".encode("latin-1")
    env[b"SSL_CERT_FILE"] = str(ca_file).encode()
    proc = subprocess.run([sys.executable, "-m", "mailer", "send", str(people(tmp_path, 2)),
                           "--template", "t", "--templates-dir", str(tpl)], env=env,
                          capture_output=True, timeout=60, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 78, err
    assert "Traceback" not in err and "hemmelig" not in err
    assert "MAILER_SMTP_PASSWORD for user 'digdir' is not UTF-8 text" in err
    assert handler.messages == []
