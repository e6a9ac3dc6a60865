"""OAuth 2.0 where the organisers' mail lives: XOAUTH2 and OAUTHBEARER against a real
aiosmtpd and a real Dovecot (oauth2 passdb, introspection at a local identity provider),
a token command, and the built-in sign-in (`mailer login`: MSAL's device code, Google's
authorization code with PKCE) through a local OAuth 2.0 provider over TLS. Nothing in
mailer is mocked."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import dovecot
from tests.conftest import ROOT, make_template, run, smtp_env, write
from tests.idp import IdentityProvider
from tests.smtpserver import OAuthRecorder, RecordingController, start_server
from tests.test_journal import status_json

USER = "invitasjon@example.org"
GUESTS = "navn;e-post\nKari;kari@example.org\nOla;ola@example.org\nÅse;ase@example.org\n"

TOKEN_SCRIPT = """\
import pathlib, sys
here = pathlib.Path(sys.argv[1])
with open(here / "calls", "a") as log:
    log.write("call\\n")
token = (here / "token").read_text().strip()
if token == "FAIL":
    print("a first complaint", file=sys.stderr)
    print("az: the refresh token has expired: run az login", file=sys.stderr)
    sys.exit(3)
print(token)
print("a second line that is not the token")
"""


def token_command(folder: Path, token: str) -> str:
    """A token command (as msmtp's passwordeval would run one) printing ``token``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.py").write_text(TOKEN_SCRIPT)
    (folder / "token").write_text(token)
    return shlex.join([sys.executable, str(folder / "tokens.py"), str(folder)])


def calls(folder: Path) -> int:
    path = folder / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def oauth_smtp(request: pytest.FixtureRequest) -> Iterator[tuple[RecordingController,
                                                                  OAuthRecorder]]:
    exclude = getattr(request, "param", [])
    handler = OAuthRecorder()
    controller, _ = start_server(handler, auth_require_tls=False,
                                 auth_exclude_mechanism=exclude)
    yield controller, handler
    controller.stop()


def campaign(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei {{ name }}", body_txt="Hei {{ name }}\n")
    return root, write(tmp_path / "gjester.csv", GUESTS)


def one_login_a_message(tmp_path: Path, controller: RecordingController,
                        handler: OAuthRecorder) -> tuple[Path, dict[str, str]]:
    """A token command whose token ``tok-1`` the relay takes, and settings that open a
    new connection (a new login) for every message."""
    folder = tmp_path / "cmd"
    handler.tokens["tok-1"] = USER
    return folder, smtp_env(controller, MAILER_SMTP_USERNAME=USER, MAILER_CONCURRENCY="1",
                            MAILER_MESSAGES_PER_CONNECTION="1",
                            MAILER_OAUTH_TOKEN_COMMAND=token_command(folder, "tok-1"))


def send(root: Path, listing: Path, env: dict[str, str], *more: str) -> Any:
    return run("send", str(listing), "--template", "t", "--templates-dir", str(root), *more,
               env=env)


@pytest.mark.parametrize(("oauth_smtp", "mechanism"), [([], "XOAUTH2"),
                                                    (["XOAUTH2"], "OAUTHBEARER")],
                         indirect=["oauth_smtp"])
def test_send_with_a_token_command(tmp_path: Path, oauth_smtp: Any, mechanism: str) -> None:
    """XOAUTH2, or OAUTHBEARER when the server offers only that; the command runs for
    every login, so each new connection gets a fresh token."""
    controller, handler = oauth_smtp
    folder, env = one_login_a_message(tmp_path, controller, handler)
    root, listing = campaign(tmp_path)
    result = send(root, listing, env)
    assert result.exit_code == 0, result.output
    assert len(handler.messages) == 3
    assert {login[:2] for login in handler.logins} == {(mechanism, USER)}
    assert calls(folder) == 3  # one login a connection, one run of the command each
    assert "tok-1" not in result.output


@pytest.mark.parametrize(("oauth_smtp", "mechanism", "answer"), [([], "XOAUTH2", b""),
                                                            (["XOAUTH2"], "OAUTHBEARER",
                                                             b"\x01")],
                         indirect=["oauth_smtp"])
def test_a_refused_token_names_the_servers_reason(tmp_path: Path, oauth_smtp: Any,
                                                  mechanism: str, answer: bytes) -> None:
    controller, handler = oauth_smtp
    folder = tmp_path / "cmd"
    handler.tokens["tok-right"] = USER
    env = smtp_env(controller, MAILER_SMTP_USERNAME=USER,
                   MAILER_OAUTH_TOKEN_COMMAND=token_command(folder, "tok-wrong-5ecret"))
    root, listing = campaign(tmp_path)
    result = send(root, listing, env)
    assert result.exit_code == 78, result.output
    assert "authentication failed at 127.0.0.1" in result.output
    assert "535 5.7.8 Username and Password not accepted (status invalid_token" \
        in result.output
    assert "tok-wrong-5ecret" not in result.output and "Traceback" not in result.output
    # the error challenge answered as the mechanism requires; once more with a fresh token
    assert handler.answers == [answer, answer]
    assert [m for m, _, _ in handler.logins] == [mechanism, mechanism]
    assert calls(folder) == 2 and not handler.messages


def test_a_failing_token_command_and_one_that_prints_nothing(tmp_path: Path,
                                                             oauth_smtp: Any) -> None:
    controller, _ = oauth_smtp
    folder = tmp_path / "cmd"
    env = smtp_env(controller, MAILER_SMTP_USERNAME=USER,
                   MAILER_OAUTH_TOKEN_COMMAND=token_command(folder, "FAIL"))
    root, listing = campaign(tmp_path)
    result = send(root, listing, env)
    assert result.exit_code == 78
    assert f"MAILER_OAUTH_TOKEN_COMMAND ({sys.executable}) exited with 3: az: the refresh " \
           f"token has expired: run az login" in result.output
    (folder / "token").write_text("")
    result = send(root, listing, env)
    assert result.exit_code == 78 and "printed no token" in result.output
    missing = send(root, listing, dict(env, MAILER_OAUTH_TOKEN_COMMAND="no-such-tool --x"))
    assert missing.exit_code == 78
    assert "MAILER_OAUTH_TOKEN_COMMAND (no-such-tool): no such command" in missing.output


def test_a_password_and_oauth_both_set(tmp_path: Path, oauth_smtp: Any) -> None:
    controller, _ = oauth_smtp
    env = smtp_env(controller, MAILER_SMTP_USERNAME=USER, MAILER_SMTP_PASSWORD="pw-5ecret",
                   MAILER_OAUTH_TOKEN_COMMAND=token_command(tmp_path / "cmd", "t"))
    root, listing = campaign(tmp_path)
    result = send(root, listing, env)
    assert result.exit_code == 78
    assert "MAILER_SMTP_PASSWORD and MAILER_OAUTH_TOKEN_COMMAND are both set" in result.output
    assert "pw-5ecret" not in result.output


def test_a_token_refused_mid_run_gets_one_fresh_try_then_the_run_stops(
        tmp_path: Path, oauth_smtp: Any) -> None:
    controller, handler = oauth_smtp
    folder, env = one_login_a_message(tmp_path, controller, handler)
    handler.revoke_after = 1  # the sign-in lapses after the first message
    root, listing = campaign(tmp_path)
    result = send(root, listing, env)
    assert result.exit_code == 75, result.output
    assert "refused a fresh OAuth token for 'invitasjon@example.org' mid-run" in result.output
    assert "tok-1" not in result.output
    assert len(handler.messages) == 1 and calls(folder) == 3  # 1 + the refused + one fresh
    states = sorted(r["state"] for r in status_json(env)["recipients"])
    assert states == ["queued", "queued", "sent"]  # the others stay due for a later run


def test_microsoft_365_replies_say_what_to_do(tmp_path: Path, oauth_smtp: Any) -> None:
    """SendAsDenied comes at the end of the message: a problem of the settings (78, the
    guest stays due); 5.7.139 names the admin's command."""
    controller, handler = oauth_smtp
    handler.tokens["tok-1"] = USER
    handler.end_reply["ola@example.org"] = (
        "554 5.2.252 SendAsDenied; invitasjon@example.org not allowed to send as "
        "noreply@example.org; STOREDRV.Submission.Exception:SendAsDeniedException")
    env = smtp_env(controller, MAILER_SMTP_USERNAME=USER, MAILER_CONCURRENCY="1",
                   MAILER_OAUTH_TOKEN_COMMAND=token_command(tmp_path / "cmd", "tok-1"))
    root, listing = campaign(tmp_path)
    result = send(root, listing, env)
    assert result.exit_code == 78, result.output
    assert "must be the signed-in mailbox or one it may send as" in result.output
    rows = {r["email"]: r["state"] for r in status_json(env)["recipients"]}
    assert rows["ola@example.org"] == "queued"

    from aiosmtpd.smtp import AuthResult

    def disabled(*_: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, message=(
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
            "for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."))

    other, _ = start_server(auth_require_tls=False, authenticator=disabled)
    try:
        result = send(root, listing, smtp_env(other, MAILER_SMTP_USERNAME=USER,
                                              MAILER_SMTP_PASSWORD="pw"))
    finally:
        other.stop()
    assert result.exit_code == 78
    assert "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false" \
        in result.output


@pytest.mark.skipif(not dovecot.available(), reason="needs root and Debian's dovecot-imapd")
def test_inbox_over_xoauth2_at_a_real_dovecot(tmp_path: Path, ca: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with IdentityProvider(ca) as idp, \
            dovecot.Dovecot(ca, introspection=f"{idp.provider.base}/introspect") as imap:
        idp.provider.access["imap-tok"] = dovecot.USER
        imap.deliver(b"From: a@example.com\r\nSubject: hei\r\nMessage-ID: <1@x>\r\n\r\nhei\r\n")
        env = imap.settings({}, tmp_path, monkeypatch)
        del env["MAILER_IMAP_PASSWORD"]
        env["MAILER_OAUTH_TOKEN_COMMAND"] = token_command(tmp_path / "cmd", "imap-tok")
        env["MAILER_JOURNAL"] = str(tmp_path / "j.sqlite3")
        from mailer.journal import Journal

        Journal(tmp_path / "j.sqlite3").close()
        result = run("inbox", env=env)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("inbox: 1 read")
        (tmp_path / "cmd" / "token").write_text("imap-wrong-5ecret")
        result = run("inbox", env=env)
        assert result.exit_code == 78
        assert "IMAP login or folder at 127.0.0.1" in result.output
        assert "imap-wrong-5ecret" not in result.output


def mailer(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    """The real CLI as a process (a sign-in waits for a person)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update(env)
    return subprocess.Popen([sys.executable, "-m", "mailer", *args], env=full, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


@pytest.mark.skipif(not dovecot.available(), reason="needs root and Debian's dovecot-imapd")
def test_the_microsoft_sign_in_from_login_to_revoked(tmp_path: Path, ca: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """mailer login (device code, approved by the test) → send over XOAUTH2 → inbox over
    XOAUTH2 → the access token expires → a silent refresh → the refresh token is revoked
    → 78 "mailer login"."""
    handler = OAuthRecorder()
    controller, _ = start_server(handler, auth_require_tls=False)
    cache = tmp_path / ".mailer" / "oauth.json"
    try:
        with IdentityProvider(ca) as idp, \
                dovecot.Dovecot(ca, introspection=f"{idp.provider.base}/introspect") as imap:
            provider = idp.provider
            provider.user = dovecot.USER
            handler.tokens = provider.access  # the relay accepts what the provider issued
            env = imap.settings(smtp_env(controller), tmp_path, monkeypatch)
            del env["MAILER_IMAP_PASSWORD"], env["MAILER_IMAP_USERNAME"]
            env.update(MAILER_OAUTH_PROVIDER="microsoft", MAILER_OAUTH_CLIENT_ID=
                       provider.client_id, MAILER_OAUTH_AUTHORITY=provider.base,
                       MAILER_OAUTH_CACHE=str(cache), MAILER_JOURNAL=str(tmp_path / "j.db"),
                       SSL_CERT_FILE=str(tmp_path / "ca.pem"))
            login = mailer(["login"], env)
            code = provider.approve()
            out, _ = login.communicate(timeout=60)
            assert login.returncode == 0, out
            assert f"enter the code {code}" in out
            assert f"signed in as {dovecot.USER}; the sign-in is kept in {cache}" in out
            assert (cache.stat().st_mode & 0o777) == 0o600
            assert not any(t in out for t in provider.access)
            assert provider.scopes[-1] == ""  # MSAL sends none with the device code
            root, listing = campaign(tmp_path)
            result = send(root, listing, env)
            assert result.exit_code == 0, result.output
            assert len(handler.messages) == 3
            assert {(m, u) for m, u, _ in handler.logins} == {("XOAUTH2", dovecot.USER)}
            check = run("login", "--check", env=env)
            assert check.exit_code == 0, check.output
            assert f"signed in as {dovecot.USER}" in check.output
            assert "IMAP 127.0.0.1" in check.output and "INBOX holds 0 messages" in check.output
            imap.deliver(b"From: a@example.com\r\nSubject: s\r\nMessage-ID: <2@x>\r\n\r\nx\r\n")
            inbox = run("inbox", env=env)
            assert inbox.exit_code == 0 and inbox.output.startswith("inbox: 1 read"), \
                inbox.output

            # The access token expires: the next run refreshes it without asking anyone.
            data = json.loads(cache.read_text())
            msal_cache = json.loads(data["msal"])
            for entry in msal_cache["AccessToken"].values():
                entry["expires_on"] = str(int(time.time()))
            data["msal"] = json.dumps(msal_cache)
            cache.write_text(json.dumps(data))
            refreshes = provider.requests.count(("/organizations/oauth2/v2.0/token",
                                                 "refresh_token"))
            listing.write_text(GUESTS + "Per;per@example.org\n")
            result = send(root, listing, env)
            assert result.exit_code == 0, result.output
            assert provider.requests.count(("/organizations/oauth2/v2.0/token",
                                            "refresh_token")) == refreshes + 1
            assert len(handler.messages) == 4

            provider.revoke()  # an admin revokes the sessions
            listing.write_text(GUESTS + "Per;per@example.org\nNora;nora@example.org\n")
            result = send(root, listing, env)
            assert result.exit_code == 78, result.output
            assert "sign in again: mailer login" in result.output
            assert "Traceback" not in result.output
            assert run("logout", env=env).output == f"signed out: {cache} deleted\n"
            assert not cache.exists()
            gone = send(root, listing, env)
            assert gone.exit_code == 78 and "mailer login" in gone.output
    finally:
        controller.stop()


def test_the_identity_provider_unreachable_is_temporary(tmp_path: Path, ca: Any) -> None:
    with IdentityProvider(ca) as idp:
        base = idp.provider.base
    env = {"MAILER_OAUTH_PROVIDER": "microsoft", "MAILER_OAUTH_CLIENT_ID": "c",
           "MAILER_OAUTH_AUTHORITY": base, "MAILER_OAUTH_CACHE": str(tmp_path / "o.json")}
    proc = mailer(["login"], env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert "the identity provider" in out and "cannot be reached" in out


def test_the_google_sign_in_with_pkce(tmp_path: Path, ca: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """mailer login prints the address to open; the browser (here: the test) follows the
    provider's redirect to mailer's server on 127.0.0.1; the code is exchanged with its
    PKCE verifier; later runs refresh silently."""
    import requests

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cache = tmp_path / "oauth.json"
    with IdentityProvider(ca) as idp:
        provider = idp.provider
        env = {"MAILER_OAUTH_PROVIDER": "google", "MAILER_OAUTH_CLIENT_ID": "g-client",
               "MAILER_OAUTH_CLIENT_SECRET": "g-5ecret", "MAILER_OAUTH_AUTHORITY":
               provider.base, "MAILER_OAUTH_CACHE": str(cache), "MAILER_SMTP_USERNAME": USER,
               "SSL_CERT_FILE": str(ca_file)}
        login = mailer(["login"], env)
        assert login.stdout is not None
        line = login.stdout.readline()  # the address to open: the event to wait for
        assert "To sign in, open this address in a browser" in line, line
        url = line.split("(waiting for you): ", 1)[1].strip()
        assert "code_challenge_method=S256" in url and "code_challenge=" in url
        assert "scope=https%3A%2F%2Fmail.google.com%2F" in url
        back = requests.get(url, verify=str(ca_file), allow_redirects=False, timeout=30)
        assert back.status_code == 302
        assert back.headers["Location"].startswith("http://127.0.0.1:")
        done = requests.get(back.headers["Location"], timeout=30)
        assert "Signed in" in done.text
        out, _ = login.communicate(timeout=60)
        assert login.returncode == 0, line + out
        assert f"signed in as {USER}" in out
        data = json.loads(cache.read_text())
        assert data["provider"] == "google" and data["refresh_token"] in provider.refresh

        from mailer.errors import ConfigError
        from mailer.oauth import source
        from mailer.settings import Settings

        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        settings = Settings(oauth_provider="google", oauth_client_id="g-client",
                            oauth_authority=provider.base, oauth_cache=cache)
        token = source(settings).token()  # unexpired: from the cache, no request
        assert token in provider.access
        asked = len(provider.requests)
        fresh = source(settings).token(fresh=True)
        assert fresh != token and fresh in provider.access
        assert provider.requests[asked:] == [("/oauth2/v2.0/token", "refresh_token")]
        provider.revoke()
        with pytest.raises(ConfigError, match="sign in again: mailer login"):
            source(settings).token(fresh=True)
