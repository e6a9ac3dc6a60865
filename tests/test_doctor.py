"""`mailer doctor` against real servers: aiosmtpd over STARTTLS with trustme certificates
(good, untrusted, expiring, no AUTH, a refused login, a refused sender), a local
authoritative nameserver (dnslib) for SPF, DKIM, DMARC and MX, and the round trip through
a private Postfix into a private Dovecot. DKIM signatures are verified with dkimpy
against the key the nameserver publishes; special-use domains when allowed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests import dovecot, postfix
from tests.conftest import ROOT, make_template, run, write
from tests.nameserver import Nameserver
from tests.smtpserver import authenticator, start_server

USER, PASSWORD = "digdir", "s3cret-Pa55"
SENDER = "Digdir <invitasjon@example.org>"
GOOD_ZONE = """\
example.org. 300 IN MX 10 mx.example.org.
example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc.example.org. 300 IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org"
mx.example.org. 300 IN A 127.0.0.1
"""


def lines(output: str) -> dict[str, str]:
    """'area: name' → verdict, of every check line (the last of a name wins)."""
    found = {}
    for line in output.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("ok", "warning", "failed"):
            area_name = ": ".join(rest.strip().split(": ")[:2])
            found[area_name] = verdict
    return found


@pytest.fixture
def dns() -> Iterator[Nameserver]:
    with Nameserver(GOOD_ZONE) as server:
        yield server


def relay(ca: trustme.CA, tmp_path: Path, *, days: int | None = None, auth: bool = True,
          **more: Any) -> tuple[Any, Any, Path]:
    """aiosmtpd with STARTTLS (a trustme certificate, expiring in ``days`` when given)."""
    import ssl

    cert = ca.issue_cert("127.0.0.1", "localhost", not_after=None if days is None else
                         datetime.now(UTC) + timedelta(days=days, hours=1))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    if auth:
        more.update(authenticator=authenticator(USER, PASSWORD), auth_require_tls=True)
    else:  # aiosmtpd offers its own LOGIN and PLAIN unless told not to
        more.update(auth_exclude_mechanism=["LOGIN", "PLAIN"])
    controller, handler = start_server(tls_context=context, require_starttls=True, **more)
    return controller, handler, ca_file


def env_for(controller: Any, dns: Nameserver, **more: str) -> dict[str, str]:
    env = {"MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": str(controller.port),
           "MAILER_SMTP_SECURITY": "starttls", "MAILER_SMTP_USERNAME": USER,
           "MAILER_SMTP_PASSWORD": PASSWORD, "MAILER_SENDER": SENDER,
           "MAILER_SMTP_HELO": "client.example.org", "MAILER_DNS_NAMESERVER": dns.address}
    env.update(more)
    return env


@pytest.mark.parametrize(("case", "check", "verdict", "code"), [
    ("good", "relay: sender", "ok", 0),
    ("untrusted", "relay: TLS", "failed", 78),
    ("expiring", "relay: TLS", "warning", 0),
    ("no AUTH", "relay: AUTH", "failed", 78),
    ("wrong password", "relay: login", "failed", 78),
    ("sender refused", "relay: sender", "failed", 78),
])
def test_the_relay(tmp_path: Path, ca: trustme.CA, dns: Nameserver,
                   monkeypatch: pytest.MonkeyPatch, case: str, check: str, verdict: str,
                   code: int) -> None:
    controller, handler, ca_file = relay(ca, tmp_path, days=3 if case == "expiring" else None,
                                         auth=case != "no AUTH")
    try:
        if case != "untrusted":
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        if case == "sender refused":
            handler.mail_reply = "550 5.7.1 Client does not have permissions to send as " \
                                 "this sender"
        env = env_for(controller, dns, MAILER_SMTP_PASSWORD="wrong-Pa55" if case ==
                      "wrong password" else PASSWORD)
        result = run("doctor", env=env)
    finally:
        controller.stop()
    found = lines(result.output)
    assert found[check] == verdict, result.output
    assert result.exit_code == code, result.output
    assert PASSWORD not in result.output and "wrong-Pa55" not in result.output
    assert not handler.messages  # nothing is ever sent
    if case == "good":
        assert "ok      relay: TLS: TLSv1.3, certificate trusted, expires in" in result.output
        assert found["relay: login"] == "ok" and found["DNS: SPF"] == "ok"
        assert "MAIL FROM:<invitasjon@example.org> 250 (then RSET: nothing was sent)" \
            in result.output
        assert ", 0 failed, " in result.output and result.output.rstrip().endswith(
            "ready to send")
    if case == "expiring":
        assert "expires in 3 days" in result.output
    if case == "sender refused":
        assert "550 5.7.1 Client does not have permissions" in result.output


def test_the_json_report(tmp_path: Path, ca: trustme.CA, dns: Nameserver,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    controller, _, ca_file = relay(ca, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    try:
        result = run("doctor", "--format", "json", env=env_for(controller, dns))
    finally:
        controller.stop()
    document = json.loads(result.output)
    assert document["exit"] == result.exit_code == 0
    names = {(c["area"], c["name"]): c for c in document["checks"]}
    assert names[("relay", "login")]["verdict"] == "ok"
    assert names[("settings", "relay")]["found"].startswith(f"127.0.0.1:{controller.port}, "
                                                             f"starttls, sign-in: password")
    assert PASSWORD not in result.output


@pytest.mark.parametrize(("zone", "check", "verdict"), [
    (GOOD_ZONE, "DNS: DMARC", "ok"),
    (GOOD_ZONE.replace('_dmarc.example.org. 300 IN TXT "v=DMARC1; p=quarantine; '
                       'rua=mailto:dmarc@example.org"\n', ""), "DNS: DMARC", "failed"),
    (GOOD_ZONE.replace("ip4:127.0.0.1", "ip4:192.0.2.10 include:_spf.example.net"),
     "DNS: SPF", "failed"),
])
def test_the_senders_domain_in_dns(tmp_path: Path, ca: trustme.CA,
                                   monkeypatch: pytest.MonkeyPatch, zone: str, check: str,
                                   verdict: str) -> None:
    controller, _, ca_file = relay(ca, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    try:
        with Nameserver(zone) as dns:
            result = run("doctor", env=env_for(controller, dns))
    finally:
        controller.stop()
    found = lines(result.output)
    assert found[check] == verdict, result.output
    assert result.exit_code == (0 if verdict == "ok" else 78)
    if check == "DNS: SPF":
        assert "does not cover the relay (127.0.0.1)" in result.output
    if verdict == "ok":
        assert "policy quarantine" in result.output and found["DNS: MX"] == "ok"


def test_the_nameserver_unreachable_is_temporary(tmp_path: Path, ca: trustme.CA,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    controller, _, ca_file = relay(ca, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with Nameserver(GOOD_ZONE) as dns:
        address = dns.address
    try:
        result = run("doctor", env=dict(env_for(controller, dns), MAILER_DNS_NAMESERVER=address))
    finally:
        controller.stop()
    assert result.exit_code == 75, result.output
    assert lines(result.output)["DNS: nameserver"] == "failed"


def dkim_zone(selector: str, record: str) -> str:
    strings = " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200))
    return GOOD_ZONE + f"{selector}._domainkey.example.org. 300 IN TXT {strings}\n"


def test_dkim_key_signing_and_the_published_key(tmp_path: Path, ca: trustme.CA,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """mailer dkim-key writes an owner-only key and prints the record; a signed message
    verifies with dkimpy against the key served by the local nameserver, and a changed
    subject breaks it; doctor finds the key published (or not)."""
    import dkim
    import dns.resolver

    from mailer.diagnose import resolver

    monkeypatch.chdir(tmp_path)
    made = run("dkim-key", "--selector", "mailer2027", env={"MAILER_SENDER": SENDER})
    assert made.exit_code == 0, made.output
    key = tmp_path / "mailer2027.private.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    record = made.output.split('"', 1)[1].rsplit('"', 1)[0].replace('" "', "")
    assert made.output.splitlines()[-1].startswith("mailer2027._domainkey.example.org. IN TXT")
    again = run("dkim-key", "--selector", "mailer2027", env={"MAILER_SENDER": SENDER})
    assert again.exit_code == 78 and "never written over" in again.output
    key.chmod(0o644)
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Invitasjon til {{ name }}", body_txt="Hei {{ name }}\n")
    listing = write(tmp_path / "l.csv", "navn;e-post\nKari;kari@example.org\n")
    env = {"MAILER_SENDER": SENDER, "MAILER_DKIM_KEY": str(key),
           "MAILER_DKIM_SELECTOR": "mailer2027"}
    loose = run("send", str(listing), "--template", "t", "--templates-dir", str(root),
                "--dry-run", "--outbox", str(tmp_path / "out"), env=env)
    assert loose.exit_code == 78 and "can be read by others" in loose.output
    key.chmod(0o600)
    dry = run("send", str(listing), "--template", "t", "--templates-dir", str(root),
              "--dry-run", "--outbox", str(tmp_path / "out"), env=env)
    assert dry.exit_code == 0, dry.output
    signed = next((tmp_path / "out").glob("*.eml")).read_bytes()
    assert signed.startswith(b"DKIM-Signature: v=1;")
    with Nameserver(dkim_zone("mailer2027", record)) as dns:
        ask = resolver(dns.address)

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            try:
                answer = ask.resolve(name.decode(), "TXT")
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return b""
            return b"".join(b"".join(r.strings) for r in answer)

        assert dkim.verify(signed, dnsfunc=dnsfunc)
        tampered = signed.replace(b"Subject: Invitasjon til Kari", b"Subject: Invitasjon til Ola")
        assert tampered != signed and not dkim.verify(tampered, dnsfunc=dnsfunc)
        controller, _, ca_file = relay(ca, tmp_path)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        try:
            result = run("doctor", env=env_for(controller, dns, MAILER_DKIM_KEY=str(key),
                                               MAILER_DKIM_SELECTOR="mailer2027"))
            other = run("doctor", env=env_for(controller, dns, MAILER_DKIM_KEY=str(key),
                                              MAILER_DKIM_SELECTOR="other"))
        finally:
            controller.stop()
    assert "ok      DNS: DKIM: key at mailer2027._domainkey.example.org matches " \
           "MAILER_DKIM_KEY" in result.output, result.output
    assert result.exit_code == 0
    assert lines(other.output)["DNS: DKIM"] == "failed" and other.exit_code == 78


def test_the_template_and_the_journal(tmp_path: Path, ca: trustme.CA, dns: Nameserver,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    controller, _, ca_file = relay(ca, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    env = env_for(controller, dns, MAILER_TEMPLATES_DIR=str(ROOT / "templates"),
                  MAILER_JOURNAL=str(tmp_path / "j.sqlite3"))
    try:
        result = run("doctor", "--template", "invitasjon", "--list",
                     str(ROOT / "recipients" / "eksempel.csv"), env=env)
        broken = write(tmp_path / "bad.csv", "navn;e-post\nKari;not-an-address\n")
        bad = run("doctor", "--template", "invitasjon", "--list", str(broken), env=env)
    finally:
        controller.stop()
    found = lines(result.output)
    assert found["template: invitasjon"] == "ok", result.output
    assert found["template: event"] == "ok"
    assert "method request, answers to invitasjon@example.org" in result.output
    assert found[f"journal: {tmp_path / 'j.sqlite3'}"] == "ok"
    assert result.exit_code == 0
    assert lines(bad.output)["template: invitasjon"] == "failed" and bad.exit_code == 65


@pytest.mark.skipif(not (dovecot.available() and postfix.available()),
                    reason="needs root, Debian's postfix and dovecot-imapd")
def test_the_round_trip_through_postfix_into_dovecot(tmp_path: Path, ca: trustme.CA,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor --round-trip sends one message through a private Postfix, which delivers it
    into a private Dovecot's Maildir with an Authentication-Results header; doctor reads
    it back over IMAP and reports what the server wrote. The DKIM signature still
    verifies after Postfix; the journal is not touched."""
    import dkim

    from mailer.diagnose import resolver
    from mailer.dkim import dns_record, new_key

    key = new_key(tmp_path / "sel.pem")
    with dovecot.Dovecot(ca) as imap, \
            postfix.Postfix(deliver_to=("invitasjon@example.org", imap.root / "mail",
                                        f"{dovecot.USER}/Maildir/")) as mx, \
            Nameserver(dkim_zone("sel", dns_record(key))) as dns:
        env = imap.settings({}, tmp_path, monkeypatch)
        env.update(MAILER_SMTP_HOST="127.0.0.1", MAILER_SMTP_PORT=str(mx.port),
                   MAILER_SMTP_SECURITY="none", MAILER_SENDER=SENDER,
                   MAILER_IMAP_USERNAME=dovecot.USER, MAILER_DNS_NAMESERVER=dns.address,
                   MAILER_DKIM_KEY=str(tmp_path / "sel.pem"), MAILER_DKIM_SELECTOR="sel",
                   MAILER_JOURNAL=str(tmp_path / "j.sqlite3"),
                   MAILER_SMTP_HELO="client.example.org")
        full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        proc = subprocess.run([sys.executable, "-m", "mailer", "doctor", "--round-trip"],
                              env={**full, **env},
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        output = proc.stdout + proc.stderr
        found = lines(output)
        assert found["round trip: arrival"] == "ok", output
        assert "ok      round trip: Authentication-Results: spf=pass, dkim=pass, dmarc=pass" \
            in output
        assert "ok      round trip: DKIM-Signature: example.org" in output
        delivered = next(p for p in (imap.maildir / "new").iterdir())
        data = delivered.read_bytes().replace(b"\n", b"\r\n")
        ask = resolver(dns.address)

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            answer = ask.resolve(name.decode(), "TXT")
            return b"".join(b"".join(r.strings) for r in answer)

        assert dkim.verify(data, dnsfunc=dnsfunc)  # still verifies after Postfix
    assert not (tmp_path / "j.sqlite3").exists()  # the journal is not touched


def test_an_oauth_login_is_checked_too(tmp_path: Path, dns: Nameserver) -> None:
    from tests.smtpserver import OAuthRecorder
    from tests.test_oauth import token_command

    handler = OAuthRecorder()
    handler.tokens["tok-1"] = "invitasjon@example.org"
    controller, _ = start_server(handler, auth_require_tls=False)
    try:
        env = env_for(controller, dns, MAILER_SMTP_SECURITY="none",
                      MAILER_SMTP_USERNAME="invitasjon@example.org",
                      MAILER_OAUTH_TOKEN_COMMAND=token_command(tmp_path / "cmd", "tok-1"))
        del env["MAILER_SMTP_PASSWORD"]
        result = run("doctor", env=env)
        (tmp_path / "cmd" / "token").write_text("tok-wrong-5ecret")
        wrong = run("doctor", env=env)
    finally:
        controller.stop()
    assert "sign-in: OAuth, token command" in result.output
    assert lines(result.output)["relay: login"] == "ok", result.output
    assert result.exit_code == 0
    assert lines(wrong.output)["relay: login"] == "failed" and wrong.exit_code == 78
    assert "invalid_token" in wrong.output and "tok-wrong-5ecret" not in wrong.output
    assert not handler.messages


def test_a_message_over_the_relays_size_is_a_warning(tmp_path: Path, ca: trustme.CA,
                                                     dns: Nameserver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    controller, _, ca_file = relay(ca, tmp_path, data_size_limit=10_000)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    try:
        result = run("doctor", "--template", "invitasjon", "--list",
                     str(ROOT / "recipients" / "eksempel.csv"),
                     env=env_for(controller, dns, MAILER_TEMPLATES_DIR=str(ROOT / "templates")))
    finally:
        controller.stop()
    assert lines(result.output).get("relay: SIZE") == "warning", result.output
    assert "the relay takes 10,000" in result.output and result.exit_code == 0
